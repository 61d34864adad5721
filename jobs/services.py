"""What a run does, called by the Celery tasks, the CLI and the views alike.

A run goes through stages (see ``jobs/tasks.py`` and ARCHITECTURE.md, "Stages and
hosts"): the **archive stage** (this module) claims a heavy slot (``jobs.slots``),
collects the sources, writes the archive and its manifest to this host's local copies
folder, records the host on the run and creates one Upload row per destination; from
then on the run is ``uploading`` and no longer the job's active run (the slot and the
job's lock are free). The **upload stage** (``jobs.uploads``) sends the archive to each
destination in its own task on this host's queue, retried on transient errors; a
conditional update closes the run when its last upload settled, then retention and
notification run.

The Run row is the truth: state, phase, progress and errors are written to it as the
run goes, Celery only carries its primary key, and every step can be repeated by another
worker after a crash (claims are conditional, temporary files are cleaned up).

Crash recovery (see ``jobs/reconcile.py`` for the rules): a worker archiving a run
writes a heartbeat every ``BACKUPSITE_HEARTBEAT_SECONDS``; :func:`reconcile_runs` starts
a run whose heartbeat is older than ``BACKUPSITE_STALE_RUN_SECONDS`` again (at most
``BACKUPSITE_RUN_RESTARTS`` times) or marks it *interrupted*, removes its temporary
files, hands the freed slot to the next waiting run, and hands a queued run nobody took
over again once, then fails it. A worker only writes to a run while the run is still its
own, so a worker that comes back after its run was ended elsewhere cannot bring the run
back to life. Uploads whose worker died are taken back by the sweep (``jobs.sweep``).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from django.conf import settings
from django.db import close_old_connections, transaction
from django.db.models import Max
from django.utils import timezone

from backupsite import __version__
from backupsite.private import private_dir
from backupsite.slugs import safe_folder_name
from destinations.backends import DestinationError
from destinations.backends.base import job_folder
from destinations.models import Destination
from jobs import enqueue, notifications, reconcile, slots, uploads
from jobs.engine import ArchiveError, Cancelled, Entry, agekeys, atomic_path, write_archive, write_manifest
from jobs.engine.agekeys import AGE_SUFFIX, KEY_FILE_NAME
from jobs.engine.atomic import remove_partials
from jobs.models import Job, Run, Source, Upload
from jobs.naming import ARCHIVE_SUFFIX, MANIFEST_SUFFIX, render
from jobs.progress import LostRun, RunHeartbeat, RunProgress
from jobs.runstate import RunRowsWork, by_whom, create_active, hand_slot_on, requester
from jobs.sources import SourceError
from jobs.sources import get_kind as get_source_kind
from jobs.sources.base import cancel_check

log = logging.getLogger(__name__)
HEAVY_SLOT = slots.LOCK_NAME
BACKUP = "backup"  # this module's kind of heavy work in jobs.slots
#: A backup run's row as the reconcile sees it (backups count their restarts).
RUN_INFO_FIELDS = (*reconcile.RUN_INFO_FIELDS, "restarts")

# The names the rest of the code (and the tests) know these by.
Progress = RunProgress
Heartbeat = RunHeartbeat


class AlreadyRunning(Exception):
    pass


class RunFailed(Exception):
    """A run ended badly; the message is the one stored on the run."""


# --- creating runs ------------------------------------------------------------------
def snapshot(job: Job, *, sources=None, destinations=None) -> dict:
    """The configuration a run works with, frozen when the run is created. *sources* and
    *destinations* default to the job's own."""
    sources = job.sources.all() if sources is None else sources
    destinations = job.destinations.all() if destinations is None else destinations
    return snapshot_of(
        {field: getattr(job, field) for field in SNAPSHOT_JOB_FIELDS if field != "pk"} | {"pk": job.pk},
        [{"pk": s.pk, "name": s.name, "slug": s.slug, "kind": s.kind, "settings": s.settings} for s in sources],
        [{"pk": d.pk, "name": d.name, "kind": d.kind, "enabled": d.enabled} for d in destinations],
    )


