"""What a planning export does, called by the Celery task, ``runexport`` and the pages.

A run (:class:`~jobs.exports.models.ExportRun`) is created with a snapshot of the
export's configuration and its window, handed to the ``exports`` queue, and executed by
:func:`execute`:

1. **claim** a heavy-work slot (``jobs.slots``, where :class:`ExportWork` registers
   exports as a kind of heavy work beside backups): an export and a backup never run at
   once beyond ``BACKUPSITE_MAX_CONCURRENT_RUNS``; a run that finds every slot taken is
   parked as *waiting* and woken by whoever frees one (``slots.reconcile``);
2. **write the files**: for each dataset, its query over the window (read-only, with a
   statement timeout, streamed from a server-side cursor: :mod:`jobs.exports.drivers`)
   into one ``.xlsx`` (:mod:`jobs.exports.xlsx`) in a private staging folder. The files
   are a set: if one query fails, nothing is uploaded and last night's files stay;
3. **upload** them to every destination in one session each, straight into the
   export's folder under the destination's path (not under ``backupsite/<slug>/``), with
   the destination contract's ``replace=True``: each file goes to a hidden temporary
   name first and replaces last night's only once it is complete, so a cut connection
   leaves the previous file in place. Each destination's result is an
   :class:`~jobs.exports.models.ExportUpload` row; a failing destination does not stop
   the others (the run is then *partial*);
4. **finish**: the staging folder is removed, the slot is handed on
   (``slots.reconcile``, as a finishing backup does); a run that did not fully succeed
   e-mails the export's report-to addresses through the notifications outbox.

Progress (the dataset, its rows so far, then bytes uploaded) and a heartbeat are written
to the run row about once a second. *Cancel* (:func:`cancel_run`) works as a backup run's:
a queued or waiting run is cancelled at once; a running one gets the ``cancel_requested``
flag that its heartbeat thread polls, and the worker stops at the next progress point
(between rows batches, between datasets, during an upload through the destination
contract's ``cancel`` callback: the temporary file goes, last night's file stays), removes
its staging folder and hands the slot on. The run records the host that executes it, so
after a crash only a worker on that host removes its staging folder.

Due exports are started by the dispatcher tick (``jobs.dispatch``, through the hook
:func:`start_due_exports`); runs whose worker died, lost hand-overs, waiting runs and
cancels a worker never saw are the slot's reconcile's (:class:`ExportWork.apply`), which
the reaper and the dispatcher tick call.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, close_old_connections, transaction
from django.db.models import Max
from django.utils import timezone
from django.utils.translation import gettext as _

from backupsite.private import private_dir
from destinations.backends.base import REPLACE, DestinationError, UploadItem, check_folder
from destinations.models import Destination
from jobs import dispatch, notifications, reconcile, slots
from jobs.engine import Cancelled
from jobs.enqueue import clean_export_staging as send_clean_staging
from jobs.enqueue import export as send_export
from jobs.enqueue import this_host
from jobs.exports import drivers, xlsx
from jobs.exports.models import ExportRun, ExportUpload, PlanningExport, site_zone
from jobs.exports.query import QueryRefused
from jobs.models import Source
from jobs.progress import Heartbeat as BaseHeartbeat
from jobs.runstate import RunRowsWork, by_whom, create_active, hand_slot_on
from jobs.services import CancelOutcome

log = logging.getLogger(__name__)

PROGRESS_SECONDS = 1.0
EXPORT = "export"  # this module's kind of heavy work in jobs.slots


class AlreadyRunning(Exception):
    pass


class LostRun(Exception):
    """This worker no longer owns the run (it was ended elsewhere)."""


# --- creating runs -------------------------------------------------------------------
def snapshot(export: PlanningExport) -> dict:
    source = export.source
    return {
        "export": {
            "id": export.pk,
            "name": export.name,
            "folder": export.folder,
            "window_days": export.window_days,
            "window_offset_days": export.window_offset_days,
            "report_to": export.report_to_list,
        },
        "source": {"id": source.pk, "name": source.name, "kind": source.kind, "settings": source.settings},
        "datasets": [
            {"file_name": d.file_name, "sheet_title": d.sheet_title, "sql": d.sql} for d in export.datasets.all()
        ],
        "destinations": [
            {"id": d.pk, "name": d.name, "kind": d.kind} for d in export.destinations.filter(enabled=True)
        ],
        "time_zone": settings.TIME_ZONE,
    }


def create_run(export: PlanningExport, *, trigger: str = ExportRun.Trigger.MANUAL, user=None, moment=None) -> ExportRun:
    """A queued run whose window is the one of *moment* (default now), or
    :class:`AlreadyRunning` (the database allows one active run per export)."""
    moment = moment or timezone.now()
    start, end = export.window_for(moment)
    run = create_active(
        ExportRun,
        trigger,
        user,
        export=export,
        export_name=export.name,
        config=snapshot(export),
        window_start=start,
        window_end=end,
        datasets_total=export.datasets.count(),
        enqueued_at=timezone.now(),
    )
    if run is None:
        raise AlreadyRunning(_("“%(name)s” is already running.") % {"name": export.name})
    return run


def enqueue(export: PlanningExport, *, trigger: str = ExportRun.Trigger.MANUAL, user=None, moment=None) -> ExportRun:
    run = create_run(export, trigger=trigger, user=user, moment=moment)
    hand_over([run.pk])
    return run


def hand_over(run_ids: list[int]) -> None:
    """Send runs to the ``exports`` queue once the transaction commits (through
    ``jobs.enqueue``, the one module that sends tasks). A broker that cannot be reached
    is logged there: the slot's reconcile hands a run nobody took over again."""
    send_export(run_ids)


