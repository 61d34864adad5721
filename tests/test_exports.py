"""Planning exports end to end on SQLite and the local destination: the files, cell by
cell against the database; the window's edges in a site zone other than UTC; refused
and slow queries; the shared heavy slot (``jobs.slots``); the dispatcher tick; crash
recovery through the slot's reconcile; ``runexport``."""

from __future__ import annotations

import datetime as dt
import io
import sqlite3
from zoneinfo import ZoneInfo

import pytest
from django.core import mail
from django.core.management import CommandError, call_command
from django.utils import timezone

from backupsite import configwrite
from destinations.models import Destination
from jobs import dispatch, reconcile, services, slots
from jobs.exports import demo, service
from jobs.models import ExportDataset, ExportRun, ExportUpload, Notification, PlanningExport, Run, Source
from tests.export_helpers import assert_same_cells, demo_planning, read_sheet

BERLIN = ZoneInfo("Europe/Berlin")


@pytest.fixture
def berlin(settings):
    settings.TIME_ZONE = "Europe/Berlin"
    return BERLIN


@pytest.fixture
def planning(db, folders, berlin, tmp_path):
    """The demo planning database made for today (Berlin), an export of its two
    datasets into ``planning/`` of a local destination."""
    return demo_planning(folders, tmp_path, timezone.localtime(timezone.now(), berlin).date())


def db_rows(path, sql: str, start: str, end: str):
    conn = sqlite3.connect(path)
    try:
        cursor = conn.execute(
            sql.replace("%(start)s", ":start").replace("%(end)s", ":end"), {"start": start, "end": end}
        )
        return [c[0] for c in cursor.description], cursor.fetchall()
    finally:
        conn.close()


def run_now(export, **kwargs) -> ExportRun:
    run = service.create_run(export, **kwargs)
    return service.execute(run.pk)


def test_each_file_matches_its_query_cell_by_cell(planning, berlin):
    run = run_now(planning["export"])
    assert run.state == ExportRun.State.SUCCEEDED, run.error
    today = planning["today"]
    start, end = f"{today} 00:00:00", f"{today + dt.timedelta(days=5)} 00:00:00"
    assert run.window_start == dt.datetime.combine(today, dt.time(0), tzinfo=berlin)
    for dataset in demo.DATASETS:
        columns, rows = db_rows(planning["path"], dataset["sql"], start, end)
        assert rows, "the demo data has rows in the window"
        assert_same_cells(
            planning["out"] / dataset["file_name"], columns, rows, berlin, text_dates=True, title=dataset["sheet_title"]
        )
    files = {f["file_name"]: f for f in run.files}
    assert set(files) == {"topics.xlsx", "appointments.xlsx"}
    assert files["topics.xlsx"]["size"] == (planning["out"] / "topics.xlsx").stat().st_size
    assert files["topics.xlsx"]["rows"] == len(db_rows(planning["path"], demo.TOPICS_SQL, start, end)[1])
    upload = run.uploads.get()
    assert upload.state == ExportUpload.State.SUCCEEDED and upload.remote_folder.endswith("/planning")
    assert run.progress_percent == 100 and run.datasets_done == 2


def test_the_window_takes_today_midnight_and_leaves_out_day_six_in_the_site_zone(planning, berlin):
    run_now(planning["export"])
    _, _header, rows = read_sheet(planning["out"] / "appointments.xlsx")
    starts = [row[0] for row in rows]
    today = planning["today"]
    assert dt.datetime.combine(today, dt.time(0)) in starts  # today 00:00: in
    assert all(s < dt.datetime.combine(today + dt.timedelta(days=5), dt.time(0)) for s in starts)  # day 6 00:00: out
    assert all(s >= dt.datetime.combine(today, dt.time(0)) for s in starts)
    conn = sqlite3.connect(planning["path"])
    outside = conn.execute(
        "SELECT count(*) FROM appointments WHERE starts_at < ? OR starts_at >= ?",
        [f"{today} 00:00:00", f"{today + dt.timedelta(days=5)} 00:00:00"],
    ).fetchone()[0]
    assert outside > 10  # the demo has rows on both sides of the window


