"""Database sources (PostgreSQL, MySQL/MariaDB, SQLite, the panel's own database) against
real servers started from the local binaries (``tests/servers.py``).

Every round trip goes through the real run service into a local destination and back out
with stock tools only: ``zstd -dc | tar -x``, then ``pg_restore`` / ``mysql < dump`` into a
new database, or the SQLite file opened directly, and the tables are compared.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from django.core import mail

from destinations.models import Destination
from jobs import services
from jobs.engine import Cancelled
from jobs.models import Job, Run, Source
from jobs.sources import REGISTRY, SourceError, dbtools
from jobs.sources.dbtools import RestoreRefused
from jobs.sources.mysql import DUMP_OPTIONS, MysqlConf, MysqlSource, mysql_tool
from jobs.sources.panel import PanelDatabaseSource
from jobs.sources.postgres import PostgresConf, PostgresSource
from jobs.sources.sqlite import SqliteConf, SqliteSource
from tests.conftest import require_binary, restore_with_stock_tools

pytest_plugins = ["tests.servers"]
pytestmark = pytest.mark.django_db


# --- helpers --------------------------------------------------------------------------
def make_job(folders, name: str, kind: str, settings: dict, secrets: dict | None = None) -> Job:
    if kind == "panel_database":  # made by the migration: one only
        source = Source.panel_database()
    else:
        source = Source.objects.create(name=name, kind=kind, settings=settings, secrets=secrets or {})
    destination = Destination.objects.create(
        name=f"Local disk for {name}", kind="local", settings={"path": str(folders["backups"])}
    )
    job = Job.objects.create(name=f"{name} backup", report_to="ops@example.com")
    job.sources.set([source])
    job.destinations.set([destination])
    return job


def run_job(job: Job) -> Run:
    return services.execute_run(services.create_run(job).pk)


def extract(run: Run, target: Path) -> Path:
    require_binary("zstd")
    restore_with_stock_tools(run.local_file, target)
    return target


def leftovers(job: Job) -> list[str]:
    """Temporary files (dumps, option files) left in the job's staging folder."""
    staging = services.archive_dir_for(job.slug)
    return sorted(p.name for p in staging.iterdir() if p.name.startswith(".")) if staging.is_dir() else []


def everything_said(run: Run) -> str:
    """What a user can read about a run: error, log, the e-mails."""
    mails = "\n".join(f"{m.subject}\n{m.body}" for m in mail.outbox)
    return f"{run.error}\n{run.log}\n{mails}"


@pytest.fixture
def spawned(monkeypatch):
    """Every process started, as the kernel saw it (/proc/<pid>/cmdline), with its
    environment and, for MySQL clients, the option file as it was at exec time."""
    calls: list[dict] = []
    real = subprocess.Popen

    class Recording(real):
        def __init__(self, args, *a, **kw):
            record = {"args": [str(x) for x in args], "env": dict(kw.get("env") or {})}
            for arg in record["args"]:
                if arg.startswith("--defaults-extra-file="):
                    path = Path(arg.split("=", 1)[1])
                    record["option_file"] = (path, stat.S_IMODE(path.stat().st_mode), path.read_text())
            super().__init__(args, *a, **kw)
            try:
                record["cmdline"] = Path(f"/proc/{self.pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                record["cmdline"] = ""
            calls.append(record)

    monkeypatch.setattr(subprocess, "Popen", Recording)
    return calls


def assert_never_on_a_command_line(calls: list[dict], secret: str) -> None:
    assert calls, "no process was started"
    for call in calls:
        assert secret not in " ".join(call["args"]), call["args"]
        assert secret not in call["cmdline"]


# --- PostgreSQL -----------------------------------------------------------------------
PG_PHOTO = bytes(range(256)) * 800 + b"\x00\xff"


def pg_fill(server, database: str) -> None:
    with server.connect(database, superuser=False) as conn:
        conn.execute(
            "CREATE TABLE people (id serial PRIMARY KEY, name text NOT NULL, note text, photo bytea, "
            "born date, score numeric(10, 2))"
        )
        conn.execute("CREATE INDEX people_name ON people (name)")
        conn.execute("CREATE VIEW born_people AS SELECT name, born FROM people WHERE born IS NOT NULL")
        rows = [
            ("Zoë Ünïcødé ✓ 日本語 🎉", None, PG_PHOTO, "1990-02-03", "12.50"),
            ("O'Brien; DROP TABLE people; --", "two\nlines\ttab", None, None, None),
            ("", "", b"", "2000-01-01", "0"),
        ]
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO people (name, note, photo, born, score) VALUES (%s, %s, %s, %s, %s)", rows)


def pg_contents(server, database: str) -> dict:
    with server.connect(database) as conn:
        return {
            "tables": conn.execute(
                "SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1"
            ).fetchall(),
            "people": conn.execute("SELECT * FROM people ORDER BY id").fetchall(),
            "view": conn.execute("SELECT * FROM born_people ORDER BY name").fetchall(),
            "sequence": conn.execute("SELECT last_value FROM people_id_seq").fetchone(),
            "indexes": conn.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"
            ).fetchall(),
        }