#: The job's fields a snapshot is made of (the dispatcher reads only these for 10,000 jobs).
SNAPSHOT_JOB_FIELDS = (
    "pk",
    "name",
    "slug",
    "archive_name_template",
    "encryption",
    "age_recipient",
    "compression_level",
    "report_to",
    "keep_last",
    "max_age_days",
    "language",
)


def snapshot_of(job: dict, sources: list[dict], destinations: list[dict]) -> dict:
    """:func:`snapshot` from plain values: *job* has :data:`SNAPSHOT_JOB_FIELDS`,
    *sources* and *destinations* their rows (in name order)."""
    from backupsite.validators import split_addresses

    encrypts = job["encryption"] != Job.Encryption.NONE
    return {
        "job": {
            "id": job["pk"],
            "name": job["name"],
            "slug": job["slug"],
            "archive_name_template": job["archive_name_template"],
            "encryption": job["encryption"],
            "age_recipient": job["age_recipient"] if encrypts else "",
            "compression_level": job["compression_level"],
            "report_to": split_addresses(job["report_to"]),
            "keep_last": job["keep_last"],
            "max_age_days": job["max_age_days"],
            "language": job.get("language", ""),  # of the alert e-mails
        },
        "sources": [
            {"id": s["pk"], "name": s["name"], "slug": s["slug"], "kind": s["kind"], "settings": s["settings"]}
            for s in sources
        ],
        "destinations": [{"id": d["pk"], "name": d["name"], "kind": d["kind"]} for d in destinations if d["enabled"]],
    }


def create_run(job: Job, *, trigger: str = Run.Trigger.MANUAL, user=None, log_lines=()) -> Run:
    """Create a queued run, or raise AlreadyRunning (the database refuses a second
    active run of the same job, whoever asks: double click, two beats, a retry)."""
    now = timezone.now()
    log = "".join(Run.log_line(line) for line in log_lines)
    run = create_active(
        Run, trigger, user, job=job, job_name=job.name, config=snapshot(job), created_at=now, enqueued_at=now, log=log
    )
    if run is None:
        raise AlreadyRunning(f"“{job.name}” is already running.")
    return run


def enqueue_run(job: Job, *, trigger: str = Run.Trigger.MANUAL, user=None, log_lines=()) -> Run:
    """Create a run and hand it to the workers once the transaction commits (Run now,
    the trigger URL, the dispatcher, the wizard)."""
    run = create_run(job, trigger=trigger, user=user, log_lines=log_lines)
    hand_over([run.pk])
    if job.ping_url:
        notifications.ping(job, "start", run=run)
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
            created_by=requester(user),
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
    """Send runs to the workers once the current transaction commits. A broker that
    cannot be reached is logged, never raised: the reconcile hands a run nobody took
    over again."""
    enqueue.archive(run_ids)


# --- claiming -----------------------------------------------------------------------
def claim(run_id: int) -> str:
    """Move a queued/waiting run to running if a heavy slot is free (``jobs.slots``).

    Returns "claimed", "busy" (parked as waiting: a run that frees a slot, or the
    reconcile, hands it to the workers again; nothing polls the broker meanwhile) or
    "gone" (someone else took it, or it was cancelled): so a duplicate delivery never
    runs twice.
    """
    return slots.claim(BACKUP, run_id)


class BackupWork(RunRowsWork):
    """Backups as heavy work: a run holds a slot while it archives (state running)."""

    name = BACKUP
    model = Run
    first_phase = Run.Phase.COLLECT
    info_fields = RUN_INFO_FIELDS
    holder_fields = ("pk", "job_name", "phase", "started_at")

    def info(self, row: dict) -> reconcile.RunInfo:
        return reconcile.RunInfo(**row, kind=BACKUP)

    def describe_holder(self, run: Run, since: str) -> str:
        return f"the backup of “{run.job_name}” (run #{run.pk}, {run.get_phase_display().lower()}, since {since})"

    def cancel_before_start(self, pk: int, now) -> None:
        Run.objects.filter(pk=pk, state__in=reconcile.PENDING).update(
            state=Run.State.CANCELLED, finished_at=now, error="Cancelled before it started."
        )

    def hand_over(self, run_ids: list[int]) -> None:
        hand_over(run_ids)

    def unclaimed_message(self) -> str:
        grace = settings.BACKUPSITE_QUEUE_GRACE_SECONDS
        return (
            f"No worker took this run: it waited more than {grace} s with a free slot, was handed to the workers "
            f"once more and waited again. Check that a Celery worker is running (`make run` starts one; with "
            f"Docker Compose, the worker service), then run the job again."
        )

    def notify_failed(self, run: Run) -> None:
        notifications.notify_run_failed(run)

    def last_release(self):
        return Run.objects.aggregate(at=Max("released_at"))["at"]

    def start_values(self, now) -> dict:
        return {**super().start_values(now), "phase_started_at": now}  # rate and time left count from here

    def apply(self, decision: reconcile.Decision, now) -> bool:
        return _APPLY[decision.action](decision, now)


