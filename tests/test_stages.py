"""Tasks in stages (issue 9, items 3, 4 and 6), in-process: the archive stage hands one
upload per destination to the queue of the host that has the file, after commit; only
the archive holds the slot and the job's lock; a conditional update closes the run once,
when its last upload settled; transient errors are retried with growing delays (pure
rule and applied), permanent ones never; a local copy that is gone makes the latest good
local backup go instead. The real broker and workers are in tests/test_scheduling_e2e.py.

Tasks are not sent here: ``jobs.enqueue._send`` is replaced by a recorder, so the tests
see exactly which task goes to which queue with which countdown, and run it themselves.
"""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta

import pytest
from django.core import mail
from django.utils import timezone

from destinations.backends import local
from destinations.backends.base import TransientError
from destinations.models import Destination
from jobs import enqueue, services, uploads
from jobs.models import Job, Run, Upload
from jobs.uploads import RetryLimits, backoff, outcome, retry_plan

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def sent(monkeypatch):
    """Every task handed to the broker: (task name, args, queue, countdown)."""
    calls: list[tuple] = []
    monkeypatch.setattr(
        enqueue, "_send", lambda name, args, *, queue, countdown=None: calls.append((name, args, queue, countdown))
    )
    return calls


@pytest.fixture
def two_destinations(job, folders):
    nas = Destination.objects.create(name="NAS", kind="local", settings={"path": str(folders["backups"])})
    (folders["root"] / "usb").mkdir()
    job.destinations.add(nas)
    return job


def archived(job, django_capture_on_commit_callbacks) -> Run:
    run = services.create_run(job)
    with django_capture_on_commit_callbacks(execute=True):
        run = services.archive_stage(run.pk)
    return run


# --- the pure rules ---------------------------------------------------------------------
LIMITS = RetryLimits(attempts=5, max_age=3600, base=60, cap=600)


def test_backoff_doubles_with_equal_jitter_so_each_delay_is_at_least_the_one_before():
    for seed in range(20):
        rng = random.Random(seed)
        delays = [backoff(n, LIMITS, rng.random) for n in range(1, 9)]
        for n, delay in enumerate(delays, start=1):
            full = min(600, 60 * 2 ** (n - 1))
            assert full / 2 <= delay <= full
        # Below the cap each delay is at least the one before (its lower bound is the
        # previous upper bound); at the cap they stay between half of it and all of it.
        assert delays[:4] == sorted(delays[:4])
    assert backoff(20, LIMITS, lambda: 1.0) == 600 and backoff(20, LIMITS, lambda: 0.0) == 300


def test_a_permanent_error_is_never_retried():
    decision = retry_plan(attempts=1, first_attempt_at=NOW, now=NOW, permanent=True, limits=LIMITS)
    assert not decision.retry and "permanent" in decision.reason


def test_retries_stop_at_the_configured_count_and_age():
    ok = retry_plan(attempts=2, first_attempt_at=NOW, now=NOW, permanent=False, limits=LIMITS, rand=lambda: 0.0)
    assert ok.retry and ok.delay == 60 and ok.reason == "attempt 3 of 5 in 60 s"
    count = retry_plan(attempts=5, first_attempt_at=NOW, now=NOW, permanent=False, limits=LIMITS)
    assert not count.retry and count.reason == "gave up after 5 attempts (BACKUPSITE_UPLOAD_MAX_ATTEMPTS)"
    old = retry_plan(attempts=2, first_attempt_at=NOW - timedelta(minutes=59), now=NOW, permanent=False, limits=LIMITS)
    assert not old.retry and "over 1 h (BACKUPSITE_UPLOAD_MAX_AGE_SECONDS)" in old.reason


def test_the_outcome_of_a_run_from_its_uploads():
    assert outcome(["succeeded", "succeeded"], warning_count=0, cancelled=False, host="a") == ("succeeded", "")
    assert outcome(["succeeded", "failed"], warning_count=0, cancelled=False, host="a") == (
        "partial",
        "1 of 2 upload(s) failed (see the log).",
    )
    assert outcome(["failed"], warning_count=0, cancelled=False, host="a") == (
        "failed",
        "Every upload failed; the archive is kept on a.",
    )
    assert outcome([], warning_count=2, cancelled=False, host="a")[0] == "partial"
    assert outcome(["failed"], warning_count=0, cancelled=True, host="a")[0] == "cancelled"


