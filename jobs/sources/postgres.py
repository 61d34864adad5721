"""PostgreSQL databases: ``pg_dump -Fc`` (custom format) into the archive.

The dump goes to a 0600 temporary file in the staging folder first (a tar member needs
its size up front), which is removed whatever happens. The password reaches ``pg_dump``
only through its environment (``PGPASSWORD``), never its arguments or a message; the
connection itself is one quoted libpq connection string, so no setting can be read as an
option or as a second connection parameter. Restore with stock tools::

    pg_restore --no-owner --clean --if-exists -d <new database> <database>.pgdump

With ``exclude_table_data`` (the panel's own database: sessions, tokens) each table is
passed as ``--exclude-table-data`` with a double-quoted pattern, so its name is taken
literally (no case folding, no ``*``/``?``/``.`` wildcards): the table is in the dump,
its rows are not.

``pg_dump`` refuses a server of a newer major version than its own ("server version
mismatch"). Before each dump the source compares ``pg_dump --version`` with the server's
``SHOW server_version_num`` and fails with a message that says which client to install;
the system check ``backupsite.E005`` does the same for the panel's own database at
start-up (``migrate``, ``check --database default``).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from django.utils.translation import gettext_lazy as _

from jobs.sources.base import ConfError, SourceError, on_field
from jobs.sources.dbtools import (
    CONNECT_TIMEOUT,
    QUERY_TIMEOUT,
    ServerDumpSource,
    check_name,
    check_port,
    check_table_names,
    last_line,
    run_tool,
)

DEFAULT_PORT = 5432
SSL_MODES = ("", "disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def pg_tool(name: str) -> str:
    """The path of a PostgreSQL client program: on PATH, else the newest Debian
    ``/usr/lib/postgresql/<version>/bin`` (where the server packages put them)."""
    found = shutil.which(name)
    if found:
        return found

    def version(path: str) -> tuple[int, ...]:
        part = Path(path).parent.parent.name
        return tuple(int(p) for p in part.split(".") if p.isdigit()) or (0,)

    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=version)
    if candidates and os.access(candidates[-1], os.X_OK):
        return candidates[-1]
    raise SourceError(f"{name} is not installed (Debian/Ubuntu: apt-get install postgresql-client).")


def _quote(value: str) -> str:
    """A libpq connection-string value: single-quoted, backslash and quote escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class PostgresConf:
    database: str
    host: str = ""  # empty: libpq's default (the local Unix socket)
    port: int = DEFAULT_PORT
    user: str = ""  # empty: libpq's default (the worker's user name)
    sslmode: str = ""
    exclude_table_data: tuple[str, ...] = ()

    @classmethod
    def parse(cls, data: dict) -> PostgresConf:
        data = data or {}
        sslmode = str(data.get("sslmode") or "")
        if sslmode not in SSL_MODES:
            raise ConfError(f"Unknown SSL mode {sslmode!r}.", "sslmode")
        return cls(
            database=on_field("database", check_name, data.get("database"), "database name", max_length=63),
            host=on_field("host", check_name, data.get("host"), "host name", required=False),
            port=on_field("port", check_port, data.get("port"), DEFAULT_PORT),
            user=on_field("user", check_name, data.get("user"), "user name", required=False, max_length=63),
            sslmode=sslmode,
            exclude_table_data=on_field("exclude_table_data", check_table_names, data.get("exclude_table_data")),
        )

    def conninfo(self) -> str:
        """A libpq connection string, without the password."""
        parts = {
            "dbname": self.database,
            "host": self.host,
            "port": str(self.port),
            "user": self.user,
            "sslmode": self.sslmode,
            "connect_timeout": str(CONNECT_TIMEOUT),
            "application_name": "backupsite",
        }
        return " ".join(f"{key}={_quote(value)}" for key, value in parts.items() if value)

    def where(self) -> str:
        host = self.host or "the local socket"
        return f"“{self.database}” on {host}:{self.port}" + (f" as {self.user}" if self.user else "")


