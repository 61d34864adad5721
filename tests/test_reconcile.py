"""Reconciling runs with their workers (issue 6, item 2), fast and in-process: the pure
decisions of jobs/reconcile.py, how services apply them (interrupt + clean-up, hand the
slot on, hand over once, then fail), cancel paths, a worker that lost its run, and the
places that show or count the new states. The real-process kills are in
tests/test_worker_kill.py."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.apps import apps as django_apps
from django.core import mail
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone

from jobs import reconcile, services, tasks
from jobs.models import Job, Run
from jobs.reconcile import FAIL, INTERRUPT, KEEP, REQUEUE, WAKE, Limits, RunInfo, plan

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
LIMITS = Limits(stale_seconds=60, grace_seconds=20, slots=1)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def decided(runs, **kwargs) -> dict[int, tuple[str, str]]:
    kwargs.setdefault("limits", LIMITS)
    return {d.pk: (d.action, d.reason) for d in plan(runs, now=NOW, **kwargs)}


# --- the pure rules ---------------------------------------------------------------------
def test_a_run_with_a_fresh_heartbeat_keeps_the_runs_behind_it_waiting_for_hours():
    six_hours = 6 * 3600
    holder = RunInfo(1, "running", created_at=ago(six_hours), started_at=ago(six_hours), heartbeat_at=ago(5))
    waiting = RunInfo(2, "waiting", created_at=ago(six_hours - 1), enqueued_at=ago(six_hours - 1))
    queued = RunInfo(3, "queued", created_at=ago(six_hours - 2), enqueued_at=ago(six_hours - 2), requeues=1)
    result = decided([holder, waiting, queued], last_release=ago(7 * 3600))
    assert result[1] == (KEEP, "alive: last heartbeat 5 s ago")
    assert result[2] == (KEEP, "waiting: every slot is held by a live run (#1)")
    assert result[3][0] == KEEP  # even one handed over before: nobody fails behind a live run


def test_a_stale_holder_is_interrupted_and_the_oldest_waiting_run_gets_its_slot_in_the_same_pass():
    holder = RunInfo(1, "uploading", created_at=ago(900), heartbeat_at=ago(61))
    older = RunInfo(2, "waiting", created_at=ago(600))
    newer = RunInfo(3, "waiting", created_at=ago(300))
    result = decided([newer, holder, older])
    assert result[1] == (INTERRUPT, "no heartbeat for 61 s (limit 60 s)")
    assert result[2] == (WAKE, "a slot is free: handing it to the workers")
    assert result[3] == (KEEP, "waiting behind run #2, which is next")


def test_a_stale_holder_whose_cancel_was_requested_is_cancelled_not_interrupted():
    holder = RunInfo(1, "running", created_at=ago(900), heartbeat_at=ago(120), cancel_requested=True)
    assert decided([holder])[1][0] == reconcile.CANCEL


def test_a_stale_holder_of_a_kind_that_does_not_restart_is_interrupted_and_its_slot_handed_on():
    limits = Limits(stale_seconds=60, grace_seconds=20, slots=1, restarts=1)
    backup = RunInfo(1, "running", created_at=ago(900), heartbeat_at=ago(61))
    assert decided([backup], limits=limits)[1][0] == reconcile.RESTART
    export = RunInfo(1, "running", created_at=ago(900), heartbeat_at=ago(61), kind="export", restartable=False)
    waiting = RunInfo(2, "waiting", created_at=ago(600))
    result = decided([export, waiting], limits=limits)
    assert result[1] == (INTERRUPT, "no heartbeat for 61 s (limit 60 s)")
    assert result[2][0] == WAKE  # the slot the export held is free in the same pass


def test_a_queued_run_nobody_takes_is_handed_over_once_after_the_grace_then_failed():
    fresh = RunInfo(1, "queued", created_at=ago(10), enqueued_at=ago(10))
    assert decided([fresh])[1] == (KEEP, "a slot is free; a worker should take it (10 s so far)")

    lost = RunInfo(1, "queued", created_at=ago(25), enqueued_at=ago(25))
    action, reason = decided([lost])[1]
    assert action == REQUEUE and "no worker took it within 25 s" in reason

    handed_over = RunInfo(1, "queued", created_at=ago(25), enqueued_at=ago(5), requeues=1)
    assert decided([handed_over])[1][0] == KEEP  # the clock restarted with the hand-over

    still_lost = RunInfo(1, "queued", created_at=ago(50), enqueued_at=ago(25), requeues=1)
    action, reason = decided([still_lost])[1]
    assert action == FAIL and "even after it was handed over again" in reason


def test_the_grace_counts_from_when_the_slot_last_freed():
    queued = RunInfo(1, "queued", created_at=ago(3600), enqueued_at=ago(3600))
    assert decided([queued], last_release=ago(3))[1][0] == KEEP
    assert decided([queued], last_release=ago(30))[1][0] == REQUEUE


def test_only_as_many_runs_as_free_slots_are_due():
    limits = Limits(stale_seconds=60, grace_seconds=20, slots=2)
    holder = RunInfo(1, "running", created_at=ago(100), heartbeat_at=ago(1))
    first = RunInfo(2, "queued", created_at=ago(90), enqueued_at=ago(90))
    second = RunInfo(3, "queued", created_at=ago(80), enqueued_at=ago(80))
    result = decided([holder, first, second], limits=limits)
    assert result[2][0] == REQUEUE and result[3] == (KEEP, "waiting behind run #2, which is next")


def test_a_queued_run_whose_cancel_was_requested_is_cancelled():
    run = RunInfo(1, "queued", created_at=ago(5), cancel_requested=True)
    assert decided([run])[1][0] == reconcile.CANCEL


# --- applied by services --------------------------------------------------------------------
def other_job(job) -> Job:
    other = Job.objects.create(name="Other backup", report_to="other@example.com")
    other.sources.set(job.sources.all())
    other.destinations.set(job.destinations.all())
    return other


def make_running(job, heartbeat_age: float = 0) -> Run:
    run = services.create_run(job)
    assert services.claim(run.pk) == "claimed"
    Run.objects.filter(pk=run.pk).update(
        phase=Run.Phase.ARCHIVE, heartbeat_at=timezone.now() - timedelta(seconds=heartbeat_age)
    )
    run.refresh_from_db()
    return run


def park(job) -> Run:
    """A run a worker found no slot for (parked as waiting; no message in the broker)."""
    run = services.create_run(job)
    assert services.claim(run.pk) == "busy"
    run.refresh_from_db()
    assert run.state == Run.State.WAITING
    return run


def test_the_reconcile_interrupts_a_dead_run_removes_its_partials_alerts_and_wakes_the_next(
    job, folders, settings, django_capture_on_commit_callbacks
):
    dead = make_running(job, heartbeat_age=settings.BACKUPSITE_STALE_RUN_SECONDS + 5)
    waiting = park(other_job(job))
    staging = services.archive_dir_for(job.slug)
    staging.mkdir(parents=True)
    (staging / ".office-backup-x.tar.zst.partial").write_bytes(b"half")
    (staging / ".pgdump-db-abc.partial").write_bytes(b"half")
    keep = staging / "office-backup-old.tar.zst"
    keep.write_bytes(b"a finished archive")
    remote = folders["backups"] / "backupsite" / job.slug
    remote.mkdir(parents=True)
    (remote / ".office-backup-x.tar.zst.partial").write_bytes(b"half")

    with django_capture_on_commit_callbacks() as callbacks:
        applied = services.reconcile_runs()

    assert {(d.pk, d.action) for d in applied} == {(dead.pk, INTERRUPT), (waiting.pk, WAKE)}
    dead.refresh_from_db()
    assert dead.state == Run.State.INTERRUPTED and dead.finished_at is not None
    assert dead.error.startswith("Interrupted: the worker stopped while writing the archive (no heartbeat for 6")
    assert "Removed 2 temporary file(s) the stopped worker left on this server" in dead.log
    assert "Local disk: removed 1 temporary file(s) the stopped worker left." in dead.log
    assert not list(staging.glob(".*.partial")) and not list(remote.glob(".*.partial")) and keep.is_file()
    assert [m.subject for m in mail.outbox] == ["[backupsite] Backup interrupted: Office backup"]
    waiting.refresh_from_db()
    assert waiting.state == Run.State.QUEUED and waiting.requeues == 0 and waiting.enqueued_at is not None
    assert len(callbacks) == 1  # the woken run is sent to the workers
    assert services.create_run(job).state == Run.State.QUEUED  # the job's lock is free


def test_an_uploading_run_holds_no_slot_and_its_dead_upload_is_swept_not_the_run_interrupted(job, settings):
    """Under the stages (issue 9) the archive is made once a run is "uploading": the
    reconcile leaves it alone (no slot, no lock); an upload whose worker died is the
    sweep's, which takes it back and hands it to the workers again."""
    from jobs import sweep
    from jobs.models import Upload

    run = make_running(job, heartbeat_age=settings.BACKUPSITE_STALE_RUN_SECONDS + 5)
    Run.objects.filter(pk=run.pk).update(state=Run.State.UPLOADING, phase=Run.Phase.UPLOAD, host="test-host")
    destination = job.destinations.get()
    stale = timezone.now() - timedelta(seconds=settings.BACKUPSITE_STALE_RUN_SECONDS + 5)
    upload = Upload.objects.create(
        run=run,
        destination=destination,
        destination_name=destination.name,
        state=Upload.State.UPLOADING,
        attempts=1,
        heartbeat_at=stale,
    )
    assert services.reap_stale_runs() == 0
    assert services.create_run(job).state == Run.State.QUEUED  # the job's lock is free
    applied = sweep.sweep()
    assert [d.action for d in applied] == [sweep.RETRY]
    run.refresh_from_db()
    upload.refresh_from_db()
    assert run.state == Run.State.UPLOADING
    assert "Sweep: upload to Local disk: the worker stopped during attempt 1 (no heartbeat for" in run.log


