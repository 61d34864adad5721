"""The panel's secrets never leave it through a backup (issue 6, item 1): the registry of
tables whose rows the panel-database dump leaves out, that dump on SQLite and on a real
PostgreSQL server, and directory sources that skip (or refuse) the panel's own files."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from django.contrib.sessions.backends.base import VALID_KEY_CHARS
from django.contrib.sessions.models import Session
from django.db import connection
from django.test import Client
from django.utils.crypto import get_random_string

from backupsite import sensitive
from destinations.models import Destination
from jobs import services
from jobs.engine import walk_directory
from jobs.models import Job, Restore, RestoreTicket, Run, Source, VerifyTicket
from jobs.sources import SourceError, dbtools
from jobs.sources.directory import DirectorySource
from jobs.sources.postgres import PostgresConf, table_pattern
from jobs.sources.sqlite import SqliteConf, backup_database, remove_table_data
from tests.conftest import restore_with_stock_tools
from tests.test_sources_db import pg_restore_stock

pytest_plugins = ["tests.servers"]


# --- helpers --------------------------------------------------------------------------
def make_job(folders, name: str, kind: str, settings: dict | None = None) -> Job:
    if kind == "panel_database":  # made by the migration: one only
        source = Source.panel_database()
    else:
        source = Source.objects.create(name=name, kind=kind, settings=settings or {})
    destination = Destination.objects.create(
        name=f"Local disk for {name}", kind="local", settings={"path": str(folders["backups"])}
    )
    job = Job.objects.create(name=f"{name} backup")
    job.sources.set([source])
    job.destinations.set([destination])
    return job


def run_job(job: Job) -> Run:
    run = services.execute_run(services.create_run(job).pk)
    assert run.state == Run.State.SUCCEEDED, run.error
    return run


def manifest_of(run: Run) -> dict:
    return json.loads(run.local_file.with_name(run.archive_name + ".manifest.json").read_text())


def use_panel_database(monkeypatch, config: dict) -> None:
    monkeypatch.setattr(dbtools, "panel_database_config", lambda: config)


def session_key() -> str:
    """A session key as Django makes them (SessionStore._get_new_session_key)."""
    return get_random_string(32, VALID_KEY_CHARS)


# --- the registry ---------------------------------------------------------------------
def test_the_default_entries_name_the_real_tables(settings):
    names = sensitive.excluded_table_names()
    assert names[:3] == [Session._meta.db_table, VerifyTicket._meta.db_table, RestoreTicket._meta.db_table]
    assert names[:3] == ["django_session", "jobs_verifyticket", "jobs_restoreticket"]
    from axes.models import AccessAttempt, AccessAttemptExpiration, AccessFailureLog, AccessLog

    axes_tables = sorted(
        m._meta.db_table for m in (AccessAttempt, AccessAttemptExpiration, AccessFailureLog, AccessLog)
    )
    assert names[3:7] == axes_tables  # login throttling (django-axes)
    assert names[7:] == ["backupsite_cache"]  # the default, until the cache exists
    settings.BACKUPSITE_CACHE_TABLE = "ratelimit_cache"
    assert sensitive.excluded_table_names() == [
        "django_session",
        "jobs_verifyticket",
        "jobs_restoreticket",
        *axes_tables,
        "ratelimit_cache",
    ]


def test_a_later_feature_adds_one_line(monkeypatch):
    monkeypatch.setattr(sensitive, "_EXCLUDED", dict(sensitive._EXCLUDED))
    sensitive.register_excluded_table("accounts_resettoken", "password-reset tokens")
    sensitive.register_excluded_table("accounts_resettoken", "again")  # idempotent
    assert sensitive.excluded_table_names().count("accounts_resettoken") == 1
    assert {t.table: t.reason for t in sensitive.excluded_tables()}["accounts_resettoken"] == "password-reset tokens"
    for bad in ("", "x" * 64, "bad\x00name", None):
        with pytest.raises(ValueError):
            sensitive.register_excluded_table(bad, "no")


@pytest.mark.parametrize("bad", ["django_session", ["ok", "bad\nname"], [""], [42], ["x" * 64]])
def test_the_kinds_check_their_table_lists(bad):
    for parse in (SqliteConf.parse, PostgresConf.parse):
        with pytest.raises(ValueError, match="table"):
            parse({"path": "/x.sqlite3", "database": "x", "exclude_table_data": bad})
    assert SqliteConf.parse({"path": "/x.sqlite3"}).exclude_table_data == ()


# --- SQLite ---------------------------------------------------------------------------
def make_sqlite(path: Path, keys: list[str], deleted: list[str]) -> None:
    """A WAL database with a django_session table holding *keys*, and *deleted* keys
    deleted again without secure_delete (Debian's SQLite has it on by default, other
    builds do not): they stay readable in the file's free space."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA secure_delete=OFF")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE django_session (session_key varchar(40) PRIMARY KEY, session_data text)")
    conn.execute("CREATE TABLE auth_user (id INTEGER PRIMARY KEY, password TEXT)")
    conn.executemany("INSERT INTO django_session VALUES (?, ?)", [(k, "x" * 300) for k in keys + deleted])
    conn.execute("INSERT INTO auth_user (password) VALUES ('pbkdf2_sha256$hash')")
    conn.commit()
    conn.executemany("DELETE FROM django_session WHERE session_key = ?", [(k,) for k in deleted])
    conn.commit()
    conn.close()