# --- the stages, applied -------------------------------------------------------------------
def test_the_archive_stage_frees_slot_and_lock_and_hands_each_upload_to_the_hosts_queue_after_commit(
    two_destinations, sent, django_capture_on_commit_callbacks
):
    job = two_destinations
    run = services.create_run(job)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        run = services.archive_stage(run.pk)
        assert sent == []  # nothing leaves before the commit
    for callback in callbacks:
        callback()
    assert run.state == Run.State.UPLOADING and run.host == "test-host" and run.released_at is not None
    ups = list(run.uploads.order_by("pk"))
    assert [u.state for u in ups] == [Upload.State.PENDING, Upload.State.PENDING]
    assert [(name, args, queue) for name, args, queue, _ in sent] == [
        ("upload_archive", [ups[0].pk], "host.test-host"),
        ("upload_archive", [ups[1].pk], "host.test-host"),
    ]
    # Only the archive stage held the slot and the job's lock: both are free now.
    assert services.create_run(job).state == Run.State.QUEUED
    other = Job.objects.create(name="Other")
    other.sources.set(job.sources.all())
    assert services.claim(services.create_run(other).pk) == "claimed"


def test_the_last_upload_to_settle_closes_the_run_exactly_once(
    two_destinations, sent, django_capture_on_commit_callbacks
):
    run = archived(two_destinations, django_capture_on_commit_callbacks)
    first, second = run.uploads.order_by("pk")
    assert uploads.upload_stage(first.pk) == Upload.State.SUCCEEDED
    run.refresh_from_db()
    assert run.state == Run.State.UPLOADING  # one upload still open
    assert uploads.upload_stage(second.pk) == Upload.State.SUCCEEDED
    run.refresh_from_db()
    assert run.state == Run.State.SUCCEEDED and run.phase == Run.Phase.DONE and run.finished_at
    assert run.bytes_done == run.bytes_total == 2 * run.archive_size
    assert uploads.settle(run.pk) is False  # closed once; a late settle does nothing
    assert uploads.upload_stage(first.pk) is None  # a duplicate delivery does nothing
    assert "Uploaded to Local disk (attempt 1)." in run.log and "Uploaded to NAS (attempt 1)." in run.log


def test_a_transient_error_is_retried_with_growing_delays_then_the_run_succeeds(
    job, sent, settings, monkeypatch, django_capture_on_commit_callbacks
):
    # The failure is forced here (a session that raises TransientError three times);
    # tests/test_scheduling_e2e.py cuts a real connection through a TCP proxy.
    settings.BACKUPSITE_UPLOAD_RETRY_SECONDS = 10
    settings.BACKUPSITE_UPLOAD_RETRY_MAX_SECONDS = 1000
    real = local.LocalSession.upload_files
    failures = iter([TransientError("Connection reset by the server.")] * 3)

    def flaky(self, *args, **kwargs):
        error = next(failures, None)
        if error is not None:
            raise error
        return real(self, *args, **kwargs)

    monkeypatch.setattr(local.LocalSession, "upload_files", flaky)
    run = archived(job, django_capture_on_commit_callbacks)
    upload = run.uploads.get()
    sent.clear()
    delays = []
    for attempt in range(1, 4):
        with django_capture_on_commit_callbacks(execute=True):
            assert uploads.upload_stage(upload.pk) == Upload.State.RETRYING
        upload.refresh_from_db()
        assert upload.attempts == attempt and upload.error == "Connection reset by the server."
        name, args, queue, countdown = sent[-1]
        assert (name, args, queue) == ("upload_archive", [upload.pk], "host.test-host")
        assert abs((upload.next_attempt_at - timezone.now()).total_seconds() - countdown) < 2
        delays.append(countdown)
        assert uploads.upload_stage(upload.pk) is None  # not due yet: an early delivery waits
        Upload.objects.filter(pk=upload.pk).update(next_attempt_at=timezone.now())  # time passes
    assert delays == sorted(delays) and delays[0] >= 5 and delays[2] >= 20  # 10·2^(n-1), equal jitter
    assert uploads.upload_stage(upload.pk) == Upload.State.SUCCEEDED
    run.refresh_from_db()
    assert run.state == Run.State.SUCCEEDED
    assert run.log.count("Retrying: attempt") == 3 and "Uploaded to Local disk (attempt 4)." in run.log
    assert not mail.outbox  # retried and made: no alert