BACKUP_WORK = slots.register(BackupWork())


# --- executing ----------------------------------------------------------------------
def archive_dir_for(job_slug: str) -> Path:
    """This server's folder of the job's local copies. Raises UnsafeFolderName (a
    ValueError: the run fails with its message) for a slug that is not a plain slug, so
    a crafted ``../../x`` never makes, sweeps or fills a folder outside the archive dir."""
    return settings.BACKUPSITE_ARCHIVE_DIR / safe_folder_name(job_slug, "job folder name")


def archive_stage(run_id: int, *, listener: Callable[[Run], None] | None = None, hand_on: bool = True) -> Run:
    """The archive task: claim a heavy slot and write the archive; returns the run
    (uploading, final, or waiting when every slot was taken).

    With *hand_on* the run's uploads go to this host's queue once the archive is
    written (a run without destinations is closed here). When the stage ends, its slot is
    handed to the next waiting run (:func:`jobs.runstate.hand_slot_on`), so nothing has to poll
    the broker while a run waits."""
    run, ended_here = BACKUP_WORK.claim_and_work(run_id, lambda run: _work_on(run, listener))
    if not ended_here:
        return run
    if run.is_alert:
        notifications.notify_run_failed(run)
    elif run.state == Run.State.UPLOADING and hand_on:
        uploads.hand_on(run)
    return run


def execute_run(run_id: int, *, listener: Callable[[Run], None] | None = None) -> Run:
    """The whole run in this process (``runbackup``, tests): the archive stage, then one
    attempt per upload here, then the close. Uploads that failed with a transient error
    are handed to the workers for their retries (the run stays "uploading")."""
    run = archive_stage(run_id, listener=listener, hand_on=False)
    if run.state != Run.State.UPLOADING:
        return run
    uploads.run_inline(run, listener=listener)
    run.refresh_from_db()
    return run


def _work_on(run: Run, listener: Callable[[Run], None] | None) -> bool:
    """Archive a claimed run and store how it ended. Returns False when the run was
    ended elsewhere meanwhile (then *run* is reloaded with what the row says)."""
    progress = Progress(run, listener=listener)
    heartbeat = Heartbeat(run.pk)
    heartbeat.start()
    token = cancel_check.set(heartbeat.cancelled.is_set)
    ended: bool | None = None
    try:
        _archive(run, progress)
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
    "phase_started_at",
    "bytes_done",
    "bytes_total",
    "files_done",
    "archive_name",
    "archive_size",
    "archive_sha256",
    "file_count",
    "local_path",
    "warning_count",
    "log",
    "error",
    "finished_at",
    "released_at",
    "age_identity_wrapped",
)


def _store(run: Run) -> bool:
    """Write this worker's fields of *run*, only while the run is still its own
    (running in the database). Returns whether it was."""
    fields = {name: getattr(run, name) for name in WORKER_FIELDS}
    return bool(Run.objects.filter(pk=run.pk, state__in=Run.HELD_STATES).update(**fields))


def _store_or_stop(run: Run) -> None:
    if not _store(run):
        raise LostRun(run.pk)


def _finish(run: Run, state: str, error: str = "") -> bool:
    """Store how the archive stage ended badly (failed, cancelled, interrupted, timed
    out); False (and nothing written) when the run was ended elsewhere."""
    run.state = state
    run.error = error
    run.finished_at = run.released_at = timezone.now()
    if error:
        run.append_log(error)
    return _store(run)