# --- the heavy slot ----------------------------------------------------------------------
def _info(row: dict) -> reconcile.RunInfo:
    """An export run's row (``reconcile.RUN_INFO_FIELDS``) as the reconcile sees it: never
    started again after its worker died."""
    return reconcile.RunInfo(**row, kind=EXPORT, ref=f"export run #{row['pk']}", restartable=False)


class ExportWork(RunRowsWork):
    """Planning exports as heavy work (``jobs.slots``): a run holds a slot while it runs,
    queries and uploads alike, so an export and a backup never run at once beyond
    ``BACKUPSITE_MAX_CONCURRENT_RUNS``.

    A run whose worker died is *interrupted*, never started again
    (``RunInfo.restartable`` False, so the reconcile never asks this kind to restart a
    row): report-to is told, files already replaced at a destination are complete, the
    others keep last night's, and the next night (or *Run now*) writes them all. A run a
    user asked to cancel (``cancel_requested``) is *cancelled* by the reconcile instead:
    at once while it waits for a slot, and when its worker died before it saw the flag
    (the same rules as a backup's, ``jobs.reconcile``)."""

    name = EXPORT
    model = ExportRun
    first_phase = ExportRun.Phase.QUERY
    holder_fields = ("pk", "export_name", "phase", "started_at")

    def info(self, row: dict) -> reconcile.RunInfo:
        return _info(row)

    def describe_holder(self, run: ExportRun, since: str) -> str:
        return (
            f"the planning export “{run.export_name}” (export run #{run.pk}, "
            f"{run.get_phase_display().lower()}, since {since})"
        )

    def cancel_before_start(self, pk: int, now) -> None:
        self.cancel_pending(pk, now)

    def hand_over(self, run_ids: list[int]) -> None:
        hand_over(run_ids)

    def unclaimed_message(self) -> str:
        return (
            f"No worker took this export run: it waited more than {settings.BACKUPSITE_QUEUE_GRACE_SECONDS} s with "
            "a free slot, was handed to the workers once more and waited again. Check that a Celery worker consumes "
            "the exports queue (make run starts one; with Docker Compose, the worker service)."
        )

    def notify_failed(self, run: ExportRun) -> None:
        notify_failed(run)

    def last_release(self):
        return ExportRun.objects.filter(started_at__isnull=False).aggregate(at=Max("finished_at"))["at"]

    def apply(self, decision: reconcile.Decision, now) -> bool:
        action = _APPLY.get(decision.action)
        if action is None:  # restart: never asked of a row that is not restartable
            log.warning("Export run %s: %s is not done for exports (%s)", decision.pk, decision.action, decision.reason)
            return False
        return action(decision, now)


_log_append = ExportRun.log_expression
_log_concat = ExportRun.log_concat