def test_sqlite_copy_keeps_no_excluded_row_anywhere_in_its_bytes(tmp_path):
    live = tmp_path / "live.sqlite3"
    keys, deleted = [session_key() for _ in range(50)], [session_key() for _ in range(50)]
    make_sqlite(live, keys, deleted)
    raw_live = live.read_bytes()
    assert all(k.encode() in raw_live for k in keys + deleted)  # the search can find them

    plain = tmp_path / "plain.sqlite3"
    backup_database(live, plain)
    assert all(k.encode() in plain.read_bytes() for k in keys + deleted[:5])  # a bare copy carries them

    copy = tmp_path / "copy.sqlite3"
    emptied = backup_database(live, copy, exclude_table_data=["DJANGO_SESSION", "no_such_table"])
    assert emptied == ["django_session"]  # the missing table is skipped, names match like SQLite's
    raw = copy.read_bytes()
    assert not [k for k in keys + deleted if k.encode() in raw]  # deleted ones too: VACUUM
    assert not Path(f"{copy}-wal").exists() and not Path(f"{copy}-journal").exists()
    conn = sqlite3.connect(copy)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT COUNT(*) FROM django_session").fetchone() == (0,)  # the table stays
        assert conn.execute("SELECT password FROM auth_user").fetchall() == [("pbkdf2_sha256$hash",)]
    finally:
        conn.close()
    live_conn = sqlite3.connect(live)  # never written to
    assert live_conn.execute("SELECT COUNT(*) FROM django_session").fetchone() == (50,)
    live_conn.close()


def test_remove_table_data_quotes_odd_names(tmp_path):
    db = tmp_path / "odd.sqlite3"
    conn = sqlite3.connect(db)
    conn.execute('CREATE TABLE "we""ird; DROP TABLE keep" (x)')
    conn.execute("CREATE TABLE keep (x)")
    conn.execute('INSERT INTO "we""ird; DROP TABLE keep" VALUES (1)')
    conn.execute("INSERT INTO keep VALUES (2)")
    conn.commit()
    conn.close()
    assert remove_table_data(db, ['we"ird; DROP TABLE keep']) == ['we"ird; DROP TABLE keep']
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT * FROM keep").fetchall() == [(2,)]
    assert conn.execute('SELECT COUNT(*) FROM "we""ird; DROP TABLE keep"').fetchone() == (0,)
    conn.close()


