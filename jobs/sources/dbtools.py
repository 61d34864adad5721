"""What the database source kinds (``postgresql``, ``mysql``, ``sqlite``, the panel's own)
share: where the panel's own database is (never restore over it), 0600 temporary files
in the staging folder that a crashed worker's successor sweeps, checks for names that end
up on a command line, running client programs, and scrubbing secrets out of their errors.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import ClassVar

from django.conf import settings as django_settings

from backupsite.sensitive import check_table_name
from jobs.engine.archive import FILE, Cancelled, Entry
from jobs.engine.atomic import PARTIAL_SUFFIX
from jobs.sources.base import SourceError, SourceKind, TestResult, cancel_check

# --- shared by the database kinds ----------------------------------------------------
# Seconds before a database client gives up connecting; the dump itself has no limit of
# its own (the Celery time limits bound a run).
CONNECT_TIMEOUT = 10
# Seconds a size query (``measure``, called from a web request too) may take.
QUERY_TIMEOUT = 60
# How much of a tool's stderr is kept to explain a failure.
_STDERR_TAIL = 8192


class RestoreRefused(SourceError):
    """``restore_into`` will not write there (the panel's own database, a non-empty file)."""


def check_name(value, what: str, *, required: bool = True, max_length: int = 255) -> str:
    """Validate a host, database or user name that ends up in a client's arguments or
    connection string: text, no control characters, no leading ``-`` (so nothing can be
    read as an option), no surrounding blanks."""
    if value is None or value == "":
        if required:
            raise ValueError(f"The {what} is required.")
        return ""
    if not isinstance(value, str):
        raise ValueError(f"The {what} must be text.")
    if len(value) > max_length:
        raise ValueError(f"The {what} is too long (at most {max_length} characters).")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"The {what} must not contain control characters.")
    if value.startswith("-"):
        raise ValueError(f"The {what} must not start with “-”.")
    if value != value.strip():
        raise ValueError(f"The {what} must not start or end with a space.")
    return value


def check_table_names(value) -> tuple[str, ...]:
    """A list of table names (``exclude_table_data``), each checked by
    ``backupsite.sensitive.check_table_name``."""
    if value in (None, ""):
        return ()
    if not isinstance(value, list | tuple):
        raise ValueError("The tables whose data is left out must be a list of names.")
    return tuple(check_table_name(name) for name in value)


def check_port(value, default: int) -> int:
    if value in (None, ""):
        return default
    if isinstance(value, bool):
        raise ValueError("The port must be a number between 1 and 65535.")
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ValueError("The port must be a number between 1 and 65535.") from None
    if not 1 <= port <= 65535 or str(value).strip() != str(port):
        raise ValueError("The port must be a number between 1 and 65535.")
    return port


def scrub(text: str, *secrets: str | None) -> str:
    """*text* with every secret replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def last_line(stderr: str, tool: str, *secrets: str | None) -> str:
    """The last error line of a tool's output (PostgreSQL tools follow their
    ``tool: error:`` line with ``detail:``/``hint:`` lines; else the last line), without
    the tool's own prefix, secrets scrubbed, shortened for a message."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"{tool}: error:")]
    line = (errors or lines or ["unknown error (no message)"])[-1]
    for prefix in (f"{tool}: error:", f"{tool}:", "error:"):
        if line.startswith(prefix):
            line = line[len(prefix) :].strip()
    line = scrub(line, *secrets)
    return line if len(line) <= 300 else line[:299] + "…"


def staging_dir(staging: Path) -> Path:
    staging = Path(staging)
    staging.mkdir(parents=True, exist_ok=True)
    return staging


@contextlib.contextmanager
def temp_file(directory: Path | None, prefix: str) -> Iterator[Path]:
    """A new, empty, 0600 file in *directory* (the system's temporary folder if None),
    removed with its SQLite companions when the block exits, whatever happens.

    The name is hidden and ends in ``.partial``, like every other temporary file in the
    staging folder, so the next run sweeps it if a worker is killed in the middle.
    """
    fd, name = tempfile.mkstemp(prefix=f".{prefix}-", suffix=PARTIAL_SUFFIX, dir=directory)
    os.close(fd)
    path = Path(name)
    try:
        yield path
    finally:
        for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
            leftover.unlink(missing_ok=True)