def _apply_interrupt(decision: reconcile.Decision, now) -> bool:
    """A running export whose worker stopped sending heartbeats: interrupted, report-to told."""
    return end_abandoned(decision.run, ExportRun.State.INTERRUPTED, now) is not None


def _apply_cancel(decision: reconcile.Decision, now) -> bool:
    """A cancel the worker never saw: a queued/waiting run ends here; a running one whose
    worker is gone is cancelled as abandoned (its staging removed, no e-mail: a user
    asked for it)."""
    if decision.run.state in reconcile.HELD:
        return end_abandoned(decision.run, ExportRun.State.CANCELLED, now) is not None
    return EXPORT_WORK.cancel_pending(decision.pk, now)


def end_abandoned(info: reconcile.RunInfo, state: str, now=None) -> ExportRun | None:
    """End a running export whose worker is gone (*state* interrupted or cancelled),
    conditional on the heartbeat the caller saw (a worker alive after all keeps its
    run: None): its open uploads failed, its staging folder removed on its host, and
    report-to told when interrupted. Returns the updated run."""
    now = now or timezone.now()
    run = ExportRun.objects.filter(pk=info.pk).first()
    if run is None:
        return None
    silent = int((now - reconcile.last_sign_of_life(info)).total_seconds())
    phase = run.get_phase_display().lower()
    aftermath = "Files already replaced at a destination are complete; the others keep last night's."
    if state == ExportRun.State.CANCELLED:
        message = (
            f"Cancelled: the worker running this export had stopped while {phase} (no heartbeat for {silent} s), "
            f"so the cancellation was completed at once. {aftermath}"
        )
    else:
        message = f"Interrupted: the worker stopped while {phase} (no heartbeat for {silent} s). {aftermath}"
    with transaction.atomic():
        ended = ExportRun.objects.filter(
            pk=info.pk, state=ExportRun.State.RUNNING, heartbeat_at=info.heartbeat_at
        ).update(state=state, finished_at=now, error=message, log=_log_append(message))
        if not ended:
            return None
        ExportUpload.objects.filter(
            run_id=info.pk, state__in=[ExportUpload.State.PENDING, ExportUpload.State.UPLOADING]
        ).update(state=ExportUpload.State.FAILED, error="The worker stopped during this upload.", finished_at=now)
    line = remove_staging(run)
    if line:
        ExportRun.objects.filter(pk=info.pk).update(log=_log_append(line))
    run.refresh_from_db()
    if state == ExportRun.State.INTERRUPTED:
        notify_failed(run)
    return run


def remove_staging(run: ExportRun) -> str:
    """The staging folder of an ended run, removed where it is: here when the run ran on
    this host (or recorded none: made before hosts were recorded), else by a task on its
    host's queue. Returns a log line for the other host's case."""
    if run.host and run.host != this_host():
        send_clean_staging(run.host, run.pk)
        return f"The staging folder on {run.host} is removed by a worker there."
    clean_staging(run.pk)
    return ""


def clean_staging(run_id: int) -> bool:
    """Remove this host's staging folder of an ended run (the ``clean_export_staging``
    task on its host's queue); never the folder of a run still running here."""
    if ExportRun.objects.filter(pk=run_id, state=ExportRun.State.RUNNING, host=this_host()).exists():
        return False
    path = staging_dir(run_id)
    existed = path.exists()
    shutil.rmtree(path, ignore_errors=True)
    return existed


EXPORT_WORK = slots.register(ExportWork())

_APPLY = {
    reconcile.INTERRUPT: _apply_interrupt,
    reconcile.CANCEL: _apply_cancel,
    reconcile.WAKE: EXPORT_WORK.wake,
    reconcile.REQUEUE: EXPORT_WORK.requeue,
    reconcile.FAIL: EXPORT_WORK.fail_unclaimed,
}