@pytest.mark.only_stack("default")  # copies the suite's own (SQLite) database
@pytest.mark.django_db(transaction=True)  # the live copy below is read from committed data
def test_panel_database_on_sqlite_leaves_out_sessions_and_tickets(client, alice, bob, folders, tmp_path, monkeypatch):
    """The panel's real schema and real sessions: two users logged in, a queued verification."""
    client.force_login(alice)
    alice_key = client.session.session_key
    other = Client()
    other.force_login(bob)
    bob_key = other.session.session_key
    ticket_run = Run.objects.create(job_name="x")
    VerifyTicket.objects.create(run=ticket_run, secrets={"identities": ["AGE-SECRET-KEY-1TEST"]})
    ticket_row = connection.cursor().execute("SELECT secrets FROM jobs_verifyticket").fetchone()[0]
    restore = Restore.objects.create(run=ticket_run, location="the local copy", target="/x")
    RestoreTicket.objects.create(restore=restore, secrets={"identities": ["AGE-SECRET-KEY-1RESTORE"]})
    restore_row = connection.cursor().execute("SELECT secrets FROM jobs_restoreticket").fetchone()[0]
    live = tmp_path / "var" / "db.sqlite3"
    live.parent.mkdir()
    src = sqlite3.connect(connection.settings_dict["NAME"], uri=True)
    dst = sqlite3.connect(live)
    src.backup(dst)
    dst.close()
    src.close()
    assert alice_key.encode() in live.read_bytes() and ticket_row.encode() in live.read_bytes()
    assert restore_row.encode() in live.read_bytes()
    use_panel_database(monkeypatch, {"ENGINE": "django.db.backends.sqlite3", "NAME": str(live)})

    run = run_job(make_job(folders, "Panel database", "panel_database"))
    restore_with_stock_tools(run.local_file, tmp_path / "restore")
    dump = tmp_path / "restore" / "panel-database" / "backupsite.sqlite3"
    raw = dump.read_bytes()
    for secret in (alice_key, bob_key, ticket_row, restore_row):
        assert secret.encode() not in raw
    conn = sqlite3.connect(dump)
    try:
        assert conn.execute("SELECT COUNT(*) FROM django_session").fetchone() == (0,)
        assert conn.execute("SELECT COUNT(*) FROM jobs_verifyticket").fetchone() == (0,)
        assert conn.execute("SELECT COUNT(*) FROM jobs_restoreticket").fetchone() == (0,)
        assert conn.execute("SELECT COUNT(*) FROM jobs_restore").fetchone() == (1,)  # the history stays
        assert {r[0] for r in conn.execute("SELECT username FROM auth_user")} == {"alice", "bob"}
    finally:
        conn.close()
    entry = manifest_of(run)["sources"][0]
    axes = ["axes_accessattempt", "axes_accessattemptexpiration", "axes_accessfailurelog", "axes_accesslog"]
    assert entry == {
        "excluded_table_data": ["django_session", "jobs_verifyticket", "jobs_restoreticket", *axes, "backupsite_cache"],
        "name": "Panel database",
        "slug": "panel-database",
        "kind": "panel_database",
    }
    left_out = ", ".join(["django_session", "jobs_verifyticket", "jobs_restoreticket", *axes, "backupsite_cache"])
    assert f"the rows of {left_out} are left out" in run.log
    live_conn = sqlite3.connect(live)
    assert live_conn.execute("SELECT COUNT(*) FROM django_session").fetchone() == (2,)
    live_conn.close()


# --- PostgreSQL -----------------------------------------------------------------------
def test_table_patterns_are_literal():
    assert table_pattern("django_session") == '"django_session"'
    assert table_pattern('Odd"Name*') == '"Odd""Name*"'


