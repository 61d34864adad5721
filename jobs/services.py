"""What a run does, called by the Celery task, the CLI and the views alike.

The Run row is the truth: state, phase, progress and errors are written to it as the
run goes, Celery only carries its primary key, and every step can be repeated by another
worker after a crash (claims are conditional, temporary files are cleaned up).
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
from django.db import IntegrityError, close_old_connections, connection, transaction
from django.utils import timezone

from backupsite import __version__
from backupsite.private import private_dir
from backupsite.slugs import safe_folder_name
from destinations.backends import DestinationError
from destinations.backends import get_kind as get_destination_kind
from destinations.models import Destination
from jobs import retention
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


# --- creating runs ------------------------------------------------------------------
def snapshot(job: Job) -> dict:
    """The configuration a run works with, frozen when the run is created."""
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
            {"id": s.pk, "name": s.name, "slug": s.slug, "kind": s.kind, "settings": s.settings}
            for s in job.sources.all()
        ],
        "destinations": [{"id": d.pk, "name": d.name, "kind": d.kind} for d in job.destinations.filter(enabled=True)],
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
            )
    except IntegrityError:
        raise AlreadyRunning(f"“{job.name}” is already running.") from None


def enqueue_run(job: Job, *, trigger: str = Run.Trigger.MANUAL, user=None) -> Run:
    from jobs import tasks

    run = create_run(job, trigger=trigger, user=user)
    transaction.on_commit(lambda: tasks.execute_run.delay(run.pk))
    return run


# --- claiming -----------------------------------------------------------------------
def claim(run_id: int) -> str:
    """Move a queued/waiting run to running if a heavy slot is free.

    Returns "claimed", "busy" (marked waiting; try again later) or "gone" (someone else
    took it, or it was cancelled): so a duplicate delivery never runs twice.
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
        busy = Run.objects.filter(state__in=[Run.State.RUNNING, Run.State.UPLOADING]).count()
        if busy >= settings.BACKUPSITE_MAX_CONCURRENT_RUNS:
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
        Run.objects.filter(pk=run.pk).update(
            phase=run.phase,
            bytes_done=run.bytes_done,
            bytes_total=run.bytes_total,
            files_done=run.files_done,
            heartbeat_at=run.heartbeat_at,
        )
        if self.listener:
            self.listener(run)
        if Run.objects.filter(pk=run.pk, cancel_requested=True).exists():
            raise Cancelled()


class Heartbeat(threading.Thread):
    """Keeps ``heartbeat_at`` fresh while this process works on the run, including
    stretches without progress (a long database dump, a slow upload), so the reaper only
    ever takes runs whose worker is really gone."""

    CANCEL_POLL = 2.0  # seconds between looks at the run's cancel flag

    def __init__(self, run_id: int, interval: float) -> None:
        super().__init__(name=f"heartbeat-run-{run_id}", daemon=True)
        self.run_id = run_id
        self.interval = interval
        self._stopped = threading.Event()
        #: Set once a user asked to cancel; long client programs poll it (cancel_check).
        self.cancelled = threading.Event()

    def run(self) -> None:
        last_beat = time.monotonic()
        try:
            while not self._stopped.wait(min(self.interval, self.CANCEL_POLL)):
                try:
                    if time.monotonic() - last_beat >= self.interval:
                        Run.objects.filter(pk=self.run_id, state__in=[Run.State.RUNNING, Run.State.UPLOADING]).update(
                            heartbeat_at=timezone.now()
                        )
                        last_beat = time.monotonic()
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
    """Claim and execute a run; returns the run in its final (or waiting) state."""
    close_old_connections()
    outcome = claim(run_id)
    run = Run.objects.get(pk=run_id)
    if outcome != "claimed":
        return run
    progress = Progress(run, listener=listener)
    heartbeat = Heartbeat(run.pk, interval=max(5.0, settings.BACKUPSITE_STALE_RUN_SECONDS / 5))
    heartbeat.start()
    token = cancel_check.set(heartbeat.cancelled.is_set)
    try:
        _execute(run, progress)
    except Cancelled:
        _finish(run, Run.State.CANCELLED, "Cancelled by a user.")
    except (SourceError, DestinationError, ArchiveError, ValueError) as exc:
        _finish(run, Run.State.FAILED, str(exc))
    except OSError as exc:
        _finish(run, Run.State.FAILED, _describe_oserror(exc))
    except BaseException as exc:
        # SoftTimeLimitExceeded, KeyboardInterrupt, bugs: never leave the row "running".
        from celery.exceptions import SoftTimeLimitExceeded

        if isinstance(exc, SoftTimeLimitExceeded):
            _finish(run, Run.State.FAILED, "Timed out: the run took longer than the configured time limit.")
        elif isinstance(exc, KeyboardInterrupt):
            _finish(run, Run.State.CANCELLED, "Interrupted.")
            raise
        else:
            log.exception("Run %s failed with an unexpected error", run.pk)
            _finish(run, Run.State.FAILED, f"Internal error ({type(exc).__name__}); see the worker log.")
    finally:
        cancel_check.reset(token)
        heartbeat.stop()
        close_old_connections()
    if run.state == Run.State.FAILED:
        from jobs.notifications import notify_run_failed

        notify_run_failed(run)
    return run


