"""Shared fixtures: named users per role (alice, bob, charlie, dave), a directory
source, a local destination and a job, all in per-test temporary folders; the hooks of
the two stacks (tests/teststack.py): the header line, the stack-independent tests run in
the default pass only, a clean shared cache for every test on Redis."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, User

from backupsite.roles import ADMINISTRATORS, OPERATORS, VIEWERS
from tests import teststack
from tests.binaries import REQUIRE_BINARIES, require_binary

__all__ = ["REQUIRE_BINARIES", "require_binary"]  # imported from here by the test modules

# Fixtures that give a test the database: a test using one depends on the stack.
DATABASE_FIXTURES = {"db", "transactional_db", "django_db_setup", "live_server", "django_db_reset_sequences"}
_deselected_as_independent: list[str] = []
_deselected_other_stack: list[str] = []


def pytest_report_header(config) -> str:
    return teststack.describe()


@pytest.fixture(autouse=True)
def _language_reset():
    """Each test starts in LANGUAGE_CODE: LocaleMiddleware activates a request's language
    for the thread and leaves it active after the response (harmless in a server, where
    every request activates its own), so a test client request in German would leak."""
    from django.utils import translation

    translation.deactivate()
    yield
    translation.deactivate()


@pytest.fixture(scope="session", autouse=True)
def _compiled_translations(django_test_environment):
    """The German and Swedish catalogues compiled (``.mo`` files are not committed; an
    up-to-date one is left alone), so a plain ``pytest`` sees the same pages as ``make
    test``. Without msgfmt polib compiles them; tests/test_i18n.py's msgfmt checks then
    skip (and fail in CI, where .ci/run installs gettext)."""
    from django.core.management import call_command

    call_command("compilemessages", verbosity=0)  # msgfmt, else polib


def pytest_collection_modifyitems(config, items) -> None:
    """``stack_independent`` tests run in the default pass only; the marker on a test
    that uses the database is a mistake (that test must run on both stacks).
    ``only_stack(name)`` tests are about that stack's own database and run on it only."""
    for item in items:
        marker = item.get_closest_marker("only_stack")
        if marker and (len(marker.args) != 1 or marker.args[0] not in teststack.STACKS):
            raise pytest.UsageError(f"{item.nodeid}: only_stack takes one of {', '.join(teststack.STACKS)}")
    wrong = [
        item.nodeid
        for item in items
        if item.get_closest_marker("stack_independent")
        and (item.get_closest_marker("django_db") or DATABASE_FIXTURES & set(getattr(item, "fixturenames", ())))
    ]
    if wrong:
        raise pytest.UsageError(
            "marked stack_independent but using the database (they must run on both stacks): " + ", ".join(wrong)
        )
    kept, deselected = [], []
    for item in items:
        only = item.get_closest_marker("only_stack")
        if only and only.args[0] != teststack.STACK:
            deselected.append(item)
            _deselected_other_stack.append(item.nodeid)
        elif teststack.is_postgres() and item.get_closest_marker("stack_independent"):
            deselected.append(item)
            _deselected_as_independent.append(item.nodeid)
        else:
            kept.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


def pytest_terminal_summary(terminalreporter) -> None:
    if _deselected_as_independent:
        terminalreporter.write_line(
            f"{len(_deselected_as_independent)} stack-independent tests left out on the {teststack.STACK} stack "
            "(they run in the default pass)"
        )
    if _deselected_other_stack:
        terminalreporter.write_line(
            f"{len(_deselected_other_stack)} tests of another stack's own database left out on the "
            f"{teststack.STACK} stack: {', '.join(_deselected_other_stack)}"
        )


@pytest.fixture(autouse=True)
def _keep_the_test_transaction():
    """A worker calls ``close_old_connections()`` around a run (the right thing between
    tasks). Inside the transaction pytest-django wraps a test in, Django closes the
    connection because autocommit is off: harmless on SQLite's in-memory test database
    (never closed), fatal on PostgreSQL (every later query: "the connection is
    closed"). Inside an atomic block (only a test is ever there when it calls it) the
    connection is kept; tests with ``transactional_db`` see the real behaviour."""
    from django.db.backends.base.base import BaseDatabaseWrapper

    original = BaseDatabaseWrapper.close_if_unusable_or_obsolete

    def close_if_unusable_or_obsolete(self):
        if self.in_atomic_block:
            return
        original(self)

    # Its own MonkeyPatch: a test's monkeypatch.undo() must not take this away.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(BaseDatabaseWrapper, "close_if_unusable_or_obsolete", close_if_unusable_or_obsolete)
        yield


@pytest.fixture(autouse=True)
def _signal_receivers_kept():
    """A test that disconnects a product receiver (the audit log's, say) fails itself and
    the receiver is put back, instead of silencing it for every later test
    (tests/isolation.py)."""
    from tests.isolation import receivers_kept

    with receivers_kept():
        yield