# --- progress and heartbeat ------------------------------------------------------------------
class Progress:
    """Writes the run's progress to its row at most once per *interval*, with a
    heartbeat; raises :class:`LostRun` once the row is no longer this worker's and
    :class:`~jobs.engine.Cancelled` once a user asked to cancel it (as a backup run's
    ``RunProgress``): every progress write is a point where a cancel stops the run."""

    FIELDS = ("phase", "datasets_done", "current_file", "rows_done", "bytes_done", "bytes_total")

    def __init__(self, run: ExportRun, listener: Callable[[ExportRun], None] | None = None, interval=PROGRESS_SECONDS):
        self.run = run
        self.listener = listener
        self.interval = interval
        self._last = 0.0

    def __call__(self, *, force: bool = False, **values) -> None:
        for key, value in values.items():
            setattr(self.run, key, value)
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        self.run.heartbeat_at = timezone.now()
        fields = {name: getattr(self.run, name) for name in self.FIELDS}
        if not ExportRun.objects.filter(pk=self.run.pk, state=ExportRun.State.RUNNING, cancel_requested=False).update(
            heartbeat_at=self.run.heartbeat_at, **fields
        ):
            if ExportRun.objects.filter(pk=self.run.pk, state=ExportRun.State.RUNNING).exists():
                raise Cancelled()
            raise LostRun(self.run.pk)
        if self.listener:
            self.listener(self.run)


class Heartbeat(BaseHeartbeat):
    """Keeps ``heartbeat_at`` fresh during stretches without progress (a long query
    before its first row, a slow server), so the tick only ends runs whose worker is
    really gone, and looks at the cancel flag (``cancelled``, which uploads poll)."""

    def __init__(self, run_id: int, interval: float | None = None) -> None:
        super().__init__(f"heartbeat-export-{run_id}", interval)
        self.run_id = run_id

    def beat(self) -> bool:
        return bool(
            ExportRun.objects.filter(pk=self.run_id, state=ExportRun.State.RUNNING).update(heartbeat_at=timezone.now())
        )

    def cancel_asked(self) -> bool:
        return ExportRun.objects.filter(pk=self.run_id, cancel_requested=True).exists()


# --- executing ----------------------------------------------------------------------------
def staging_dir(run_id: int) -> Path:
    return settings.DATA_DIR / "exports" / f"run-{int(run_id)}"


def execute(run_id: int, *, listener: Callable[[ExportRun], None] | None = None) -> ExportRun:
    """Claim and execute a run; returns it in its final (or waiting) state."""
    run, ended_here = EXPORT_WORK.claim_and_work(run_id, lambda run: _work_on(run, listener))
    if ended_here and run.state in ExportRun.ALERT_STATES:
        notify_failed(run)
    return run


def _work_on(run: ExportRun, listener) -> bool:
    run._log_stored = len(run.log)  # what the row holds already (a requeue's line)
    progress = Progress(run, listener)
    heartbeat = Heartbeat(run.pk)
    heartbeat.start()
    staging = staging_dir(run.pk)
    ended: bool | None = None
    try:
        state, message = _execute(run, progress, staging, cancelled=heartbeat.cancelled.is_set)
        ended = _finish(run, state, message)
    except LostRun:
        ended = False
    except Cancelled:
        ended = _finish(run, ExportRun.State.CANCELLED, CANCELLED_MESSAGE)
    except (drivers.ExportError, xlsx.SheetError, DestinationError, ValueError) as exc:
        ended = _finish(run, ExportRun.State.FAILED, str(exc))
    except OSError as exc:
        ended = _finish(run, ExportRun.State.FAILED, f"{exc.strerror or exc} (writing the files on this server)")
    except BaseException as exc:
        from celery.exceptions import SoftTimeLimitExceeded

        if isinstance(exc, SoftTimeLimitExceeded):
            ended = _finish(run, ExportRun.State.TIMED_OUT, "Timed out: the export took longer than the time limit.")
        elif isinstance(exc, KeyboardInterrupt | SystemExit):
            ended = _finish(run, ExportRun.State.INTERRUPTED, "Interrupted: the export was stopped.")
            raise
        else:
            log.exception("Export run %s failed with an unexpected error", run.pk)
            ended = _finish(run, ExportRun.State.FAILED, f"Internal error ({type(exc).__name__}); see the worker log.")
    finally:
        heartbeat.stop()
        shutil.rmtree(staging, ignore_errors=True)
        close_old_connections()
        if ended is False:
            log.warning("Export run %s was ended elsewhere while this worker worked on it", run.pk)
            run.refresh_from_db()
    if ended:
        # The log as stored, with the lines others appended (a cancel's "requested by").
        with contextlib.suppress(DatabaseError):
            run.log = ExportRun.objects.filter(pk=run.pk).values_list("log", flat=True).first() or run.log
    return bool(ended)


