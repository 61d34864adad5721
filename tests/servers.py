"""Real database servers for the tests, started from the local binaries.

``postgres_server`` and ``mariadb_server`` are session-scoped fixtures: the first test
that needs one starts it (a fresh data directory under /tmp, a free port on 127.0.0.1,
its Unix socket in the same directory, durability switched off for speed) and it stops
at the end of the session. A service already running on the machine is never used.

Both servers refuse to run as root. When the tests run as root, the server processes
(and ``initdb`` / ``mariadb-install-db``) run as the ``postgres`` / ``mysql`` system
users the Debian packages create, with the temporary directory chowned to them; as
any other user they simply run as that user. They also get a parent-death signal, so
a killed pytest does not leave them running.

A missing binary skips the test with the reason, or fails it in CI
(``BACKUPSITE_REQUIRE_BINARIES=1`` or ``CI=true``), like ``tests.conftest.require_binary``.
Use them with ``pytest_plugins = ["tests.servers"]`` in a test module.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.binaries import REQUIRE_BINARIES, require_binary

START_TIMEOUT = 60  # seconds; a 2-core machine starts either server in 1–3 s


def missing(message: str):
    """Skip (locally) or fail (CI) saying what is missing."""
    if REQUIRE_BINARIES:
        pytest.fail(message)
    pytest.skip(message)


def require_postgres_binary(name: str) -> str:
    """A PostgreSQL server program: on PATH, else in Debian's
    ``/usr/lib/postgresql/<version>/bin`` (newest version first), where the server
    programs live (only the client wrappers are on PATH)."""
    found = shutil.which(name)
    if found:
        return found

    def version(path: str) -> int:
        part = Path(path).parent.parent.name
        return int(part) if part.isdigit() else 0

    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=version, reverse=True)
    if candidates:
        return candidates[0]
    missing(f"{name!r} (PostgreSQL server) is not installed (apt-get install postgresql, or run .ci/run as root)")
    raise AssertionError("unreachable")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Looked up once here: the child, forked from a possibly multi-threaded pytest, must not
# dlopen or import anything before exec.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Runs in the child after the user switch: the server gets SIGTERM if pytest dies."""
    _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


@dataclass
class ServiceUser:
    """Who runs a server: the current user, or (as root) a system user."""

    name: str | None = None
    uid: int = field(default_factory=os.geteuid)
    gid: int = field(default_factory=os.getegid)

    @classmethod
    def for_server(cls, system_user: str) -> ServiceUser:
        if os.geteuid() != 0:
            return cls()
        try:
            entry = pwd.getpwnam(system_user)
        except KeyError:
            missing(f"running as root, but there is no {system_user!r} system user to run the server as")
        return cls(system_user, entry.pw_uid, entry.pw_gid)

    def popen_kwargs(self) -> dict:
        kwargs: dict = {"preexec_fn": _die_with_parent}
        if self.name is not None:
            kwargs.update(user=self.uid, group=self.gid, extra_groups=[])
        return kwargs

    def make_dir(self, prefix: str) -> Path:
        """A fresh 0700 directory under the system temp dir owned by this user (not under
        pytest's tmp_path: its parents are not open to other users)."""
        path = Path(tempfile.mkdtemp(prefix=prefix))
        if self.name is not None:
            os.chown(path, self.uid, self.gid)
        return path

    def write(self, path: Path, text: str) -> Path:
        path.write_text(text)
        path.chmod(0o600)
        if self.name is not None:
            os.chown(path, self.uid, self.gid)
        return path


def _run(args: list[str], user: ServiceUser, log: Path, what: str) -> None:
    with open(log, "ab") as out:
        proc = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=log.parent,
            timeout=120,
            **user.popen_kwargs(),
        )
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}):\n{_tail(log)}")