def pg_restore_stock(server, dump: Path, database: str) -> None:
    """What the README tells a user to type."""
    proc = subprocess.run(
        [
            server.tool("pg_restore"),
            "--no-owner",
            "--host",
            server.host,
            "--port",
            str(server.port),
            "--username",
            server.superuser,
            "--dbname",
            database,
            str(dump),
        ],
        env=server.env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def pg_database(postgres_server):
    database = postgres_server.create_database()
    pg_fill(postgres_server, database)
    return database


def test_postgresql_round_trip_through_a_run_restores_with_pg_restore(
    postgres_server, pg_database, folders, tmp_path, spawned
):
    job = make_job(
        folders,
        "Shop database",
        "postgresql",
        postgres_server.settings(pg_database),
        {"password": postgres_server.password},
    )
    run = run_job(job)
    run_calls = list(spawned)
    assert run.state == Run.State.SUCCEEDED, run.error
    assert run.file_count == 1
    assert leftovers(job) == []

    target = extract(run, tmp_path / "restore")
    dump = target / "shop-database" / f"{pg_database}.pgdump"
    assert sorted(p.name for p in (target / "shop-database").iterdir()) == [dump.name]
    assert dump.read_bytes()[:5] == b"PGDMP"  # the custom format

    restored = postgres_server.create_database(owner=postgres_server.superuser)
    pg_restore_stock(postgres_server, dump, restored)
    original = pg_contents(postgres_server, pg_database)
    assert pg_contents(postgres_server, restored) == original
    assert original["people"][0][1] == "Zoë Ünïcødé ✓ 日本語 🎉" and original["people"][0][2] is None
    assert bytes(original["people"][0][3]) == PG_PHOTO

    # The password went through the environment only, pg_dump never prompted.
    dumps = [c for c in run_calls if Path(c["args"][0]).name == "pg_dump"]
    assert len(dumps) == 1
    assert "-Fc" in dumps[0]["args"] and "--no-password" in dumps[0]["args"]
    assert dumps[0]["env"]["PGPASSWORD"] == postgres_server.password
    assert_never_on_a_command_line(spawned, postgres_server.password)


def test_postgresql_wrong_password_fails_readably_without_the_password(
    postgres_server, pg_database, folders, tmp_path, spawned
):
    wrong = "wrong-Secret-4f1c9e"
    settings = postgres_server.settings(pg_database)
    job = make_job(folders, "Shop database", "postgresql", settings, {"password": wrong})
    run = run_job(job)
    assert run.state == Run.State.FAILED
    assert "Shop database" in run.error and "password authentication failed" in run.error
    assert wrong not in everything_said(run)
    assert len(mail.outbox) == 1

    # The same through pg_dump itself (measure is skipped): a readable SourceError, the
    # password nowhere, nothing left in the staging folder.
    staging = tmp_path / "staging"
    source = PostgresSource("Shop database", "shop-database", settings, {"password": wrong})
    with pytest.raises(SourceError) as failure, source.entries(staging, None):
        pass
    message = str(failure.value)
    assert "Shop database" in message and "pg_dump" in message and "password authentication failed" in message
    assert wrong not in message
    assert list(staging.iterdir()) == []
    assert_never_on_a_command_line(spawned, wrong)


def test_postgresql_dump_failing_midway_leaves_no_temporary_file(postgres_server, pg_database, folders):
    # A table the backup user may not read: pg_dump fails after it started writing.
    with postgres_server.connect(pg_database) as conn:
        conn.execute("CREATE TABLE payroll (salary int)")
    job = make_job(
        folders,
        "Shop database",
        "postgresql",
        postgres_server.settings(pg_database),
        {"password": postgres_server.password},
    )
    run = run_job(job)
    assert run.state == Run.State.FAILED
    assert "Shop database" in run.error and "permission denied" in run.error and "payroll" in run.error
    assert leftovers(job) == []
    assert not list(services.archive_dir_for(job.slug).glob("*.tar.zst*"))


def test_postgresql_restore_into_a_new_database(postgres_server, pg_database, tmp_path):
    source = PostgresSource(
        "Shop database", "shop", postgres_server.settings(pg_database), {"password": postgres_server.password}
    )
    target = postgres_server.create_database()
    dump = tmp_path / "shop.pgdump"
    with source.entries(tmp_path / "staging", None) as entries:
        (entry,) = list(entries)
        dump.write_bytes(Path(entry.path).read_bytes())
    assert list((tmp_path / "staging").iterdir()) == []

    PostgresSource.restore_into(dump, postgres_server.url(target))
    # --clean --if-exists: restoring again over the restored copy works too.
    PostgresSource.restore_into(dump, postgres_server.url(target))
    assert pg_contents(postgres_server, target) == pg_contents(postgres_server, pg_database)

    with pytest.raises(ValueError, match="another kind"):
        PostgresSource.restore_into(dump, "mysql://u:p@127.0.0.1/x")
    wrong = f"postgres://bk:Not-It-77@{postgres_server.host}:{postgres_server.port}/{target}"
    with pytest.raises(SourceError, match="password authentication failed") as failure:
        PostgresSource.restore_into(dump, wrong)
    assert "Not-It-77" not in str(failure.value)


def test_restore_into_refuses_the_panels_own_postgresql_database(postgres_server, pg_database, monkeypatch, tmp_path):
    live = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": pg_database,
        "PORT": str(postgres_server.port),
        "USER": postgres_server.user,
        "PASSWORD": postgres_server.password,
    }
    dump = tmp_path / "x.pgdump"
    dump.write_bytes(b"PGDMP")
    # The URL says 127.0.0.1; the panel may name the same server in other ways.
    for host in ("localhost", "", "/var/run/postgresql", "::1", "127.0.0.1"):
        monkeypatch.setattr(dbtools, "panel_database_config", lambda host=host: {**live, "HOST": host})
        for restore in (PostgresSource.restore_into, PanelDatabaseSource.restore_into):
            with pytest.raises(RestoreRefused, match="panel's own"):
                restore(dump, postgres_server.url(pg_database))
    # Another database on the same server is fine to name (here: fails on the bad dump).
    with pytest.raises(SourceError) as failure:
        PostgresSource.restore_into(dump, postgres_server.url(postgres_server.create_database()))
    assert not isinstance(failure.value, RestoreRefused)
    assert len(pg_contents(postgres_server, pg_database)["people"]) == 3