CANCELLED_MESSAGE = (
    "Cancelled by a user. Files already replaced at a destination are complete; the others keep last night's."
)

WORKER_FIELDS = (
    "state",
    "phase",
    "datasets_done",
    "current_file",
    "rows_done",
    "bytes_done",
    "bytes_total",
    "files",
    "error",
    "finished_at",
)


def _store(run: ExportRun) -> bool:
    """Write this worker's fields while the run is still its own. The log is appended
    to, never overwritten: lines others add meanwhile (*Cancel*'s "Cancellation
    requested by …") stay. ``run._log_stored`` is how much of ``run.log`` is written."""
    fields = {name: getattr(run, name) for name in WORKER_FIELDS}
    stored = getattr(run, "_log_stored", 0)
    if len(run.log) > stored:
        fields["log"] = _log_concat(run.log[stored:])
    written = bool(ExportRun.objects.filter(pk=run.pk, state=ExportRun.State.RUNNING).update(**fields))
    if written:
        run._log_stored = len(run.log)
    return written


def _finish(run: ExportRun, state: str, message: str = "") -> bool:
    run.state = state
    run.error = message if state != ExportRun.State.SUCCEEDED else ""
    run.finished_at = timezone.now()
    run.current_file = ""
    if state in (ExportRun.State.SUCCEEDED, ExportRun.State.PARTIAL):
        run.phase = ExportRun.Phase.DONE
    if message:
        run.append_log(message)
    stored = _store(run)
    if stored and state not in (ExportRun.State.SUCCEEDED, ExportRun.State.PARTIAL):
        ExportUpload.objects.filter(
            run_id=run.pk, state__in=[ExportUpload.State.PENDING, ExportUpload.State.UPLOADING]
        ).update(
            state=ExportUpload.State.FAILED,
            error="Not uploaded: the run was cancelled."
            if state == ExportRun.State.CANCELLED
            else "Not uploaded: the run ended early.",
            finished_at=run.finished_at,
        )
    return stored


@dataclass
class WrittenFile:
    path: Path
    file_name: str
    size: int
    sha256: str


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def open_driver(config: dict) -> drivers.Driver:
    """The driver for a run's snapshot (credentials from the Source row, never the snapshot)."""
    source = Source.objects.filter(pk=config["source"]["id"]).first()
    if source is None:
        raise drivers.ExportError("The export's database source was deleted.")
    return drivers.for_source(source, tz=site_zone(), timeout=settings.BACKUPSITE_EXPORT_STATEMENT_TIMEOUT)