@pytest.fixture(autouse=True)
def _clean_shared_cache(request):
    """On Redis the rate limiter's counters outlive a test (the database cache of the
    default stack is rolled back with it): every test starts with an empty cache."""
    if not teststack.is_postgres() or request.node.get_closest_marker("stack_independent"):
        return
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(autouse=True)
def _notifications_at_once(monkeypatch):
    """pytest-django runs each test in a transaction it never commits, so an e-mail
    queued "after commit" would never be sent: here notifications are delivered at once
    (still through the outbox and the delivery code). tests/test_notifications.py proves
    the after-commit rule with this switched back on."""
    from jobs import notifications

    monkeypatch.setattr(notifications, "DELIVER_AFTER_COMMIT", False)
    monkeypatch.setattr(notifications, "DELIVER_HERE", False)


@pytest.fixture
def config_changes():
    """Every change ``backupsite.configwrite`` announces during the test
    (``config_changed``), in order."""
    from backupsite import configwrite

    seen = []

    def receiver(sender, change, **kwargs):
        seen.append(change)

    configwrite.config_changed.connect(receiver)
    yield seen
    configwrite.config_changed.disconnect(receiver)


@pytest.fixture
def alice(db) -> User:
    """Administrator."""
    user = User.objects.create_user("alice", "alice@example.com", "alice-password")
    user.groups.add(Group.objects.get(name=ADMINISTRATORS))
    return user


@pytest.fixture
def bob(db) -> User:
    """Operator."""
    user = User.objects.create_user("bob", "bob@example.com", "bob-password")
    user.groups.add(Group.objects.get(name=OPERATORS))
    return user


@pytest.fixture
def charlie(db) -> User:
    """Viewer."""
    user = User.objects.create_user("charlie", "charlie@example.com", "charlie-password")
    user.groups.add(Group.objects.get(name=VIEWERS))
    return user


@pytest.fixture
def dave(db) -> User:
    """Logged in, but without any role."""
    return User.objects.create_user("dave", "dave@example.com", "dave-password")


@pytest.fixture
def folders(tmp_path, settings):
    """Per-test archive folder and an allowed root for local destinations."""
    archives = tmp_path / "archives"
    backups = tmp_path / "backups"
    backups.mkdir()
    settings.BACKUPSITE_ARCHIVE_DIR = archives
    settings.BACKUPSITE_LOCAL_ROOTS = [str(backups)]
    return {"archives": archives, "backups": backups, "root": tmp_path}


@pytest.fixture
def place(tmp_path):
    """A target folder and a sentinel folder beside it that nothing may touch."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("sentinel")
    target = tmp_path / "target"
    target.mkdir()
    return {"root": tmp_path, "target": target, "outside": outside}


def make_tree(root: Path) -> Path:
    """A small tree with nested folders, text, binary, an empty file and a symlink."""
    (root / "docs" / "2026").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "docs" / "2026" / "invoice.txt").write_text("Invoice 42\n" * 500)
    (root / "docs" / "notes.md").write_text("# Notes\nünïcødé ✓\n")
    (root / "blob.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (root / "empty.txt").write_bytes(b"")
    (root / "spaces and 'quotes'.txt").write_text("odd name\n")
    os.symlink("docs/notes.md", root / "link-to-notes")
    return root


@pytest.fixture
def source_tree(tmp_path) -> Path:
    return make_tree(tmp_path / "data")


@pytest.fixture
def job(db, folders, source_tree):
    from destinations.models import Destination
    from jobs.models import Job, Source

    source = Source.objects.create(name="Office files", kind="directory", settings={"path": str(source_tree)})
    destination = Destination.objects.create(
        name="Local disk", kind="local", settings={"path": str(folders["backups"])}
    )
    job = Job.objects.create(name="Office backup", report_to="ops@example.com, boss@example.com")
    job.sources.set([source])
    job.destinations.set([destination])
    return job


@pytest.fixture
def finished_run(job):
    """A succeeded run of ``job``: a local copy and an upload to "Local disk"."""
    from jobs import services
    from jobs.models import Run

    run = services.execute_run(services.create_run(job).pk)
    assert run.state == Run.State.SUCCEEDED, run.error
    return run


def restore_with_stock_tools(archive: Path, target: Path) -> None:
    """`zstd -dc ARCHIVE | tar -xf - -C TARGET`, as a user would type it (no shell)."""
    require_binary("zstd")
    require_binary("tar")
    target.mkdir(parents=True, exist_ok=True)
    zstd = subprocess.Popen(["zstd", "-dc", str(archive)], stdout=subprocess.PIPE)
    tar = subprocess.run(["tar", "-xf", "-", "-C", str(target)], stdin=zstd.stdout, capture_output=True)
    zstd.stdout.close()
    assert zstd.wait() == 0 and tar.returncode == 0, tar.stderr


def trees_identical(a: Path, b: Path) -> bool:
    """`diff -r --no-dereference`: same names, contents and symlink targets."""
    return subprocess.run(["diff", "-r", "--no-dereference", str(a), str(b)], capture_output=True).returncode == 0


def grant_sudo(client) -> None:
    """Put *client*'s session in sudo mode (as if the password had just been confirmed)."""
    import time

    from backupsite.sudo import SESSION_KEY

    session = client.session
    session[SESSION_KEY] = time.time() + 600
    session.save()
