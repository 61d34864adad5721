"""The stack the test suite runs on, chosen by ``BACKUPSITE_TEST_STACK``.

``default`` (or unset)
    The embedded default of ``make run``: SQLite (pytest-django's in-memory test
    database), kombu's ``filesystem://`` broker, the database cache.
``postgres``
    The production stack: a PostgreSQL server and a Redis server started for this
    session from the local binaries on free ports (``tests/servers.py``; never a server
    that happens to run on the machine). The suite's database (pytest-django creates
    ``test_backupsite`` in it) is on that PostgreSQL; the Celery broker (database 0) and
    the cache of the rate limiter (database 1) are on that Redis. Installations that tests
    start as real processes (:func:`installation`: ``tests/workers.py``) get a PostgreSQL
    database and a Redis database of their own on the same servers.

``tests/settings.py`` calls :func:`configure` before it imports the real settings. In the
pytest process on the PostgreSQL stack that starts both servers (about 2 s) and puts
``DATABASE_URL``, ``CELERY_BROKER_URL`` and ``CACHE_URL`` into ``os.environ``, with the
servers' details in ``BACKUPSITE_TEST_STACK_SERVERS``: a process started from it that
imports ``tests.settings`` again finds them and starts nothing. The servers stop when the
pytest process exits (and get a parent-death signal should it be killed).

Tests that cannot depend on the stack (the archive engine, naming, pure functions, the
static checks of the Docker files) carry ``@pytest.mark.stack_independent`` and run only
in the default pass: ``tests/conftest.py`` deselects them on the PostgreSQL stack and
refuses the marker on a test that uses the database. The few tests about one stack's
own database (the SQLite file of the default) carry ``@pytest.mark.only_stack("default")``.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT, POSTGRES_STACK = "default", "postgres"
STACKS = (DEFAULT, POSTGRES_STACK)
STACK_VARIABLE = "BACKUPSITE_TEST_STACK"
SERVERS_VARIABLE = "BACKUPSITE_TEST_STACK_SERVERS"
SUITE_DATABASE = "backupsite"  # pytest-django makes test_backupsite next to it
BROKER_DB, CACHE_DB = 0, 1

STACK = os.environ.get(STACK_VARIABLE, "").strip().lower() or DEFAULT

#: The servers of the PostgreSQL stack (``tests.servers.PostgresServer`` / ``RedisServer``),
#: in the process that started them or found them in the environment; None on the default stack.
POSTGRES = None
REDIS = None
#: Seconds the pytest process took to start them.
STARTUP_SECONDS = 0.0


class StackError(RuntimeError):
    """The chosen stack cannot run here (a missing server binary, an unknown name)."""


def is_postgres() -> bool:
    return STACK == POSTGRES_STACK


def configure() -> None:
    """Make ``os.environ`` point the settings at the chosen stack (see the module doc)."""
    global POSTGRES, REDIS
    if STACK not in STACKS:
        raise StackError(f"{STACK_VARIABLE}={STACK!r}: use one of {', '.join(STACKS)}.")
    if STACK == DEFAULT or POSTGRES is not None:
        return
    if os.environ.get(SERVERS_VARIABLE):
        POSTGRES, REDIS = _from_environment(json.loads(os.environ[SERVERS_VARIABLE]))
    else:
        POSTGRES, REDIS = _start()
    os.environ["DATABASE_URL"] = POSTGRES.url(SUITE_DATABASE)
    os.environ["CELERY_BROKER_URL"] = REDIS.url(BROKER_DB)
    os.environ["CACHE_URL"] = REDIS.url(CACHE_DB)


def describe() -> str:
    """One line for pytest's header: which stack, which servers."""
    if not is_postgres():
        return "stack: default (SQLite, filesystem broker, database cache)"
    version = server_version()
    return (
        f"stack: postgres (PostgreSQL {version} on 127.0.0.1:{POSTGRES.port}, Redis on 127.0.0.1:{REDIS.port}, "
        f"started in {STARTUP_SECONDS:.1f} s)"
    )


def server_version() -> str:
    with POSTGRES.connect() as conn:
        return conn.execute("SHOW server_version").fetchone()[0]


# --- starting and finding the servers -------------------------------------------------------


