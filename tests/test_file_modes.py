"""Everything the panel writes under its data dir is 0600 in 0700 folders, under the
usual umask 022, while copies at a local destination keep the umask's mode (issue 6,
item 4). The umask itself is never changed by the panel."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from backupsite.private import create_private_file, open_private, private_dir, shared_mode
from jobs.engine.atomic import atomic_path
from tests.conftest import require_binary

# Run once, in the default pass (tests/teststack.py): the files of the embedded default
# (SQLite, the filesystem broker), whatever the suite's stack.
pytestmark = pytest.mark.stack_independent

ROOT = Path(__file__).resolve().parents[1]


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@contextlib.contextmanager
def umask(value: int):
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def umask_022():
    with umask(0o022):
        yield


def not_private(root: Path) -> list[str]:
    """Every folder under *root* (itself included) that is not 0700 and every file that
    is not 0600 (symlinks are not followed, their own mode means nothing)."""
    wrong = []
    for folder, _dirs, files in os.walk(root):
        here = Path(folder)
        if mode(here) != 0o700:
            wrong.append(f"{here.relative_to(root.parent)}/ {mode(here):04o}")
        for name in files:
            path = here / name
            if not path.is_symlink() and mode(path) != 0o600:
                wrong.append(f"{path.relative_to(root.parent)} {mode(path):04o}")
    return wrong


# --- the helpers -------------------------------------------------------------------------
def test_private_dir_makes_missing_folders_0700_and_leaves_existing_ones(tmp_path, umask_022):
    existing = tmp_path / "shared"
    existing.mkdir(mode=0o755)
    made = private_dir(existing / "a" / "b")
    assert mode(existing / "a") == mode(made) == 0o700
    assert mode(existing) == 0o755  # not ours to tighten: the system check warns instead
    assert private_dir(made) == made  # idempotent
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        private_dir(tmp_path / "file")


def test_open_private_and_create_private_file(tmp_path, umask_022):
    with open_private(tmp_path / "new.txt", "w") as fh:
        fh.write("hello")
    assert mode(tmp_path / "new.txt") == 0o600 and (tmp_path / "new.txt").read_text() == "hello"
    loose = tmp_path / "loose"
    loose.write_text("old")
    assert mode(loose) == 0o644
    with open_private(loose, "ab") as fh:
        fh.write(b"+")
    assert mode(loose) == 0o600 and loose.read_text() == "old+"
    created = create_private_file(tmp_path / "db.sqlite3")
    assert mode(created) == 0o600 and created.stat().st_size == 0
    with pytest.raises(ValueError):
        open_private(tmp_path / "x", "rb")
    assert shared_mode(loose) is None and shared_mode(tmp_path / "missing") is None
    loose.chmod(0o640)
    assert shared_mode(loose) == 0o640


def test_atomic_path_writes_private_files_unless_told_otherwise(tmp_path, umask_022):
    final = tmp_path / "staging" / "job" / "a.tar.zst"
    with atomic_path(final) as tmp, open(tmp, "wb") as out:
        assert mode(tmp) == 0o600  # already private while it is being written
        out.write(b"data")
    assert mode(final) == 0o600 and mode(final.parent) == 0o700 and mode(final.parent.parent) == 0o700

    # At a local destination the file (and a new folder) get what the umask gives.
    for mask, file_mode, dir_mode in ((0o022, 0o644, 0o755), (0o027, 0o640, 0o750)):
        copy = tmp_path / f"dest-{mask:o}" / "backupsite" / "a.tar.zst"
        with umask(mask), atomic_path(copy, private=False) as tmp, open(tmp, "wb") as out:
            out.write(b"data")
        assert (mode(copy), mode(copy.parent)) == (file_mode, dir_mode)

    # A leftover of a killed run with another mode is made private again.
    leftover = tmp_path / "staging" / "job" / ".b.tar.zst.partial"
    leftover.write_bytes(b"old")
    leftover.chmod(0o644)
    with atomic_path(tmp_path / "staging" / "job" / "b.tar.zst") as tmp:
        assert tmp == leftover and mode(tmp) == 0o600 and tmp.read_bytes() == b""
        tmp.write_bytes(b"new")
    assert mode(tmp_path / "staging" / "job" / "b.tar.zst") == 0o600


def test_file_email_backend_writes_private_messages(tmp_path, umask_022, settings):
    from django.core import mail

    settings.EMAIL_BACKEND = "backupsite.mail.PrivateFileEmailBackend"
    settings.EMAIL_FILE_PATH = str(tmp_path / "data" / "mail")
    assert mail.send_mail("Run failed", "body", None, ["ops@example.com"]) == 1
    folder = tmp_path / "data" / "mail"
    (message,) = folder.iterdir()
    assert mode(folder) == mode(tmp_path / "data") == 0o700 and mode(message) == 0o600
    assert b"Run failed" in message.read_bytes()


def test_the_file_email_url_uses_the_private_backend():
    from backupsite.settings import _email_settings

    assert _email_settings("file:///srv/mail")["EMAIL_BACKEND"] == "backupsite.mail.PrivateFileEmailBackend"


def test_beat_schedule_file_is_private(tmp_path, umask_022):
    from backupsite.beat import PrivateScheduler
    from backupsite.celery import app

    assert app.conf.beat_scheduler == "backupsite.beat:PrivateScheduler"
    filename = str(tmp_path / "celerybeat-schedule")
    scheduler = PrivateScheduler(app=app, schedule_filename=filename)
    scheduler.sync()
    scheduler.close()
    files = sorted(tmp_path.iterdir())
    assert files, "the scheduler wrote no schedule file"
    assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
    reopened = PrivateScheduler(app=app, schedule_filename=filename)  # still readable by celery
    assert "reap-stale-runs" in reopened.schedule
    reopened.close()


def test_filesystem_broker_folders_are_private(tmp_path, umask_022, settings):
    from celery import Celery

    from backupsite.celery import configure

    settings.DATA_DIR = tmp_path / "data"
    settings.CELERY_BROKER_URL = "filesystem://"
    configure(Celery("modes-test"))
    broker = tmp_path / "data" / "broker"
    assert {p.name for p in broker.iterdir()} == {"queue", "processed", "control"}
    assert not_private(tmp_path / "data") == []


def test_the_default_restore_folder_is_made_private(tmp_path, umask_022, settings):
    from jobs.restores import restore_roots

    settings.DATA_DIR = tmp_path / "data"
    settings.BACKUPSITE_RESTORE_ROOTS = [str(tmp_path / "data" / "restores")]
    assert restore_roots() == [(tmp_path / "data" / "restores").resolve()]
    assert mode(tmp_path / "data" / "restores") == 0o700
    settings.BACKUPSITE_RESTORE_ROOTS = [str(tmp_path / "elsewhere")]
    restore_roots()
    assert not (tmp_path / "elsewhere").exists()  # a configured folder is the administrator's


# --- a real backup, in processes of their own ----------------------------------------------
def manage(env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        umask=0o022,  # the usual umask of a service; the panel must not rely on a stricter one
    )
    if check:
        assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result


SETUP = """
from jobs.models import Job, Source
job = Job.objects.get(name="Demo backup")
job.set_backup_password("correct horse battery staple")
job.save()
gone = Source.objects.create(name="Gone", kind="directory", settings={"path": "/nonexistent/backupsite-test"})
broken = Job.objects.create(name="Broken", report_to="ops@example.com")
broken.sources.set([gone])
broken.destinations.set(job.destinations.all())
import backupsite.celery  # the worker's import: makes the filesystem broker's folders
"""


@pytest.mark.slow
def test_a_real_backup_leaves_only_private_files_under_the_data_dir(tmp_path):
    require_binary("zstd")
    data, dest = tmp_path / "data", tmp_path / "dest"
    dest.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "DJANGO_SETTINGS_MODULE": "backupsite.settings",
        "BACKUPSITE_ENV_FILE": "",
        "DEBUG": "1",
        "BACKUPSITE_DATA_DIR": str(data),
        # The demo "server hard drive" destination, outside the data dir: it is a place
        # people read, so its files keep the umask's mode.
        "BACKUPSITE_LOCAL_BACKUP_DIR": str(dest),
        "BACKUPSITE_LOCAL_ROOTS": str(dest),
        "BACKUPSITE_OPTIONAL_BINARIES": "",
        "BACKUPSITE_STAGING_MARGIN_MB": "0",
    }
    manage(env, "migrate", "--noinput")
    manage(env, "loaddemo")
    manage(env, "shell", "-c", SETUP)
    manage(env, "runbackup", "--quiet", "Demo backup")
    failed = manage(env, "runbackup", "--quiet", "Broken", check=False)
    assert failed.returncode == 1 and "does not exist" in failed.stderr

    # What must be there, each one private.
    staging = data / "archives" / "demo-backup"
    archives = sorted(p.name for p in staging.iterdir())
    assert len([n for n in archives if n.endswith(".tar.zst.age")]) == 1, archives
    assert len([n for n in archives if n.endswith(".manifest.json")]) == 1, archives
    assert "backupsite-key.age" in archives
    assert (data / "archives" / "broken").is_dir()  # the failed run's staging folder
    assert len(list((data / "mail").iterdir())) == 1  # the failure alert
    assert {p.name for p in (data / "broker").iterdir()} == {"queue", "processed", "control"}
    assert (data / "demo" / "files" / "README.txt").is_file()
    assert (data / "db.sqlite3").stat().st_size > 0
    assert (data / "secret_key").is_file() and (data / "field_encryption_key").is_file()
    assert not_private(data) == []

    # SQLite gives its -wal and -shm files the database file's mode: check while open.
    with umask(0o022):
        db = sqlite3.connect(data / "db.sqlite3")
        try:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            db.execute("UPDATE jobs_job SET keep_last = 3")
            db.commit()
            companions = [Path(f"{data / 'db.sqlite3'}-{suffix}") for suffix in ("wal", "shm")]
            assert all(p.exists() for p in companions)
            assert [mode(p) for p in companions] == [0o600, 0o600]
        finally:
            db.close()

    # The copy at the local destination keeps what the umask gives, as before.
    remote = dest / "backupsite" / "demo-backup"
    copies = sorted(remote.iterdir())
    assert {p.name for p in copies} == {n for n in archives if not n.startswith(".")}
    assert {p.name: mode(p) for p in copies} == {p.name: 0o644 for p in copies}
    assert mode(remote) == mode(dest / "backupsite") == 0o755

    # And the system check is quiet about this data dir.
    checked = manage(env, "check", "--fail-level", "WARNING")
    assert "backupsite.W003" not in checked.stdout + checked.stderr