def test_postgresql_measure_and_describe(postgres_server, pg_database):
    source = PostgresSource(
        "Shop database", "shop", postgres_server.settings(pg_database), {"password": postgres_server.password}
    )
    with postgres_server.connect(pg_database) as conn:
        expected = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    size, files = source.measure()
    assert files == 1 and abs(size - expected) < expected // 10  # autovacuum may add a page meanwhile
    description = source.describe()
    assert pg_database in description and "127.0.0.1" in description
    assert postgres_server.password not in description

    wrong = PostgresSource("Shop database", "shop", postgres_server.settings(pg_database), {"password": "Nope-123"})
    with pytest.raises(SourceError) as failure:
        wrong.measure()
    assert "Shop database" in str(failure.value) and "Nope-123" not in str(failure.value)


def test_panel_database_on_postgresql(postgres_server, pg_database, folders, monkeypatch, tmp_path):
    monkeypatch.setattr(
        dbtools,
        "panel_database_config",
        lambda: {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": pg_database,
            "HOST": postgres_server.host,
            "PORT": postgres_server.port,
            "USER": postgres_server.user,
            "PASSWORD": postgres_server.password,
            "OPTIONS": {},
        },
    )
    job = make_job(folders, "Panel database", "panel_database", {})
    source = job.sources.get().handler()
    assert "PostgreSQL" in source.describe()
    assert source.measure()[0] > 0
    run = run_job(job)
    assert run.state == Run.State.SUCCEEDED, run.error
    assert leftovers(job) == []
    target = extract(run, tmp_path / "restore")
    restored = postgres_server.create_database(owner=postgres_server.superuser)
    pg_restore_stock(postgres_server, target / "panel-database" / "backupsite.pgdump", restored)
    assert pg_contents(postgres_server, restored) == pg_contents(postgres_server, pg_database)

    # And its own restore helper, into a new database.
    again = postgres_server.create_database()
    PanelDatabaseSource.restore_into(target / "panel-database" / "backupsite.pgdump", postgres_server.url(again))
    assert pg_contents(postgres_server, again) == pg_contents(postgres_server, pg_database)


