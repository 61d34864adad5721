"""Cancelling a planning export run, and the host it records.

A queued run is cancelled at once; a running one stops at its next progress point (while
it writes rows, or during an upload through the destination contract's ``cancel``
callback), its staging folder goes, last night's files at the destination stay as they
were, and the heavy slot goes to a waiting backup. The reconcile cancels a run whose
worker died before it saw the cancel, and removes a dead run's staging folder only on
the host that ran it. The run page shows the Cancel button to operators and
administrators (viewers get 403) and the host.

The runs execute in this process, as ``tests/test_cancel.py`` does for backups: the
real worker code, the real heartbeat thread polling the cancel flag, a local
destination and a SQLite planning database.
"""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
from django.core import mail
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from backupsite.models import AuditEvent
from jobs import reconcile, services, slots
from jobs.exports import service
from jobs.models import ExportDataset, ExportRun, ExportUpload, Run
from jobs.services import CancelOutcome
from tests.export_helpers import demo_planning

#: A query that yields many rows slowly enough to be cancelled while it is written.
MANY_ROWS_SQL = (
    "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 3000000) "
    "SELECT x AS number, 'row ' || x AS label FROM n"
)


@pytest.fixture
def planning(db, folders, tmp_path):
    return demo_planning(folders, tmp_path, timezone.localdate())


@pytest.fixture
def quick_cancel_poll(monkeypatch):
    monkeypatch.setattr(service.Heartbeat, "CANCEL_POLL", 0.05)


def last_nights_files(planning) -> dict[str, bytes]:
    """A first, complete run: the files a cancelled run must leave as they are."""
    run = service.execute(service.create_run(planning["export"]).pk)
    assert run.state == ExportRun.State.SUCCEEDED, run.error
    return {p.name: p.read_bytes() for p in planning["out"].iterdir()}


def assert_untouched(planning, before: dict[str, bytes]) -> None:
    now = {p.name: p.read_bytes() for p in planning["out"].iterdir()}  # no temporary files either
    assert now == before


@pytest.fixture
def own_tmp(tmp_path, monkeypatch):
    """This test's own temporary folder (openpyxl's write-only sheets go there)."""
    import tempfile

    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.mark.stack_independent
def test_a_sheet_stopped_midway_leaves_no_temporary_file(tmp_path, own_tmp):
    from jobs.engine import Cancelled
    from jobs.exports import xlsx

    def stop(rows: int) -> None:
        if rows >= 2000:
            raise Cancelled()

    rows = ((n, f"row {n}") for n in range(100_000))
    with pytest.raises(Cancelled):
        xlsx.write_sheet(tmp_path / "x.xlsx", "Sheet", ["n", "label"], rows, progress=stop)
    assert list(own_tmp.iterdir()) == []  # openpyxl would keep it until the process exits
    assert not (tmp_path / "x.xlsx").exists()


# --- queued --------------------------------------------------------------------------------------
def test_a_queued_run_is_cancelled_at_once_and_a_late_delivery_does_nothing(planning, bob):
    run = service.create_run(planning["export"])
    assert service.cancel_run(run.pk, user=bob) == CancelOutcome.NOT_STARTED
    run.refresh_from_db()
    assert run.state == ExportRun.State.CANCELLED and run.finished_at is not None
    assert run.error == "Cancelled before it started." and "Cancelled by bob before it started." in run.log
    assert service.execute(run.pk).state == ExportRun.State.CANCELLED  # the queued message, delivered later
    assert not planning["out"].exists() and slots.in_use() == 0
    assert service.cancel_run(run.pk) == CancelOutcome.FINISHED
    assert mail.outbox == []  # a user's cancel is not an alert
    assert planning["export"].active_run() is None  # the next Run now can start
    assert service.create_run(planning["export"]).state == ExportRun.State.QUEUED


def test_a_waiting_run_is_cancelled_at_once(planning, job):
    backup = Run.objects.create(job=job, job_name=job.name, state=Run.State.RUNNING, heartbeat_at=timezone.now())
    run = service.create_run(planning["export"])
    assert service.execute(run.pk).state == ExportRun.State.WAITING
    assert service.cancel_run(run.pk) == CancelOutcome.NOT_STARTED
    assert ExportRun.objects.get(pk=run.pk).state == ExportRun.State.CANCELLED
    assert [d.action for d in services.reconcile_runs()] == []  # nothing left for the reconcile
    assert Run.objects.get(pk=backup.pk).state == Run.State.RUNNING