def _archive(run: Run, progress: Progress) -> None:
    """Collect, archive and write the manifest into this host's local copies folder;
    then create the Upload rows and hand the run over to its upload stage (state
    uploading: the slot and the job's lock are free from here on)."""
    config = run.config
    job = config["job"]
    staging = private_dir(archive_dir_for(job["slug"]))
    if job.get("encryption") == "password":
        keep_run_key(run)
        write_key_files(job["slug"], run)
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
                "encryption": _encryption_header(job, recipients),
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
    run.warning_count = len(warnings)
    run.append_log(f"Archive written: {result.size} bytes, {result.file_count} files, sha256 {result.sha256}")
    _archived(run, result.size)


def _archived(run: Run, size: int) -> None:
    """The archive stage is done: one Upload row per destination, and the run moves to
    "uploading" in the same transaction (conditional: only while it is still this
    worker's). The heavy slot is given back by the caller."""
    now = timezone.now()
    destinations = run.config.get("destinations") or []
    run.state = Run.State.UPLOADING
    run.phase = Run.Phase.UPLOAD
    run.phase_started_at = run.released_at = now
    if destinations:  # from here on the run's figures are its uploads' (each on its Upload row)
        run.bytes_total, run.bytes_done = size * len(destinations), 0
    if destinations:
        names = ", ".join(dest["name"] for dest in destinations)
        run.append_log(f"Uploading to {len(destinations)} destination(s) from {run.host or 'this host'}: {names}")
    with transaction.atomic():
        Upload.objects.bulk_create(
            [
                Upload(
                    run=run,
                    destination_id=dest["id"],
                    destination_name=dest["name"],
                    remote_name=run.archive_name,
                    bytes_total=size,
                )
                for dest in destinations
            ],
            ignore_conflicts=True,
        )
        fields = {name: getattr(run, name) for name in WORKER_FIELDS}
        if not Run.objects.filter(pk=run.pk, state=Run.State.RUNNING).update(**fields):
            raise LostRun(run.pk)


def _encryption_header(job: dict, recipients: list[str]) -> dict | None:
    """The manifest's ``archive.encryption``: the recipient, and for a password-protected
    key the name of its key file beside the archive (``backupsite-key-<key id>.age``)."""
    if not recipients:
        return None
    header = {"scheme": "age", "recipient": recipients[0]}
    if job.get("encryption") == "password":
        header["key_file"] = agekeys.key_file_name(recipients[0])
    return header


def keep_run_key(run: Run) -> None:
    """Give a password-encrypted run its own copy of the key it archives with (one-off
    runs have theirs already). Refuses when the job's key is no longer the one the run's
    snapshot encrypts to (the key was replaced while the run was queued): an archive
    whose key is nowhere must never be written."""
    if run.age_identity_wrapped:
        return
    recipient = run.recipient
    current = Job.objects.filter(pk=run.job_id).values("encryption", "age_recipient", "age_identity_wrapped").first()
    if (
        current is None
        or current["encryption"] != Job.Encryption.PASSWORD
        or not current["age_identity_wrapped"]
        or current["age_recipient"] != recipient
    ):
        raise ArchiveError("The job's encryption key changed after this run was queued: run it again.")
    run.age_identity_wrapped = current["age_identity_wrapped"]


def write_key_files(job_slug: str, run: Run) -> None:
    """Keep the run's key file in the job's staging folder: under its own name
    (``backupsite-key-<key id>.age``), and as ``backupsite-key.age``, the newest key."""
    key_file = run.key_file
    if key_file is None:
        return
    for name in (run.key_file_name, KEY_FILE_NAME):
        agekeys.write_key_file(archive_dir_for(job_slug), name, key_file)


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
    from jobs.restores import reap_restores

    # A verification nobody picked up within a day goes, with the identity it holds.
    VerifyTicket.objects.filter(created_at__lt=timezone.now() - timezone.timedelta(days=1)).delete()
    # Restores whose worker stopped fail (their unfinished files go); unclaimed keys go.
    reap_restores()
    ended = (reconcile.INTERRUPT, reconcile.CANCEL, reconcile.FAIL)
    return sum(1 for decision in reconcile_runs() if decision.action in ended)