def test_an_unreachable_destination_does_not_stop_the_interrupt_or_the_alert(job, settings, monkeypatch):
    from destinations.backends import local

    def unreachable(self, folder):
        raise RuntimeError("connection refused")

    monkeypatch.setattr(local.LocalSession, "remove_partials", unreachable)
    run = make_running(job, heartbeat_age=settings.BACKUPSITE_STALE_RUN_SECONDS + 5)
    assert services.reap_stale_runs() == 1
    run.refresh_from_db()
    assert run.state == Run.State.INTERRUPTED
    assert "Local disk: could not remove temporary files (RuntimeError)." in run.log
    assert len(mail.outbox) == 1


def test_a_worker_that_is_alive_after_all_keeps_its_run(job, settings):
    run = make_running(job, heartbeat_age=settings.BACKUPSITE_STALE_RUN_SECONDS + 5)
    seen = services._info(run)
    Run.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now())  # it beat just now
    assert services.end_abandoned(seen, Run.State.INTERRUPTED) is None
    run.refresh_from_db()
    assert run.state == Run.State.RUNNING and not mail.outbox


def test_a_lost_hand_over_is_handed_over_once_then_fails_with_a_clear_message(
    job, settings, django_capture_on_commit_callbacks
):
    settings.BACKUPSITE_QUEUE_GRACE_SECONDS = 20
    run = services.create_run(job)
    long_ago = timezone.now() - timedelta(seconds=25)
    Run.objects.filter(pk=run.pk).update(created_at=long_ago, enqueued_at=long_ago)

    with django_capture_on_commit_callbacks() as callbacks:
        assert [d.action for d in services.reconcile_runs()] == [REQUEUE]
    assert len(callbacks) == 1
    run.refresh_from_db()
    assert run.state == Run.State.QUEUED and run.requeues == 1 and "Handed to the workers again" in run.log

    assert services.reconcile_runs() == []  # within the new grace: nothing to do
    later = timezone.now() + timedelta(seconds=25)
    assert [d.action for d in services.reconcile_runs(later)] == [FAIL]
    run.refresh_from_db()
    assert run.state == Run.State.FAILED
    assert run.error.startswith("No worker took this run: it waited more than 20 s with a free slot")
    assert "Check that a Celery worker is running" in run.error
    assert [m.subject for m in mail.outbox] == ["[backupsite] Backup failed: Office backup"]
    assert services.reconcile_runs(later) == []  # applied once