def test_the_formula_title_arrives_as_text(planning):
    run = run_now(planning["export"])
    ws, _, rows = read_sheet(planning["out"] / "topics.xlsx")
    titles = [row[1] for row in rows]
    assert demo.FORMULA_TITLE in titles
    cell = ws.cell(row=titles.index(demo.FORMULA_TITLE) + 2, column=2)
    assert cell.data_type == "s" and cell.quotePrefix
    assert "looked like formulas kept as text" in run.log


def test_an_empty_result_still_writes_a_valid_file_with_its_header(planning):
    export = planning["export"]
    export.window_offset_days = 400  # no planning that far ahead
    configwrite.save(export)
    assert run_now(export).state == ExportRun.State.SUCCEEDED
    _, header, rows = read_sheet(planning["out"] / "topics.xlsx")
    assert header[:2] == ["Tag / Dag", "Thema / Ämne"] and rows == []


def test_the_second_night_replaces_the_files_and_leaves_no_temporary_files(planning):
    run_now(planning["export"])
    first = (planning["out"] / "topics.xlsx").read_bytes()
    conn = sqlite3.connect(planning["path"])
    conn.execute(
        "INSERT INTO topics (day, title, desk, status) VALUES (?, 'Neu: Sondersitzung', 'Politik', 'geplant')",
        [planning["today"].isoformat()],
    )
    conn.commit()
    conn.close()
    assert run_now(planning["export"]).state == ExportRun.State.SUCCEEDED
    assert (planning["out"] / "topics.xlsx").read_bytes() != first
    assert sorted(p.name for p in planning["out"].iterdir()) == ["appointments.xlsx", "topics.xlsx"]
    assert "Neu: Sondersitzung" in [r[1] for r in read_sheet(planning["out"] / "topics.xlsx")[2]]


def test_a_refused_query_fails_the_run_uploads_nothing_and_emails_report_to(planning):
    dataset = planning["export"].datasets.get(file_name="topics.xlsx")
    ExportDataset.objects.filter(pk=dataset.pk).update(sql="DELETE FROM topics")  # past the form's check
    run = run_now(planning["export"])
    assert run.state == ExportRun.State.FAILED
    assert "topics.xlsx" in run.error and "starts with DELETE" in run.error
    assert not planning["out"].exists()
    assert sqlite3.connect(planning["path"]).execute("SELECT count(*) FROM topics").fetchone()[0] > 0
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["desk@example.com"] and "Newsroom" in message.subject
    assert "starts with DELETE" in message.body and f"/exports/runs/{run.pk}/" in message.body


def test_a_query_that_runs_too_long_is_stopped_with_a_clear_error(planning, settings):
    settings.BACKUPSITE_EXPORT_STATEMENT_TIMEOUT = 1
    dataset = planning["export"].datasets.get(file_name="topics.xlsx")
    dataset.sql = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n"
    configwrite.save(dataset)
    started = timezone.now()
    run = run_now(planning["export"])
    assert (timezone.now() - started).total_seconds() < 15
    assert run.state == ExportRun.State.FAILED
    assert "ran longer than the limit of 1 second" in run.error and "BACKUPSITE_EXPORT_STATEMENT_TIMEOUT" in run.error


def test_sqlite_reads_through_an_authorizer_that_allows_reading_only(planning):
    dataset = planning["export"].datasets.get(file_name="topics.xlsx")
    dataset.sql = "SELECT * FROM pragma_table_info('topics')"
    configwrite.save(dataset)
    run = run_now(planning["export"])
    assert run.state == ExportRun.State.FAILED and "may only read" in run.error


def test_the_panel_database_is_never_exported(planning, monkeypatch):
    # The tests' own database is in memory, so the planning file stands in for it here.
    from jobs.sources import dbtools

    monkeypatch.setattr(
        dbtools,
        "panel_database_config",
        lambda: {"ENGINE": "django.db.backends.sqlite3", "NAME": str(planning["path"])},
    )
    run = run_now(planning["export"])
    assert run.state == ExportRun.State.FAILED and "panel's own database" in run.error