def _start():
    # Imported here: tests.servers needs pytest, and the default stack never gets this far.
    import pytest

    pytest.register_assert_rewrite("tests.servers")  # imported before its test modules name it
    from tests import servers

    global STARTUP_SECONDS
    started = time.monotonic()
    try:
        postgres, postgres_proc = servers._start_postgres()
    except (pytest.skip.Exception, pytest.fail.Exception) as exc:
        raise StackError(f"{STACK_VARIABLE}=postgres needs the PostgreSQL server: {exc}") from None
    try:
        redis, redis_proc = servers._start_redis()
    except BaseException as exc:
        servers._stop(postgres_proc, signal.SIGINT)
        shutil.rmtree(postgres.directory, ignore_errors=True)
        if isinstance(exc, (pytest.skip.Exception, pytest.fail.Exception)):
            raise StackError(f"{STACK_VARIABLE}=postgres needs Redis: {exc}") from None
        raise
    postgres.create_database(SUITE_DATABASE)
    STARTUP_SECONDS = postgres.startup_seconds = redis.startup_seconds = time.monotonic() - started
    owner = os.getpid()

    def stop() -> None:
        if os.getpid() != owner:  # a forked child exiting: not its servers
            return
        servers._stop(redis_proc, signal.SIGTERM)
        servers._stop(postgres_proc, signal.SIGINT)  # fast shutdown
        shutil.rmtree(redis.directory, ignore_errors=True)
        shutil.rmtree(postgres.directory, ignore_errors=True)

    atexit.register(stop)
    os.environ[SERVERS_VARIABLE] = json.dumps(
        {
            "postgres": {
                "bin_dir": str(postgres.bin_dir),
                "directory": str(postgres.directory),
                "port": postgres.port,
                "superuser_password": postgres.superuser_password,
                "user": postgres.user,
                "password": postgres.password,
            },
            "redis": {"port": redis.port, "directory": str(redis.directory)},
        }
    )
    return postgres, redis


def _from_environment(data: dict):
    import pytest

    pytest.register_assert_rewrite("tests.servers")
    from tests import servers

    pg = data["postgres"]
    postgres = servers.PostgresServer(
        bin_dir=Path(pg["bin_dir"]),
        directory=Path(pg["directory"]),
        port=int(pg["port"]),
        superuser_password=pg["superuser_password"],
        user=pg["user"],
        password=pg["password"],
    )
    redis = servers.RedisServer(port=int(data["redis"]["port"]), directory=Path(data["redis"]["directory"]))
    return postgres, redis


# --- installations of real processes -------------------------------------------------------


@dataclass
class Installation:
    """Where an installation's processes keep their rows and queue: the environment
    they need on this stack, and a read-only view of their database for the test."""

    data: Path
    env: dict[str, str] = field(default_factory=dict)
    database: str = ""  # the PostgreSQL database (PostgreSQL stack)

    @property
    def stack(self) -> str:
        return POSTGRES_STACK if self.database else DEFAULT

    def rows(self, sql: str, params: tuple = ()) -> list[dict]:
        """``sql`` with ``%s`` placeholders, run against the installation's database."""
        if self.database:
            from psycopg.rows import dict_row

            with POSTGRES.connect(self.database, superuser=False, row_factory=dict_row) as conn:
                return list(conn.execute(sql, params).fetchall())
        with sqlite3.connect(f"file:{self.data / 'db.sqlite3'}?mode=ro", uri=True, timeout=30) as db:
            db.row_factory = sqlite3.Row
            return [dict(row) for row in db.execute(sql.replace("%s", "?"), params).fetchall()]

    def row(self, table: str, pk: int) -> dict | None:
        found = self.rows(f"SELECT * FROM {table} WHERE id = %s", (pk,))  # noqa: S608 - table names are ours
        return found[0] if found else None


def installation(data: Path) -> Installation:
    """A new installation under *data* (its data dir): on the default stack its own
    SQLite file and filesystem broker there (the settings' defaults); on the PostgreSQL
    stack a new database and two Redis databases (broker, cache) of its own."""
    if not is_postgres():
        return Installation(data=data)
    database = POSTGRES.create_database()
    env = {
        "DATABASE_URL": POSTGRES.url(database),
        "CELERY_BROKER_URL": REDIS.url(REDIS.new_db()),
        "CACHE_URL": REDIS.url(REDIS.new_db()),
    }
    return Installation(data=data, env=env, database=database)