def test_a_permanent_error_fails_the_upload_at_once_and_says_where_the_backup_is_kept(
    job, folders, sent, django_capture_on_commit_callbacks
):
    Destination.objects.filter(pk=job.destinations.get().pk).update(settings={"path": str(folders["backups"] / "x")})
    run = archived(job, django_capture_on_commit_callbacks)
    assert uploads.upload_stage(run.uploads.get().pk) == Upload.State.FAILED
    upload = run.uploads.get()
    assert upload.attempts == 1 and "does not exist" in upload.error
    assert not [s for s in sent if s[0] == "upload_archive" and s[3]]  # never scheduled again
    run.refresh_from_db()
    assert run.state == Run.State.FAILED and "the archive is kept on test-host" in run.error
    [message] = mail.outbox
    assert message.subject == "[backupsite] Upload failed: Office backup → Local disk"
    assert sorted(message.to) == ["boss@example.com", "ops@example.com"]
    assert "Phase: upload" in message.body and "does not exist" in message.body
    assert "the local copy on test-host" in message.body and f"/runs/{run.pk}/" in message.body


def test_a_dead_nas_retried_for_hours_blocks_neither_the_next_backup_nor_other_jobs(
    job, sent, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(
        local.LocalSession, "upload_files", lambda *a, **k: (_ for _ in ()).throw(TransientError("No route to host."))
    )
    run = archived(job, django_capture_on_commit_callbacks)
    assert uploads.upload_stage(run.uploads.get().pk) == Upload.State.RETRYING
    # The same job's next backup is made meanwhile.
    monkeypatch.undo()
    nxt = services.execute_run(services.create_run(job).pk)
    assert nxt.state == Run.State.SUCCEEDED
    run.refresh_from_db()
    assert run.state == Run.State.UPLOADING and run.uploads.get().state == Upload.State.RETRYING


def test_when_the_local_copy_is_gone_the_latest_good_local_backup_is_uploaded_instead(
    job, folders, sent, django_capture_on_commit_callbacks
):
    older = services.create_run(job)
    Run.objects.filter(pk=older.pk).update(created_at=timezone.now() - timedelta(hours=1))  # another file name
    older = services.execute_run(older.pk)
    assert older.state == Run.State.SUCCEEDED
    # The older backup is not at the NAS yet (say the NAS was added since).
    nas = Destination.objects.create(name="NAS", kind="local", settings={"path": str(folders["backups"])})
    job.destinations.set([nas])
    run = archived(job, django_capture_on_commit_callbacks)
    run.local_file.unlink()  # today's archive is gone from this server
    sent.clear()
    with django_capture_on_commit_callbacks(execute=True):
        assert uploads.upload_stage(run.uploads.get().pk) == Upload.State.FAILED
    run.refresh_from_db()
    assert "The local copy of this archive is gone from test-host" in run.log
    assert f"run #{older.pk}" in run.log and "is uploaded there instead" in run.log
    instead = older.uploads.get(destination=nas)
    assert instead.state == Upload.State.PENDING
    assert sent == [("upload_archive", [instead.pk], "host.test-host", None)]
    older.refresh_from_db()
    assert f"in place of run #{run.pk}" in older.log
    assert uploads.upload_stage(instead.pk) == Upload.State.SUCCEEDED


def test_cancel_during_the_uploads_stops_them_and_keeps_the_archive(
    client, bob, job, sent, django_capture_on_commit_callbacks
):
    from django.urls import reverse

    run = archived(job, django_capture_on_commit_callbacks)
    client.force_login(bob)
    page = client.post(reverse("jobs:run_cancel", args=[run.pk]), follow=True).content.decode()
    assert "the uploads that had not finished are stopped" in page
    run.refresh_from_db()
    assert run.state == Run.State.CANCELLED and "the archive is kept on test-host" in run.error
    assert run.uploads.get().state == Upload.State.FAILED and run.local_file.is_file()
    assert not mail.outbox


def test_the_run_page_shows_each_upload_with_its_progress_rate_and_time_left(client, charlie, job):
    run = services.create_run(job)
    now = timezone.now()
    Run.objects.filter(pk=run.pk).update(state=Run.State.UPLOADING, phase=Run.Phase.UPLOAD, host="nas-host")
    dest = job.destinations.get()
    Upload.objects.create(
        run=run,
        destination=dest,
        destination_name=dest.name,
        state=Upload.State.UPLOADING,
        bytes_done=50 * 1024 * 1024,
        bytes_total=200 * 1024 * 1024,
        started_at=now - timedelta(seconds=10),
        attempts=2,
    )
    client.force_login(charlie)
    html = client.get(f"/runs/{run.pk}/progress/").content.decode()
    assert 'data-poll-active="true"' in html and "on nas-host" in html
    assert '<progress max="100" value="25"' in html
    assert re.search(r"[45]\.\d MB/s, less than a minute left", html)  # 50 MB in 10 s, 150 MB to go


def test_runbackup_exits_4_when_an_upload_is_left_to_the_workers_retries(
    job, sent, monkeypatch, django_capture_on_commit_callbacks
):
    from django.core.management import call_command

    monkeypatch.setattr(
        local.LocalSession, "upload_files", lambda *a, **k: (_ for _ in ()).throw(TransientError("Timed out."))
    )
    with pytest.raises(SystemExit) as exited, django_capture_on_commit_callbacks(execute=True):
        call_command("runbackup", job.name, "--quiet")
    assert exited.value.code == 4
    run = Run.objects.get(job=job)
    assert run.state == Run.State.UPLOADING and run.uploads.get().state == Upload.State.RETRYING
    assert ("upload_archive", [run.uploads.get().pk]) in [(name, args) for name, args, _, _ in sent]


def test_local_retention_keeps_a_local_copy_whose_upload_is_still_being_retried(job, sent, monkeypatch):
    Job.objects.filter(pk=job.pk).update(keep_last=1)
    job.refresh_from_db()
    first = services.create_run(job)
    Run.objects.filter(pk=first.pk).update(created_at=timezone.now() - timedelta(hours=1))
    monkeypatch.setattr(
        local.LocalSession, "upload_files", lambda *a, **k: (_ for _ in ()).throw(TransientError("No route."))
    )
    first = services.execute_run(first.pk)
    assert first.state == Run.State.UPLOADING
    monkeypatch.undo()
    second = services.execute_run(services.create_run(job).pk)
    assert second.state == Run.State.SUCCEEDED
    assert first.local_file.is_file()  # keep_last=1, but its upload is still open


def test_the_redis_visibility_timeout_exceeds_the_hard_limit_and_the_longest_retry_delay(tmp_path):
    """RELIABILITY 11: a long task (or a retry waiting for its countdown) is never handed
    out a second time by Redis; and a second delivery would find its row taken anyway."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import django; django.setup(); from django.conf import settings as s; from backupsite.celery import app; "
        "print(app.conf.broker_transport_options['visibility_timeout'], s.CELERY_HARD_TIME_LIMIT, "
        "s.BACKUPSITE_UPLOAD_RETRY_MAX_SECONDS, app.conf.task_acks_late, app.conf.worker_prefetch_multiplier, "
        "app.conf.beat_schedule['dispatch-tick']['options']['expires'], "
        "app.conf.beat_schedule['sweep-uploads']['schedule'], sorted(q.name for q in app.conf.task_queues))"
    )
    env = {
        "PATH": os.environ["PATH"],
        "DJANGO_SETTINGS_MODULE": "backupsite.settings",
        "BACKUPSITE_ENV_FILE": "",
        "BACKUPSITE_DATA_DIR": str(tmp_path / "data"),
        "DEBUG": "1",
        "CELERY_BROKER_URL": "redis://127.0.0.1:1/0",  # only configured, never connected
        "CELERY_SOFT_TIME_LIMIT": "30000",
        "BACKUPSITE_UPLOAD_RETRY_MAX_SECONDS": "40000",
    }
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    visibility, hard, retry, rest = out.stdout.split(maxsplit=3)
    assert int(visibility) > int(hard) == 30600 and int(visibility) > int(retry) == 40000
    assert rest.strip() == "True 1 60.0 300.0 ['archives', 'celery', 'exports']"