def _execute(run: ExportRun, progress: Progress, staging: Path, *, cancelled=None) -> tuple[str, str]:
    config = run.config
    datasets = config.get("datasets") or []
    destinations = config.get("destinations") or []
    if not datasets:
        raise ValueError("This export has no datasets: add at least one query.")
    if not destinations:
        raise ValueError("This export has no enabled destination: add one.")
    folder = check_folder(config["export"].get("folder") or "")
    start, end = run.window_start, run.window_end
    zone = site_zone()
    run.append_log(
        f"Window: {timezone.localtime(start, zone):%Y-%m-%d %H:%M} to {timezone.localtime(end, zone):%Y-%m-%d %H:%M} "
        f"({zone}), from {config['source']['name']}."
    )
    driver = open_driver(config)
    shutil.rmtree(staging, ignore_errors=True)
    private_dir(staging)

    # 1. The files: all of them, or nothing is uploaded.
    written: list[WrittenFile] = []
    run.files = []
    for index, dataset in enumerate(datasets):
        name = dataset["file_name"]
        progress(current_file=name, rows_done=0, datasets_done=index, force=True)
        path = staging / name
        started = time.monotonic()
        try:
            prepared = driver.prepare(dataset["sql"])
            with driver.query(prepared, start, end) as result:
                sheet = xlsx.write_sheet(
                    path,
                    dataset["sheet_title"],
                    result.columns,
                    result.rows,
                    tz=zone,
                    parse_text_dates=driver.text_dates,
                    progress=lambda rows: progress(rows_done=rows),
                )
        except (drivers.ExportError, xlsx.SheetError, QueryRefused) as exc:
            raise type(exc)(f"{name}: {exc}") from None
        size = path.stat().st_size
        item = WrittenFile(path, name, size, _sha256(path))
        written.append(item)
        run.files = [
            *run.files,
            {
                "file_name": name,
                "sheet_title": dataset["sheet_title"],
                "rows": sheet.rows,
                "columns": sheet.columns,
                "size": size,
                "sha256": item.sha256,
            },
        ]
        notes = []
        if sheet.neutralised_cells:
            notes.append(f"{sheet.neutralised_cells} cell(s) that looked like formulas kept as text")
        if sheet.cleaned_cells:
            notes.append(f"{sheet.cleaned_cells} cell(s) with control characters removed")
        if sheet.truncated_cells:
            notes.append(f"{sheet.truncated_cells} cell(s) cut to 32,767 characters")
        extra = f" ({'; '.join(notes)})" if notes else ""
        run.append_log(
            f"{name}: {sheet.rows} row(s), {sheet.columns} column(s), {size} bytes in "
            f"{time.monotonic() - started:.1f} s{extra}."
        )
        progress(datasets_done=index + 1, rows_done=sheet.rows, force=True)
        if not _store(run):
            raise LostRun(run.pk)

    # 2. The uploads, one session per destination.
    total = sum(f.size for f in written)
    progress(
        phase=ExportRun.Phase.UPLOAD, current_file="", bytes_done=0, bytes_total=total * len(destinations), force=True
    )
    failed = 0
    for index, dest in enumerate(destinations):
        ok = _upload(run, dest, folder, written, base=index * total, progress=progress, cancel=cancelled)
        failed += 0 if ok else 1
    if failed == len(destinations):
        return ExportRun.State.FAILED, "Every upload failed; last night's files stay at the destinations."
    if failed:
        return ExportRun.State.PARTIAL, f"{failed} of {len(destinations)} destination(s) failed (see below)."
    return ExportRun.State.SUCCEEDED, ""


def _upload(
    run: ExportRun, dest: dict, folder: str, written: list[WrittenFile], *, base: int, progress, cancel=None
) -> bool:
    upload, _created = ExportUpload.objects.get_or_create(
        run=run, destination_id=dest["id"], defaults={"destination_name": dest["name"]}
    )
    now = timezone.now()
    ExportUpload.objects.filter(pk=upload.pk).update(state=ExportUpload.State.UPLOADING, started_at=now)
    items = [UploadItem(f.path, f.file_name, f.size, f.sha256) for f in written]
    try:
        destination = Destination.objects.filter(pk=dest["id"]).first()
        if destination is None:
            raise DestinationError("The destination was deleted.")
        if not destination.can(REPLACE):
            raise DestinationError(f"{destination.kind_label} destinations cannot replace files; choose another kind.")
        backend = destination.backend()
        with backend.session() as session:
            upload.remote_folder = session.describe_folder(folder)[:500]
            session.upload_files(
                folder, items, progress=lambda done: progress(bytes_done=base + done), cancel=cancel, replace=True
            )
    except DestinationError as exc:
        upload.state, upload.error = ExportUpload.State.FAILED, str(exc)
        run.append_log(f"Upload to {dest['name']} failed: {exc}")
    else:
        upload.state, upload.error = ExportUpload.State.SUCCEEDED, ""
        upload.bytes_done = sum(f.size for f in written)
        run.append_log(f"Uploaded {len(items)} file(s) to {dest['name']} ({upload.remote_folder}).")
    upload.finished_at = timezone.now()
    upload.save()
    if not _store(run):
        raise LostRun(run.pk)
    return upload.state == ExportUpload.State.SUCCEEDED