def _env(password: str | None) -> dict[str, str]:
    """The client's environment: the worker's, with the password (if any) as PGPASSWORD
    and never an inherited one meant for another server."""
    env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "PGDATABASE", "PGSERVICE")}
    if password:
        env["PGPASSWORD"] = password
    return env


def table_pattern(name: str) -> str:
    """A pg_dump table pattern matching exactly the table *name* (in any schema):
    double-quoted, so case is kept and ``*``, ``?`` and ``.`` are literal; a double quote
    inside is doubled."""
    return '"' + name.replace('"', '""') + '"'


# --- versions: pg_dump dumps servers of its own major version and older --------------
_TOOL_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")
_tool_versions: dict[tuple[str, int, int], Major | None] = {}


@dataclass(frozen=True, order=True)
class Major:
    """A PostgreSQL major version: ``(17, 0)`` for 17.x, ``(9, 6)`` for 9.6.x (before
    version 10 the first two numbers made the major version)."""

    number: int
    minor: int = 0

    def __str__(self) -> str:
        return f"{self.number}.{self.minor}" if self.number < 10 else str(self.number)

    @classmethod
    def from_text(cls, text: str) -> Major | None:
        """From ``pg_dump --version`` (``pg_dump (PostgreSQL) 15.18 (Debian …)``)."""
        match = _TOOL_VERSION.search(text or "")
        if not match:
            return None
        number = int(match[1])
        return cls(number, int(match[2] or 0) if number < 10 else 0)

    @classmethod
    def from_server_version_num(cls, value: int | str) -> Major:
        """From ``SHOW server_version_num`` (``170002`` → 17, ``90624`` → 9.6)."""
        num = int(value)
        return cls(num // 10000) if num >= 100000 else cls(num // 10000, (num // 100) % 100)


def client_version(tool: str) -> Major | None:
    """The major version of a PostgreSQL client program (``--version``, no password in
    its environment), remembered per program file; None when it does not say."""
    try:
        stat = os.stat(tool)
    except OSError:
        return None
    key = (str(tool), stat.st_mtime_ns, stat.st_size)
    if key not in _tool_versions:
        try:
            proc = subprocess.run(
                [tool, "--version"], capture_output=True, text=True, timeout=30, env=_env(None), check=False
            )
            _tool_versions[key] = Major.from_text(proc.stdout) if proc.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            _tool_versions[key] = None
    return _tool_versions[key]


def server_version(conf: PostgresConf, password: str | None) -> Major:
    """The server's major version (``SHOW server_version_num``). psycopg.Error when
    the server cannot be asked."""
    import psycopg

    with psycopg.connect(
        conf.conninfo(), password=password or None, options=f"-c statement_timeout={QUERY_TIMEOUT * 1000}"
    ) as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
    return Major.from_server_version_num(row[0])


def dump_version_problem(tool: str, tool_major: Major | None, server_major: Major, where: str) -> str | None:
    """Why *tool* cannot dump a server of *server_major* (None: it can, or a program
    that does not say its version, which pg_dump itself then judges)."""
    if tool_major is None or tool_major >= server_major:
        return None
    return (
        f"pg_dump {tool_major} ({tool}) cannot dump the PostgreSQL {server_major} server {where}: pg_dump "
        f"only dumps servers of its own major version or older. Install the PostgreSQL {server_major} client "
        f"or newer (Debian/Ubuntu: postgresql-client-{server_major} from apt.postgresql.org) and put its "
        "pg_dump first on PATH."
    )


def check_dump_version(conf: PostgresConf, password: str | None, tool: str) -> None:
    """SourceError when *tool* is older than *conf*'s server. A server that cannot be
    asked is left to pg_dump itself, which then says why it cannot connect."""
    import psycopg

    try:
        server_major = server_version(conf, password)
    except psycopg.Error:
        return
    problem = dump_version_problem(tool, client_version(tool), server_major, conf.where())
    if problem:
        raise SourceError(problem)


def pg_dump(conf: PostgresConf, password: str | None, target: Path, *, what: str = "") -> None:
    """``pg_dump -Fc`` of *conf*'s database into *target*; SourceError on failure
    (before anything runs when this pg_dump is older than the server)."""
    tool = pg_tool("pg_dump")
    try:
        check_dump_version(conf, password, tool)
    except SourceError as exc:
        raise SourceError(f"{what}: {exc}" if what else str(exc)) from None
    args = [tool, "-Fc", "--no-password", f"--file={target}", f"--dbname={conf.conninfo()}"]
    args += [f"--exclude-table-data={table_pattern(name)}" for name in conf.exclude_table_data]
    code, stderr = run_tool(args, env=_env(password))
    if code != 0:
        prefix = f"{what}: " if what else ""
        raise SourceError(f"{prefix}pg_dump of {conf.where()} failed: {last_line(stderr, 'pg_dump', password)}")


def pg_restore(conf: PostgresConf, password: str | None, dump: Path) -> None:
    """``pg_restore --no-owner --clean --if-exists`` of a custom-format dump into *conf*'s
    (existing) database, in one transaction: all of it or nothing."""
    args = [
        pg_tool("pg_restore"),
        "--no-owner",
        "--clean",
        "--if-exists",
        "--single-transaction",
        "--no-password",
        f"--dbname={conf.conninfo()}",
        str(Path(dump).absolute()),
    ]
    code, stderr = run_tool(args, env=_env(password))
    if code != 0:
        raise SourceError(f"pg_restore into {conf.where()} failed: {last_line(stderr, 'pg_restore', password)}")


def _query(conf: PostgresConf, password: str | None, sql: str, what: str) -> tuple:
    """One row of *sql* on *conf*'s database (libpq's connect timeout, a statement
    timeout of QUERY_TIMEOUT); SourceError naming *what* failed, without the password."""
    import psycopg

    try:
        with psycopg.connect(
            conf.conninfo(), password=password or None, options=f"-c statement_timeout={QUERY_TIMEOUT * 1000}"
        ) as conn:
            return conn.execute(sql).fetchone()
    except psycopg.Error as exc:
        raise SourceError(f"{what} {conf.where()}: {last_line(str(exc), 'psycopg', password)}") from None


def database_size(conf: PostgresConf, password: str | None) -> int:
    return int(_query(conf, password, "SELECT pg_database_size(current_database())", "Cannot measure")[0])


def server_info(conf: PostgresConf, password: str | None) -> tuple[str, int]:
    """(the server's version, the database's size in bytes)."""
    row = _query(
        conf,
        password,
        "SELECT current_setting('server_version'), pg_database_size(current_database())",
        "Cannot connect to",
    )
    return f"PostgreSQL {row[0]}", int(row[1])


class PostgresSource(ServerDumpSource):
    kind = "postgresql"
    label = _("PostgreSQL database")
    help_text = _("One PostgreSQL database, dumped with pg_dump (custom format, restored with pg_restore).")
    form_class_path = "jobs.sources.forms.PostgresForm"
    title = "PostgreSQL"
    conf_class = PostgresConf
    temp_prefix = "pgdump"
    dump_suffix = ".pgdump"
    size_of = staticmethod(database_size)
    info_of = staticmethod(server_info)

    def write_dump(self, target: Path, staging: Path) -> None:
        pg_dump(self.conf, self._password, target, what=self.what)

    @classmethod
    def restore_into(cls, dump_path: Path, database_url: str, *, allow_panel_database: bool = False) -> None:
        """Restore a ``.pgdump`` into the existing database the URL names
        (``postgres://user:password@host:port/name``); never over the panel's own live
        database unless *allow_panel_database*."""
        conf, password = cls.restore_target(dump_path, database_url, "postgresql", allow_panel_database)
        pg_restore(conf, password, Path(dump_path))