def test_a_finishing_run_hands_its_slot_to_the_oldest_waiting_run(job, django_capture_on_commit_callbacks):
    first = services.create_run(job)
    assert services.claim(first.pk) == "claimed"
    older = park(other_job(job))
    third = Job.objects.create(name="Third backup")
    third.sources.set(job.sources.all())
    newer = park(third)
    Run.objects.filter(pk=first.pk).update(state=Run.State.QUEUED)  # let execute_run claim it again

    with django_capture_on_commit_callbacks() as callbacks:
        assert services.execute_run(first.pk).state == Run.State.SUCCEEDED
    older.refresh_from_db()
    newer.refresh_from_db()
    assert older.state == Run.State.QUEUED and newer.state == Run.State.WAITING
    assert len(callbacks) == 1

    with django_capture_on_commit_callbacks(execute=True):
        callbacks[0]()  # the worker (eager Celery here) takes the woken run
    older.refresh_from_db()
    assert older.state == Run.State.SUCCEEDED


def test_the_task_parks_a_run_instead_of_retrying_in_the_broker(job):
    make_running(other_job(job))
    run = services.create_run(job)
    assert tasks.execute_run.apply(args=[run.pk]).get() == "waiting"  # no Retry raised
    run.refresh_from_db()
    assert run.state == Run.State.WAITING


