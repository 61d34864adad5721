"""The dispatcher (issue 9, item 1): the pure "which jobs are due and why", and the tick
applying it: claims by conditional update (two ticks, two beats → one run), skipped slots
recorded with a reason, a week of missed slots → one catch-up run, disabled jobs skipped,
daylight-saving nights in Europe/Berlin and Europe/Stockholm at the dispatcher's level,
waiting runs started by the same tick, and the dispatcher's heartbeat row. The real beat
processes are in tests/test_scheduling_e2e.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone

from jobs import dispatch, heartbeats, services
from jobs import enqueue as dispatch_enqueue
from jobs.dispatch import DISABLED, SKIP, START, JobInfo, plan
from jobs.models import Job, Run, ServiceHeartbeat

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
BERLIN = ZoneInfo("Europe/Berlin")


def info(**kwargs) -> JobInfo:
    base = {
        "pk": 1,
        "name": "Nightly",
        "enabled": True,
        "next_run_at": NOW - timedelta(seconds=30),
        "interval": "daily",
        "first_run_at": datetime(2026, 1, 1, 12, 0, tzinfo=UTC) - timedelta(seconds=30),
        "timezone": "UTC",
    }
    return JobInfo(**{**base, **kwargs})


# --- the pure plan ------------------------------------------------------------------------
def test_a_due_job_starts_and_its_next_run_is_the_next_slot_after_now():
    [decision] = plan([info(), info(pk=2, next_run_at=NOW + timedelta(minutes=1))], now=NOW)
    assert decision.action == START and decision.missed == 0
    assert decision.reason == "Scheduled for 2026-12-01 11:59 UTC."
    assert decision.next_run_at == datetime(2026, 12, 2, 11, 59, 30, tzinfo=UTC)


def test_a_week_of_missed_daily_slots_gives_one_catch_up_run():
    [decision] = plan([info(next_run_at=NOW - timedelta(days=7, seconds=30))], now=NOW)
    assert decision.action == START and decision.missed == 7
    assert decision.reason.startswith("Catch-up: 8 scheduled slots passed since 2026-11-24 11:59 UTC")
    assert "the backup runs once now" in decision.reason
    assert decision.next_run_at > NOW and decision.next_run_at - NOW < timedelta(days=1)


def test_a_job_still_archiving_gets_its_slot_recorded_as_skipped_and_a_disabled_one_passes():
    busy = info(active=(41, "running", NOW - timedelta(hours=2)))
    off = info(pk=2, enabled=False)
    decisions = {d.job.pk: d for d in plan([busy, off], now=NOW)}
    assert decisions[1].action == SKIP
    assert decisions[1].reason == (
        "Skipped the 2026-12-01 11:59 UTC slot: the previous run #41 is still archiving (since 2026-12-01 10:00 UTC)."
    )
    assert decisions[2].action == DISABLED and decisions[2].next_run_at > NOW


# --- the tick ----------------------------------------------------------------------------------
@pytest.fixture
def due_job(job):
    first = timezone.now() - timedelta(days=1, minutes=1)
    Job.objects.filter(pk=job.pk).update(interval="daily", first_run_at=first, timezone="UTC", next_run_at=first)
    job.refresh_from_db()
    return job


def test_the_tick_starts_a_due_job_once_and_two_ticks_or_beats_never_start_it_twice(
    due_job, monkeypatch, django_capture_on_commit_callbacks
):
    stale = dispatch.due_jobs(timezone.now())  # what a second beat read at the same moment
    with django_capture_on_commit_callbacks(execute=True):
        first = dispatch.tick(housekeeping=False)
    assert len(first.started) == 1
    run = Run.objects.get(pk=first.started[0])
    assert run.trigger == Run.Trigger.SCHEDULE and run.state == Run.State.SUCCEEDED  # eager Celery ran it
    assert "Catch-up: 2 scheduled slots passed" in run.log  # the test job's slot was a day and a minute ago

    monkeypatch.setattr(dispatch, "due_jobs", lambda now: stale)
    second = dispatch.tick(housekeeping=False)  # the other beat, with the rows it read
    assert second.started == [] and second.lost == 1
    assert Run.objects.filter(job=due_job).count() == 1
    due_job.refresh_from_db()
    assert due_job.next_run_at > timezone.now()


def test_a_slot_that_finds_the_previous_run_archiving_is_recorded_as_skipped(due_job, client, charlie):
    running = services.create_run(due_job)
    services.claim(running.pk)
    result = dispatch.tick(housekeeping=False)
    assert result.started == [] and len(result.skipped) == 1
    skipped = Run.objects.get(pk=result.skipped[0])
    assert skipped.state == Run.State.SKIPPED and skipped.state in Run.FINAL_STATES
    assert f"the previous run #{running.pk} is still archiving" in skipped.error
    client.force_login(charlie)
    page = client.get(skipped.get_absolute_url()).content.decode()
    assert ">Skipped</span>" in page and "is still archiving" in page


def test_a_run_now_between_the_plan_and_the_insert_turns_the_slot_into_a_skipped_run(due_job, monkeypatch):
    other = Job.objects.create(name="Other", interval="daily", first_run_at=due_job.first_run_at, timezone="UTC")
    Job.objects.filter(pk=other.pk).update(next_run_at=due_job.next_run_at)
    real = dispatch._infos

    def planned_then_run_now(jobs, now):
        infos = real(jobs, now)  # planned without an active run...
        services.create_run(due_job)  # ...then someone clicked "Run now"
        return infos

    monkeypatch.setattr(dispatch, "_infos", planned_then_run_now)
    result = dispatch.tick(housekeeping=False)
    assert len(result.started) == 1 and Run.objects.get(pk=result.started[0]).job_id == other.pk
    [skipped] = Run.objects.filter(pk__in=result.skipped)
    assert skipped.job_id == due_job.pk and "the job was started by hand a moment before" in skipped.error
    assert Run.objects.filter(job=due_job, state=Run.State.QUEUED).count() == 1


def test_only_runs_with_a_free_slot_are_handed_to_the_broker_the_others_wait(
    job, settings, monkeypatch, django_capture_on_commit_callbacks
):
    settings.BACKUPSITE_MAX_CONCURRENT_RUNS = 2
    sent = []
    monkeypatch.setattr(
        dispatch_enqueue, "_send", lambda name, args, *, queue, countdown=None: sent.append((name, args[0]))
    )
    past = timezone.now() - timedelta(minutes=1)
    for n in range(5):
        extra = Job.objects.create(name=f"Extra {n}", interval="daily", first_run_at=past, timezone="UTC")
        extra.sources.set(job.sources.all())
    Job.objects.update(next_run_at=past)
    with django_capture_on_commit_callbacks(execute=True):
        result = dispatch.tick(housekeeping=False)
    assert len(result.started) == 6
    states = dict(Run.objects.values_list("pk", "state"))
    queued = [pk for pk in result.started if states[pk] == Run.State.QUEUED]
    assert len(queued) == 2 and sorted(pk for _, pk in sent) == sorted(queued)
    assert sum(1 for pk in result.started if states[pk] == Run.State.WAITING) == 4
    waiting = Run.objects.filter(state=Run.State.WAITING).first()
    assert "Waiting for a free slot for heavy work" in waiting.log
    assert all(Run.objects.get(pk=pk).config["sources"][0]["name"] == "Office files" for pk in result.started)


def test_a_run_that_is_only_uploading_does_not_block_the_next_scheduled_run(
    due_job, django_capture_on_commit_callbacks
):
    previous = services.create_run(due_job)
    Run.objects.filter(pk=previous.pk).update(state=Run.State.UPLOADING)
    with django_capture_on_commit_callbacks(execute=True):
        result = dispatch.tick(housekeeping=False)
    assert len(result.started) == 1 and not result.skipped


def test_a_disabled_job_is_skipped_without_a_run_and_not_replayed_when_enabled(due_job):
    Job.objects.filter(pk=due_job.pk).update(enabled=False)
    result = dispatch.tick(housekeeping=False)
    assert result.disabled == [due_job.pk] and not Run.objects.exists()
    due_job.refresh_from_db()
    assert due_job.next_run_at > timezone.now()
    due_job.enabled = True
    due_job.save()
    assert dispatch.tick(housekeeping=False).started == []  # nothing to replay


def test_the_tick_starts_runs_waiting_for_the_slot_and_writes_its_heartbeat(job, django_capture_on_commit_callbacks):
    other = Job.objects.create(name="Other")
    other.sources.set(job.sources.all())
    holder = services.create_run(other)
    services.claim(holder.pk)
    waiting = services.create_run(job)
    assert services.claim(waiting.pk) == "busy"
    Run.objects.filter(pk=holder.pk).update(state=Run.State.SUCCEEDED, released_at=timezone.now())
    with django_capture_on_commit_callbacks(execute=True):
        dispatch.tick()
    waiting.refresh_from_db()
    assert waiting.state == Run.State.SUCCEEDED
    row = ServiceHeartbeat.objects.get(name="dispatcher")
    assert row.role == "dispatcher" and row.host == "test-host"
    assert heartbeats.status().dispatcher_alive


def test_two_due_jobs_with_the_limit_1_run_one_after_the_other(job, settings, django_capture_on_commit_callbacks):
    settings.BACKUPSITE_MAX_CONCURRENT_RUNS = 1
    other = Job.objects.create(name="Other")
    other.sources.set(job.sources.all())
    other.destinations.set(job.destinations.all())
    past = timezone.now() - timedelta(minutes=1)
    Job.objects.update(interval="daily", first_run_at=past, timezone="UTC", next_run_at=past)
    seen = []
    real = services._work_on

    def tracking(run, listener):
        seen.append((run.pk, services.slots.in_use()))
        return real(run, listener)

    import jobs.services as module

    module._work_on = tracking
    try:
        with django_capture_on_commit_callbacks(execute=True):
            result = dispatch.tick(housekeeping=False)
    finally:
        module._work_on = real
    assert len(result.started) == 2
    runs = Run.objects.filter(pk__in=result.started).order_by("started_at")
    assert [r.state for r in runs] == [Run.State.SUCCEEDED, Run.State.SUCCEEDED]
    assert [in_use for _, in_use in seen] == [1, 1]  # never both at once
    first, second = runs
    assert second.started_at >= first.released_at


@pytest.mark.parametrize("tz_name", ["Europe/Berlin", "Europe/Stockholm"])
@pytest.mark.parametrize("night", [(3, 29), (10, 25)], ids=["spring-forward", "fall-back"])
def test_a_0230_job_runs_exactly_once_on_a_dst_night_with_a_tick_every_minute(job, tz_name, night):
    tz = ZoneInfo(tz_name)
    month, day = night
    first = datetime(2026, 3, 1, 2, 30, tzinfo=tz)
    job.interval, job.first_run_at, job.timezone = "daily", first, tz_name
    job.save()
    # As if the previous day's run had just happened: the next slot is the DST night's.
    job.refresh_next_run(datetime(2026, month, day - 1, 12, 0, tzinfo=tz))
    Job.objects.filter(pk=job.pk).update(next_run_at=job.next_run_at)
    start = datetime(2026, month, day, 0, 0, tzinfo=tz).astimezone(UTC)
    started = []
    for minute in range(0, 6 * 60):  # 00:00 to 06:00 local, one tick a minute
        now = start + timedelta(minutes=minute)
        result = dispatch.tick(now, housekeeping=False)
        started += [(now, pk) for pk in result.started]
        Run.objects.filter(pk__in=result.started).update(state=Run.State.SUCCEEDED)  # done before the next tick
    assert len(started) == 1, started
    local = started[0][0].astimezone(tz)
    if month == 3:  # 02:30 does not exist: the run comes at 03:00, right after the gap
        assert (local.hour, local.minute) == (3, 0)
    else:  # 02:30 exists twice: it runs at the first (summer time), once
        assert (local.hour, local.minute, local.utcoffset()) == (2, 30, timedelta(hours=2))
    job.refresh_from_db()
    assert job.next_run_at.astimezone(tz).date() == datetime(2026, month, day + 1).date()


def test_the_tick_pings_only_jobs_with_a_ping_url_and_never_reads_the_url(due_job, monkeypatch):
    from jobs import notifications
    from jobs.models import Notification

    other = Job.objects.get(pk=due_job.pk)
    other.pk, other.name, other.slug = None, "Second job", "second-job"
    other.ping_url = "https://hc-ping.com/a9c1-secret"
    other.save()
    Job.objects.filter(pk=other.pk).update(next_run_at=due_job.next_run_at)
    monkeypatch.setattr(notifications, "_queue", lambda notification: None)  # queued, not sent: no network here
    rows = dispatch.due_jobs(timezone.now())
    assert {row["pk"]: row["has_ping"] for row in rows} == {due_job.pk: False, other.pk: True}
    assert all("ping_url" not in row for row in rows)  # a tick decrypts no URL
    monkeypatch.setattr(dispatch_enqueue, "archive", lambda run_ids: None)  # the runs themselves: other tests
    assert len(dispatch.tick(housekeeping=False).started) == 2
    pings = Notification.objects.filter(channel=Notification.Channel.PING)
    assert [(n.job_id, n.kind) for n in pings] == [(other.pk, "ping_start")]