def _info(run: Run) -> reconcile.RunInfo:
    return reconcile.RunInfo(**{field: getattr(run, field) for field in RUN_INFO_FIELDS}, kind=BACKUP)


def reconcile_runs(now=None) -> list[reconcile.Decision]:
    """Bring the active heavy work (backups, and every other kind registered with
    ``jobs.slots``) in line with the workers that are really there: the one function the
    reaper, a finishing stage and the dispatcher tick call. Returns the decisions that
    were applied."""
    return slots.reconcile(now)


_log_append = Run.log_expression
append_log = Run.add_log


def _settle_uploads(run_id: int, message: str, now) -> None:
    """Uploads a run left open when it ended early fail with *message* (the Upload row
    must not say "uploading" for ever)."""
    Upload.objects.filter(run_id=run_id, state__in=Upload.OPEN_STATES).update(
        state=Upload.State.FAILED, error=message, finished_at=now
    )


def _apply_end_abandoned(decision: reconcile.Decision, now) -> bool:
    state = Run.State.CANCELLED if decision.action == reconcile.CANCEL else Run.State.INTERRUPTED
    return end_abandoned(decision.run, state, now=now, reason=decision.reason) is not None


def _apply_cancel(decision: reconcile.Decision, now) -> bool:
    if decision.run.state in Run.HELD_STATES:
        return _apply_end_abandoned(decision, now)
    return BACKUP_WORK.cancel_pending(decision.pk, now)


def _apply_restart(decision: reconcile.Decision, now) -> bool:
    """A run whose worker died while archiving (killed, OOM-killed, machine restarted)
    starts again from the beginning: back to queued, its temporary files removed,
    first in line for a slot. Conditional on the heartbeat the plan saw."""
    info = decision.run
    run = Run.objects.filter(pk=info.pk).first()
    if run is None:
        return False
    where, _ = _STOPPED_WHILE.get(run.phase, ("", ""))
    message = (
        f"The worker stopped{' ' + where if where else ''} ({decision.reason.split(':')[0]}): "
        f"starting this backup again (restart {info.restarts + 1} of {settings.BACKUPSITE_RUN_RESTARTS}, "
        "BACKUPSITE_RUN_RESTARTS)."
    )
    with transaction.atomic():
        restarted = Run.objects.filter(pk=info.pk, state=Run.State.RUNNING, heartbeat_at=info.heartbeat_at).update(
            state=Run.State.QUEUED,
            phase=Run.Phase.PENDING,
            phase_started_at=None,
            restarts=info.restarts + 1,
            requeues=0,
            enqueued_at=now,
            released_at=now,
            bytes_done=0,
            bytes_total=0,
            files_done=0,
            archive_name="",
            log=_log_append(message),
        )
        if not restarted:
            return False
        lines = _remove_staging_partials(run)
    append_log(run.pk, *lines)
    hand_over([run.pk])
    return True