# --- running -------------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_a_running_export_stops_while_writing_rows_and_hands_the_slot_to_a_waiting_backup(
    planning, job, quick_cancel_poll, own_tmp
):
    before = last_nights_files(planning)
    ExportDataset.objects.filter(export=planning["export"], file_name="topics.xlsx").update(sql=MANY_ROWS_SQL)
    run = service.create_run(planning["export"])
    seen = {}

    def operator():
        # Once the export writes rows: a backup asks for the slot (and waits), then Cancel.
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                row = ExportRun.objects.filter(pk=run.pk).values("state", "rows_done").first()
                if row["state"] == ExportRun.State.RUNNING and row["rows_done"] > 0:
                    break
                time.sleep(0.05)
            backup = services.create_run(job)
            seen["claim"] = services.claim(backup.pk)
            seen["backup"] = backup.pk
            seen["outcome"] = service.cancel_run(run.pk)
            seen["at"] = time.monotonic()
        finally:
            connection.close()

    thread = threading.Thread(target=operator)
    thread.start()
    run = service.execute(run.pk)
    stopped = time.monotonic()
    thread.join(timeout=30)
    assert seen["claim"] == slots.BUSY and seen["outcome"] == CancelOutcome.REQUESTED
    assert stopped - seen["at"] < 10  # at the next progress point (then the backup runs), not after 3M rows
    assert run.state == ExportRun.State.CANCELLED
    assert run.error.startswith("Cancelled by a user.") and "keep last night's" in run.error
    assert "Cancellation requested." in ExportRun.objects.get(pk=run.pk).log
    assert 0 < run.rows_done < 3_000_000
    assert not service.staging_dir(run.pk).exists() and list(own_tmp.iterdir()) == []
    assert_untouched(planning, before)
    assert run.uploads.count() == 0  # nothing was uploaded
    assert Run.objects.get(pk=seen["backup"]).state == Run.State.SUCCEEDED  # woken by the release, and run
    assert slots.in_use() == 0
    assert mail.outbox == []


@pytest.mark.django_db(transaction=True)
def test_a_cancel_during_an_upload_leaves_last_nights_file_and_no_temporary_file(planning, quick_cancel_poll):
    before = last_nights_files(planning)
    # Large enough for several chunks of the upload (the cancel is polled between chunks).
    sql = (
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 40000) "
        "SELECT x AS number, hex(randomblob(32)) AS filler FROM n"
    )
    ExportDataset.objects.filter(export=planning["export"], file_name="topics.xlsx").update(sql=sql)
    run = service.create_run(planning["export"])
    seen = []

    def cancel_when_uploading(current: ExportRun) -> None:
        # The run's own progress write at the start of the uploads: a user presses Cancel
        # now, and the heartbeat thread notices it before the first chunk is sent on.
        if current.phase == ExportRun.Phase.UPLOAD and not seen:
            seen.append(current.bytes_total)
            assert service.cancel_run(current.pk) == CancelOutcome.REQUESTED
            time.sleep(0.5)  # ten polls of the heartbeat thread (CANCEL_POLL 0.05 s)

    run = service.execute(run.pk, listener=cancel_when_uploading)
    assert seen and seen[0] > (1 << 20)  # more than one chunk to send
    assert run.state == ExportRun.State.CANCELLED, run.error
    upload = ExportUpload.objects.get(run=run)
    assert upload.state == ExportUpload.State.FAILED and "cancelled" in upload.error
    assert_untouched(planning, before)  # the old file in place, the temporary one gone
    assert not service.staging_dir(run.pk).exists()
    assert slots.in_use() == 0


def test_a_run_whose_worker_died_before_it_saw_the_cancel_is_cancelled_by_the_reconcile(
    planning, settings, django_capture_on_commit_callbacks
):
    run = service.create_run(planning["export"])
    assert slots.claim(service.EXPORT, run.pk) == slots.CLAIMED
    old = timezone.now() - dt.timedelta(seconds=settings.BACKUPSITE_STALE_RUN_SECONDS + 5)
    ExportRun.objects.filter(pk=run.pk).update(heartbeat_at=old, started_at=old, cancel_requested=True)
    staging = service.staging_dir(run.pk)
    staging.mkdir(parents=True)
    (staging / "topics.xlsx").write_bytes(b"half")
    with django_capture_on_commit_callbacks(execute=True):
        applied = services.reap_stale_runs()
    assert applied == 1
    run.refresh_from_db()
    assert run.state == ExportRun.State.CANCELLED and "cancellation was completed at once" in run.error
    assert not staging.exists() and slots.in_use() == 0
    assert mail.outbox == []


def test_cancel_of_a_run_whose_worker_is_gone_completes_at_once(planning, settings):
    run = service.create_run(planning["export"])
    assert slots.claim(service.EXPORT, run.pk) == slots.CLAIMED
    old = timezone.now() - dt.timedelta(seconds=settings.BACKUPSITE_STALE_RUN_SECONDS + 5)
    ExportRun.objects.filter(pk=run.pk).update(heartbeat_at=old)
    assert service.cancel_run(run.pk) == CancelOutcome.ABANDONED
    assert ExportRun.objects.get(pk=run.pk).state == ExportRun.State.CANCELLED and slots.in_use() == 0