# --- cancel ----------------------------------------------------------------------------------
def cancel_run(run_id: int, user=None) -> str:
    """Cancel an export run, as :func:`jobs.services.cancel_run` does a backup run (the
    same :class:`~jobs.services.CancelOutcome`): one that has not started is cancelled
    here and now; one whose worker is gone (stale heartbeat) too, its staging removed
    on its host and the slot handed on; a live worker gets the flag it polls and stops
    at its next progress point."""
    who = by_whom(user)
    now = timezone.now()
    if EXPORT_WORK.cancel_pending(run_id, now, who):
        return CancelOutcome.NOT_STARTED
    if not ExportRun.objects.filter(pk=run_id, state=ExportRun.State.RUNNING).update(
        cancel_requested=True, log=_log_append(f"Cancellation requested{who}.")
    ):
        return CancelOutcome.FINISHED
    info = _info(ExportRun.objects.filter(pk=run_id).values(*reconcile.RUN_INFO_FIELDS).first())
    gone = reconcile.worker_gone(info, now, settings.BACKUPSITE_STALE_RUN_SECONDS)
    if gone and end_abandoned(info, ExportRun.State.CANCELLED, now) is not None:
        hand_slot_on()
        return CancelOutcome.ABANDONED
    return CancelOutcome.REQUESTED


# --- e-mail -------------------------------------------------------------------------------------
def notify_failed(run: ExportRun) -> bool:
    """The failure e-mail to the export's report-to addresses, through the outbox."""
    return notifications.notify_export_failed(run)


# --- the dispatcher's hook: due exports ----------------------------------------------------------
def start_due_exports(now=None) -> int:
    """Start every enabled export whose ``next_run_at`` has come (a hook of the dispatcher
    tick, ``jobs.dispatch.DUE_HOOKS``). Each is claimed with a conditional update of
    ``next_run_at`` (two ticks, two beats: one run), and the next time is the next one
    after *now*: nights missed while nothing ran are run once. Returns how many started."""
    now = now or timezone.now()
    started = 0
    for export in PlanningExport.objects.filter(enabled=True, next_run_at__lte=now).select_related("source"):
        due = export.next_run_at
        following = export.next_run_after(now)
        if not PlanningExport.objects.filter(pk=export.pk, next_run_at=due).update(next_run_at=following):
            continue  # another tick took it
        try:
            enqueue(export, trigger=ExportRun.Trigger.SCHEDULE, moment=now)
        except AlreadyRunning:
            log.warning("Export %s: the run due at %s was skipped: the previous run is still active", export.pk, due)
            continue
        started += 1
    return started


if start_due_exports not in dispatch.DUE_HOOKS:
    dispatch.DUE_HOOKS.append(start_due_exports)


__all__ = [
    "EXPORT",
    "AlreadyRunning",
    "ExportWork",
    "cancel_run",
    "create_run",
    "enqueue",
    "execute",
    "start_due_exports",
]


# --- the pages: save, delete, preview, test ------------------------------------------------------
def save_export(form, formset, *, request=None) -> PlanningExport:
    """Create or change an export and its datasets from a valid form and formset, every
    write through :mod:`backupsite.configwrite` (the audit and the admin e-mail)."""
    from backupsite import configwrite

    with transaction.atomic():
        export = form.save(commit=False)
        configwrite.save(export, request=request, m2m={"destinations": form.cleaned_data["destinations"]})
        for dataset_form in formset.deleted_forms:
            if dataset_form.instance.pk is not None:
                configwrite.delete(dataset_form.instance, request=request)
        for position, dataset_form in enumerate(formset.kept_forms()):
            dataset = dataset_form.save(commit=False)
            dataset.export = export
            dataset.position = position
            configwrite.save(dataset, request=request)  # an unchanged one records nothing
    return export


class InUse(Exception):
    pass


def delete_export(export: PlanningExport, *, request=None) -> None:
    """Delete an export (its datasets go with it; its runs stay in the history). Refused
    while it runs. The files at the destinations are left in place."""
    from backupsite import configwrite

    if export.active_run() is not None:
        raise InUse(_("“%(name)s” is running; let the run finish first.") % {"name": export.name})
    configwrite.delete(export, request=request)


PREVIEW_ROWS = 10
PREVIEW_TIMEOUT = 20  # seconds at most, whatever the export's limit: a web request waits


@dataclass
class Preview:
    file_name: str
    sheet_title: str
    columns: list[str] = None  # type: ignore[assignment]
    kinds: list[str] = None  # type: ignore[assignment]
    rows: list[list[str]] = None  # type: ignore[assignment]
    more: bool = False
    error: str = ""