def _spawn(args: list[str], user: ServiceUser, log: Path) -> subprocess.Popen:
    """Start a server as *user* in the folder of *log*, its output appended to *log*."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=log.parent,
            **user.popen_kwargs(),
        )


@contextlib.contextmanager
def _removed_on_failure(proc: subprocess.Popen, directory: Path, sig: int):
    """Stop the server (with *sig*) and remove its folder if the block fails (it did not
    start or could not be set up)."""
    try:
        yield
    except BaseException:
        _stop(proc, sig)
        shutil.rmtree(directory, ignore_errors=True)
        raise


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_until(ready, proc: subprocess.Popen, log: Path, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        if ready():
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start within {START_TIMEOUT} s:\n{_tail(log)}")
        time.sleep(0.05)


def unique_name(prefix: str = "t") -> str:
    return f"{prefix}_{secrets.token_hex(4)}"


# --- PostgreSQL -----------------------------------------------------------------------
@dataclass
class PostgresServer:
    """A running PostgreSQL server: superuser ``postgres`` and an ordinary user
    (``user``, may create databases), both with passwords, on 127.0.0.1:``port``."""

    bin_dir: Path
    directory: Path
    port: int
    superuser_password: str
    user: str
    password: str
    host: str = "127.0.0.1"
    superuser: str = "postgres"
    startup_seconds: float = 0.0

    def tool(self, name: str) -> str:
        """A client program of the same version as the server (pg_restore, psql…)."""
        return str(self.bin_dir / name)

    def connect(self, dbname: str = "postgres", *, superuser: bool = True, **kwargs):
        import psycopg

        user, password = (self.superuser, self.superuser_password) if superuser else (self.user, self.password)
        return psycopg.connect(
            host=self.host, port=self.port, dbname=dbname, user=user, password=password, autocommit=True, **kwargs
        )

    def create_database(self, name: str | None = None, *, owner: str | None = None) -> str:
        from psycopg import sql

        name = name or unique_name()
        with self.connect() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(owner or self.user))
            )
        return name

    def settings(self, database: str) -> dict:
        """Source settings for *database* as the ordinary user."""
        return {"host": self.host, "port": self.port, "database": database, "user": self.user}

    def url(self, database: str, *, superuser: bool = False) -> str:
        user, password = (self.superuser, self.superuser_password) if superuser else (self.user, self.password)
        return f"postgres://{quote(user, safe='')}:{quote(password, safe='')}@{self.host}:{self.port}/{database}"

    def env(self, *, superuser: bool = True) -> dict[str, str]:
        """Environment for stock client tools (the password as PGPASSWORD)."""
        password = self.superuser_password if superuser else self.password
        return {**os.environ, "PGPASSWORD": password}


def _start_postgres():
    initdb = require_postgres_binary("initdb")
    postgres = require_postgres_binary("postgres")
    bin_dir = Path(postgres).resolve().parent  # (a PATH entry may be a symlink to it)
    user = ServiceUser.for_server("postgres")
    directory = user.make_dir("backupsite-pg-")
    log = directory / "server.log"
    user.write(log, "")
    superuser_password = "super-" + secrets.token_hex(8)
    pwfile = user.write(directory / "pwfile", superuser_password + "\n")
    _run(
        [
            initdb,
            f"--pgdata={directory / 'data'}",
            "--username=postgres",
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",  # every connection, socket or TCP, needs a password
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
            "--no-instructions",
        ],
        user,
        log,
        "initdb",
    )
    pwfile.unlink()
    port = free_port()
    proc = _spawn(
        [
            postgres,
            "-D",
            str(directory / "data"),
            "-p",
            str(port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={directory}",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=30",
            "-c",
            "shared_buffers=32MB",
        ],
        user,
        log,
    )
    server = PostgresServer(
        bin_dir=bin_dir,
        directory=directory,
        port=port,
        superuser_password=superuser_password,
        user="bk",
        # Quotes, blanks, a backslash and non-ASCII: the password must survive any quoting.
        password=f"pg pass \"'\\ ü-{secrets.token_hex(6)}",
    )

    def ready() -> bool:
        try:
            server.connect(connect_timeout=2).close()
        except Exception:  # noqa: BLE001 - not accepting connections yet
            return False
        return True

    with _removed_on_failure(proc, directory, signal.SIGINT):
        _wait_until(ready, proc, log, "postgres")
        from psycopg import sql

        with server.connect() as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(
                    sql.Identifier(server.user), sql.Literal(server.password)
                )
            )
    return server, proc


@pytest.fixture(scope="session")
def postgres_server():
    """On the PostgreSQL stack, the server the suite's own database lives on
    (``tests/teststack.py``); otherwise one started for the session."""
    from tests import teststack

    if teststack.POSTGRES is not None:
        yield teststack.POSTGRES
        return
    started = time.monotonic()
    server, proc = _start_postgres()
    server.startup_seconds = time.monotonic() - started
    yield server
    _stop(proc, signal.SIGINT)  # fast shutdown
    shutil.rmtree(server.directory, ignore_errors=True)


# --- MariaDB --------------------------------------------------------------------------
@dataclass
class MariaDBServer:
    """A running MariaDB server: ``root`` (no password) on the Unix socket only, and an
    ordinary user (``user``, all privileges, with a password) on 127.0.0.1:``port``."""

    directory: Path
    port: int
    socket: Path
    client: str
    user: str
    password: str
    host: str = "127.0.0.1"
    startup_seconds: float = 0.0

    def client_args(self, database: str | None = None) -> list[str]:
        """The stock client as root over the socket (``--no-defaults``: never the
        machine's /etc/mysql config)."""
        args = [self.client, "--no-defaults", f"--socket={self.socket}", "--user=root", "--batch"]
        args += ["--skip-column-names", "--default-character-set=utf8mb4"]
        return [*args, database] if database else args

    def sql(self, statements: str, database: str | None = None) -> list[list[str]]:
        """Run SQL as root; rows as lists of strings (tab-separated batch output;
        NULL comes back as the string ``NULL``)."""
        proc = subprocess.run(
            self.client_args(database), input=statements.encode(), capture_output=True, timeout=60, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.decode(errors="replace"))
        return [line.split("\t") for line in proc.stdout.decode().splitlines()]

    def create_database(self, name: str | None = None) -> str:
        name = name or unique_name()
        self.sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        return name

    def settings(self, database: str) -> dict:
        return {"host": self.host, "port": self.port, "database": database, "user": self.user}

    def url(self, database: str) -> str:
        return f"mysql://{quote(self.user, safe='')}:{quote(self.password, safe='')}@{self.host}:{self.port}/{database}"


def _sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _start_mariadb():
    server_binary = shutil.which("mariadbd") or shutil.which("mysqld")
    if server_binary is None:
        for candidate in ("/usr/sbin/mariadbd", "/usr/sbin/mysqld"):
            if os.access(candidate, os.X_OK):
                server_binary = candidate
                break
    if server_binary is None:
        missing("'mariadbd' is not installed (apt-get install mariadb-server, or run .ci/run as root)")
    install_db = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
    if install_db is None:
        missing("'mariadb-install-db' is not installed (apt-get install mariadb-server, or run .ci/run as root)")
    client = shutil.which("mariadb") or require_binary("mysql")
    user = ServiceUser.for_server("mysql")
    directory = user.make_dir("backupsite-mariadb-")
    log = directory / "server.log"
    user.write(log, "")
    datadir = directory / "data"
    tuning = [
        "--skip-name-resolve",
        "--innodb-buffer-pool-size=32M",
        "--innodb-log-file-size=8M",
        "--innodb-doublewrite=0",
        "--innodb-flush-log-at-trx-commit=0",
        "--character-set-server=utf8mb4",
        "--collation-server=utf8mb4_unicode_ci",
    ]
    _run(
        [
            install_db,
            "--no-defaults",  # never the machine's /etc/mysql config
            f"--datadir={datadir}",
            "--auth-root-authentication-method=normal",  # root without a password, on the socket below
            "--skip-test-db",
            *tuning,
        ],
        user,
        log,
        "mariadb-install-db",
    )
    port = free_port()
    sock = directory / "mysqld.sock"
    proc = _spawn(
        [
            server_binary,
            "--no-defaults",
            f"--datadir={datadir}",
            f"--socket={sock}",
            f"--port={port}",
            "--bind-address=127.0.0.1",
            f"--pid-file={directory / 'mysqld.pid'}",
            f"--tmpdir={directory}",
            "--skip-log-bin",
            *tuning,
        ],
        user,
        log,
    )
    server = MariaDBServer(
        directory=directory,
        port=port,
        socket=sock,
        client=client,
        user="bk",
        # Quotes, a '#' (comment sign in option files), blanks, a backslash, non-ASCII.
        password=f"my pass \"#'\\ ü-{secrets.token_hex(6)}",
    )

    def ready() -> bool:
        if not sock.exists():
            return False
        try:
            server.sql("SELECT 1")
        except (RuntimeError, subprocess.TimeoutExpired):
            return False
        return True

    with _removed_on_failure(proc, directory, signal.SIGTERM):
        _wait_until(ready, proc, log, "mariadbd")
        server.sql(f"CREATE USER 'bk'@'%' IDENTIFIED BY {_sql_string(server.password)}")
        server.sql(
            "GRANT ALL PRIVILEGES ON *.* TO 'bk'@'%';"
            # Anonymous accounts would shadow 'bk'@'%' for local connections.
            "DELETE FROM mysql.global_priv WHERE User = '';"
            "FLUSH PRIVILEGES;"
        )
    return server, proc


@pytest.fixture(scope="session")
def mariadb_server():
    started = time.monotonic()
    server, proc = _start_mariadb()
    server.startup_seconds = time.monotonic() - started
    yield server
    _stop(proc, signal.SIGTERM)  # clean shutdown
    shutil.rmtree(server.directory, ignore_errors=True)


# --- Redis ----------------------------------------------------------------------------
REDIS_DATABASES = 64  # numbered databases: one per installation a test starts


@dataclass
class RedisServer:
    """A running ``redis-server`` on 127.0.0.1:``port`` (no persistence, its own
    directory, ``REDIS_DATABASES`` numbered databases). Database 0 and 1 are the test
    suite's own broker and cache on the PostgreSQL stack; :meth:`new_db` hands out the
    others, one per installation."""

    port: int
    directory: Path
    host: str = "127.0.0.1"
    startup_seconds: float = 0.0
    _next_db: list = field(default_factory=lambda: [1])

    def url(self, db: int = 0) -> str:
        return f"redis://{self.host}:{self.port}/{db}"

    def new_db(self) -> int:
        """A database number nobody else in this session uses."""
        self._next_db[0] += 1
        if self._next_db[0] >= REDIS_DATABASES:
            raise RuntimeError(f"more than {REDIS_DATABASES - 2} Redis databases asked for in one session")
        return self._next_db[0]

    def command(self, *args: str) -> bytes:
        """One command in the inline protocol; the raw reply line."""
        with socket.create_connection((self.host, self.port), timeout=5) as sock:
            sock.sendall(" ".join(args).encode() + b"\r\n")
            return sock.recv(4096)

    def ping(self) -> bool:
        try:
            return self.command("PING").startswith(b"+PONG")
        except OSError:
            return False


def _start_redis(*, port: int | None = None, directory: Path | None = None, durable: bool = False):
    """Start ``redis-server``: on a free port in a new directory, or again on *port* in
    *directory* (a restart). *durable*: append-only file, fsynced on every write (as
    production's --appendonly yes, without the last second a crash could lose)."""
    binary = require_binary("redis-server")
    user = ServiceUser()  # redis-server runs as root too
    directory = directory or user.make_dir("backupsite-redis-")
    log = directory / "server.log"
    port = port or free_port()
    persistence = ["--appendonly", "yes", "--appendfsync", "always"] if durable else ["--appendonly", "no"]
    proc = _spawn(
        [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--protected-mode", "yes",
            "--save", "",
            *persistence,
            "--databases", str(REDIS_DATABASES),
            "--dir", str(directory),
        ],
        user,
        log,
    )  # fmt: skip
    server = RedisServer(port=port, directory=directory)
    with _removed_on_failure(proc, directory, signal.SIGTERM):
        _wait_until(server.ping, proc, log, "redis-server")
    return server, proc


@pytest.fixture(scope="session")
def redis_server():
    """``redis-server`` from the local binary on a free port, never a Redis that happens
    to run; on the PostgreSQL stack, the suite's own (``tests/teststack.py``)."""
    from tests import teststack

    if teststack.REDIS is not None:
        yield teststack.REDIS
        return
    started = time.monotonic()
    server, proc = _start_redis()
    server.startup_seconds = time.monotonic() - started
    yield server
    _stop(proc, signal.SIGTERM)
    shutil.rmtree(server.directory, ignore_errors=True)