@pytest.mark.django_db
def test_panel_database_on_postgresql_leaves_out_the_rows(postgres_server, folders, tmp_path, monkeypatch):
    database = postgres_server.create_database()
    keys = [session_key() for _ in range(3)]
    with postgres_server.connect(database, superuser=False) as conn:
        conn.execute(
            "CREATE TABLE django_session (session_key varchar(40) PRIMARY KEY, session_data text, "
            "expire_date timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute("CREATE TABLE jobs_verifyticket (id bigserial PRIMARY KEY, secrets text)")
        conn.execute("CREATE TABLE auth_user (id serial PRIMARY KEY, username text, password text)")
        # Patterns are quoted: a mixed-case name and a '*' are taken literally.
        for table in ('"MixedCase"', "mixedcase", '"star*"', "starfish"):
            conn.execute(f"CREATE TABLE {table} (v text)")
            conn.execute(f"INSERT INTO {table} VALUES ('a row')")  # noqa: S608 - fixed names
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO django_session (session_key, session_data) VALUES (%s, 'x')", [(k,) for k in keys]
            )
        conn.execute("INSERT INTO jobs_verifyticket (secrets) VALUES ('ticket-ciphertext-42')")
        conn.execute("INSERT INTO auth_user (username, password) VALUES ('alice', 'pbkdf2_sha256$hash')")
    monkeypatch.setattr(sensitive, "_EXCLUDED", {**sensitive._EXCLUDED, "MixedCase": "test", "star*": "test"})
    use_panel_database(
        monkeypatch,
        {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": database,
            "HOST": postgres_server.host,
            "PORT": postgres_server.port,
            "USER": postgres_server.user,
            "PASSWORD": postgres_server.password,
            "OPTIONS": {},
        },
    )
    run = run_job(make_job(folders, "Panel database", "panel_database"))
    assert manifest_of(run)["sources"][0]["excluded_table_data"] == [
        "django_session",
        "jobs_verifyticket",
        "jobs_restoreticket",
        "axes_accessattempt",  # registered but absent from this database: listed all the same
        "axes_accessattemptexpiration",
        "axes_accessfailurelog",
        "axes_accesslog",
        "MixedCase",
        "star*",
        "backupsite_cache",
    ]
    dump = tmp_path / "restore" / "panel-database" / "backupsite.pgdump"
    restore_with_stock_tools(run.local_file, tmp_path / "restore")
    script = subprocess.run(
        [postgres_server.tool("pg_restore"), "-f", "-", str(dump)], capture_output=True, text=True, check=True
    ).stdout
    assert not [k for k in keys if k in script] and "ticket-ciphertext-42" not in script
    assert "CREATE TABLE public.django_session" in script  # the schema stays

    restored = postgres_server.create_database(owner=postgres_server.superuser)
    pg_restore_stock(postgres_server, dump, restored)
    tables = ("django_session", "jobs_verifyticket", "auth_user", '"MixedCase"', "mixedcase", '"star*"', "starfish")
    with postgres_server.connect(restored) as conn:
        count = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}  # noqa: S608
    assert count == {
        "django_session": 0,
        "jobs_verifyticket": 0,
        "auth_user": 1,
        '"MixedCase"': 0,
        "mixedcase": 1,
        '"star*"': 0,
        "starfish": 1,
    }


# --- directory sources ----------------------------------------------------------------
def test_the_walk_skips_given_paths_even_through_a_symlinked_root(tmp_path):
    root = tmp_path / "tree"
    (root / "keep").mkdir(parents=True)
    (root / "keep" / "a.txt").write_text("a")
    (root / "secret.key").write_text("k")
    (root / "queue").mkdir()
    (root / "queue" / "msg").write_text("m")
    os.symlink(root, tmp_path / "alias")
    skip = [str(root / "secret.key"), str(root / "queue")]
    names = [e.arcname for e in walk_directory(str(tmp_path / "alias"), "x", skip_paths=skip)]
    assert names == ["x", "x/keep", "x/keep/a.txt"]


