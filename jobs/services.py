"""What a run does, called by the Celery task, the CLI and the views alike.

The Run row is the truth: state, phase, progress and errors are written to it as the
run goes, Celery only carries its primary key, and every step can be repeated by another
worker after a crash (claims are conditional, temporary files are cleaned up).

Crash recovery (see ``jobs/reconcile.py`` for the rules): a worker working on a run
writes a heartbeat every ``BACKUPSITE_HEARTBEAT_SECONDS``; :func:`reconcile_runs` marks
a run whose heartbeat is older than ``BACKUPSITE_STALE_RUN_SECONDS`` *interrupted* and
removes its temporary files, hands the freed slot to the next waiting run, and hands a
queued run nobody took over again once, then fails it. A worker only writes to a run
while the run is still its own (running or uploading), so a worker that comes back after
its run was ended elsewhere cannot bring the run back to life.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, close_old_connections, connection, models, transaction
from django.db.models import F, Max, Value
from django.db.models.functions import Concat
from django.utils import timezone

from backupsite import __version__
from backupsite.private import private_dir
from backupsite.slugs import safe_folder_name
from destinations.backends import DestinationError, NotFoundError
from destinations.backends.base import READ, UploadItem, job_folder
from destinations.models import Destination
from jobs import reconcile, retention
from jobs.engine import ArchiveError, Cancelled, Entry, atomic_path, write_archive, write_manifest
from jobs.engine.agekeys import AGE_SUFFIX, KEY_FILE_NAME
from jobs.engine.atomic import remove_partials
from jobs.models import Job, Run, SlotLock, Source, Upload
from jobs.naming import ARCHIVE_SUFFIX, MANIFEST_SUFFIX, render
from jobs.sources import SourceError
from jobs.sources import get_kind as get_source_kind
from jobs.sources.base import cancel_check

log = logging.getLogger(__name__)
HEAVY_SLOT = "heavy-runs"


class AlreadyRunning(Exception):
    pass


class RunFailed(Exception):
    """A run ended badly; the message is the one stored on the run."""


class LostRun(Exception):
    """This worker no longer owns the run: it was ended elsewhere (the reconcile found
    its heartbeat stale, or a user cancelled it as abandoned). Stop working on it."""


# --- creating runs ------------------------------------------------------------------
def snapshot(job: Job, *, sources=None, destinations=None) -> dict:
    """The configuration a run works with, frozen when the run is created. *sources* and
    *destinations* default to the job's own (a one-off run passes the wizard's)."""
    sources = job.sources.all() if sources is None else sources
    destinations = job.destinations.filter(enabled=True) if destinations is None else destinations
    return {
        "job": {
            "id": job.pk,
            "name": job.name,
            "slug": job.slug,
            "archive_name_template": job.archive_name_template,
            "encryption": job.encryption,
            "age_recipient": job.age_recipient if job.encrypts else "",
            "compression_level": job.compression_level,
            "report_to": job.report_to_list,
            "keep_last": job.keep_last,
            "max_age_days": job.max_age_days,
        },
        "sources": [
            {"id": s.pk, "name": s.name, "slug": s.slug, "kind": s.kind, "settings": s.settings} for s in sources
        ],
        "destinations": [{"id": d.pk, "name": d.name, "kind": d.kind} for d in destinations if d.enabled],
    }


def create_run(job: Job, *, trigger: str = Run.Trigger.MANUAL, user=None) -> Run:
    """Create a queued run, or raise AlreadyRunning (the database refuses a second
    active run of the same job, whoever asks: double click, two beats, a retry)."""
    try:
        with transaction.atomic():
            return Run.objects.create(
                job=job,
                job_name=job.name,
                config=snapshot(job),
                trigger=trigger,
                created_by=user if user is not None and user.is_authenticated else None,
                enqueued_at=timezone.now(),
            )
    except IntegrityError:
        raise AlreadyRunning(f"“{job.name}” is already running.") from None


def enqueue_run(job: Job, *, trigger: str = Run.Trigger.MANUAL, user=None) -> Run:
    run = create_run(job, trigger=trigger, user=user)
    hand_over([run.pk])
    return run


def enqueue_oneoff(settings_of: Job, *, sources, destinations, password: str = "", user=None) -> Run:
    """ "Only execute backup": a run of the unsaved job *settings_of* (the wizard's
    choices), without a job (``Run.job`` is None). Its folder, here and at every
    destination, is ``oneoff-<run id>`` (:func:`jobs.models.oneoff_folder`, written into
    the snapshot as the job slug, so every path is built as for a job run) and it has no
    retention, so no job's retention ever touches it. With a backup *password* a new
    identity is made and its key file kept on the run (``Run.age_identity_wrapped``) and
    uploaded beside the archive, as for a job."""
    from jobs.models import oneoff_folder

    if settings_of.pk is not None:
        raise ValueError("A one-off run is made from unsaved settings.")
    if password:
        settings_of.set_backup_password(password)
    with transaction.atomic():
        run = Run.objects.create(
            job=None,
            job_name=settings_of.name,
            trigger=Run.Trigger.WIZARD,
            created_by=user if user is not None and user.is_authenticated else None,
            enqueued_at=timezone.now(),
            age_identity_wrapped=settings_of.age_identity_wrapped if password else "",
        )
        config = snapshot(settings_of, sources=list(sources), destinations=list(destinations))
        config["job"].update(slug=oneoff_folder(run.pk), oneoff=True, keep_last=None, max_age_days=None)
        run.config = config
        run.save(update_fields=["config"])
    hand_over([run.pk])
    return run


def hand_over(run_ids: list[int]) -> None:
    """Send runs to the workers once the current transaction commits (the one place
    that enqueues ``execute_run``). A broker that cannot be reached is logged, never
    raised: the reconcile hands a run nobody took over again."""
    from jobs import tasks

    def send() -> None:
        for run_id in run_ids:
            try:
                tasks.execute_run.delay(run_id)
            except Exception:
                log.exception("Could not hand run %s to the workers", run_id)

    if run_ids:
        transaction.on_commit(send)


# --- claiming -----------------------------------------------------------------------
def heavy_work_in_progress() -> int:
    """How much heavy work holds a slot now: backups that are running or uploading, and
    planning exports that are running (an export and a backup never run at once).
    Called under the slot lock by every claim (``claim`` here and
    ``jobs.exports.service.claim_heavy_slot``)."""
    return Run.objects.filter(state__in=Run.HELD_STATES).count() + exports_in_progress()


def exports_in_progress() -> int:
    from jobs.models import ExportRun

    return ExportRun.objects.filter(state=ExportRun.State.RUNNING).count()


def claim(run_id: int) -> str:
    """Move a queued/waiting run to running if a heavy slot is free.

    Returns "claimed", "busy" (parked as waiting: a run that frees a slot, or the
    reconcile, hands it to the workers again; nothing polls the broker meanwhile) or
    "gone" (someone else took it, or it was cancelled): so a duplicate delivery never
    runs twice.
    """
    with transaction.atomic():
        SlotLock.objects.get_or_create(name=HEAVY_SLOT)
        SlotLock.objects.select_for_update().get(name=HEAVY_SLOT)
        run = Run.objects.filter(pk=run_id).first()
        if run is None or run.state not in (Run.State.QUEUED, Run.State.WAITING):
            return "gone"
        if run.cancel_requested:
            now = timezone.now()
            Run.objects.filter(pk=run_id).update(
                state=Run.State.CANCELLED, finished_at=now, error="Cancelled before it started."
            )
            return "gone"
        if heavy_work_in_progress() >= settings.BACKUPSITE_MAX_CONCURRENT_RUNS:
            Run.objects.filter(pk=run_id, state=Run.State.QUEUED).update(state=Run.State.WAITING)
            return "busy"
        now = timezone.now()
        Run.objects.filter(pk=run_id).update(
            state=Run.State.RUNNING, phase=Run.Phase.COLLECT, started_at=now, heartbeat_at=now
        )
        return "claimed"


# --- progress -----------------------------------------------------------------------
class Progress:
    """Writes phase and progress to the run row, throttled, and checks for cancellation."""

    def __init__(self, run: Run, interval: float = 1.0, listener: Callable[[Run], None] | None = None) -> None:
        self.run = run
        self.interval = interval
        self.listener = listener
        self._last = 0.0

    def __call__(
        self,
        *,
        phase: str | None = None,
        done: int | None = None,
        total: int | None = None,
        files: int | None = None,
        force: bool = False,
    ) -> None:
        run = self.run
        if phase is not None:
            run.phase = phase
        if done is not None:
            run.bytes_done = done
        if total is not None:
            run.bytes_total = total
        if files is not None:
            run.files_done = files
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        run.heartbeat_at = timezone.now()
        written = Run.objects.filter(pk=run.pk, state__in=Run.HELD_STATES).update(
            phase=run.phase,
            bytes_done=run.bytes_done,
            bytes_total=run.bytes_total,
            files_done=run.files_done,
            heartbeat_at=run.heartbeat_at,
        )
        if not written:
            raise LostRun(run.pk)
        if self.listener:
            self.listener(run)
        if Run.objects.filter(pk=run.pk, cancel_requested=True).exists():
            raise Cancelled()


class Heartbeat(threading.Thread):
    """Keeps ``heartbeat_at`` fresh while this process works on the run, including
    stretches without progress (a long database dump, a slow upload), so the reconcile
    only ever takes runs whose worker is really gone. Writes every *interval* seconds
    (``BACKUPSITE_HEARTBEAT_SECONDS``) and looks at the cancel flag every
    ``CANCEL_POLL`` seconds."""

    CANCEL_POLL = 2.0  # seconds between looks at the run's cancel flag

    def __init__(self, run_id: int, interval: float | None = None) -> None:
        super().__init__(name=f"heartbeat-run-{run_id}", daemon=True)
        self.run_id = run_id
        self.interval = float(interval if interval is not None else settings.BACKUPSITE_HEARTBEAT_SECONDS)
        self._stopped = threading.Event()
        #: Set once a user asked to cancel, or the run was ended elsewhere; long client
        #: programs poll it (cancel_check) and stop.
        self.cancelled = threading.Event()
        #: Set when the run is no longer this worker's (ended by the reconcile or a cancel).
        self.lost = threading.Event()

    def run(self) -> None:
        last_beat = time.monotonic()
        try:
            while not self._stopped.wait(min(self.interval, self.CANCEL_POLL)):
                try:
                    if time.monotonic() - last_beat >= self.interval:
                        beat = Run.objects.filter(pk=self.run_id, state__in=Run.HELD_STATES).update(
                            heartbeat_at=timezone.now()
                        )
                        last_beat = time.monotonic()
                        if not beat and not self._stopped.is_set():
                            self.lost.set()
                            self.cancelled.set()
                    if Run.objects.filter(pk=self.run_id, cancel_requested=True).exists():
                        self.cancelled.set()
                except Exception:  # a database blip must not kill the thread
                    log.warning("Heartbeat of run %s failed; retrying", self.run_id, exc_info=True)
                    close_old_connections()
        finally:
            connection.close()

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=10)


# --- executing ----------------------------------------------------------------------
def archive_dir_for(job_slug: str) -> Path:
    """This server's folder of the job's local copies. Raises UnsafeFolderName (a
    ValueError: the run fails with its message) for a slug that is not a plain slug, so
    a crafted ``../../x`` never makes, sweeps or fills a folder outside the archive dir."""
    return settings.BACKUPSITE_ARCHIVE_DIR / safe_folder_name(job_slug, "job folder name")


def execute_run(run_id: int, *, listener: Callable[[Run], None] | None = None) -> Run:
    """Claim and execute a run; returns the run in its final (or waiting) state.

    When the run ends, its slot is handed to the next waiting run (oldest first) through
    :func:`reconcile_runs`, so nothing has to poll the broker while a run waits."""
    close_old_connections()
    outcome = claim(run_id)
    run = Run.objects.get(pk=run_id)
    if outcome != "claimed":
        return run
    try:
        ended_here = _work_on(run, listener)
    finally:
        _release_slot()
    if ended_here and run.is_alert:
        from jobs.notifications import notify_run_failed

        notify_run_failed(run)
    return run


def _work_on(run: Run, listener: Callable[[Run], None] | None) -> bool:
    """Execute a claimed run and store how it ended. Returns False when the run was
    ended elsewhere meanwhile (then *run* is reloaded with what the row says)."""
    progress = Progress(run, listener=listener)
    heartbeat = Heartbeat(run.pk)
    heartbeat.start()
    token = cancel_check.set(heartbeat.cancelled.is_set)
    ended: bool | None = None
    try:
        _execute(run, progress)
        ended = True
    except LostRun:
        ended = False
    except Cancelled:
        ended = _finish(run, Run.State.CANCELLED, "Cancelled by a user.")
    except (SourceError, DestinationError, ArchiveError, ValueError) as exc:
        ended = _finish(run, Run.State.FAILED, str(exc))
    except OSError as exc:
        ended = _finish(run, Run.State.FAILED, _describe_oserror(exc))
    except BaseException as exc:
        # SoftTimeLimitExceeded, KeyboardInterrupt, SystemExit, bugs: never leave the row "running".
        from celery.exceptions import SoftTimeLimitExceeded

        if isinstance(exc, SoftTimeLimitExceeded):
            ended = _finish(run, Run.State.TIMED_OUT, _timed_out_message())
        elif isinstance(exc, KeyboardInterrupt):
            ended = _finish(run, Run.State.CANCELLED, "Stopped with Ctrl-C.")
            raise
        elif isinstance(exc, SystemExit):
            ended = _finish(run, Run.State.INTERRUPTED, "Interrupted: the worker was shut down during the run.")
            raise
        else:
            log.exception("Run %s failed with an unexpected error", run.pk)
            ended = _finish(run, Run.State.FAILED, f"Internal error ({type(exc).__name__}); see the worker log.")
    finally:
        cancel_check.reset(token)
        heartbeat.stop()
        close_old_connections()
        if ended is False:
            log.warning("Run %s was ended elsewhere while this worker worked on it; its result is discarded", run.pk)
            run.refresh_from_db()
    return bool(ended)


def _release_slot() -> None:
    """This run gave its slot back: let the reconcile hand it to the next waiting run,
    and wake a waiting planning export. A failure here never changes the outcome
    already stored (the reaper and the exports' tick retry)."""
    try:
        reconcile_runs()
    except Exception:
        log.exception("Could not hand the free slot to a waiting run; the reaper will")
    try:
        from jobs.exports.service import wake_waiting

        wake_waiting()
    except Exception:
        log.exception("Could not hand the free slot to a waiting export; its tick will")


def _timed_out_message() -> str:
    from jobs.models import time_limit_text

    return (
        f"Timed out: the run took longer than the time limit ({time_limit_text()}); its temporary files were removed."
    )


def _describe_oserror(exc: OSError) -> str:
    import errno

    if exc.errno == errno.ENOSPC:
        return "No space left on the staging disk while writing the archive."
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


# What a worker writes to its run; never the fields others write meanwhile (the cancel
# flag, the heartbeat thread's heartbeat_at, verification results, hand-over records).
WORKER_FIELDS = (
    "state",
    "phase",
    "bytes_done",
    "bytes_total",
    "files_done",
    "archive_name",
    "archive_size",
    "archive_sha256",
    "file_count",
    "local_path",
    "log",
    "error",
    "finished_at",
)


def _store(run: Run) -> bool:
    """Write this worker's fields of *run*, only while the run is still its own
    (running or uploading in the database). Returns whether it was."""
    fields = {name: getattr(run, name) for name in WORKER_FIELDS}
    return bool(Run.objects.filter(pk=run.pk, state__in=Run.HELD_STATES).update(**fields))


def _store_or_stop(run: Run) -> None:
    if not _store(run):
        raise LostRun(run.pk)


def _finish(run: Run, state: str, error: str = "") -> bool:
    """Store the outcome; False (and nothing written) when the run was ended elsewhere."""
    run.state = state
    run.error = error
    run.finished_at = timezone.now()
    if state in (Run.State.SUCCEEDED, Run.State.PARTIAL):
        run.phase = Run.Phase.DONE
    if error:
        run.append_log(error)
    stored = _store(run)
    if stored and state not in (Run.State.SUCCEEDED, Run.State.PARTIAL):
        _settle_uploads(run.pk, f"Not finished: the run ended ({run.get_state_display().lower()}).", run.finished_at)
    return stored


def _execute(run: Run, progress: Progress) -> None:
    config = run.config
    job = config["job"]
    staging = private_dir(archive_dir_for(job["slug"]))
    if job.get("encryption") == "password":
        write_key_file(job["slug"], run.key_file)  # a one-off run's own, else its job's
    for leftover in remove_partials(staging):
        run.append_log(f"Removed a temporary file left by an interrupted run: {leftover.name}")

    # Collect: build the sources and measure what there is to read.
    progress(phase=Run.Phase.COLLECT, force=True)
    stored = {s.pk: s.secrets for s in Source.objects.filter(pk__in=[s["id"] for s in config["sources"]])}
    sources = [get_source_kind(s["kind"]).from_snapshot(s, stored.get(s["id"])) for s in config["sources"]]
    if not sources:
        raise SourceError("This job has nothing to back up: select at least one source.")
    total = 0
    for source in sources:
        size, _ = source.measure()
        total += size
    progress(total=total, force=True)
    check_free_space(staging, job["id"], total)

    # Archive: one stream into the local copy, then the manifest.
    recipients = [job["age_recipient"]] if job.get("encryption", "none") != "none" and job.get("age_recipient") else []
    if job.get("encryption", "none") != "none" and not recipients:
        raise ArchiveError("This job is set to encrypt but has no key: set its backup password again.")
    name = render(
        job["archive_name_template"], job_slug=job["slug"], when=timezone.localtime(run.created_at), run_id=run.pk
    )
    archive_name = name + ARCHIVE_SUFFIX + (AGE_SUFFIX if recipients else "")
    manifest_name = archive_name + MANIFEST_SUFFIX
    run.archive_name = archive_name
    run.append_log(f"Archiving {len(sources)} source(s), {total} bytes, into {archive_name}")
    for note in (line for source in sources for line in source.log_notes()):
        run.append_log(note)
    progress(phase=Run.Phase.ARCHIVE, done=0, force=True)
    warnings: list[str] = []

    def on_error(where: str, exc: OSError) -> None:
        warnings.append(f"{where}: not backed up ({exc.strerror or exc})")

    def entries() -> Iterator[Entry]:
        for source in sources:
            with source.entries(staging, on_error) as items:
                yield from items

    archive_path = staging / archive_name
    manifest_path = staging / manifest_name
    with tempfile.TemporaryFile("w+", dir=staging, prefix=".members-") as members:
        with atomic_path(archive_path) as tmp, open(tmp, "wb") as out, contextlib.closing(entries()) as stream:
            result = write_archive(
                stream,
                out,
                members_out=members,
                level=job.get("compression_level") or settings.BACKUPSITE_ZSTD_LEVEL,
                recipients=recipients,
                progress=lambda done, files: progress(done=done, files=files),
            )
        members.seek(0)
        header = {
            "tool": {"name": "backupsite", "version": __version__},
            "job": {"name": job["name"], "slug": job["slug"]},
            "run": run.pk,
            "created": timezone.now().isoformat(),
            "sources": [{**s.manifest_info(), "name": s.name, "slug": s.slug, "kind": s.kind} for s in sources],
            "archive": {
                "name": archive_name,
                "size": result.size,
                "sha256": result.sha256,
                "compression": "zstd",
                "encryption": {"scheme": "age", "recipient": recipients[0]} if recipients else None,
            },
            "file_count": result.file_count,
        }
        with atomic_path(manifest_path) as tmp, open(tmp, "w") as out:
            write_manifest(out, header, members)
    warnings.extend(result.warnings)
    if result.warning_count > len(result.warnings):
        warnings.append(f"… and {result.warning_count - len(result.warnings)} more problems.")
    for warning in warnings:
        run.append_log(warning)
    run.archive_size = result.size
    run.archive_sha256 = result.sha256
    run.file_count = result.file_count
    run.local_path = str(archive_path.relative_to(settings.BACKUPSITE_ARCHIVE_DIR))
    run.bytes_done = result.input_bytes
    run.append_log(f"Archive written: {result.size} bytes, {result.file_count} files, sha256 {result.sha256}")
    _store_or_stop(run)

    # Upload: one Upload row per destination; the row records every attempt.
    failed_uploads = 0
    uploaded: list[dict] = []
    destinations = config["destinations"]
    if destinations:
        if not Run.objects.filter(pk=run.pk, state=Run.State.RUNNING).update(state=Run.State.UPLOADING):
            raise LostRun(run.pk)
        run.state = Run.State.UPLOADING
        progress(phase=Run.Phase.UPLOAD, done=0, total=result.size * len(destinations), force=True)
    for index, dest in enumerate(destinations):
        upload, _ = Upload.objects.get_or_create(
            run=run, destination_id=dest["id"], defaults={"destination_name": dest["name"], "remote_name": archive_name}
        )
        base = index * result.size
        ok = perform_upload(
            upload,
            archive_path,
            manifest_path,
            job["slug"],
            result.size,
            result.sha256,
            progress=lambda done, base=base: progress(done=base + done),
        )
        if not ok:
            failed_uploads += 1
            run.append_log(f"Upload to {dest['name']} failed: {upload.error}")
        else:
            uploaded.append(dest)
            run.append_log(f"Uploaded to {dest['name']}")

    # Retention (principle 3): this job's older backups, on this server and wherever this
    # archive arrived; problems are logged, never fail the run. The phase is set directly,
    # not through progress(), so a late cancel cannot turn a made backup into "cancelled".
    if not Run.objects.filter(pk=run.pk, state__in=Run.HELD_STATES).update(
        phase=Run.Phase.RETENTION, heartbeat_at=timezone.now()
    ):
        raise LostRun(run.pk)
    for line in retention.after_run(config, protect={archive_name}, destinations=uploaded):
        run.append_log(line)

    if destinations and failed_uploads == len(destinations):
        state, message = Run.State.FAILED, "Every upload failed; the archive is kept on this server."
    elif failed_uploads or warnings:
        summary = []
        if failed_uploads:
            summary.append(f"{failed_uploads} of {len(destinations)} upload(s) failed")
        if warnings:
            summary.append(f"{len(warnings)} item(s) could not be backed up")
        state, message = Run.State.PARTIAL, "; ".join(summary) + " (see the log)."
    else:
        state, message = Run.State.SUCCEEDED, ""
    if not _finish(run, state, message):
        raise LostRun(run.pk)


def perform_upload(
    upload: Upload,
    archive_path: Path,
    manifest_path: Path,
    job_slug: str,
    size: int,
    sha256: str,
    progress=None,
) -> bool:
    """Upload the archive, then its manifest, to one destination, in one session.
    Records the outcome on the Upload row and returns whether it succeeded."""
    now = timezone.now()
    Upload.objects.filter(pk=upload.pk).update(
        state=Upload.State.UPLOADING, started_at=now, attempts=upload.attempts + 1
    )
    upload.attempts += 1
    try:
        destination = Destination.objects.get(pk=upload.destination_id)
        backend = destination.backend()
        folder = job_folder(job_slug)
        key_file = archive_path.parent / KEY_FILE_NAME
        items = [
            UploadItem(archive_path, archive_path.name, size, sha256),
            UploadItem(manifest_path, manifest_path.name, manifest_path.stat().st_size),
        ]
        with backend.session() as session:
            session.remove_partials(folder)
            if archive_path.name.endswith(AGE_SUFFIX) and key_file.is_file():
                if backend.can(READ):
                    _ensure_key_file(session, folder, key_file)
                else:  # write-only kinds (e-mail): the key travels with every backup
                    items.insert(0, UploadItem(key_file, KEY_FILE_NAME, key_file.stat().st_size))
            # replace=True: a name repeats on purpose with templates such as
            # "{job}-{weekday}" (last Monday's backup is replaced by this Monday's).
            session.upload_files(
                folder,
                items,
                progress=(lambda done: progress(min(done, size))) if progress else None,
                cancel=cancel_check.get(),
                replace=True,
            )
    except Destination.DoesNotExist:
        upload.state, upload.error = Upload.State.FAILED, "The destination was deleted."
    except Cancelled:
        upload.state, upload.error, upload.finished_at = Upload.State.FAILED, "Cancelled.", timezone.now()
        upload.save()
        raise
    except DestinationError as exc:
        upload.state, upload.error = Upload.State.FAILED, str(exc)
    else:
        upload.state, upload.error, upload.bytes_done = Upload.State.SUCCEEDED, "", size
    upload.finished_at = timezone.now()
    upload.save()
    return upload.state == Upload.State.SUCCEEDED


def _ensure_key_file(session, folder: str, key_file: Path) -> None:
    """Upload ``backupsite-key.age`` beside the backups unless the same file is there
    (a changed backup password re-wraps the key: the new file replaces the old one)."""
    wanted = key_file.read_bytes()
    try:
        with session.open(folder, KEY_FILE_NAME) as fh:
            if fh.read(len(wanted) + 1) == wanted:
                return
    except NotFoundError:
        pass
    session.upload(key_file, folder, KEY_FILE_NAME, expected_size=len(wanted), replace=True)


def write_key_file(job_slug: str, key_file: bytes | None) -> None:
    """Keep the local copy of the key file in the job's staging folder current."""
    path = archive_dir_for(job_slug) / KEY_FILE_NAME
    if key_file is None:
        return
    if path.is_file() and path.read_bytes() == key_file:
        return
    with atomic_path(path) as tmp:
        tmp.write_bytes(key_file)


def check_free_space(staging: Path, job_id: int | None, input_bytes: int) -> None:
    """Refuse to start when the staging disk cannot hold the archive (estimated from the
    job's last archive, else the input size) plus a margin."""
    import shutil

    last = (
        Run.objects.filter(job_id=job_id, archive_size__isnull=False).order_by("-created_at").first()
        if job_id
        else None
    )
    estimate = int(last.archive_size * 1.2) if last is not None else input_bytes
    needed = estimate + settings.BACKUPSITE_STAGING_MARGIN_BYTES
    free = shutil.disk_usage(staging).free
    if free < needed:
        from django.template.defaultfilters import filesizeformat

        raise ArchiveError(
            f"Not enough free space for the archive in {staging}: about {filesizeformat(needed)} needed, "
            f"{filesizeformat(free)} free."
        )


# --- crash recovery: reconcile, abandoned runs, cancel ----------------------------------
def reap_stale_runs() -> int:
    """The periodic housekeeping (beat entry ``reap-stale-runs``): verification tickets
    nobody picked up go, and the active runs are reconciled. Returns how many runs it
    ended (interrupted, cancelled or failed)."""
    from jobs.models import VerifyTicket

    # A verification nobody picked up within a day goes, with the identity it holds.
    VerifyTicket.objects.filter(created_at__lt=timezone.now() - timezone.timedelta(days=1)).delete()
    ended = (reconcile.INTERRUPT, reconcile.CANCEL, reconcile.FAIL)
    return sum(1 for decision in reconcile_runs() if decision.action in ended)


def _limits() -> reconcile.Limits:
    return reconcile.Limits(
        stale_seconds=settings.BACKUPSITE_STALE_RUN_SECONDS,
        grace_seconds=settings.BACKUPSITE_QUEUE_GRACE_SECONDS,
        # A running planning export holds a slot too (it has no Run row).
        slots=max(0, settings.BACKUPSITE_MAX_CONCURRENT_RUNS - exports_in_progress()),
    )


def _info(run: Run) -> reconcile.RunInfo:
    return reconcile.RunInfo(
        pk=run.pk,
        state=run.state,
        created_at=run.created_at,
        heartbeat_at=run.heartbeat_at,
        started_at=run.started_at,
        enqueued_at=run.enqueued_at,
        requeues=run.requeues,
        cancel_requested=run.cancel_requested,
    )


def reconcile_runs(now=None) -> list[reconcile.Decision]:
    """Bring the active runs in line with the workers that are really there: the one
    function the reaper, a finishing run (and later the scheduling dispatcher) call.

    Plans with :func:`jobs.reconcile.plan` and applies each decision with a conditional
    update, so a decision that lost a race (a worker claimed the run meanwhile, another
    reconcile acted first) does nothing. Returns the decisions that were applied."""
    now = now or timezone.now()
    with transaction.atomic():
        # Under the slot lock, like claim(): a run being parked as "waiting" right now is
        # either seen parked here (and woken) or saw this slot free (and took it).
        SlotLock.objects.get_or_create(name=HEAVY_SLOT)
        SlotLock.objects.select_for_update().get(name=HEAVY_SLOT)
        runs = [_info(run) for run in Run.objects.filter(state__in=Run.ACTIVE_STATES)]
        last_release = None
        if any(run.state in reconcile.PENDING for run in runs):
            last_release = Run.objects.filter(started_at__isnull=False, finished_at__isnull=False).aggregate(
                at=Max("finished_at")
            )["at"]
    decisions = reconcile.plan(runs, now=now, limits=_limits(), last_release=last_release)
    applied = []
    for decision in decisions:
        if decision.action == reconcile.KEEP:
            log.debug("Run %s: %s", decision.pk, decision.reason)
            continue
        try:
            done = _APPLY[decision.action](decision, now)
        except Exception:
            log.exception("Run %s: could not %s it: %s", decision.pk, decision.action, decision.reason)
            continue
        if done:
            log.info("Run %s: %s: %s", decision.pk, decision.action, decision.reason)
            applied.append(decision)
    return applied


def _log_append(*lines: str) -> Concat:
    """An update expression appending time-stamped lines to the run log."""
    text = "".join(Run.log_line(line) for line in lines)
    return Concat(F("log"), Value(text), output_field=models.TextField())


def _settle_uploads(run_id: int, message: str, now) -> None:
    """Uploads a run left pending or half-way when it ended early fail with *message*
    (the Upload row must not say "uploading" for ever)."""
    Upload.objects.filter(run_id=run_id, state__in=[Upload.State.PENDING, Upload.State.UPLOADING]).update(
        state=Upload.State.FAILED, error=message, finished_at=now
    )


def _apply_end_abandoned(decision: reconcile.Decision, now) -> bool:
    state = Run.State.CANCELLED if decision.action == reconcile.CANCEL else Run.State.INTERRUPTED
    return end_abandoned(decision.run, state, now=now) is not None


def _cancel_pending(run_id: int, now, who: str = "") -> bool:
    """Cancel a queued/waiting run: nobody holds it, so it ends here. Conditional on
    the state, like claim(): whichever comes first wins, and a later delivery of its
    task finds the run gone."""
    return bool(
        Run.objects.filter(pk=run_id, state__in=reconcile.PENDING).update(
            state=Run.State.CANCELLED,
            cancel_requested=True,
            finished_at=now,
            error="Cancelled before it started.",
            log=_log_append(f"Cancelled{who} before it started."),
        )
    )


def _apply_cancel(decision: reconcile.Decision, now) -> bool:
    if decision.run.state in Run.HELD_STATES:
        return _apply_end_abandoned(decision, now)
    return _cancel_pending(decision.pk, now)


def _apply_wake(decision: reconcile.Decision, now) -> bool:
    woken = Run.objects.filter(pk=decision.pk, state=Run.State.WAITING).update(state=Run.State.QUEUED, enqueued_at=now)
    if woken:
        hand_over([decision.pk])
    return bool(woken)


def _apply_requeue(decision: reconcile.Decision, now) -> bool:
    run = decision.run
    requeued = Run.objects.filter(pk=run.pk, state=Run.State.QUEUED, requeues=run.requeues).update(
        requeues=run.requeues + 1,
        enqueued_at=now,
        log=_log_append(f"Handed to the workers again: {decision.reason}."),
    )
    if requeued:
        hand_over([run.pk])
    return bool(requeued)


def _apply_fail(decision: reconcile.Decision, now) -> bool:
    run = decision.run
    grace = settings.BACKUPSITE_QUEUE_GRACE_SECONDS
    message = (
        f"No worker took this run: it waited more than {grace} s with a free slot, was handed to the workers "
        f"once more and waited again. Check that a Celery worker is running (`make run` starts one; with "
        f"Docker Compose, the worker service), then run the job again."
    )
    failed = Run.objects.filter(
        pk=run.pk, state=Run.State.QUEUED, requeues=run.requeues, enqueued_at=run.enqueued_at
    ).update(state=Run.State.FAILED, finished_at=now, error=message, log=_log_append(message))
    if failed:
        from jobs.notifications import notify_run_failed

        notify_run_failed(Run.objects.get(pk=run.pk))
    return bool(failed)


_APPLY = {
    reconcile.INTERRUPT: _apply_end_abandoned,
    reconcile.CANCEL: _apply_cancel,
    reconcile.WAKE: _apply_wake,
    reconcile.REQUEUE: _apply_requeue,
    reconcile.FAIL: _apply_fail,
}

# Where a run was when its worker stopped, and what that means for the user.
_STOPPED_WHILE = {
    Run.Phase.PENDING: ("before it started working", ""),
    Run.Phase.COLLECT: ("while preparing the sources", " This run made no backup."),
    Run.Phase.ARCHIVE: ("while writing the archive", " This run made no backup."),
    Run.Phase.UPLOAD: (
        "while uploading",
        " The archive on this server is complete, but not every destination received it.",
    ),
    Run.Phase.RETENTION: (
        "after the uploads, while removing old backups",
        " The backup was made and uploaded; some older backups may not have been removed yet.",
    ),
}


def abandoned_message(state: str, phase: str, silent_seconds: int) -> str:
    where, aftermath = _STOPPED_WHILE.get(phase, ("", ""))
    where = f" {where}" if where else ""
    if state == Run.State.CANCELLED:
        return (
            f"Cancelled: the worker running this backup had stopped{where} (no heartbeat for {silent_seconds} s), "
            f"so the cancellation was completed at once.{aftermath}"
        )
    return f"Interrupted: the worker stopped{where} (no heartbeat for {silent_seconds} s).{aftermath}"


def end_abandoned(info: reconcile.RunInfo, state: str, *, now=None) -> Run | None:
    """End a running/uploading run whose worker is gone (*state* interrupted or
    cancelled): conditional on the heartbeat the caller saw, so a worker that is alive
    after all keeps its run (returns None). Removes the run's temporary files, alerts
    when interrupted, and returns the updated run. The caller hands the freed slot on."""
    now = now or timezone.now()
    run = Run.objects.filter(pk=info.pk).first()
    if run is None:
        return None
    silent = int((now - reconcile.last_sign_of_life(info)).total_seconds())
    message = abandoned_message(state, run.phase, silent)
    with transaction.atomic():
        ended = Run.objects.filter(pk=info.pk, state=info.state, heartbeat_at=info.heartbeat_at).update(
            state=state, finished_at=now, error=message, log=_log_append(message)
        )
        if not ended:
            return None
        _settle_uploads(info.pk, "The worker stopped during this upload.", now)
        # Still inside the transaction that ends the run: no other run of this job can
        # be created and start writing into the staging folder until it commits (the
        # one-active-run-per-job index), so every partial file here is the dead worker's.
        lines = _remove_staging_partials(run.job_slug)
    lines += _remove_destination_partials(run)
    if lines:
        Run.objects.filter(pk=run.pk).update(log=_log_append(*lines))
    run.refresh_from_db()
    if state == Run.State.INTERRUPTED:
        from jobs.notifications import notify_run_failed

        notify_run_failed(run)
    return run


def _remove_staging_partials(job_slug: str) -> list[str]:
    if not job_slug:
        return []
    try:
        removed = remove_partials(archive_dir_for(job_slug))
    except Exception as exc:  # never keep a dead run "running" over its leftovers
        log.warning("Could not remove the temporary files of job %s", job_slug, exc_info=True)
        return [f"Could not remove the temporary files on this server ({type(exc).__name__}); see the log."]
    if not removed:
        return []
    names = ", ".join(sorted(path.name for path in removed))
    return [f"Removed {len(removed)} temporary file(s) the stopped worker left on this server: {names}"]


def _remove_destination_partials(run: Run) -> list[str]:
    """Temporary files at the run's destinations. Skipped when a new run of the job is
    already active (it is about to write its own; its uploads sweep leftovers first)."""
    job_slug = run.job_slug
    if not job_slug or not run.config.get("destinations"):
        return []
    if run.job_id and Run.objects.filter(job_id=run.job_id, state__in=Run.ACTIVE_STATES).exists():
        return ["A new run of this job has started; it removes leftover temporary files at the destinations."]
    lines = []
    for dest in run.config["destinations"]:
        destination = Destination.objects.filter(pk=dest["id"]).first()
        if destination is None:
            continue
        try:
            with destination.backend().session() as session:
                count = len(session.remove_partials(job_folder(job_slug)))
        except DestinationError as exc:
            log.warning("Could not remove temporary files at %s: %s", dest["name"], exc)
            lines.append(f"{dest['name']}: could not remove temporary files ({exc}).")
            continue
        except Exception as exc:  # noqa: BLE001 - an unreachable destination must not stop the alert
            # Only the type: a third-party client's message could carry a credential.
            log.warning("Could not remove temporary files at %s (%s)", dest["name"], type(exc).__name__)
            lines.append(f"{dest['name']}: could not remove temporary files ({type(exc).__name__}).")
            continue
        if count:
            lines.append(f"{dest['name']}: removed {count} temporary file(s) the stopped worker left.")
    return lines


class CancelOutcome:
    NOT_STARTED = "not_started"  # cancelled at once: it had not started
    ABANDONED = "abandoned"  # cancelled at once: its worker is gone
    REQUESTED = "requested"  # the live worker stops at its next checkpoint
    FINISHED = "finished"  # nothing to cancel any more


def cancel_run(run_id: int, user=None) -> str:
    """Cancel a run. One that has not started, or whose worker is gone (stale
    heartbeat), is cancelled here and now: state cancelled, temporary files removed,
    slot handed on. A run with a live worker gets the flag that worker polls."""
    who = f" by {user.get_username()}" if user is not None and user.is_authenticated else ""
    now = timezone.now()
    if _cancel_pending(run_id, now, who):
        return CancelOutcome.NOT_STARTED
    run = Run.objects.filter(pk=run_id, state__in=Run.HELD_STATES).first()
    if run is None:
        return CancelOutcome.FINISHED
    Run.objects.filter(pk=run_id, state__in=Run.HELD_STATES).update(
        cancel_requested=True, log=_log_append(f"Cancellation requested{who}.")
    )
    info = _info(run)
    gone = reconcile.worker_gone(info, now, settings.BACKUPSITE_STALE_RUN_SECONDS)
    if gone and end_abandoned(info, Run.State.CANCELLED, now=now) is not None:
        _release_slot()
        return CancelOutcome.ABANDONED
    return CancelOutcome.REQUESTED