def test_a_worker_whose_run_was_ended_elsewhere_does_not_bring_it_back(job, monkeypatch):
    real_init = services.Progress.__init__
    monkeypatch.setattr(services.Progress, "__init__", lambda self, run, **kw: real_init(self, run, **kw, interval=0))

    def listener(run):
        if run.phase == Run.Phase.ARCHIVE:  # the reconcile thought this worker dead
            Run.objects.filter(pk=run.pk).update(state=Run.State.INTERRUPTED, error="Interrupted: test")

    run = services.execute_run(services.create_run(job).pk, listener=listener)
    assert run.state == Run.State.INTERRUPTED and run.error == "Interrupted: test"
    stored = Run.objects.get(pk=run.pk)
    assert stored.state == Run.State.INTERRUPTED and stored.archive_size is None
    assert not list(services.archive_dir_for(job.slug).glob("*.tar.zst*"))
    assert not mail.outbox  # the reconcile alerts for it, not this worker


@pytest.mark.django_db(transaction=True)
def test_the_heartbeat_thread_notices_a_run_ended_elsewhere(job):
    import time

    run = make_running(job)
    beat = services.Heartbeat(run.pk, interval=0.05)
    beat.start()
    Run.objects.filter(pk=run.pk).update(state=Run.State.CANCELLED)
    deadline = time.monotonic() + 5
    while not beat.lost.is_set() and time.monotonic() < deadline:
        time.sleep(0.02)
    beat.stop()
    assert beat.lost.is_set() and beat.cancelled.is_set()  # long client programs stop


def test_the_heartbeat_interval_comes_from_the_settings(settings):
    settings.BACKUPSITE_HEARTBEAT_SECONDS = 7
    assert services.Heartbeat(1).interval == 7.0
    assert services.Heartbeat.CANCEL_POLL == 2.0


# --- cancel ---------------------------------------------------------------------------
def cancel(client, user, run):
    client.force_login(user)
    response = client.post(reverse("jobs:run_cancel", args=[run.pk]), follow=True)
    run.refresh_from_db()
    return response.content.decode()


def test_cancel_of_a_queued_run_is_immediate_and_a_later_delivery_finds_it_gone(client, bob, job):
    run = services.create_run(job)
    page = cancel(client, bob, run)
    assert run.state == Run.State.CANCELLED and "Cancelled before it started." in page
    assert "Cancelled by bob before it started." in run.log
    assert services.claim(run.pk) == "gone"


def test_cancel_of_a_waiting_run_is_immediate(client, bob, job):
    make_running(other_job(job))
    run = park(job)
    cancel(client, bob, run)
    assert run.state == Run.State.CANCELLED and run.finished_at is not None


