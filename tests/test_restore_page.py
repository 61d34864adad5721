"""The Restore page: the request only checks and queues; a worker restores (Celery runs
eagerly in these tests, when the transaction's on-commit callbacks run) and writes its
progress to a Restore row whose fragment the page polls. Also: the newer-backups warning,
partial restore from the manifest, links to /etc restored as links, the key ticket
deleted before the work starts, and the reaper for restores whose worker died
(RELIABILITY 16 from the Restore page, on a worker)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from jobs import restores, services
from jobs.models import Restore, RestoreTicket, Run
from tests.conftest import grant_sudo, trees_identical
from tests.test_verify import PASSWORD, make_encrypted


@pytest.fixture
def roots(settings, tmp_path):
    root = tmp_path / "restores"
    root.mkdir()
    settings.BACKUPSITE_RESTORE_ROOTS = [str(root)]
    return root


def restore_url(run) -> str:
    return reverse("jobs:run_restore", args=[run.pk])


def post_restore(client, run, data, capture, *, execute=True):
    with capture(execute=execute) as callbacks:
        response = client.post(restore_url(run), data)
    return response, callbacks


def test_administrators_restore_from_the_page_on_a_worker(
    client, alice, finished_run, source_tree, roots, django_capture_on_commit_callbacks
):
    client.force_login(alice)
    grant_sudo(client)  # restoring needs sudo mode (tests/test_sudo.py)
    assert restore_url(finished_run) in client.get(finished_run.get_absolute_url()).content.decode()
    assert str(roots) in client.get(restore_url(finished_run)).content.decode()
    response, callbacks = post_restore(
        client, finished_run, {"location": "local", "target": str(roots / "run1")}, django_capture_on_commit_callbacks
    )
    restore = Restore.objects.get()
    assert response.status_code == 302 and response["Location"] == restore.get_absolute_url()
    assert len(callbacks) == 1  # one task, sent after commit
    assert restore.state == Restore.State.SUCCEEDED, restore.message
    assert restore.bytes_done == restore.bytes_total == finished_run.archive_size
    assert restore.requested_by == alice and restore.location == "the local copy"
    assert trees_identical(source_tree, roots / "run1" / "office-files")
    assert not RestoreTicket.objects.exists()
    page = client.get(restore.get_absolute_url()).content.decode()
    assert "Restored 5 files" in page and 'data-poll-active="false"' in page


def test_the_page_only_queues_and_the_fragment_shows_progress(
    client, alice, finished_run, source_tree, roots, django_capture_on_commit_callbacks
):
    client.force_login(alice)
    grant_sudo(client)  # restoring needs sudo mode (tests/test_sudo.py)
    _, callbacks = post_restore(
        client,
        finished_run,
        {"location": "local", "target": str(roots / "later")},
        django_capture_on_commit_callbacks,
        execute=False,
    )
    restore = Restore.objects.get()
    assert restore.state == Restore.State.QUEUED and RestoreTicket.objects.filter(restore=restore).exists()
    assert list(roots.iterdir()) == []  # nothing extracted in the web request
    fragment = client.get(reverse("jobs:restore_progress", args=[restore.pk]))
    assert "no-store" in fragment["Cache-Control"]
    text = fragment.content.decode()
    assert 'data-poll-active="true"' in text and "Waiting for a worker" in text
    # A second restore into the same folder while the first is queued is refused at once.
    response, _ = post_restore(
        client, finished_run, {"location": "local", "target": str(roots / "later")}, django_capture_on_commit_callbacks
    )
    assert "already under way" in response.content.decode() and Restore.objects.count() == 1
    # The worker runs; the progress row fills; the fragment stops polling.
    callbacks[0]()
    restore.refresh_from_db()
    assert restore.state == Restore.State.SUCCEEDED and restore.progress_percent == 100
    text = client.get(reverse("jobs:restore_progress", args=[restore.pk])).content.decode()
    assert 'data-poll-active="false"' in text and "Restored 5 files" in text
    assert trees_identical(source_tree, roots / "later" / "office-files")


def test_progress_reaches_the_row_while_restoring(finished_run, roots, monkeypatch, queue):
    seen = []
    original = restores.RestoreProgress.__call__

    def spy(self, done, total):
        original(self, done, total)
        seen.append(Restore.objects.values_list("state", "bytes_done").get(pk=self.restore_id))

    monkeypatch.setattr(restores.RestoreProgress, "__call__", spy)
    monkeypatch.setattr(restores.RestoreProgress, "__init__", lambda self, pk, interval=0: _init(self, pk))
    restore = queue(finished_run, roots / "p")
    restores.run_restore_ticket(restore.pk)
    assert seen and all(state == Restore.State.RUNNING for state, _ in seen)
    assert seen[-1][1] == finished_run.archive_size


def _init(self, pk):
    self.restore_id, self.interval, self._last = pk, 0.0, 0.0


@pytest.fixture
def queue(django_capture_on_commit_callbacks):
    """request_restore without sending the task (the test runs the worker's side)."""

    def make(run, target, **kwargs) -> Restore:
        with django_capture_on_commit_callbacks(execute=False):
            return restores.request_restore(run, str(target), **kwargs)

    return make


@pytest.mark.parametrize("user", ["bob", "charlie", "dave"])
def test_only_administrators_may_restore_or_see_restores(client, request, user, finished_run, roots, queue):
    restore = queue(finished_run, roots / "x")
    client.force_login(request.getfixturevalue(user))
    assert client.get(restore_url(finished_run)).status_code == 403
    assert client.post(restore_url(finished_run), {"location": "local", "target": str(roots / "y")}).status_code == 403
    assert client.get(restore.get_absolute_url()).status_code == 403
    assert client.get(reverse("jobs:restore_progress", args=[restore.pk])).status_code == 403
    assert Restore.objects.count() == 1 and list(roots.iterdir()) == []


@pytest.mark.parametrize(
    "target",
    ["/etc/backupsite-restore", "{root}", "{root}/../escape", "relative/dir", "{root}/a\nb", "{tmp}/elsewhere"],
)
def test_the_page_only_restores_inside_the_restore_folders(
    client, alice, finished_run, roots, tmp_path, target, django_capture_on_commit_callbacks
):
    client.force_login(alice)
    grant_sudo(client)  # restoring needs sudo mode (tests/test_sudo.py)
    target = target.format(root=roots, tmp=tmp_path)
    response, callbacks = post_restore(
        client, finished_run, {"location": "local", "target": target}, django_capture_on_commit_callbacks
    )
    assert response.status_code == 200 and callbacks == []
    assert "Nothing was restored" in response.content.decode()
    assert not Restore.objects.exists() and list(roots.iterdir()) == []
    assert not Path("/etc/backupsite-restore").exists() and not (tmp_path / "elsewhere").exists()


def test_a_target_that_is_not_empty_is_refused_at_once(client, alice, finished_run, roots):
    (roots / "full").mkdir()
    (roots / "full" / "mine.txt").write_text("precious")
    client.force_login(alice)
    grant_sudo(client)  # restoring needs sudo mode (tests/test_sudo.py)
    response = client.post(restore_url(finished_run), {"location": "local", "target": str(roots / "full")})
    assert "is not empty" in response.content.decode() and not Restore.objects.exists()


def test_restore_needs_csrf(alice, finished_run, roots):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    grant_sudo(client)  # restoring needs sudo mode (tests/test_sudo.py)
    assert client.post(restore_url(finished_run), {"location": "local", "target": str(roots / "x")}).status_code == 403
    assert not Restore.objects.exists()


def test_the_password_is_never_kept_and_the_key_travels_encrypted(
    client, alice, finished_run, folders, source_tree, roots, django_capture_on_commit_callbacks
):
    run = make_encrypted(finished_run, folders)
    client.force_login(alice)
    grant_sudo(client)  # restoring needs sudo mode (tests/test_sudo.py)
    response, _ = post_restore(
        client,
        run,
        {"location": "local", "target": str(roots / "x"), "password": PASSWORD + "!"},
        django_capture_on_commit_callbacks,
    )
    page = response.content.decode()
    assert "Wrong backup password" in page and PASSWORD not in page and not Restore.objects.exists()
    _, callbacks = post_restore(
        client,
        run,
        {"location": "local", "target": str(roots / "x"), "password": PASSWORD},
        django_capture_on_commit_callbacks,
        execute=False,
    )
    restore = Restore.objects.get()
    ticket = RestoreTicket.objects.get(restore=restore)
    assert ticket.secrets["identities"][0].startswith("AGE-SECRET-KEY-")
    with connection.cursor() as cursor:
        cursor.execute("SELECT secrets FROM jobs_restoreticket")
        raw = cursor.fetchone()[0]
    assert "AGE-SECRET-KEY" not in raw and PASSWORD not in raw  # ciphertext only

    def restore_run_checks_ticket(*args, **kwargs):
        assert not RestoreTicket.objects.exists(), "the worker deletes the key before it starts"
        return real(*args, **kwargs)

    real = restores.restore_run
    restores.restore_run = restore_run_checks_ticket
    try:
        callbacks[0]()
    finally:
        restores.restore_run = real
    restore.refresh_from_db()
    assert restore.state == Restore.State.SUCCEEDED, restore.message
    assert trees_identical(source_tree, roots / "x" / "office-files")
    stored = json.dumps([restore.message, restore.details, restore.only, restore.target, run.log, run.verify_message])
    assert PASSWORD not in stored and "AGE-SECRET-KEY" not in stored


def test_a_second_delivery_of_the_task_does_nothing(finished_run, roots, queue):
    restore = queue(finished_run, roots / "once")
    assert restores.run_restore_ticket(restore.pk).state == Restore.State.SUCCEEDED
    assert restores.run_restore_ticket(restore.pk) is None
    assert Restore.objects.get().state == Restore.State.SUCCEEDED


def test_a_refused_archive_fails_the_restore_and_leaves_nothing(finished_run, roots, queue):
    from tests.test_verify import flip_byte

    restore = queue(finished_run, roots / "bad")
    flip_byte(finished_run.local_file)
    restore = restores.run_restore_ticket(restore.pk)
    assert restore.state == Restore.State.FAILED
    assert restore.message.startswith("Nothing was restored: office-files/blob.bin: checksum mismatch")
    assert list(roots.iterdir()) == []


# --- newer backups ------------------------------------------------------------------------
def more_runs(job, count: int) -> list[Run]:
    made = []
    for _ in range(count):
        run = services.execute_run(services.create_run(job).pk)
        assert run.state == Run.State.SUCCEEDED, run.error
        made.append(run)
    return made


def test_newer_backups_are_counted_and_named(finished_run, job):
    assert restores.newer_backups(finished_run).count == 0
    later = more_runs(job, 3)
    Run.objects.create(job=job, job_name=job.name, state=Run.State.FAILED)  # no backup: not counted
    newer = restores.newer_backups(finished_run)
    assert newer.count == 3 and newer.newest == later[-1]
    when = timezone.localtime(later[-1].created_at).strftime("%Y-%m-%d %H:%M")
    assert newer.message.startswith(
        f"3 newer backups of this job exist; the newest is from {when} (run #{later[-1].pk})"
    )
    one = restores.newer_backups(later[1])
    assert one.count == 1 and one.message.startswith("1 newer backup of this job exists; it is from")
    assert restores.newer_backups(later[-1]).count == 0


def test_the_page_warns_and_asks_before_restoring_an_older_backup(
    client, alice, finished_run, job, source_tree, roots, django_capture_on_commit_callbacks
):
    later = more_runs(job, 3)
    client.force_login(alice)
    grant_sudo(client)  # restoring needs sudo mode (tests/test_sudo.py)
    page = client.get(restore_url(finished_run)).content.decode()
    assert "3 newer backups of this job exist; the newest is from" in page
    assert later[-1].get_absolute_url() in page and 'name="confirm_older"' in page
    assert "newer backup" not in client.get(restore_url(later[-1])).content.decode()
    data = {"location": "local", "target": str(roots / "old")}
    response, _ = post_restore(client, finished_run, data, django_capture_on_commit_callbacks)
    assert response.status_code == 200 and not Restore.objects.exists()
    assert "This field is required" in response.content.decode()
    response, _ = post_restore(
        client, finished_run, {**data, "confirm_older": "on"}, django_capture_on_commit_callbacks
    )
    assert response.status_code == 302 and Restore.objects.get().state == Restore.State.SUCCEEDED


# --- partial restore ------------------------------------------------------------------------
def test_the_page_lists_the_sources_and_restores_one_folder(
    client, alice, finished_run, source_tree, roots, django_capture_on_commit_callbacks
):
    client.force_login(alice)
    grant_sudo(client)  # restoring needs sudo mode (tests/test_sudo.py)
    page = client.get(restore_url(finished_run)).content.decode()
    assert 'name="sources" value="office-files"' in page and "Office files (Directory, office-files/)" in page
    assert '<option value="office-files/docs">' in page  # the folder list for the path field
    data = {"location": "local", "target": str(roots / "part"), "path": "office-files/docs"}
    response, _ = post_restore(client, finished_run, data, django_capture_on_commit_callbacks)
    restore = Restore.objects.get()
    assert response.status_code == 302 and restore.state == Restore.State.SUCCEEDED, restore.message
    assert restore.only == ["office-files/docs"]
    restored = sorted(str(p.relative_to(roots / "part")) for p in (roots / "part").rglob("*"))
    assert restored == [
        "office-files",
        "office-files/docs",
        "office-files/docs/2026",
        "office-files/docs/2026/invoice.txt",
        "office-files/docs/notes.md",
    ]
    assert restore.details["files"] == 2 and restore.details["skipped"] > 0
    assert "other members were left out" in client.get(restore.get_absolute_url()).content.decode()


def test_choosing_a_whole_source(client, alice, finished_run, source_tree, roots, django_capture_on_commit_callbacks):
    client.force_login(alice)
    grant_sudo(client)  # restoring needs sudo mode (tests/test_sudo.py)
    data = {"location": "local", "target": str(roots / "src"), "sources": ["office-files"]}
    post_restore(client, finished_run, data, django_capture_on_commit_callbacks)
    assert Restore.objects.get().only == ["office-files"]
    assert trees_identical(source_tree, roots / "src" / "office-files")


@pytest.mark.parametrize(
    "path, message",
    [
        ("office-files/nope", "office-files/nope is not in this backup."),
        ("../etc", "paths must not contain"),
        ("/etc/passwd", "without a leading /"),
    ],
)
def test_a_path_outside_the_backup_is_an_error_at_its_field(
    client, alice, finished_run, roots, path, message, django_capture_on_commit_callbacks
):
    client.force_login(alice)
    grant_sudo(client)  # restoring needs sudo mode (tests/test_sudo.py)
    data = {"location": "local", "target": str(roots / "p"), "path": path}
    response, callbacks = post_restore(client, finished_run, data, django_capture_on_commit_callbacks)
    page = response.content.decode()
    assert response.status_code == 200 and callbacks == [] and not Restore.objects.exists()
    assert message in page.split('name="path"')[1]  # next to the path field


# --- links to /etc -------------------------------------------------------------------------
def test_a_tree_with_links_to_etc_restores_from_the_page_on_a_worker(
    client, alice, job, source_tree, roots, django_capture_on_commit_callbacks
):
    os.symlink("/etc", source_tree / "etc-link")
    os.symlink("/etc/hostname", source_tree / "docs" / "hostname")
    run = services.execute_run(services.create_run(job).pk)
    assert run.state == Run.State.SUCCEEDED, run.error
    client.force_login(alice)
    grant_sudo(client)  # restoring needs sudo mode (tests/test_sudo.py)
    post_restore(client, run, {"location": "local", "target": str(roots / "links")}, django_capture_on_commit_callbacks)
    restore = Restore.objects.get()
    assert restore.state == Restore.State.SUCCEEDED, restore.message
    restored = roots / "links" / "office-files"
    assert (
        os.readlink(restored / "etc-link") == "/etc" and os.readlink(restored / "docs" / "hostname") == "/etc/hostname"
    )
    assert trees_identical(source_tree, restored)
    assert restore.details["outside_count"] == 2
    page = client.get(restore.get_absolute_url()).content.decode()
    assert "2 symbolic links point outside the restored folder" in page
    assert "<code>office-files/etc-link</code> → <code>/etc</code>" in page


# --- the reaper -----------------------------------------------------------------------------
def test_the_reaper_fails_a_restore_whose_worker_died_and_removes_its_files(finished_run, roots, settings, queue):
    target = roots / "dead"
    restore = queue(finished_run, target)
    RestoreTicket.objects.all().delete()
    target.mkdir()
    (target / ".backupsite-restore-abc123").mkdir()
    (target / ".backupsite-restore-abc123" / "half.bin").write_bytes(b"x" * 10)
    long_ago = timezone.now() - timezone.timedelta(seconds=settings.BACKUPSITE_STALE_RUN_SECONDS + 5)
    Restore.objects.filter(pk=restore.pk).update(state=Restore.State.RUNNING, heartbeat_at=long_ago)
    fresh = queue(finished_run, roots / "alive")
    RestoreTicket.objects.filter(restore=fresh).delete()
    Restore.objects.filter(pk=fresh.pk).update(state=Restore.State.RUNNING, heartbeat_at=timezone.now())
    assert restores.reap_restores() == 1
    restore.refresh_from_db()
    assert restore.state == Restore.State.FAILED and "stopped" in restore.message
    assert "unfinished files were removed" in restore.message
    assert list(target.iterdir()) == []
    assert Restore.objects.get(pk=fresh.pk).state == Restore.State.RUNNING


def test_the_reaper_removes_keys_nobody_picked_up(finished_run, roots, queue):
    restore = queue(finished_run, roots / "never")
    day_ago = timezone.now() - timezone.timedelta(days=1, minutes=1)
    Restore.objects.filter(pk=restore.pk).update(created_at=day_ago)
    RestoreTicket.objects.filter(restore=restore).update(created_at=day_ago)
    services.reap_stale_runs()
    assert not RestoreTicket.objects.exists()
    restore.refresh_from_db()
    assert restore.state == Restore.State.FAILED and "within a day" in restore.message