# --- MySQL / MariaDB ------------------------------------------------------------------
MY_SCHEMA = """
CREATE TABLE people (
  id INT AUTO_INCREMENT PRIMARY KEY,
  name VARCHAR(200) NOT NULL,
  note TEXT NULL,
  photo LONGBLOB NULL,
  born DATE NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, person_id INT, what VARCHAR(20)) ENGINE=InnoDB;
CREATE TRIGGER people_audit AFTER INSERT ON people
  FOR EACH ROW INSERT INTO audit (person_id, what) VALUES (NEW.id, 'insert');
DELIMITER ;;
CREATE PROCEDURE add_person(IN who VARCHAR(200))
BEGIN
  INSERT INTO people (name) VALUES (who);
END ;;
DELIMITER ;
CREATE FUNCTION shout(s VARCHAR(200)) RETURNS VARCHAR(200) DETERMINISTIC RETURN UPPER(s);
CREATE EVENT tidy_audit ON SCHEDULE EVERY 1 DAY DO DELETE FROM audit WHERE id < 0;
INSERT INTO people (name, note, photo, born) VALUES
  ('Zoë Ünïcødé ✓ 日本語 🎉', NULL, UNHEX(REPEAT('00FF10EE', 5000)), '1990-02-03'),
  ('O''Brien; DROP TABLE people; --', 'two\\nlines', NULL, NULL),
  ('', '', UNHEX(''), '2000-01-01');
CALL add_person('added by a procedure');
"""


def my_contents(server, database: str) -> dict:
    return {
        "people": server.sql(
            "SELECT id, name, note, note IS NULL, HEX(photo), photo IS NULL, born FROM people ORDER BY id", database
        ),
        "audit": server.sql("SELECT id, person_id, what FROM audit ORDER BY id", database),
        "routines": server.sql(
            "SELECT ROUTINE_NAME, ROUTINE_TYPE, ROUTINE_DEFINITION FROM information_schema.ROUTINES "
            "WHERE ROUTINE_SCHEMA = DATABASE() ORDER BY 1",
            database,
        ),
        "triggers": server.sql(
            "SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE, ACTION_STATEMENT FROM information_schema.TRIGGERS "
            "WHERE TRIGGER_SCHEMA = DATABASE() ORDER BY 1",
            database,
        ),
        "events": server.sql(
            "SELECT EVENT_NAME, EVENT_DEFINITION FROM information_schema.EVENTS WHERE EVENT_SCHEMA = DATABASE()",
            database,
        ),
    }


@pytest.fixture
def my_database(mariadb_server):
    database = mariadb_server.create_database()
    mariadb_server.sql(MY_SCHEMA, database)
    return database


def test_mysqldump_accepts_every_option():
    require_binary("mysqldump")
    tool = mysql_tool("mariadb-dump", "mysqldump")
    help_text = subprocess.run([tool, "--no-defaults", "--help"], capture_output=True, text=True).stdout
    for option in DUMP_OPTIONS:
        assert option.split("=")[0] in help_text, option


