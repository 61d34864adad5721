"""How a planning export reads a database Source: one driver per source kind, a registry
from kind to class (PostgreSQL, MySQL/MariaDB, SQLite), and the same promises for each:

* **read-only**: the query runs in a read-only transaction (PostgreSQL ``BEGIN READ
  ONLY``; MySQL/MariaDB ``START TRANSACTION READ ONLY``); a SQLite file is opened with
  ``mode=ro`` and ``query_only``, behind an authorizer that allows reading only (no
  ``ATTACH``, no ``PRAGMA``, no writes), whatever the SQL says;
* **a statement timeout** of ``BACKUPSITE_EXPORT_STATEMENT_TIMEOUT`` seconds, enforced by
  the server where it can: PostgreSQL ``statement_timeout`` (it applies to each fetch
  from the cursor), MySQL ``max_execution_time`` / MariaDB ``max_statement_time`` (the
  whole query, including the time its rows take to arrive); SQLite through a progress
  handler that interrupts the query once its time in the database passes the limit. A
  query stopped this way raises :class:`QueryTimeout` with a message that says so;
* **streaming**: rows come from a server-side cursor (PostgreSQL named cursor, MySQL
  unbuffered ``SSCursor``, SQLite's own stepping) in batches, so memory does not grow
  with the result;
* **the window in the site's time zone**: the bounds are passed the way the database
  compares them best (PostgreSQL: aware timestamps, with the session ``TimeZone`` set to
  the site's so ``date`` and ``timestamp`` columns compare as local time; MySQL/MariaDB:
  local wall-clock times, with the session ``time_zone`` set to the site's, or to its
  offset at the window's start where the server has no time-zone tables; SQLite: text
  ``YYYY-MM-DD HH:MM:SS`` in local time, as ``datetime()`` writes it);
* **never the panel's own database** (it holds every password hash), and secrets only
  from the Source row, never in a message.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from django.utils.module_loading import import_string

from jobs.exports.query import Prepared, prepare
from jobs.sources.dbtools import CONNECT_TIMEOUT, is_panel_database, scrub

FETCH_ROWS = 2000  # rows per round trip


class ExportError(Exception):
    """The export cannot read its data; the message is shown to users (no secrets)."""


class QueryTimeout(ExportError):
    pass


def timeout_message(seconds: float) -> str:
    unit = "second" if seconds == 1 else "seconds"
    return (
        f"The query ran longer than the limit of {seconds:g} {unit} and was stopped "
        "(BACKUPSITE_EXPORT_STATEMENT_TIMEOUT). Make it faster (an index, a narrower window) or raise the limit."
    )


@dataclass
class Result:
    """An open query: its column names and an iterator of row tuples."""

    columns: list[str]
    rows: Iterator[tuple]


class Driver:
    """Reads one database Source. ``with driver.query(prepared, window) as result``."""

    kind: ClassVar[str]
    label: ClassVar[str]
    style: ClassVar[str]  # the placeholder style (jobs.exports.query.STYLES)
    #: The driver returns dates as text (SQLite): ISO text becomes date cells.
    text_dates: ClassVar[bool] = False
    conf_path: ClassVar[str]  # the source kind's Conf (imported when used)

    def __init__(self, settings: dict, secrets: dict | None, *, tz: dt.tzinfo, timeout: float, name: str = "") -> None:
        self.settings = settings or {}
        self._password = str((secrets or {}).get("password") or "")
        self.tz = tz
        self.timeout = float(timeout)
        self.name = name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    def conf(self):
        return import_string(self.conf_path).parse(self.settings)

    def prepare(self, sql: str) -> Prepared:
        return prepare(sql, self.style)

    def parameters(self, start: dt.datetime, end: dt.datetime) -> dict:
        """The window's bounds (aware, in the site's zone) as this driver passes them."""
        raise NotImplementedError

    @contextlib.contextmanager
    def query(self, prepared: Prepared, start: dt.datetime, end: dt.datetime) -> Iterator[Result]:
        raise NotImplementedError
        yield  # pragma: no cover

    def _clean(self, exc: BaseException) -> str:
        """A driver's error as one line without the password."""
        text = " ".join(str(exc).split()) or type(exc).__name__
        text = scrub(text, self._password)
        return text if len(text) <= 400 else text[:399] + "…"