def test_cancel_of_a_run_with_a_live_worker_asks_that_worker(client, bob, job):
    run = make_running(job, heartbeat_age=1)
    page = cancel(client, bob, run)
    assert run.state == Run.State.RUNNING and run.cancel_requested
    assert "Cancellation requested; the worker stops the run at its next checkpoint" in page


def test_cancel_of_a_run_whose_worker_is_gone_finishes_it_at_once(
    client, bob, job, settings, django_capture_on_commit_callbacks
):
    run = make_running(job, heartbeat_age=settings.BACKUPSITE_STALE_RUN_SECONDS + 1)
    waiting = park(other_job(job))
    staging = services.archive_dir_for(job.slug)
    staging.mkdir(parents=True)
    (staging / ".office-backup-x.tar.zst.partial").write_bytes(b"half")

    with django_capture_on_commit_callbacks() as callbacks:
        page = cancel(client, bob, run)

    assert run.state == Run.State.CANCELLED
    assert run.error.startswith("Cancelled: the worker running this backup had stopped while writing the archive")
    assert "The worker running this backup had stopped, so the cancellation was completed at once" in page
    assert not list(staging.glob(".*.partial"))
    waiting.refresh_from_db()
    assert waiting.state == Run.State.QUEUED and len(callbacks) == 1  # the slot went to the next run
    assert not mail.outbox  # a cancellation is not an alert


def test_cancel_of_a_finished_run_changes_nothing(client, bob, job):
    run = services.execute_run(services.create_run(job).pk)
    page = cancel(client, bob, run)
    assert run.state == Run.State.SUCCEEDED and "nothing to cancel" in page


def test_viewers_cannot_cancel(client, charlie, job):
    run = services.create_run(job)
    client.force_login(charlie)
    assert client.post(reverse("jobs:run_cancel", args=[run.pk])).status_code == 403
    run.refresh_from_db()
    assert run.state == Run.State.QUEUED


# --- where the states show ----------------------------------------------------------------
def finished(job, state: str, error: str = "") -> Run:
    return Run.objects.create(job=job, job_name=job.name, state=state, error=error, finished_at=timezone.now())


def test_the_run_page_and_list_name_the_new_states_with_their_own_badge(client, charlie, job):
    interrupted = finished(job, Run.State.INTERRUPTED, "Interrupted: the worker stopped while writing the archive.")
    timed_out = finished(job, Run.State.TIMED_OUT, "Timed out: the run took longer than the time limit.")
    finished(job, Run.State.FAILED, "Boom")
    client.force_login(charlie)

    page = client.get(interrupted.get_absolute_url()).content.decode()
    assert '<span class="state state-interrupted"' in page and ">Interrupted</span>" in page
    assert "The worker running this backup stopped before the run finished" in page
    assert 'data-poll-active="false"' in page
    page = client.get(timed_out.get_absolute_url()).content.decode()
    assert ">Timed out</span>" in page and "The run took longer than the time limit (6 hours" in page

    listing = client.get(reverse("jobs:run_list") + "?state=interrupted")
    assert [r.pk for r in listing.context["page"].object_list] == [interrupted.pk]
    html = listing.content.decode()
    assert '<option value="interrupted" selected>Interrupted</option>' in html
    assert '<option value="timed_out" >Timed out</option>' in html


def test_the_dashboard_counts_an_interrupted_run_as_finished_not_as_a_success(client, charlie, job):
    ok = finished(job, Run.State.SUCCEEDED)
    Run.objects.filter(pk=ok.pk).update(finished_at=timezone.now() - timedelta(days=1))
    finished(job, Run.State.INTERRUPTED, "Interrupted")
    client.force_login(charlie)
    response = client.get(reverse("dashboard"))
    assert not response.context["active_runs"]  # not "running now"
    row = response.context["rows"][0]  # a job, with its latest run and last success (jobs.overview)
    assert row.latest_run.state == Run.State.INTERRUPTED
    assert row.last_success_at == Run.objects.get(pk=ok.pk).finished_at
    assert "state-interrupted" in response.content.decode()