def test_mysql_round_trip_through_a_run_restores_with_the_mysql_client(
    mariadb_server, my_database, folders, tmp_path, spawned
):
    job = make_job(
        folders, "Web shop", "mysql", mariadb_server.settings(my_database), {"password": mariadb_server.password}
    )
    run = run_job(job)
    run_calls = list(spawned)
    assert run.state == Run.State.SUCCEEDED, run.error
    assert leftovers(job) == []

    target = extract(run, tmp_path / "restore")
    dump = target / "web-shop" / f"{my_database}.sql"
    assert sorted(p.name for p in (target / "web-shop").iterdir()) == [dump.name]

    restored = mariadb_server.create_database()
    with open(dump, "rb") as fh:  # mysql NEWDB < dump.sql, as a user would type it
        proc = subprocess.run(mariadb_server.client_args(restored), stdin=fh, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    original = my_contents(mariadb_server, my_database)
    assert my_contents(mariadb_server, restored) == original
    assert original["people"][0][1] == "Zoë Ünïcødé ✓ 日本語 🎉" and original["people"][0][3] == "1"
    assert original["people"][0][4] == "00FF10EE" * 5000
    assert [r[0] for r in original["routines"]] == ["add_person", "shout"]
    assert [r[0] for r in original["triggers"]] == ["people_audit"] and original["events"]
    # The routines and the trigger of the restored copy work.
    assert len(original["audit"]) == 4  # three INSERTs and one CALL, each seen by the trigger
    mariadb_server.sql("CALL add_person('after restore')", restored)
    assert mariadb_server.sql("SELECT shout('ok'), COUNT(*) FROM audit", restored) == [["OK", "5"]]

    # The password only ever sat in a 0600 option file, given as the first argument.
    clients = [c for c in run_calls if Path(c["args"][0]).name in ("mariadb-dump", "mysqldump", "mariadb", "mysql")]
    assert len(clients) == 2 == len(run_calls)  # measure (mariadb) and the dump (mariadb-dump)
    for call in clients:
        assert call["args"][1].startswith("--defaults-extra-file=")
        path, mode, text = call["option_file"]
        assert mode == 0o600 and "password=" in text
        assert not path.exists()  # removed afterwards
        assert "MYSQL_PWD" not in call["env"]
    dump_call = next(c for c in clients if "dump" in Path(c["args"][0]).name)
    assert set(DUMP_OPTIONS) <= set(dump_call["args"])
    assert_never_on_a_command_line(spawned, mariadb_server.password)


def test_mysql_wrong_password_fails_readably_and_leaves_nothing(
    mariadb_server, my_database, folders, tmp_path, spawned
):
    wrong = "wrong-Secret-77ab"
    settings = mariadb_server.settings(my_database)
    job = make_job(folders, "Web shop", "mysql", settings, {"password": wrong})
    run = run_job(job)
    assert run.state == Run.State.FAILED
    assert "Web shop" in run.error and "Access denied" in run.error
    assert wrong not in everything_said(run)

    staging = tmp_path / "staging"
    source = MysqlSource("Web shop", "web-shop", settings, {"password": wrong})
    with pytest.raises(SourceError) as failure, source.entries(staging, None):
        pass
    assert "Web shop" in str(failure.value) and "Access denied" in str(failure.value)
    assert wrong not in str(failure.value)
    assert list(staging.iterdir()) == []  # neither the dump nor the option file
    assert_never_on_a_command_line(spawned, wrong)
    assert all(not c["option_file"][0].exists() for c in spawned if "option_file" in c)


def test_mysql_restore_into_and_measure(mariadb_server, my_database, tmp_path):
    source = MysqlSource(
        "Web shop", "web-shop", mariadb_server.settings(my_database), {"password": mariadb_server.password}
    )
    mariadb_server.sql("ANALYZE TABLE people, audit", my_database)  # settle InnoDB's statistics
    expected = mariadb_server.sql(
        "SELECT SUM(data_length + index_length) FROM information_schema.tables WHERE table_schema = DATABASE()",
        my_database,
    )
    assert source.measure() == (int(expected[0][0]), 1) and source.measure()[0] > 0
    assert mariadb_server.password not in source.describe() and my_database in source.describe()

    target = mariadb_server.create_database()
    with source.entries(tmp_path / "staging", None) as entries:
        (entry,) = list(entries)
        MysqlSource.restore_into(Path(entry.path), mariadb_server.url(target))
    assert my_contents(mariadb_server, target) == my_contents(mariadb_server, my_database)

    with pytest.raises(ValueError, match="another kind"):
        MysqlSource.restore_into(Path(entry.path), "postgres://u:p@127.0.0.1/x")


# --- SQLite ---------------------------------------------------------------------------
def sqlite_fill(path: Path, journal_mode: str = "wal"):
    import sqlite3

    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA journal_mode={journal_mode}")
    conn.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL, note TEXT, photo BLOB)")
    conn.executemany(
        "INSERT INTO people (name, note, photo) VALUES (?, ?, ?)",
        [("Zoë Ünïcødé ✓ 日本語 🎉", None, bytes(range(256)) * 100), ("O'Brien", "two\nlines", None)],
    )
    conn.commit()
    return conn