def _describe_oserror(exc: OSError) -> str:
    import errno

    if exc.errno == errno.ENOSPC:
        return "No space left on the staging disk while writing the archive."
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


def _finish(run: Run, state: str, error: str = "") -> None:
    run.state = state
    run.error = error
    run.finished_at = timezone.now()
    if state in (Run.State.SUCCEEDED, Run.State.PARTIAL):
        run.phase = Run.Phase.DONE
    if error:
        run.append_log(error)
    run.save()


def _execute(run: Run, progress: Progress) -> None:
    config = run.config
    job = config["job"]
    staging = private_dir(archive_dir_for(job["slug"]))
    if job.get("encryption") == "password":
        stored = Job.objects.filter(pk=job["id"]).first()
        write_key_file(job["slug"], stored.key_file if stored else None)
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
            "sources": [{"name": s.name, "slug": s.slug, "kind": s.kind} for s in sources],
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
    run.save()

    # Upload: one Upload row per destination; the row records every attempt.
    failed_uploads = 0
    uploaded: list[dict] = []
    destinations = config["destinations"]
    if destinations:
        Run.objects.filter(pk=run.pk).update(state=Run.State.UPLOADING)
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
    Run.objects.filter(pk=run.pk).update(phase=Run.Phase.RETENTION, heartbeat_at=timezone.now())
    for line in retention.after_run(config, protect={archive_name}, destinations=uploaded):
        run.append_log(line)

    if destinations and failed_uploads == len(destinations):
        _finish(run, Run.State.FAILED, "Every upload failed; the archive is kept on this server.")
    elif failed_uploads or warnings:
        summary = []
        if failed_uploads:
            summary.append(f"{failed_uploads} of {len(destinations)} upload(s) failed")
        if warnings:
            summary.append(f"{len(warnings)} item(s) could not be backed up")
        _finish(run, Run.State.PARTIAL, "; ".join(summary) + " (see the log).")
    else:
        _finish(run, Run.State.SUCCEEDED)


def perform_upload(
    upload: Upload, archive_path: Path, manifest_path: Path, job_slug: str, size: int, sha256: str, progress=None
) -> bool:
    """Upload the archive, then its manifest, to one destination. Records the outcome on
    the Upload row and returns whether it succeeded."""
    now = timezone.now()
    Upload.objects.filter(pk=upload.pk).update(
        state=Upload.State.UPLOADING, started_at=now, attempts=upload.attempts + 1
    )
    upload.attempts += 1
    try:
        destination = Destination.objects.get(pk=upload.destination_id)
        backend = get_destination_kind(destination.kind).from_destination(destination)
        backend.remove_partials(job_slug)
        key_file = archive_path.parent / KEY_FILE_NAME
        if archive_path.name.endswith(AGE_SUFFIX) and key_file.is_file():
            _ensure_key_file(backend, job_slug, key_file)
        backend.upload(
            archive_path, job_slug, archive_path.name, expected_size=size, expected_sha256=sha256, progress=progress
        )
        backend.upload(manifest_path, job_slug, manifest_path.name, expected_size=manifest_path.stat().st_size)
    except Destination.DoesNotExist:
        upload.state, upload.error = Upload.State.FAILED, "The destination was deleted."
    except DestinationError as exc:
        upload.state, upload.error = Upload.State.FAILED, str(exc)
    except (KeyError, ValueError) as exc:
        upload.state, upload.error = Upload.State.FAILED, f"Invalid destination settings ({type(exc).__name__})."
    else:
        upload.state, upload.error, upload.bytes_done = Upload.State.SUCCEEDED, "", size
    upload.finished_at = timezone.now()
    upload.save()
    return upload.state == Upload.State.SUCCEEDED


def _ensure_key_file(backend, job_slug: str, key_file: Path) -> None:
    """Upload ``backupsite-key.age`` beside the backups unless the same file is there."""
    wanted = key_file.read_bytes()
    try:
        with backend.open(job_slug, KEY_FILE_NAME) as fh:
            if fh.read(len(wanted) + 1) == wanted:
                return
    except DestinationError:
        pass
    backend.upload(key_file, job_slug, KEY_FILE_NAME, expected_size=len(wanted))


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


def reap_stale_runs() -> int:
    """Mark runs whose worker stopped sending heartbeats as failed (interrupted)."""
    from jobs.models import VerifyTicket

    # A verification nobody picked up within a day goes, with the identity it holds.
    VerifyTicket.objects.filter(created_at__lt=timezone.now() - timezone.timedelta(days=1)).delete()
    limit = timezone.now() - timezone.timedelta(seconds=settings.BACKUPSITE_STALE_RUN_SECONDS)
    stale = Run.objects.filter(state__in=[Run.State.RUNNING, Run.State.UPLOADING], heartbeat_at__lt=limit)
    count = 0
    for run in stale:
        updated = Run.objects.filter(pk=run.pk, state=run.state, heartbeat_at=run.heartbeat_at).update(
            state=Run.State.FAILED,
            finished_at=timezone.now(),
            error=(
                "Interrupted: the worker stopped while running this backup. "
                "Temporary files are removed on the next run."
            ),
        )
        if updated:
            count += 1
            run.refresh_from_db()
            from jobs.notifications import notify_run_failed

            notify_run_failed(run)
    return count