def run_tool(
    args: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    stdin=subprocess.DEVNULL,
    stdout=subprocess.DEVNULL,
    timeout: float | None = None,
) -> tuple[int, str]:
    """Run a client program (never through a shell) and return (exit code, the tail of
    its stderr). The program is killed if anything interrupts the wait (a Celery time
    limit, a KeyboardInterrupt, a timeout); stderr goes to a temporary file so a chatty
    tool cannot grow memory."""
    should_stop = cancel_check.get()
    deadline = None if timeout is None else time.monotonic() + timeout
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(list(args), stdin=stdin, stdout=stdout, stderr=err, env=env, close_fds=True)
        try:
            while True:
                step = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
                try:
                    code = proc.wait(timeout=step)
                    break
                except subprocess.TimeoutExpired:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise
                    if should_stop is not None and should_stop():
                        raise Cancelled() from None
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        size = err.seek(0, os.SEEK_END)
        err.seek(max(0, size - _STDERR_TAIL))
        return code, err.read().decode("utf-8", "replace")


def panel_database_config() -> dict:
    """The Django settings of the panel's own (live) database."""
    return django_settings.DATABASES["default"]


def engine_family(engine: str) -> str:
    """``django.db.backends.postgresql`` → ``postgresql`` (also for PostGIS & co.)."""
    name = engine.rsplit(".", 1)[-1]
    for family in ("postgresql", "postgis", "mysql", "sqlite3", "spatialite"):
        if name.startswith(family):
            return {"postgis": "postgresql", "spatialite": "sqlite3"}.get(family, family)
    return name


_LOCAL_HOSTS = {"", "localhost", "localhost.localdomain"}
_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}


def _host_key(host) -> str:
    host = str(host or "").strip().lower().strip("[]")
    if host in _LOCAL_HOSTS or host.startswith("/"):
        return "local"  # the default and Unix sockets: this machine
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host.split("%")[0]).is_loopback:
            return "local"
    return host


def _addresses(key: str) -> set[str]:
    """The addresses a host name resolves to (loopback ones as "local")."""
    if key == "local":
        return {"local"}
    try:
        infos = socket.getaddrinfo(key, None)
    except (OSError, UnicodeError):
        return {key}
    return {_host_key(info[4][0]) for info in infos} or {key}


def _same_host(a, b) -> bool:
    ka, kb = _host_key(a), _host_key(b)
    return ka == kb or bool(_addresses(ka) & _addresses(kb))


def is_panel_database(target: dict) -> bool:
    """Whether a Django-style database config (``ENGINE``, ``NAME``, ``HOST``, ``PORT``)
    names the panel's own live database. Errs on the side of "yes": every spelling of
    this machine (localhost, 127.0.0.1, its host name, a socket folder) is the same
    host, and host names are compared by the addresses they resolve to."""
    panel = panel_database_config()
    family = engine_family(panel.get("ENGINE", ""))
    if engine_family(target.get("ENGINE", "")) != family:
        return False
    if family == "sqlite3":
        a, b = str(panel.get("NAME") or ""), str(target.get("NAME") or "")
        if not a or not b or a.startswith("file:") or a == ":memory:":
            return a == b
        try:
            if os.path.exists(a) and os.path.exists(b):
                return os.path.samefile(a, b)
        except OSError:
            pass
        return os.path.realpath(a) == os.path.realpath(b)
    default_port = _DEFAULT_PORTS.get(family, 1)
    return (
        str(panel.get("NAME") or "") == str(target.get("NAME") or "")
        and check_port(panel.get("PORT"), default_port) == check_port(target.get("PORT"), default_port)
        and _same_host(panel.get("HOST"), target.get("HOST"))
    )


def parse_database_url(url: str, family: str) -> dict:
    """A database URL (``postgres://…``, ``mysql://…``, ``sqlite:////abs/path``) as a
    Django-style config, checked to be of *family*; ``ValueError`` otherwise."""
    import environ

    if not isinstance(url, str) or "://" not in url:
        raise ValueError("Give the target database as a URL, e.g. postgres://user:password@host:5432/name.")
    try:
        config = environ.Env.db_url_config(url)
    except Exception as exc:  # noqa: BLE001 - django-environ raises several kinds
        raise ValueError(f"Not a database URL ({type(exc).__name__}).") from None
    if engine_family(config.get("ENGINE", "")) != family:
        raise ValueError(f"This restores into a {family} database; the URL names another kind of database.")
    if not config.get("NAME"):
        raise ValueError("The URL does not name a database.")
    return config