def sqlite_rows(path: Path) -> list:
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return conn.execute("SELECT * FROM people ORDER BY id").fetchall()
    finally:
        conn.close()


def test_sqlite_round_trip_includes_what_is_still_in_the_wal(folders, tmp_path):
    database = tmp_path / "app data" / "shop.sqlite3"
    database.parent.mkdir()
    writer = sqlite_fill(database)
    writer.execute("PRAGMA wal_autocheckpoint=0")  # keep the newest rows in the -wal only
    writer.execute("INSERT INTO people (name) VALUES ('only in the wal')")
    writer.commit()
    assert Path(f"{database}-wal").stat().st_size > 0
    expected = sqlite_rows(database)
    try:
        job = make_job(folders, "Shop file", "sqlite", {"path": str(database)})
        source = job.sources.get().handler()
        assert source.measure() == (database.stat().st_size + Path(f"{database}-wal").stat().st_size, 1)
        assert source.describe() == f"SQLite database {database}"
        run = run_job(job)
    finally:
        writer.close()
    assert run.state == Run.State.SUCCEEDED, run.error
    assert leftovers(job) == []
    target = extract(run, tmp_path / "restore")
    assert sorted(p.name for p in (target / "shop-file").iterdir()) == ["shop.sqlite3"]
    restored = sqlite_rows(target / "shop-file" / "shop.sqlite3")
    assert restored == expected and restored[-1][1] == "only in the wal" and restored[0][2] is None


WRITER = textwrap.dedent(
    """
    import os, random, sqlite3, sys
    db, stop, started = sys.argv[1:4]
    conn = sqlite3.connect(db, timeout=60, isolation_level=None)
    n = 0
    while not os.path.exists(stop):
        a, b = random.sample(range(1, 101), 2)
        amount = random.randint(1, 10)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE accounts SET balance = balance - ? WHERE id = ?", (amount, a))
        conn.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", (amount, b))
        conn.execute("INSERT INTO ledger (src, dst, amount, pad) VALUES (?, ?, ?, randomblob(1500))", (a, b, amount))
        conn.execute("COMMIT")
        n += 1
        if n == 20:
            open(started, "w").close()
    print(n)
    """
)


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_sqlite_backup_while_another_process_keeps_writing(folders, tmp_path, journal_mode):
    import sqlite3

    database = tmp_path / "busy.sqlite3"
    conn = sqlite3.connect(database)
    conn.execute(f"PRAGMA journal_mode={journal_mode}")
    conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)")
    conn.execute("CREATE TABLE ledger (id INTEGER PRIMARY KEY, src INT, dst INT, amount INT, pad BLOB)")
    conn.executemany("INSERT INTO accounts VALUES (?, 1000)", [(i,) for i in range(1, 101)])
    conn.executemany("INSERT INTO ledger (src, dst, amount, pad) VALUES (0, 0, 0, randomblob(4000))", [()] * 2000)
    conn.commit()
    conn.close()

    stop, started = tmp_path / "stop", tmp_path / "started"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(database), str(stop), str(started)], stdout=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while not started.exists():
            assert writer.poll() is None, "the writer stopped"
            assert time.monotonic() < deadline, "the writer did not get going"
            time.sleep(0.01)
        job = make_job(folders, "Busy file", "sqlite", {"path": str(database)})
        run = run_job(job)
    finally:
        stop.touch()
        out, _ = writer.communicate(timeout=60)
    assert writer.returncode == 0
    assert run.state == Run.State.SUCCEEDED, run.error
    target = extract(run, tmp_path / "restore")

    copy = sqlite3.connect(target / "busy-file" / "busy.sqlite3")
    try:
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        # A snapshot of one moment: money is neither created nor lost, and every
        # balance agrees with the ledger of that same moment.
        assert copy.execute("SELECT SUM(balance) FROM accounts").fetchone() == (100 * 1000,)
        mismatched = copy.execute(
            """SELECT COUNT(*) FROM accounts a WHERE a.balance != 1000
                 - COALESCE((SELECT SUM(amount) FROM ledger WHERE src = a.id), 0)
                 + COALESCE((SELECT SUM(amount) FROM ledger WHERE dst = a.id), 0)"""
        ).fetchone()
        assert mismatched == (0,)
        transfers = copy.execute("SELECT COUNT(*) FROM ledger WHERE amount > 0").fetchone()[0]
    finally:
        copy.close()
    assert 20 <= transfers <= int(out)