def test_a_failing_destination_makes_the_run_partial_and_the_others_get_the_files(planning, folders):
    broken = Destination.objects.create(name="Gone", kind="local", settings={"path": str(folders["backups"] / "nope")})
    export = planning["export"]
    configwrite.save(export, m2m={"destinations": [planning["destination"], broken]})
    run = run_now(export)
    assert run.state == ExportRun.State.PARTIAL
    states = {u.destination_name: u.state for u in run.uploads.all()}
    assert states == {"Local": "succeeded", "Gone": "failed"}
    assert (planning["out"] / "topics.xlsx").is_file()
    assert len(mail.outbox) == 1 and "Gone" in mail.outbox[0].body


# --- the heavy slot -------------------------------------------------------------------------
def test_an_export_waits_while_a_backup_runs_and_starts_when_it_ends(planning, job, django_capture_on_commit_callbacks):
    backup = Run.objects.create(job=job, job_name=job.name, state=Run.State.RUNNING, heartbeat_at=timezone.now())
    run = service.create_run(planning["export"])
    assert service.execute(run.pk).state == ExportRun.State.WAITING
    assert "the backup of “Office backup”" in slots.waiting_for()
    Run.objects.filter(pk=backup.pk).update(
        state=Run.State.SUCCEEDED, finished_at=timezone.now(), released_at=timezone.now()
    )
    with django_capture_on_commit_callbacks(execute=True):
        from jobs.runstate import hand_slot_on

        hand_slot_on()  # what a finishing backup does
    run.refresh_from_db()
    assert run.state == ExportRun.State.SUCCEEDED  # woken and run (eager Celery in the tests)
    assert services.reconcile_runs() == []  # nothing left over


def test_a_backup_waits_while_an_export_runs_and_starts_when_it_ends(planning, job, django_capture_on_commit_callbacks):
    from jobs.services import claim, create_run

    export_run = service.create_run(planning["export"])
    assert slots.claim(service.EXPORT, export_run.pk) == slots.CLAIMED
    assert slots.in_use() == 1
    backup = create_run(job)
    assert claim(backup.pk) == slots.BUSY
    assert Run.objects.get(pk=backup.pk).state == Run.State.WAITING
    assert f"the planning export “Newsroom” (export run #{export_run.pk}" in slots.waiting_for()
    # The export's worker carries on and ends: its release wakes the backup.
    ExportRun.objects.filter(pk=export_run.pk).update(state=ExportRun.State.SUCCEEDED, finished_at=timezone.now())
    with django_capture_on_commit_callbacks(execute=True):
        service.hand_slot_on()
    assert Run.objects.get(pk=backup.pk).state == Run.State.SUCCEEDED


def test_with_two_slots_an_export_and_a_backup_run_side_by_side(planning, job, settings):
    from jobs.services import claim, create_run

    settings.BACKUPSITE_MAX_CONCURRENT_RUNS = 2
    export_run = service.create_run(planning["export"])
    assert slots.claim(service.EXPORT, export_run.pk) == slots.CLAIMED
    assert claim(create_run(job).pk) == slots.CLAIMED
    assert slots.in_use() == 2


def test_a_duplicate_delivery_of_an_export_run_does_nothing(planning):
    run = run_now(planning["export"])
    assert run.state == ExportRun.State.SUCCEEDED
    assert slots.claim(service.EXPORT, run.pk) == slots.GONE
    assert service.execute(run.pk).state == ExportRun.State.SUCCEEDED and slots.in_use() == 0


def test_one_active_run_per_export(planning):
    service.create_run(planning["export"])
    with pytest.raises(service.AlreadyRunning):
        service.create_run(planning["export"])