def test_final_and_alert_states():
    assert {Run.State.INTERRUPTED, Run.State.TIMED_OUT} <= set(Run.FINAL_STATES)
    assert not set(Run.FINAL_STATES) & set(Run.ACTIVE_STATES)
    assert set(Run.FINAL_STATES) | set(Run.LIVE_STATES) == set(Run.State.values)
    assert set(Run.LIVE_STATES) - set(Run.ACTIVE_STATES) == {Run.State.UPLOADING}
    assert set(Run.ALERT_STATES) == {Run.State.FAILED, Run.State.INTERRUPTED, Run.State.TIMED_OUT}


def test_runbackup_exits_1_for_a_timed_out_run(job, monkeypatch):
    from celery.exceptions import SoftTimeLimitExceeded

    def limit(*args, **kwargs):
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(services, "check_free_space", limit)
    with pytest.raises(CommandError, match=r"Run #\d+ timed out: Timed out: the run took longer") as raised:
        call_command("runbackup", job.name, "--quiet")
    assert raised.value.returncode == 1
    assert Run.objects.get(job=job).state == Run.State.TIMED_OUT


def test_runbackup_follows_a_run_a_worker_took(job, monkeypatch):
    from jobs.management.commands import runbackup

    monkeypatch.setattr(runbackup, "POLL_SECONDS", 0)
    make_running(other_job(job))
    real = services.execute_run
    calls = []

    def execute(run_id, **kwargs):
        calls.append(run_id)
        if len(calls) == 2:  # a worker took it meanwhile, and finishes it
            Run.objects.filter(pk=run_id).update(state=Run.State.RUNNING)
        elif len(calls) == 3:
            Run.objects.filter(pk=run_id).update(state=Run.State.SUCCEEDED, archive_name="x.tar.zst", archive_size=1)
        return real(run_id, **kwargs)

    monkeypatch.setattr(services, "execute_run", execute)
    call_command("runbackup", job.name, "--quiet")
    assert len(calls) == 3


def test_old_failed_rows_get_their_real_state(job):
    migration = importlib.import_module("jobs.migrations.0007_run_interrupted_timed_out_requeue")
    old = finished(job, Run.State.FAILED, "Interrupted: the worker stopped while running this backup. Temporary …")
    slow = finished(job, Run.State.FAILED, "Timed out: the run took longer than the configured time limit.")
    other = finished(job, Run.State.FAILED, "Source missing")
    migration.forwards(django_apps, None)
    states = dict(Run.objects.values_list("pk", "state"))
    assert states == {old.pk: "interrupted", slow.pk: "timed_out", other.pk: "failed"}


# --- settings -------------------------------------------------------------------------------
def check(tmp_path, **env) -> subprocess.CompletedProcess:
    base = {
        "PATH": os.environ["PATH"],
        "DJANGO_SETTINGS_MODULE": "backupsite.settings",
        "BACKUPSITE_ENV_FILE": "",
        "BACKUPSITE_DATA_DIR": str(tmp_path / "data"),
        "DEBUG": "1",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); from django.conf import settings as s; "
         "print(s.BACKUPSITE_HEARTBEAT_SECONDS, s.BACKUPSITE_STALE_RUN_SECONDS, s.BACKUPSITE_REAPER_SECONDS, "
         "s.BACKUPSITE_QUEUE_GRACE_SECONDS); from backupsite.celery import app; "
         "e = app.conf.beat_schedule['reap-stale-runs']; print(e['schedule'], e['options']['expires'])"],
        cwd=ROOT, env=base, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_defaults_heartbeat_10_s_stale_60_s_reaper_15_s(tmp_path):
    result = check(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["10", "60", "15", "60", "15.0", "15.0"]


def test_a_stale_threshold_below_three_heartbeats_is_refused_at_start_up(tmp_path):
    result = check(tmp_path, BACKUPSITE_HEARTBEAT_SECONDS="10", BACKUPSITE_STALE_RUN_SECONDS="29")
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "BACKUPSITE_STALE_RUN_SECONDS (29) must be at least three heartbeats" in result.stderr
    lowered = check(tmp_path, BACKUPSITE_HEARTBEAT_SECONDS="1", BACKUPSITE_STALE_RUN_SECONDS="3")
    assert lowered.returncode == 0, lowered.stderr