def test_sqlite_restore_into(tmp_path, monkeypatch):
    database = tmp_path / "shop.sqlite3"
    sqlite_fill(database).close()
    source = SqliteSource("Shop file", "shop-file", {"path": str(database)})
    target = tmp_path / "restored" / "shop.sqlite3"
    target.parent.mkdir()
    with source.entries(tmp_path / "staging", None) as entries:
        (entry,) = list(entries)
        dump = tmp_path / "dump.sqlite3"
        dump.write_bytes(Path(entry.path).read_bytes())
    assert list((tmp_path / "staging").iterdir()) == []

    SqliteSource.restore_into(dump, f"sqlite:///{target}")
    assert sqlite_rows(target) == sqlite_rows(database)
    assert sorted(p.name for p in target.parent.iterdir()) == ["shop.sqlite3"]

    # Never over a file that has content.
    before = target.read_bytes()
    with pytest.raises(RestoreRefused, match="not empty"):
        SqliteSource.restore_into(dump, f"sqlite:///{target}")
    assert target.read_bytes() == before
    # An empty placeholder file is fine.
    empty = tmp_path / "restored" / "empty.sqlite3"
    empty.touch()
    SqliteSource.restore_into(dump, f"sqlite:///{empty}")
    assert sqlite_rows(empty) == sqlite_rows(database)

    with pytest.raises(ValueError, match="absolute"):
        SqliteSource.restore_into(dump, "sqlite:///relative.sqlite3")
    with pytest.raises(SourceError, match="not a SQLite database"):
        not_sqlite = tmp_path / "not.sqlite3"
        not_sqlite.write_text("hello")
        SqliteSource.restore_into(not_sqlite, f"sqlite:///{tmp_path / 'new.sqlite3'}")


def test_restore_into_refuses_the_panels_own_sqlite_database(tmp_path, monkeypatch):
    live = tmp_path / "var" / "db.sqlite3"
    live.parent.mkdir()
    live.touch()  # empty, so only its being the panel's database stops the restore
    monkeypatch.setattr(
        dbtools, "panel_database_config", lambda: {"ENGINE": "django.db.backends.sqlite3", "NAME": str(live)}
    )
    dump = tmp_path / "dump.sqlite3"
    sqlite_fill(dump).close()
    spellings = [f"sqlite:///{live}", f"sqlite:///{tmp_path}/var/../var/db.sqlite3"]
    os.symlink(live.parent, tmp_path / "alias")
    spellings.append(f"sqlite:///{tmp_path}/alias/db.sqlite3")
    for url in spellings:
        for restore in (SqliteSource.restore_into, PanelDatabaseSource.restore_into):
            with pytest.raises(RestoreRefused, match="panel's own"):
                restore(dump, url)
    assert live.stat().st_size == 0


def test_panel_database_on_sqlite(folders, tmp_path, monkeypatch):
    live = tmp_path / "var" / "db.sqlite3"
    live.parent.mkdir()
    sqlite_fill(live).close()
    monkeypatch.setattr(
        dbtools, "panel_database_config", lambda: {"ENGINE": "django.db.backends.sqlite3", "NAME": str(live)}
    )
    job = make_job(folders, "Panel database", "panel_database", {})
    assert "SQLite" in job.sources.get().handler().describe()
    run = run_job(job)
    assert run.state == Run.State.SUCCEEDED, run.error
    assert leftovers(job) == []
    target = extract(run, tmp_path / "restore")
    assert sqlite_rows(target / "panel-database" / "backupsite.sqlite3") == sqlite_rows(live)