def _display(value) -> str:
    import datetime as dt

    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, dt.date):
        return value.isoformat()
    text = str(value)
    return text if len(text) <= 200 else text[:199] + "…"


def preview(source: Source, datasets: list[dict], *, moment=None, window_days: int = 5, offset_days: int = 0):
    """The first rows and the column types of each dataset's query over the window of
    a run now, with the export's safeguards (read-only, a short time limit). Never
    raises for a bad query: the error is in its :class:`Preview`."""
    from itertools import islice

    from jobs.exports.window import window

    zone = site_zone()
    start, end = window(moment or timezone.now(), window_days, offset_days, zone)
    timeout = min(PREVIEW_TIMEOUT, settings.BACKUPSITE_EXPORT_STATEMENT_TIMEOUT)
    results = []
    try:
        driver = drivers.for_source(source, tz=zone, timeout=timeout)
    except drivers.ExportError as exc:
        return [Preview(d.get("file_name", ""), d.get("sheet_title", ""), error=str(exc)) for d in datasets], (
            start,
            end,
        )
    for dataset in datasets:
        item = Preview(dataset.get("file_name", ""), dataset.get("sheet_title", ""))
        try:
            prepared = driver.prepare(dataset.get("sql", ""))
            with driver.query(prepared, start, end) as result:
                raw = list(islice(result.rows, PREVIEW_ROWS + 1))
            item.more = len(raw) > PREVIEW_ROWS
            raw = raw[:PREVIEW_ROWS]
            converter = xlsx.Converter(None, zone, parse_text_dates=driver.text_dates)
            values = [[_plain_value(v) for v in converter.row(row)] for row in raw]
            item.columns = result.columns
            kinds = [""] * len(result.columns)
            for row in values:
                for index, value in enumerate(row):
                    if not kinds[index] and value is not None:
                        kinds[index] = xlsx.kind_of(value)
            item.kinds = [k or "empty" for k in kinds]
            item.rows = [[_display(v) for v in row] for row in values]
        except (drivers.ExportError, ValueError) as exc:
            item.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - a preview button must answer
            log.warning("Preview of %s failed unexpectedly (%s)", item.file_name, type(exc).__name__)
            item.error = f"The preview failed unexpectedly ({type(exc).__name__})."
        results.append(item)
    return results, (start, end)


def _plain_value(value):
    from openpyxl.cell import Cell

    return value._value if isinstance(value, Cell) else value


@dataclass
class DestinationCheck:
    name: str
    ok: bool
    message: str
    where: str = ""


def test_destinations(destinations, folder: str) -> list[DestinationCheck]:
    """For each destination: connect, write a small test file into the export's
    *folder* (where the files will go), then delete it. Never raises."""
    import os
    import secrets as _secrets
    import tempfile

    from destinations.backends.base import DELETE, PROBE_PREFIX

    results = []
    for destination in destinations:
        try:
            check_folder(folder)
            if not destination.can(REPLACE):
                raise DestinationError(
                    _("%(kind)s destinations cannot replace files.") % {"kind": destination.kind_label}
                )
            name = f"{PROBE_PREFIX}{_secrets.token_hex(6)}.tmp"
            data = os.urandom(4096)
            digest = hashlib.sha256(data).hexdigest()
            with destination.backend().session() as session, tempfile.NamedTemporaryFile() as tmp:
                tmp.write(data)
                tmp.flush()
                where = session.describe_folder(folder)
                session.upload(Path(tmp.name), folder, name, expected_size=len(data), expected_sha256=digest)
                if destination.can(DELETE):
                    session.delete(folder, name)
            results.append(
                DestinationCheck(destination.name, True, _("Connected; a test file was written and deleted."), where)
            )
        except DestinationError as exc:
            results.append(DestinationCheck(destination.name, False, str(exc)))
        except Exception as exc:  # noqa: BLE001 - only the type: a library's message may quote secrets
            log.error("Export connection test to %s failed unexpectedly: %s", destination.pk, type(exc).__name__)
            results.append(
                DestinationCheck(
                    destination.name,
                    False,
                    _("The test failed unexpectedly (%(type)s).") % {"type": type(exc).__name__},
                )
            )
    return results