# --- the dispatcher tick, crash recovery ------------------------------------------------------
def test_a_due_export_starts_once_however_many_ticks_and_missed_nights_run_once(
    planning, django_capture_on_commit_callbacks
):
    export = planning["export"]
    week_ago = timezone.now() - dt.timedelta(days=7)
    PlanningExport.objects.filter(pk=export.pk).update(next_run_at=week_ago)
    with django_capture_on_commit_callbacks(execute=True):
        dispatch.tick()
        dispatch.tick()
    run = ExportRun.objects.get()  # one run for a week of missed nights and two ticks
    assert run.trigger == ExportRun.Trigger.SCHEDULE and run.state == ExportRun.State.SUCCEEDED
    export.refresh_from_db()
    assert export.next_run_at > timezone.now()
    assert timezone.localtime(export.next_run_at, BERLIN).time() == dt.time(2, 0)


def test_the_exports_hook_claims_each_night_once():
    assert service.start_due_exports in dispatch.DUE_HOOKS
    assert dispatch.DUE_HOOKS.count(service.start_due_exports) == 1


def test_a_due_export_whose_previous_run_is_still_active_is_skipped(planning):
    export = planning["export"]
    service.create_run(export)
    PlanningExport.objects.filter(pk=export.pk).update(next_run_at=timezone.now() - dt.timedelta(minutes=1))
    assert service.start_due_exports() == 0
    assert ExportRun.objects.count() == 1
    export.refresh_from_db()
    assert export.next_run_at > timezone.now()  # the night passes; the next one is scheduled


def test_disabled_exports_are_not_scheduled(planning):
    export = planning["export"]
    export.enabled = False
    configwrite.save(export)
    export.refresh_from_db()
    assert export.next_run_at is None
    export.enabled = True
    configwrite.save(export)
    export.refresh_from_db()
    assert export.next_run_at is not None


def test_a_run_whose_worker_died_is_interrupted_and_frees_the_slot_for_a_waiting_backup(
    planning, job, settings, django_capture_on_commit_callbacks
):
    from jobs.services import claim, create_run, reap_stale_runs

    settings.BACKUPSITE_RUN_RESTARTS = 2  # backups would be started again; exports are not
    run = service.create_run(planning["export"])
    assert slots.claim(service.EXPORT, run.pk) == slots.CLAIMED
    backup = create_run(job)
    assert claim(backup.pk) == slots.BUSY
    old = timezone.now() - dt.timedelta(seconds=settings.BACKUPSITE_STALE_RUN_SECONDS + 5)
    ExportRun.objects.filter(pk=run.pk).update(phase=ExportRun.Phase.UPLOAD, heartbeat_at=old, started_at=old)
    staging = service.staging_dir(run.pk)
    staging.mkdir(parents=True)
    (staging / "topics.xlsx").write_bytes(b"half")
    with django_capture_on_commit_callbacks(execute=True):
        assert reap_stale_runs() == 1  # the reaper's reconcile (the dispatcher tick calls the same)
    run.refresh_from_db()
    assert run.state == ExportRun.State.INTERRUPTED and "uploading" in run.error
    assert "Interrupted: the worker stopped while uploading (no heartbeat for" in run.log
    assert not staging.exists()
    assert Run.objects.get(pk=backup.pk).state == Run.State.SUCCEEDED  # woken in the same pass, and run
    assert slots.in_use() == 0
    alerts = Notification.objects.filter(kind="export_failed")
    assert [n.recipients for n in alerts] == [["desk@example.com"]]
    assert len(mail.outbox) == 1 and "Interrupted" in mail.outbox[0].body


def test_a_worker_that_is_alive_after_all_keeps_its_export_run(planning, settings):
    run = service.create_run(planning["export"])
    assert slots.claim(service.EXPORT, run.pk) == slots.CLAIMED
    assert services.reconcile_runs() == []
    assert ExportRun.objects.get(pk=run.pk).state == ExportRun.State.RUNNING


# --- runexport ----------------------------------------------------------------------------------
def test_runexport_runs_in_the_foreground_by_name_or_id(planning):
    out = io.StringIO()
    call_command("runexport", "Newsroom", stdout=out)
    assert "succeeded" in out.getvalue() and "topics.xlsx" in out.getvalue()
    call_command("runexport", str(planning["export"].pk), stdout=io.StringIO())
    assert ExportRun.objects.filter(trigger=ExportRun.Trigger.CLI, state="succeeded").count() == 2