def local_wall(moment: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    return moment.astimezone(tz).replace(tzinfo=None)


def refuse_panel_database(target: dict) -> None:
    """ExportError if *target* (Django's ``DATABASES`` keys) is the panel's own database."""
    if is_panel_database(target):
        raise ExportError("Refused: this source is the panel's own database (it holds every password hash).")


class ServerDriver(Driver):
    """A database on a server (PostgreSQL, MySQL/MariaDB): the source kind's settings,
    parsed by its ``Conf``, and never the panel's own database."""

    engine: ClassVar[str]  # Django's ENGINE of the kind, to compare with the panel's

    def checked_conf(self):
        """:meth:`conf`, after refusing the panel's own database."""
        conf = self.conf()
        refuse_panel_database({"ENGINE": self.engine, "NAME": conf.database, "HOST": conf.host, "PORT": conf.port})
        return conf


# --- PostgreSQL -------------------------------------------------------------------------
class PostgresDriver(ServerDriver):
    kind = "postgresql"
    label = "PostgreSQL"
    style = "pyformat"
    engine = "django.db.backends.postgresql"
    conf_path = "jobs.sources.postgres.PostgresConf"

    def parameters(self, start, end):
        return {"start": start, "end": end}

    def _connect(self):
        import psycopg

        conf = self.checked_conf()
        try:
            return psycopg.connect(conf.conninfo(), password=self._password or None, autocommit=False)
        except psycopg.Error as exc:
            raise ExportError(f"Cannot connect to PostgreSQL {conf.where()}: {self._clean(exc)}") from None

    @contextlib.contextmanager
    def query(self, prepared, start, end):
        import psycopg

        conn = self._connect()
        try:
            conn.read_only = True  # BEGIN READ ONLY
            with conn.cursor() as setup:
                setup.execute("SELECT set_config('TimeZone', %s, true)", [str(self.tz)])
                setup.execute("SELECT set_config('statement_timeout', %s, true)", [f"{int(self.timeout * 1000)}"])
            cursor = conn.cursor(name="backupsite_export")
            cursor.itersize = FETCH_ROWS
            try:
                cursor.execute(prepared.text, prepared.parameters(self.parameters(start, end)))
                columns = [c.name for c in cursor.description or []]
                rows = self._rows(cursor)
                first = next(rows, None)  # runs the query: errors surface here
                yield Result(columns, _chained(first, rows))
            except psycopg.errors.QueryCanceled:
                raise QueryTimeout(timeout_message(self.timeout)) from None
            except psycopg.Error as exc:
                raise ExportError(f"PostgreSQL refused the query: {self._clean(exc)}") from None
        finally:
            with contextlib.suppress(Exception):
                conn.rollback()
            conn.close()

    def _rows(self, cursor) -> Iterator[tuple]:
        import psycopg

        try:
            while batch := cursor.fetchmany(FETCH_ROWS):
                yield from batch
        except psycopg.errors.QueryCanceled:
            raise QueryTimeout(timeout_message(self.timeout)) from None
        except psycopg.Error as exc:
            raise ExportError(f"PostgreSQL stopped the query: {self._clean(exc)}") from None


# --- MySQL / MariaDB -----------------------------------------------------------------------
#: Error numbers of a query stopped by the time limit (MySQL 3024, MariaDB 1969).
_MYSQL_TIMEOUTS = {3024, 1969}


class MysqlDriver(ServerDriver):
    kind = "mysql"
    label = "MySQL/MariaDB"
    style = "pyformat"
    engine = "django.db.backends.mysql"
    conf_path = "jobs.sources.mysql.MysqlConf"

    def parameters(self, start, end):
        return {"start": local_wall(start, self.tz), "end": local_wall(end, self.tz)}

    def _connect(self):
        import pymysql

        conf = self.checked_conf()
        try:
            return pymysql.connect(
                host=conf.host,
                port=conf.port,
                user=conf.user or None,
                # As bytes: PyMySQL would encode a str password as Latin-1, so one with
                # characters beyond it (ü in UTF-8, as every other client sends it) fails.
                password=self._password.encode("utf-8"),
                database=conf.database,
                charset="utf8mb4",
                connect_timeout=CONNECT_TIMEOUT,
                # A backstop for a server that stops answering: the limit plus a margin.
                read_timeout=int(self.timeout) + 60,
                write_timeout=int(self.timeout) + 60,
                autocommit=False,
                cursorclass=pymysql.cursors.SSCursor,
            )
        except pymysql.MySQLError as exc:
            raise ExportError(f"Cannot connect to MySQL {conf.where()}: {self._clean(exc)}") from None

    def _session(self, conn, start) -> None:
        import pymysql

        with conn.cursor(pymysql.cursors.Cursor) as setup:
            if "mariadb" in conn.get_server_info().lower():
                setup.execute("SET SESSION max_statement_time = %s", [self.timeout])
            else:
                setup.execute("SET SESSION max_execution_time = %s", [int(self.timeout * 1000)])
            try:
                setup.execute("SET SESSION time_zone = %s", [str(self.tz)])
            except pymysql.MySQLError:  # no time-zone tables on the server: the offset
                offset = start.astimezone(self.tz).utcoffset() or dt.timedelta(0)
                minutes = int(offset.total_seconds() // 60)
                sign = "-" if minutes < 0 else "+"
                setup.execute("SET SESSION time_zone = %s", [f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"])
            setup.execute("START TRANSACTION READ ONLY")

    @contextlib.contextmanager
    def query(self, prepared, start, end):
        import pymysql

        conn = self._connect()
        try:
            try:
                self._session(conn, start)
                cursor = conn.cursor()
                cursor.execute(prepared.text, prepared.parameters(self.parameters(start, end)))
            except pymysql.MySQLError as exc:
                raise self._error(exc) from None
            columns = [c[0] for c in cursor.description or []]
            rows = self._rows(cursor)
            first = next(rows, None)
            yield Result(columns, _chained(first, rows))
        finally:
            # Closing the connection (not the cursor) leaves a half-read result behind
            # without reading the rest of it.
            with contextlib.suppress(Exception):
                conn.close()

    def _error(self, exc) -> ExportError:
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        if code in _MYSQL_TIMEOUTS:
            return QueryTimeout(timeout_message(self.timeout))
        return ExportError(f"MySQL refused the query: {self._clean(exc)}")

    def _rows(self, cursor) -> Iterator[tuple]:
        import pymysql

        try:
            while batch := cursor.fetchmany(FETCH_ROWS):
                yield from batch
        except pymysql.MySQLError as exc:
            raise self._error(exc) from None


# --- SQLite ---------------------------------------------------------------------------------
_SQLITE_ALLOWED = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
_SQLITE_PROGRESS_STEPS = 20_000  # virtual-machine steps between looks at the clock


class SqliteDriver(Driver):
    kind = "sqlite"
    label = "SQLite"
    style = "named"
    text_dates = True
    conf_path = "jobs.sources.sqlite.SqliteConf"

    def parameters(self, start, end):
        fmt = "%Y-%m-%d %H:%M:%S"
        return {"start": local_wall(start, self.tz).strftime(fmt), "end": local_wall(end, self.tz).strftime(fmt)}

    def _connect(self) -> sqlite3.Connection:
        conf = self.conf()
        path = Path(conf.path)
        refuse_panel_database({"ENGINE": "django.db.backends.sqlite3", "NAME": str(path)})
        if not path.is_file():
            raise ExportError(f"The SQLite file {path} does not exist.")
        try:
            conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=10, isolation_level=None)
            conn.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            raise ExportError(f"Cannot open the SQLite file {path}: {exc}") from None
        conn.set_authorizer(
            lambda action, *args: sqlite3.SQLITE_OK if action in _SQLITE_ALLOWED else sqlite3.SQLITE_DENY
        )
        return conn

    @contextlib.contextmanager
    def query(self, prepared, start, end):
        conn = self._connect()
        clock = _Budget(self.timeout)
        conn.set_progress_handler(clock.exceeded, _SQLITE_PROGRESS_STEPS)
        try:
            try:
                with clock:
                    cursor = conn.execute(prepared.text, prepared.parameters(self.parameters(start, end)))
            except sqlite3.Error as exc:
                raise self._error(exc, clock) from None
            columns = [c[0] for c in cursor.description or []]
            rows = self._rows(cursor, clock)
            first = next(rows, None)
            yield Result(columns, _chained(first, rows))
        finally:
            conn.close()

    def _error(self, exc: sqlite3.Error, clock: _Budget) -> ExportError:
        if clock.fired:
            return QueryTimeout(timeout_message(self.timeout))
        text = str(exc)
        if "not authorized" in text or "prohibited" in text:
            return ExportError("SQLite refused the query: it may only read (no ATTACH, PRAGMA or writes).")
        return ExportError(f"SQLite refused the query: {text}")

    def _rows(self, cursor, clock: _Budget) -> Iterator[tuple]:
        try:
            while True:
                with clock:
                    batch = cursor.fetchmany(FETCH_ROWS)
                if not batch:
                    return
                yield from batch
        except sqlite3.Error as exc:
            raise self._error(exc, clock) from None


class _Budget:
    """The time a SQLite query spends in the database, summed over its fetches; the
    progress handler interrupts it once that passes *limit* seconds."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.spent = 0.0
        self.fired = False
        self._since: float | None = None

    def __enter__(self) -> _Budget:
        self._since = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        if self._since is not None:
            self.spent += time.monotonic() - self._since
        self._since = None

    def exceeded(self) -> int:
        if self._since is not None and self.spent + time.monotonic() - self._since > self.limit:
            self.fired = True
            return 1
        return 0


def _chained(first, rows: Iterator[tuple]) -> Iterator[tuple]:
    if first is None:
        return
    yield first
    yield from rows


REGISTRY: dict[str, type[Driver]] = {
    PostgresDriver.kind: PostgresDriver,
    MysqlDriver.kind: MysqlDriver,
    SqliteDriver.kind: SqliteDriver,
}


def for_source(source, *, tz: dt.tzinfo, timeout: float) -> Driver:
    """The driver of a Source row (ExportError for kinds an export cannot read)."""
    cls = REGISTRY.get(source.kind)
    if cls is None:
        raise ExportError(f"“{source.name}” is not a database an export can read (PostgreSQL, MySQL or SQLite).")
    return cls(source.settings, source.secrets, tz=tz, timeout=timeout, name=source.name)