_APPLY = {
    reconcile.INTERRUPT: _apply_end_abandoned,
    reconcile.CANCEL: _apply_cancel,
    reconcile.WAKE: BACKUP_WORK.wake,
    reconcile.REQUEUE: BACKUP_WORK.requeue,
    reconcile.FAIL: BACKUP_WORK.fail_unclaimed,
    reconcile.RESTART: _apply_restart,
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


def abandoned_message(state: str, phase: str, silent_seconds: int, restarts: int = 0) -> str:
    where, aftermath = _STOPPED_WHILE.get(phase, ("", ""))
    where = f" {where}" if where else ""
    if state == Run.State.CANCELLED:
        return (
            f"Cancelled: the worker running this backup had stopped{where} (no heartbeat for {silent_seconds} s), "
            f"so the cancellation was completed at once.{aftermath}"
        )
    tried = (
        f" It was started again {restarts} time(s) after its worker stopped before (BACKUPSITE_RUN_RESTARTS), "
        "so it is not tried again: look for what stops the worker (out of memory? see the system log)."
        if restarts
        else ""
    )
    return f"Interrupted: the worker stopped{where} (no heartbeat for {silent_seconds} s).{aftermath}{tried}"


def end_abandoned(info: reconcile.RunInfo, state: str, *, now=None, reason: str = "") -> Run | None:
    """End a running run whose worker is gone (*state* interrupted or cancelled):
    conditional on the heartbeat the caller saw, so a worker that is alive after all
    keeps its run (returns None). Removes the run's temporary files, alerts when
    interrupted, and returns the updated run. The caller hands the freed slot on."""
    now = now or timezone.now()
    run = Run.objects.filter(pk=info.pk).first()
    if run is None:
        return None
    silent = int((now - reconcile.last_sign_of_life(info)).total_seconds())
    message = abandoned_message(state, run.phase, silent, run.restarts)
    with transaction.atomic():
        ended = Run.objects.filter(pk=info.pk, state=info.state, heartbeat_at=info.heartbeat_at).update(
            state=state, finished_at=now, released_at=now, error=message, log=_log_append(message)
        )
        if not ended:
            return None
        _settle_uploads(info.pk, "The worker stopped during this upload.", now)
        # Still inside the transaction that ends the run: no other run of this job can
        # be created and start writing into the staging folder until it commits (the
        # one-active-run-per-job index), so every partial file here is the dead worker's.
        lines = _remove_staging_partials(run)
    lines += _remove_destination_partials(run)
    append_log(run.pk, *lines)
    run.refresh_from_db()
    if state == Run.State.INTERRUPTED:
        notifications.notify_run_failed(run)
    return run


def _remove_staging_partials(run: Run) -> list[str]:
    """The dead worker's temporary files in the job's staging folder: removed here when
    this is the host it ran on, else by a task on that host's queue."""
    job_slug = run.job_slug
    if not job_slug:
        return []
    if run.host and run.host != enqueue.this_host():
        enqueue.clean_staging(run.host, job_slug)
        return [f"The temporary files on {run.host} are removed by a worker there."]
    return clean_staging(job_slug)


def clean_staging(job_slug: str) -> list[str]:
    """Remove the temporary files of stopped workers from this host's staging folder of
    a job, unless a run of the job is archiving here right now (it removed them when it
    started, and its own are not leftovers)."""
    if Run.objects.filter(state=Run.State.RUNNING, host=enqueue.this_host(), config__job__slug=job_slug).exists():
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
    already active, or an upload of the job is under way (their own temporary files
    must stay; they remove leftovers themselves)."""
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
        if (
            run.job_id
            and Upload.objects.filter(
                run__job_id=run.job_id, destination=destination, state=Upload.State.UPLOADING
            ).exists()
        ):
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
    UPLOADS = "uploads"  # the archive is made: its open uploads are stopped
    FINISHED = "finished"  # nothing to cancel any more


def cancel_run(run_id: int, user=None) -> str:
    """Cancel a run. One that has not started, or whose worker is gone (stale
    heartbeat), is cancelled here and now: state cancelled, temporary files removed,
    slot handed on. A run with a live worker gets the flag that worker polls. A run
    whose archive is made has its open uploads stopped (the archive stays)."""
    who = by_whom(user)
    now = timezone.now()
    if BACKUP_WORK.cancel_pending(run_id, now, who):
        return CancelOutcome.NOT_STARTED
    if Run.objects.filter(pk=run_id, state=Run.State.UPLOADING).exists():
        uploads.cancel_uploads(run_id, who)
        return CancelOutcome.UPLOADS
    run = Run.objects.filter(pk=run_id, state__in=Run.HELD_STATES).first()
    if run is None:
        return CancelOutcome.FINISHED
    Run.objects.filter(pk=run_id, state__in=Run.HELD_STATES).update(
        cancel_requested=True, log=_log_append(f"Cancellation requested{who}.")
    )
    info = _info(run)
    gone = reconcile.worker_gone(info, now, settings.BACKUPSITE_STALE_RUN_SECONDS)
    if gone and end_abandoned(info, Run.State.CANCELLED, now=now) is not None:
        hand_slot_on()
        return CancelOutcome.ABANDONED
    return CancelOutcome.REQUESTED