def test_sqlite_missing_file_is_a_readable_error(folders, tmp_path):
    job = make_job(folders, "Shop file", "sqlite", {"path": str(tmp_path / "gone.sqlite3")})
    run = run_job(job)
    assert run.state == Run.State.FAILED
    assert "Shop file" in run.error and "does not exist" in run.error


# --- every kind -----------------------------------------------------------------------
@pytest.fixture(params=["postgresql", "mysql", "sqlite"])
def any_database_job(request, folders, tmp_path):
    kind = request.param
    if kind == "postgresql":
        server = request.getfixturevalue("postgres_server")
        database = server.create_database()
        pg_fill(server, database)
        return make_job(folders, "Any db", kind, server.settings(database), {"password": server.password})
    if kind == "mysql":
        server = request.getfixturevalue("mariadb_server")
        database = server.create_database()
        server.sql(MY_SCHEMA, database)
        return make_job(folders, "Any db", kind, server.settings(database), {"password": server.password})
    path = tmp_path / "any.sqlite3"
    sqlite_fill(path).close()
    return make_job(folders, "Any db", kind, {"path": str(path)})


@pytest.mark.parametrize("failure", [Cancelled, OSError])
def test_the_temporary_dump_is_removed_when_archiving_stops(any_database_job, monkeypatch, failure):
    seen = {}

    def stop_after_the_dump(entries, out, **kwargs):
        for entry in entries:
            path = Path(entry.path)
            seen["name"], seen["mode"] = path.name, stat.S_IMODE(path.stat().st_mode)
            raise failure(28, "No space left on device") if failure is OSError else failure()
        raise AssertionError("no entries")

    monkeypatch.setattr(services, "write_archive", stop_after_the_dump)
    run = run_job(any_database_job)
    assert run.state == (Run.State.CANCELLED if failure is Cancelled else Run.State.FAILED)
    # Hidden, ".partial" (so a killed worker's successor sweeps it), 0600, and gone.
    assert seen["name"].startswith(".") and seen["name"].endswith(".partial") and seen["mode"] == 0o600
    assert leftovers(any_database_job) == []


# --- configuration --------------------------------------------------------------------
def test_kinds_are_registered():
    for kind in ("postgresql", "mysql", "sqlite", "panel_database", "directory"):
        assert kind in REGISTRY


@pytest.mark.parametrize("conf", [PostgresConf, MysqlConf])
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "database name is required"),
        ({"database": "--help"}, "must not start with"),
        ({"database": "shop", "host": "-oProxyCommand=x"}, "must not start with"),
        ({"database": "shop", "user": "-U"}, "must not start with"),
        ({"database": "shop\nDROP"}, "control characters"),
        ({"database": "shop", "host": "db\x00.example"}, "control characters"),
        ({"database": "shop", "port": "54 32"}, "port"),
        ({"database": "shop", "port": 0}, "port"),
        ({"database": "shop", "port": 70000}, "port"),
        ({"database": "shop", "port": True}, "port"),
        ({"database": " shop"}, "space"),
        ({"database": ["shop"]}, "must be text"),
    ],
)
def test_database_settings_are_validated(conf, settings, message):
    with pytest.raises(ValueError, match=message):
        conf.parse(settings)


def test_database_settings_defaults():
    assert PostgresConf.parse({"database": "shop"}) == PostgresConf("shop", "", 5432, "", "")
    assert MysqlConf.parse({"database": "shop", "port": "3307"}) == MysqlConf("shop", "localhost", 3307, "")
    with pytest.raises(ValueError, match="absolute"):
        SqliteConf.parse({"path": "relative.db"})
    with pytest.raises(ValueError, match="absolute"):
        SqliteConf.parse({"path": "/x\x00y"})
    # A value with '=' or quotes cannot add connection parameters: it is one quoted value.
    conninfo = PostgresConf.parse({"database": "a' host='evil", "user": "x"}).conninfo()
    assert "dbname='a\\' host=\\'evil'" in conninfo


def test_describe_never_shows_the_password():
    for kind, settings in [
        ("postgresql", {"host": "db.example", "database": "shop", "user": "bk"}),
        ("mysql", {"host": "db.example", "database": "shop", "user": "bk"}),
    ]:
        text = REGISTRY[kind]("Shop", "shop", settings, {"password": "Hunter2-secret"}).describe()
        assert "Hunter2-secret" not in text and "shop" in text and "db.example" in text
