"""Progress everywhere (issue 9, item 10) and the heartbeat rows (item 7): rate and time
left from the throttled figures; writes at most about once a second; verify and restore
record their progress on an Activity the run page shows; a worker's heartbeat thread
writes its row and marks it stopped; status() tells who is alive."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from jobs import heartbeats, services, verification
from jobs.models import Activity, ServiceHeartbeat
from jobs.progress import RowProgress, Throttle, speed

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_rate_and_time_left():
    s = speed(300 * 1024 * 1024, 1200 * 1024 * 1024, NOW - timedelta(seconds=100), NOW)
    assert s.rate == pytest.approx(3 * 1024 * 1024) and s.left == pytest.approx(300)
    assert s.rate_display == "3.0 MB/s" and s.left_display == "about 5 min"
    assert speed(10, 100, NOW - timedelta(milliseconds=200), NOW) is None  # too early to tell
    assert speed(0, 100, NOW - timedelta(seconds=10), NOW) is None
    assert speed(10, 0, NOW - timedelta(seconds=10), NOW).left is None  # total unknown
    assert speed(1, 2, NOW - timedelta(hours=3), NOW).left_display == "about 3 h 00 min"


def test_writes_are_throttled_to_about_one_per_interval():
    writes = []
    progress = RowProgress(lambda done, total: writes.append(done), interval=0.2)
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < 0.5:
        progress(n, 10**9)
        n += 1
    assert n > 1000 and 2 <= len(writes) <= 4  # the first call, then one per 0.2 s
    throttle = Throttle(60)
    assert throttle.due() and not throttle.due() and throttle.due(force=True)


def test_a_verification_records_its_progress_and_result_on_an_activity(client, charlie, job):
    run = services.execute_run(services.create_run(job).pk)
    verification.request_verification(run)  # its task is sent after commit: the test runs the ticket itself
    from jobs.models import VerifyTicket

    ticket = VerifyTicket.objects.get(run=run)
    verification.run_ticket(ticket.pk)
    activity = Activity.objects.get(run=run, kind=Activity.Kind.VERIFY)
    assert activity.state == Activity.State.SUCCEEDED and activity.where == "the local copy"
    assert activity.bytes_done == run.archive_size and activity.finished_at and activity.host == "test-host"
    Activity.objects.create(run=run, kind=Activity.Kind.RESTORE, where="destination “NAS”", bytes_total=100,
                            bytes_done=40, started_at=timezone.now() - timedelta(seconds=4))  # fmt: skip
    client.force_login(charlie)
    html = client.get(f"/runs/{run.pk}/progress/").content.decode()
    assert 'data-poll-active="true"' in html  # a running activity keeps the page polling
    assert "Restore (destination “NAS”)" in html and '<progress max="100" value="40"' in html


def test_a_restore_records_an_activity(job, tmp_path):
    run = services.execute_run(services.create_run(job).pk)
    from jobs import restores

    restores.restore_run(run, tmp_path / "restored")  # moved from jobs.verification with the restore pages
    activity = Activity.objects.get(run=run, kind=Activity.Kind.RESTORE)
    assert activity.state == Activity.State.SUCCEEDED and activity.bytes_done == run.archive_size
    assert str(tmp_path / "restored") in activity.message


@pytest.mark.django_db(transaction=True)
def test_a_workers_heartbeat_thread_writes_its_row_and_marks_it_stopped(settings):
    thread = heartbeats.WorkerHeartbeatThread("celery@machine-a", ["archives", "host.machine-a"], interval=0.05)
    thread.start()
    deadline = time.monotonic() + 5
    while not ServiceHeartbeat.objects.filter(name="worker:celery@machine-a").exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    status = heartbeats.status()
    assert status.workers_alive == 1 and status.worker_alive_on("test-host")
    assert status.workers[0]["queues"] == ["archives", "host.machine-a"]
    thread.stop()
    row = ServiceHeartbeat.objects.get(name="worker:celery@machine-a")
    assert row.role == "worker" and row.details["state"] == "stopped"
    assert heartbeats.status().workers_alive == 0


def test_a_silent_worker_or_dispatcher_is_not_alive(db, settings):
    old = timezone.now() - timedelta(seconds=settings.BACKUPSITE_STALE_RUN_SECONDS + 1)
    ServiceHeartbeat.objects.create(name="worker:w", role="worker", host="h", beat_at=old)
    long_ago = timezone.now() - timedelta(seconds=2 * settings.BACKUPSITE_DISPATCH_SECONDS + 61)
    ServiceHeartbeat.objects.create(name="dispatcher", role="dispatcher", host="h", beat_at=long_ago)
    status = heartbeats.status()
    assert status.workers_alive == 0 and not status.dispatcher_alive