def refuse_panel_database(config: dict, allow_panel_database: bool = False) -> None:
    if not allow_panel_database and is_panel_database(config):
        raise RestoreRefused(
            "Refusing to restore over the panel's own live database; restore into a new database, "
            "then point DATABASE_URL at it."
        )


# --- the panel's own database --------------------------------------------------------


class DumpSource(SourceKind):
    """A database archived as one dump file, ``<source slug>/<dump_name()>``, written to a
    0600 temporary file in the staging folder (tar needs the size up front) that is
    always removed. Subclasses say how to measure and how to write the dump."""

    conf_class: ClassVar[type | None]  # a frozen dataclass with parse(dict) and where()
    title: ClassVar[str]  # "PostgreSQL", for messages
    temp_prefix: ClassVar[str]
    testable = True

    @property
    def conf(self):
        return self.conf_class.parse(self.settings)

    @property
    def _password(self) -> str:
        return str(self._secrets.get("password") or "")

    @property
    def what(self) -> str:
        return f"{self.title} source “{self.name}”"

    def describe(self) -> str:
        return f"{self.label} {self.conf.where()}"

    def dump_name(self) -> str:
        raise NotImplementedError

    def size(self) -> int:
        raise NotImplementedError

    def write_dump(self, target: Path, staging: Path) -> None:
        raise NotImplementedError

    def server_info(self) -> tuple[str, int]:
        """(the server's version, the database's size): one connection."""
        raise NotImplementedError

    def _named(self, exc: SourceError) -> SourceError:
        message = str(exc)
        return SourceError(message if message.startswith(self.what) else f"{self.what}: {message}")

    def measure(self) -> tuple[int, int]:
        try:
            return self.size(), 1
        except SourceError as exc:
            raise self._named(exc) from None

    def test(self) -> TestResult:
        """Connect with these settings and report the server's version and the size of
        the database (SourceError, without the password, when it cannot)."""
        try:
            version, size = self.server_info()
        except SourceError as exc:
            raise self._named(exc) from None
        return TestResult(True, f"Connected to {self.conf.where()}.", version, size)

    @classmethod
    def restore_target(cls, dump_path: Path, database_url: str, family: str, allow_panel_database: bool):
        """(conf, password) of the database a restore goes into, after refusing the
        panel's own live database and a missing dump file."""
        config = parse_database_url(database_url, family)
        refuse_panel_database(config, allow_panel_database)
        conf = cls.conf_class.parse(
            {"host": config["HOST"], "port": config["PORT"], "database": config["NAME"], "user": config["USER"]}
        )
        if not Path(dump_path).is_file():
            raise SourceError(f"No dump file at {dump_path}.")
        return conf, config.get("PASSWORD") or ""

    @contextlib.contextmanager
    def dump(self, staging: Path, arcname: str):
        staging = staging_dir(staging)
        with temp_file(staging, f"{self.temp_prefix}-{self.slug}") as tmp:
            self.write_dump(tmp, staging)
            yield iter([Entry(arcname, FILE, str(tmp))])

    @contextlib.contextmanager
    def entries(self, staging, on_error):
        with self.dump(staging, f"{self.slug}/{self.dump_name()}") as items:
            yield items


class ServerDumpSource(DumpSource):
    """A database on a server (PostgreSQL, MySQL/MariaDB): its password is the secret,
    the dump is named after the database, and the kind's module measures it and asks
    the server for its version (functions of the conf and the password)."""

    secret_fields = ("password",)
    dump_suffix: ClassVar[str]  # ".pgdump"
    size_of: ClassVar[Callable[..., int]]  # staticmethod(database_size)
    info_of: ClassVar[Callable[..., tuple[str, int]]]  # staticmethod(server_info)

    def dump_name(self) -> str:
        return f"{self.conf.database}{self.dump_suffix}"

    def size(self) -> int:
        return self.size_of(self.conf, self._password)

    def server_info(self) -> tuple[str, int]:
        return self.info_of(self.conf, self._password)