def test_runexport_fails_with_one_line(planning):
    with pytest.raises(CommandError) as info:
        call_command("runexport", "No such export")
    assert "No planning export" in str(info.value)
    ExportDataset.objects.filter(export=planning["export"]).update(sql="SELECT * FROM missing_table")
    with pytest.raises(CommandError) as info:
        call_command("runexport", "Newsroom", stdout=io.StringIO())
    assert "no such table: missing_table" in str(info.value) and "\n" not in str(info.value)


def test_loaddemo_makes_an_enabled_demo_export_that_writes_real_files(db, folders, settings, tmp_path, monkeypatch):
    import os

    monkeypatch.setattr(Source, "measure", lambda self: None)  # the test database is in memory
    settings.DATA_DIR = tmp_path / "data"
    settings.BACKUPSITE_LOCAL_BACKUP_DIR = folders["backups"]
    seen = []
    configwrite.config_changed.connect(
        lambda sender, change, **kw: seen.append(change.model), weak=False, dispatch_uid="t"
    )
    try:
        for _ in range(2):  # idempotent
            call_command("loaddemo", stdout=open(os.devnull, "w"))  # noqa: SIM115
    finally:
        configwrite.config_changed.disconnect(dispatch_uid="t")
    export = PlanningExport.objects.get(name="Demo planning export")
    assert export.enabled and export.next_run_at is not None and export.folder == "planning"
    assert seen.count("jobs.planningexport") == 1 and seen.count("jobs.exportdataset") == 2
    database = settings.DATA_DIR / "demo" / "planning.sqlite3"
    assert oct(database.stat().st_mode & 0o777) == "0o600"
    run = run_now(export)
    assert run.state == ExportRun.State.SUCCEEDED, run.error
    out = folders["backups"] / "planning"
    assert sorted(p.name for p in out.iterdir()) == ["appointments.xlsx", "topics.xlsx"]
    _, header, rows = read_sheet(out / "topics.xlsx")
    assert header[1] == "Thema / Ämne" and any("ö" in (r[1] or "") for r in rows)


def test_export_runs_are_sent_through_enqueue_to_the_exports_queue_after_commit(
    planning, monkeypatch, django_capture_on_commit_callbacks
):
    from backupsite.celery import app
    from jobs import enqueue

    sent = []
    monkeypatch.setattr(enqueue, "_send", lambda name, args, *, queue, countdown=None: sent.append((name, args, queue)))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        run = service.enqueue(planning["export"])
    assert sent == []  # nothing before the commit
    for callback in callbacks:
        callback()
    assert sent == [("run_export", [run.pk], enqueue.EXPORTS)]
    assert "export-tick" not in app.conf.beat_schedule  # the dispatcher tick starts exports
    assert "exports" in [q.name for q in app.conf.task_queues]  # a worker without -Q consumes it


def test_a_queued_run_nobody_takes_is_handed_over_once_then_failed(planning, settings, monkeypatch):
    handed = []
    monkeypatch.setattr(service, "hand_over", lambda ids: handed.extend(ids))  # no worker here, on purpose
    run = service.create_run(planning["export"])
    old = timezone.now() - dt.timedelta(seconds=settings.BACKUPSITE_QUEUE_GRACE_SECONDS + 5)
    ExportRun.objects.filter(pk=run.pk).update(enqueued_at=old)
    applied = services.reconcile_runs()
    assert [(d.run.kind, d.action) for d in applied] == [("export", reconcile.REQUEUE)]
    run.refresh_from_db()
    assert run.state == ExportRun.State.QUEUED and run.requeues == 1 and handed == [run.pk]
    assert "Handed to the workers again" in run.log
    ExportRun.objects.filter(pk=run.pk).update(enqueued_at=old)
    applied = services.reconcile_runs()
    assert [(d.run.kind, d.action) for d in applied] == [("export", reconcile.FAIL)]
    run.refresh_from_db()
    assert run.state == ExportRun.State.FAILED and "exports queue" in run.error
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["desk@example.com"]
