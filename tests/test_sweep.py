"""The sweep (issue 9, items 5 and 7) and crash recovery under the stages: the pure plan
(a dead worker's upload retried or failed, lost hand-overs and countdowns enqueued again,
a run nobody closed closed), applied with a line in the run's log each; a run whose
worker died while archiving is started again at most BACKUPSITE_RUN_RESTARTS times, then
ends interrupted with a message. The real kills are in tests/test_scheduling_e2e.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.core import mail
from django.utils import timezone

from jobs import enqueue, reconcile, services, sweep
from jobs.models import Run, Upload
from jobs.reconcile import INTERRUPT, RESTART, WAKE, Limits, RunInfo
from jobs.sweep import ENQUEUE, FAIL, FINALIZE, KEEP, RETRY, Candidate, UploadInfo, plan, substitute

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LIMITS = sweep.Limits(stale_seconds=60, grace_seconds=60, attempts=3)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def upload(**kwargs) -> UploadInfo:
    base = {"pk": 1, "run_id": 10, "state": "pending", "attempts": 0, "destination": "NAS", "host": "a"}
    return UploadInfo(**{**base, **kwargs})


def decided(uploads, unclosed=()):
    return [(d.action, d.reason) for d in plan(uploads, unclosed, now=NOW, limits=LIMITS)]


# --- the pure plan ---------------------------------------------------------------------------
def test_a_live_upload_and_a_retry_not_due_yet_are_left_alone():
    assert decided([upload(state="uploading", attempts=1, heartbeat_at=ago(5))]) == [
        (KEEP, "uploading: last heartbeat 5 s ago")
    ]
    assert decided([upload(state="retrying", attempts=1, next_attempt_at=NOW + timedelta(minutes=9))]) == [
        (KEEP, "waiting for its next attempt")
    ]
    assert decided([upload(since=ago(30))]) == [(KEEP, "just handed to the workers")]


def test_a_dead_workers_upload_is_retried_while_attempts_remain_then_failed():
    assert decided([upload(state="uploading", attempts=2, heartbeat_at=ago(120))]) == [
        (RETRY, "the worker stopped during attempt 2 (no heartbeat for 120 s): trying again now")
    ]
    action, reason = decided([upload(state="uploading", attempts=3, heartbeat_at=ago(120))])[0]
    assert action == FAIL and "the last one allowed (BACKUPSITE_UPLOAD_MAX_ATTEMPTS)" in reason


def test_lost_hand_overs_and_lost_countdowns_are_enqueued_again_and_unclosed_runs_closed():
    result = decided(
        [upload(since=ago(300)), upload(pk=2, state="retrying", attempts=2, next_attempt_at=ago(90))],
        unclosed=[(11, "b")],
    )
    assert result == [
        (ENQUEUE, "waiting for a worker for 300 s: handed to the workers on a again"),
        (ENQUEUE, "attempt 3 was due 90 s ago: handed to the workers on a again"),
        (FINALIZE, "every upload settled but the run was not closed: closing it"),
    ]


def test_an_upload_for_a_host_whose_workers_are_down_is_not_sent_again_and_again():
    lost = upload(since=ago(300))
    assert plan([lost], (), now=NOW, limits=LIMITS, hosts={"a": False})[0].action == KEEP
    assert plan([lost], (), now=NOW, limits=LIMITS, hosts={"a": True})[0].action == ENQUEUE
    assert plan([lost], (), now=NOW, limits=LIMITS, hosts={"b": True})[0].action == ENQUEUE  # never seen: send


def test_the_substitute_is_the_latest_good_local_backup():
    candidates = [
        Candidate(3, ago(3 * 86400), True),
        Candidate(4, ago(2 * 86400), False),  # its local copy is gone too
        Candidate(5, ago(86400), True),
    ]
    chosen = substitute(9, candidates)
    assert chosen.run_id == 5 and "run #5" in chosen.reason and "is uploaded there instead" in chosen.reason
    assert substitute(9, [Candidate(4, NOW, False)]).run_id is None


# --- applied ----------------------------------------------------------------------------------
@pytest.fixture
def sent(monkeypatch):
    calls = []
    monkeypatch.setattr(
        enqueue, "_send", lambda name, args, *, queue, countdown=None: calls.append((name, args, queue))
    )
    return calls


def uploading_run(job, **upload_fields):
    run = services.create_run(job)
    Run.objects.filter(pk=run.pk).update(
        state=Run.State.UPLOADING, host="test-host", released_at=timezone.now() - timedelta(minutes=10)
    )
    dest = job.destinations.get()
    up = Upload.objects.create(run=run, destination=dest, destination_name=dest.name, **upload_fields)
    return run, up


def test_the_sweep_hands_a_lost_upload_over_again_and_logs_it(job, sent, django_capture_on_commit_callbacks):
    run, up = uploading_run(job)
    with django_capture_on_commit_callbacks(execute=True):
        applied = sweep.sweep()
    assert [d.action for d in applied] == [ENQUEUE]
    assert sent == [("upload_archive", [up.pk], "host.test-host")]
    run.refresh_from_db()
    assert "Sweep: upload to Local disk: waiting for a worker for 6" in run.log


def test_the_sweep_fails_an_upload_whose_worker_died_on_its_last_attempt_and_alerts(job, settings, sent):
    settings.BACKUPSITE_UPLOAD_MAX_ATTEMPTS = 2
    stale = timezone.now() - timedelta(seconds=settings.BACKUPSITE_STALE_RUN_SECONDS + 10)
    run, up = uploading_run(job, state=Upload.State.UPLOADING, attempts=2, heartbeat_at=stale)
    assert [d.action for d in sweep.sweep()] == [FAIL]
    up.refresh_from_db()
    run.refresh_from_db()
    assert up.state == Upload.State.FAILED and "the last one allowed" in up.error
    assert run.state == Run.State.FAILED  # its only upload settled: closed
    assert [m.subject for m in mail.outbox] == ["[backupsite] Upload failed: Office backup → Local disk"]


def test_the_sweep_closes_a_run_whose_close_was_lost(job, sent):
    run, _ = uploading_run(job, state=Upload.State.SUCCEEDED)
    assert [d.action for d in sweep.sweep()] == [FINALIZE]
    run.refresh_from_db()
    assert run.state == Run.State.SUCCEEDED and "Sweep: every upload settled but the run was not closed" in run.log


def test_a_run_closed_on_another_host_goes_to_that_hosts_queue(job, sent, django_capture_on_commit_callbacks):
    run, _ = uploading_run(job, state=Upload.State.SUCCEEDED)
    Run.objects.filter(pk=run.pk).update(host="other-machine")
    with django_capture_on_commit_callbacks(execute=True):
        sweep.sweep()
    assert ("finalize_run", [run.pk], "host.other-machine") in sent
    run.refresh_from_db()
    assert run.state == Run.State.UPLOADING  # closed there, where its local copies are


# --- restarts after a dead worker (OOM, kill -9, reboot) ----------------------------------------
R_LIMITS = Limits(stale_seconds=60, grace_seconds=20, slots=1, restarts=2)


def test_a_dead_archive_is_restarted_until_the_restarts_are_used_up_then_interrupted():
    dead = RunInfo(1, "running", created_at=ago(900), heartbeat_at=ago(120), restarts=1)
    waiting = RunInfo(2, "waiting", created_at=ago(800))
    decisions = {d.pk: d for d in reconcile.plan([dead, waiting], now=NOW, limits=R_LIMITS)}
    assert decisions[1].action == RESTART and decisions[1].reason.endswith("starting it again (restart 2 of 2)")
    assert decisions[2].action == reconcile.KEEP  # the restarted run goes first for the freed slot
    used_up = RunInfo(1, "running", created_at=ago(900), heartbeat_at=ago(120), restarts=2)
    decisions = {d.pk: d for d in reconcile.plan([used_up, waiting], now=NOW, limits=R_LIMITS)}
    assert decisions[1].action == INTERRUPT and "started again 2 time(s) already" in decisions[1].reason
    assert decisions[2].action == WAKE


def test_a_restarted_run_is_queued_again_and_cleaned_then_ends_interrupted_with_a_message(
    job, settings, sent, django_capture_on_commit_callbacks
):
    settings.BACKUPSITE_RUN_RESTARTS = 1
    run = services.create_run(job)
    services.claim(run.pk)
    staging = services.archive_dir_for(job.slug)
    staging.mkdir(parents=True)
    (staging / ".office-backup-x.tar.zst.partial").write_bytes(b"half")
    old = timezone.now() - timedelta(seconds=settings.BACKUPSITE_STALE_RUN_SECONDS + 5)
    Run.objects.filter(pk=run.pk).update(phase=Run.Phase.ARCHIVE, heartbeat_at=old)
    with django_capture_on_commit_callbacks(execute=True):
        assert [d.action for d in services.reconcile_runs()] == [RESTART]
    run.refresh_from_db()
    assert run.state == Run.State.QUEUED and run.restarts == 1
    assert "The worker stopped while writing the archive (no heartbeat for 6" in run.log
    assert "starting this backup again (restart 1 of 1, BACKUPSITE_RUN_RESTARTS)" in run.log
    assert not list(staging.glob(".*.partial")) and sent == [("archive_run", [run.pk], "archives")]
    assert not mail.outbox

    services.claim(run.pk)  # a worker takes it, and dies again
    Run.objects.filter(pk=run.pk).update(phase=Run.Phase.ARCHIVE, heartbeat_at=old)
    assert services.reap_stale_runs() == 1
    run.refresh_from_db()
    assert run.state == Run.State.INTERRUPTED
    assert "It was started again 1 time(s) after its worker stopped before" in run.error
    assert "out of memory?" in run.error
    assert [m.subject for m in mail.outbox] == ["[backupsite] Backup interrupted: Office backup"]