def test_a_queued_run_with_the_cancel_flag_is_cancelled_by_the_plan():
    now = timezone.now()
    info = reconcile.RunInfo(pk=1, state="queued", created_at=now, cancel_requested=True, kind="export")
    limits = reconcile.Limits(stale_seconds=60, grace_seconds=60, slots=1)
    assert [d.action for d in reconcile.plan([info], now=now, limits=limits)] == [reconcile.CANCEL]


# --- the host --------------------------------------------------------------------------------------
def test_a_run_records_the_host_that_executes_it(planning, settings):
    settings.BACKUPSITE_HOST = "worker-a"
    run = service.execute(service.create_run(planning["export"]).pk)
    assert run.state == ExportRun.State.SUCCEEDED and run.host == "worker-a"
    assert ExportRun.objects.get(pk=run.pk).host == "worker-a"


def test_a_dead_runs_staging_on_another_host_is_left_to_a_worker_there(
    planning, settings, monkeypatch, django_capture_on_commit_callbacks
):
    from jobs import enqueue

    sent = []
    monkeypatch.setattr(enqueue, "_send", lambda name, args, *, queue, countdown=None: sent.append((name, args, queue)))
    settings.BACKUPSITE_HOST = "worker-b"
    run = service.create_run(planning["export"])
    assert slots.claim(service.EXPORT, run.pk) == slots.CLAIMED
    settings.BACKUPSITE_HOST = "panel"  # the reaper runs on another machine
    old = timezone.now() - dt.timedelta(seconds=settings.BACKUPSITE_STALE_RUN_SECONDS + 5)
    ExportRun.objects.filter(pk=run.pk).update(heartbeat_at=old)
    staging = service.staging_dir(run.pk)
    staging.mkdir(parents=True)  # same data dir in this test: a folder of the same name here is not worker-b's
    (staging / "topics.xlsx").write_bytes(b"half")
    with django_capture_on_commit_callbacks(execute=True):
        assert services.reap_stale_runs() == 1
    run.refresh_from_db()
    assert run.state == ExportRun.State.INTERRUPTED
    assert staging.exists()  # not this host's to remove
    assert ("clean_export_staging", [run.pk], "host.worker-b") in sent
    assert "The staging folder on worker-b is removed by a worker there." in run.log
    # The task, on worker-b:
    settings.BACKUPSITE_HOST = "worker-b"
    from jobs.tasks import clean_export_staging

    assert clean_export_staging(run.pk) is True and not staging.exists()


def test_the_clean_task_never_removes_the_folder_of_a_run_still_running_there(planning):
    run = service.create_run(planning["export"])
    assert slots.claim(service.EXPORT, run.pk) == slots.CLAIMED
    staging = service.staging_dir(run.pk)
    staging.mkdir(parents=True)
    assert service.clean_staging(run.pk) is False and staging.exists()


# --- the page ------------------------------------------------------------------------------------
@pytest.mark.parametrize("user", ["alice", "bob"])
def test_operators_and_administrators_see_cancel_and_cancel_audited(planning, client, request, user):
    client.force_login(request.getfixturevalue(user))
    run = service.create_run(planning["export"])
    page = client.get(run.get_absolute_url()).content.decode()
    url = reverse("jobs:export_run_cancel", args=[run.pk])
    assert f'action="{url}"' in page and "csrfmiddlewaretoken" in page
    assert client.get(url).status_code == 405  # POST only
    response = client.post(url, follow=True)
    assert response.redirect_chain[-1][0] == run.get_absolute_url()
    assert "Cancelled before it started." in response.content.decode()
    assert ExportRun.objects.get(pk=run.pk).state == ExportRun.State.CANCELLED
    event = AuditEvent.objects.get(action="run_cancelled")
    assert event.actor_name == user and event.object_id == str(run.pk) and event.details.get("outcome")
    assert f'action="{url}"' not in client.get(run.get_absolute_url()).content.decode()  # ended: no button


def test_viewers_see_no_cancel_and_are_refused(planning, client, charlie):
    client.force_login(charlie)
    run = service.create_run(planning["export"])
    url = reverse("jobs:export_run_cancel", args=[run.pk])
    assert url not in client.get(run.get_absolute_url()).content.decode()
    assert client.post(url).status_code == 403
    assert ExportRun.objects.get(pk=run.pk).state == ExportRun.State.QUEUED
    assert not AuditEvent.objects.filter(action="run_cancelled").exists()


def test_the_run_page_shows_the_host_and_a_requested_cancel(planning, client, charlie, settings):
    settings.BACKUPSITE_HOST = "worker-a"
    run = service.create_run(planning["export"])
    assert slots.claim(service.EXPORT, run.pk) == slots.CLAIMED
    ExportRun.objects.filter(pk=run.pk).update(cancel_requested=True)
    client.force_login(charlie)
    page = client.get(run.get_absolute_url()).content.decode()
    assert "on worker-a" in page and "Cancellation requested" in page
    fragment = client.get(reverse("jobs:export_run_progress", args=[run.pk])).content.decode()
    assert "on worker-a" in fragment