@pytest.fixture
def data_dir(tmp_path, settings, monkeypatch, folders):
    """A panel data dir as `make run` leaves it, with the run's own archive dir inside."""
    var = tmp_path / "var"
    for folder in ("archives/old-job", "broker/queue", "mail", "demo/files/invoices", "backups/backupsite/x"):
        (var / folder).mkdir(parents=True)
    files = {
        "db.sqlite3": "SQLite format 3",
        "db.sqlite3-wal": "wal",
        "secret_key": "dev-secret",
        "field_encryption_key": "fernet",
        "celerybeat-schedule": "beat",
        "archives/old-job/a.tar.zst": "archive",
        "broker/queue/1.msg": "task",
        "mail/1.eml": "mail",
        "backups/backupsite/x/b.tar.zst": "archive copy",
        "demo/files/invoices/1.txt": "invoice",
        "notes.txt": "an ordinary file",
    }
    for name, text in files.items():
        (var / name).write_text(text)
    prod_secret = var / "prod-secret-key"
    prod_secret.write_text("prod")
    monkeypatch.setenv("SECRET_KEY_FILE", str(prod_secret))
    settings.DATA_DIR = var
    settings.BACKUPSITE_ARCHIVE_DIR = var / "archives"
    settings.BACKUPSITE_LOCAL_BACKUP_DIR = var / "backups"
    use_panel_database(monkeypatch, {"ENGINE": "django.db.backends.sqlite3", "NAME": str(var / "db.sqlite3")})
    return var


def test_the_beat_schedule_is_where_celery_keeps_it(settings):
    from backupsite.celery import app

    paths = {p.path for p in sensitive.panel_paths()}
    assert os.path.realpath(app.conf.beat_schedule_filename) in paths


@pytest.mark.django_db
def test_a_directory_over_the_data_dir_leaves_out_the_panels_files(data_dir, tmp_path, folders):
    run = run_job(make_job(folders, "Whole data dir", "directory", {"path": str(data_dir)}))
    target = tmp_path / "restore"
    restore_with_stock_tools(run.local_file, target)
    taken = sorted(str(p.relative_to(target / "whole-data-dir")) for p in (target / "whole-data-dir").rglob("*"))
    assert taken == ["backups", "demo", "demo/files", "demo/files/invoices", "demo/files/invoices/1.txt", "notes.txt"]
    notes = [line for line in run.log.splitlines() if "left out the panel's own files" in line]
    assert len(notes) == 1
    left_out = ["db.sqlite3", "db.sqlite3-wal", "secret_key", "field_encryption_key", "prod-secret-key"]
    left_out += ["archives", "broker", "mail", "celerybeat-schedule", "backups/backupsite"]
    for name in left_out:
        assert str(data_dir / name) in notes[0]
    assert "db.sqlite3-shm" not in notes[0]  # only what exists is listed
    assert [m["path"] for m in manifest_of(run)["members"] if "secret" in m["path"]] == []
    assert DirectorySource("x", "x", {"path": str(data_dir)}).measure() == (len("invoice") + len("an ordinary file"), 2)


@pytest.mark.django_db
def test_the_demo_folder_is_not_the_panels(data_dir, folders):
    run = run_job(make_job(folders, "Demo files", "directory", {"path": str(data_dir / "demo" / "files")}))
    assert run.file_count == 1 and "left out" not in run.log


@pytest.mark.parametrize(
    ("inside", "what"),
    [
        ("archives", "the panel's archive folder"),
        ("archives/old-job", "the panel's archive folder"),
        ("broker/queue", "the panel's task queue folder"),
        ("mail", "the panel's mail folder"),
        ("backups/backupsite/x", "the backups of the “Server hard drive”"),
    ],
)
@pytest.mark.django_db
def test_a_directory_inside_the_panels_folders_is_refused(data_dir, folders, inside, what):
    path = str(data_dir / inside)
    with pytest.raises(ValueError, match="never backs up the panel's own files") as refused:
        sensitive.check_directory_source(path)
    assert what in str(refused.value)
    job = make_job(folders, "Inside", "directory", {"path": path})
    run = services.execute_run(services.create_run(job).pk)
    assert run.state == Run.State.FAILED
    assert run.error.startswith("Directory source “Inside”: ") and what in run.error
    with pytest.raises(SourceError):
        job.sources.get().handler().measure()


@pytest.mark.django_db
def test_refusal_sees_through_symlinks(data_dir, tmp_path):
    os.symlink(data_dir / "mail", tmp_path / "innocent")
    with pytest.raises(ValueError, match="mail folder"):
        sensitive.check_directory_source(str(tmp_path / "innocent"))
    for allowed in (data_dir, data_dir / "demo" / "files", "/"):
        sensitive.check_directory_source(str(allowed))
