"""The upload stage: one task per destination, retried on transient errors, and the
close of a run once its last upload settled.

* :func:`hand_on` (after the archive stage) sends each Upload to the run's host queue;
* :func:`upload_stage` claims an Upload with a conditional update (so a duplicate
  delivery, the sweep and a countdown never upload twice at once), checks that the local
  copy is on this host (else the sweep's rule uploads the latest good local backup of
  the job instead), sends archive then manifest in one destination session, with
  progress and a heartbeat on the row;
* on a :class:`~destinations.backends.base.TransientError` the pure :func:`retry_plan`
  decides: another attempt after an exponential backoff with jitter, up to
  ``BACKUPSITE_UPLOAD_MAX_ATTEMPTS`` attempts and ``BACKUPSITE_UPLOAD_MAX_AGE_SECONDS``
  since the first; a permanent error (credentials, host key, quota, disk full) is final
  at once;
* an upload that settled (succeeded or finally failed) calls :func:`settle`: a
  conditional update closes the run when no upload of it is open any more (succeeded /
  partial / failed / cancelled), then retention and the notifications run. Whoever
  closes it (two uploads settling at once) does that exactly once.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import close_old_connections, transaction
from django.db.models import F, Q, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from destinations.backends import DestinationError, NotFoundError
from destinations.backends.base import READ, UploadItem, job_folder
from destinations.models import Destination
from jobs import enqueue, notifications, retention, sweep
from jobs.engine import Cancelled, agekeys
from jobs.engine.agekeys import AGE_SUFFIX, KEY_FILE_NAME
from jobs.models import Run, Upload
from jobs.naming import MANIFEST_SUFFIX
from jobs.progress import LostRun, RowProgress, UploadHeartbeat

log = logging.getLogger(__name__)
EARLY_SLACK = timedelta(seconds=5)  # a countdown may fire a little early (clocks of two hosts)


# --- retries: the pure rule -------------------------------------------------------------
@dataclass(frozen=True)
class RetryLimits:
    attempts: int  # at most this many attempts in all
    max_age: float  # seconds since the first attempt after which no new attempt starts
    base: float  # delay after the first failed attempt (seconds)
    cap: float  # the longest delay

    @classmethod
    def from_settings(cls) -> RetryLimits:
        return cls(
            attempts=settings.BACKUPSITE_UPLOAD_MAX_ATTEMPTS,
            max_age=settings.BACKUPSITE_UPLOAD_MAX_AGE_SECONDS,
            base=settings.BACKUPSITE_UPLOAD_RETRY_SECONDS,
            cap=settings.BACKUPSITE_UPLOAD_RETRY_MAX_SECONDS,
        )


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    delay: float  # seconds until the next attempt (0 when not retried)
    reason: str


def backoff(attempts: int, limits: RetryLimits, rand: Callable[[], float] = random.random) -> float:
    """The delay after *attempts* failed attempts: exponential (base × 2^(n-1), capped)
    with "equal jitter" (between half and all of it), so uploads that failed together do
    not all come back at the same second, and each delay is at least the one before."""
    full = min(limits.cap, limits.base * 2 ** max(0, attempts - 1))
    return full / 2 + rand() * full / 2


def retry_plan(
    *,
    attempts: int,
    first_attempt_at: datetime | None,
    now: datetime,
    permanent: bool,
    limits: RetryLimits,
    rand: Callable[[], float] = random.random,
) -> RetryDecision:
    """Whether an upload that failed its *attempts*-th attempt is tried again, and when."""
    if permanent:
        return RetryDecision(False, 0, "a permanent error: retrying cannot help until someone changes something")
    if attempts >= limits.attempts:
        return RetryDecision(False, 0, f"gave up after {attempts} attempts (BACKUPSITE_UPLOAD_MAX_ATTEMPTS)")
    delay = backoff(attempts, limits, rand)
    age = (now - (first_attempt_at or now)).total_seconds()
    if age + delay > limits.max_age:
        hours = limits.max_age / 3600
        span = f"{hours:g} h" if hours >= 1 else f"{int(limits.max_age)} s"
        return RetryDecision(
            False, 0, f"gave up after {attempts} attempts over {span} (BACKUPSITE_UPLOAD_MAX_AGE_SECONDS)"
        )
    return RetryDecision(True, delay, f"attempt {attempts + 1} of {limits.attempts} in {_seconds_text(delay)}")


def _seconds_text(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# --- the outcome of a run: the pure rule --------------------------------------------------
def outcome(states: list[str], *, warning_count: int, cancelled: bool, host: str) -> tuple[str, str]:
    """The final state of a run whose uploads all settled, and its message."""
    where = f"on {host}" if host else "on this server"
    failed = sum(1 for state in states if state == Upload.State.FAILED)
    if cancelled:
        return Run.State.CANCELLED, f"Cancelled during the uploads; the archive is kept {where}."
    if states and failed == len(states):
        return Run.State.FAILED, f"Every upload failed; the archive is kept {where}."
    summary = []
    if failed:
        summary.append(f"{failed} of {len(states)} upload(s) failed")
    if warning_count:
        summary.append(f"{warning_count} item(s) could not be backed up")
    if summary:
        return Run.State.PARTIAL, "; ".join(summary) + " (see the log)."
    return Run.State.SUCCEEDED, ""


# --- handing uploads on -------------------------------------------------------------------
def hand_on(run: Run) -> None:
    """After the archive stage: each open upload goes to the run's host queue; a run
    without destinations is closed here (this is its host)."""
    pending = list(Upload.objects.filter(run=run, state=Upload.State.PENDING).values_list("pk", flat=True))
    if not pending:
        settle(run.pk)
        return
    for upload_id in pending:
        enqueue.upload(upload_id, run.host)


def run_inline(run: Run, listener=None) -> None:
    """The uploads of a run in this process (``runbackup``, tests): one attempt each;
    those that are to be retried go to the workers (``retry_inline=False``)."""
    for upload_id in Upload.objects.filter(run=run, state=Upload.State.PENDING).values_list("pk", flat=True):
        upload_stage(upload_id, listener=listener)
    if not Upload.objects.filter(run=run, state__in=Upload.OPEN_STATES).exists():
        settle(run.pk)


# --- one upload ---------------------------------------------------------------------------
def claim(upload_id: int, now: datetime) -> bool:
    """Pending or retrying (and due) → uploading, one attempt more; conditional, so two
    deliveries of the same task never both upload."""
    due = Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now + EARLY_SLACK)
    return bool(
        Upload.objects.filter(due, pk=upload_id, state__in=[Upload.State.PENDING, Upload.State.RETRYING]).update(
            state=Upload.State.UPLOADING,
            attempts=F("attempts") + 1,
            started_at=now,
            heartbeat_at=now,
            first_attempt_at=Coalesce(F("first_attempt_at"), now),
            bytes_done=0,
            next_attempt_at=None,
        )
    )


def upload_stage(upload_id: int, *, listener=None) -> str | None:
    """The upload task: claim, upload, record, settle. Returns the upload's new state,
    or None when there was nothing to do (taken by someone else, not due, gone)."""
    close_old_connections()
    now = timezone.now()
    if not claim(upload_id, now):
        return None
    upload = Upload.objects.select_related("run").get(pk=upload_id)
    run = upload.run
    path = run.local_file
    if path is None or not path.is_file():
        return _local_copy_gone(upload, now)
    heartbeat = UploadHeartbeat(upload.pk, run.pk)
    heartbeat.start()
    mine = Q(pk=upload.pk, state=Upload.State.UPLOADING, attempts=upload.attempts)

    def write(done: int, total: int) -> None:
        if not Upload.objects.filter(mine).update(bytes_done=done, heartbeat_at=timezone.now()):
            raise LostRun(run.pk)
        if listener is not None:
            upload.bytes_done = done
            listener(run)

    progress = RowProgress(write, cancelled=heartbeat.cancelled.is_set)
    error: DestinationError | None = None
    state = Upload.State.SUCCEEDED
    message = ""
    try:
        perform_upload(upload, path, progress=progress, cancel=heartbeat.cancelled.is_set)
    except LostRun:
        log.warning("Upload %s was taken back while this worker worked on it; its result is discarded", upload.pk)
        return None
    except Cancelled:
        state, message = Upload.State.FAILED, "Cancelled by a user."
    except DestinationError as exc:
        error = exc
    except Exception as exc:
        from celery.exceptions import SoftTimeLimitExceeded

        if isinstance(exc, SoftTimeLimitExceeded):  # a retry may be luckier; it counts as an attempt
            from destinations.backends.base import TransientError

            error = TransientError("The upload took longer than the time limit (CELERY_SOFT_TIME_LIMIT).")
        else:
            log.exception("Upload %s failed with an unexpected error", upload.pk)
            state, message = Upload.State.FAILED, f"Internal error ({type(exc).__name__}); see the worker log."
    finally:
        heartbeat.stop()
    return _record(upload, run, mine, state, message, error)


def _record(upload: Upload, run: Run, mine: Q, state: str, message: str, error: DestinationError | None) -> str | None:
    """Store one attempt's result (only while the row is still this worker's) and act on
    it: retry later, or settle (close the run if this was its last open upload)."""
    now = timezone.now()
    decision = None
    if error is not None:
        decision = retry_plan(
            attempts=upload.attempts,
            first_attempt_at=upload.first_attempt_at or upload.started_at,
            now=now,
            permanent=error.permanent,
            limits=RetryLimits.from_settings(),
        )
        message = str(error)
        state = Upload.State.RETRYING if decision.retry else Upload.State.FAILED
    values = {"state": state, "error": message[:2000], "heartbeat_at": None}
    if state == Upload.State.SUCCEEDED:
        values.update(bytes_done=upload.bytes_total or F("bytes_done"), finished_at=now)
    elif state == Upload.State.RETRYING:
        values["next_attempt_at"] = now + timedelta(seconds=decision.delay)
    else:
        values["finished_at"] = now
    if not Upload.objects.filter(mine).update(**values):
        return None  # the sweep took it back meanwhile (a stale heartbeat): its call now
    dest = upload.destination_name
    if state == Upload.State.SUCCEEDED:
        Run.add_log(run.pk, f"Uploaded to {dest} (attempt {upload.attempts}).")
    elif state == Upload.State.RETRYING:
        Run.add_log(run.pk, f"Upload to {dest} failed: {message} Retrying: {decision.reason}.")
        enqueue.upload(upload.pk, run.host, countdown=decision.delay)
        return state
    else:
        why = f" ({decision.reason})" if decision is not None else ""
        Run.add_log(run.pk, f"Upload to {dest} failed{why}: {message}")
        if message != "Cancelled by a user.":
            notifications.notify_upload_failed(Upload.objects.select_related("run").get(pk=upload.pk))
    settle(run.pk)
    return state


def _local_copy_gone(upload: Upload, now: datetime) -> str:
    """The run's archive is not on this host any more (removed by hand, a new disk):
    this upload cannot be made. The sweep's rule: upload the latest good local backup of
    the job to this destination instead, if it is not there yet."""
    run = upload.run
    candidates = [
        sweep.Candidate(r.pk, r.created_at, r.local_file is not None and r.local_file.is_file())
        for r in Run.objects.filter(
            job_id=run.job_id,
            host=run.host,
            state__in=[Run.State.SUCCEEDED, Run.State.PARTIAL, Run.State.UPLOADING],
            archive_size__isnull=False,
        ).exclude(pk=run.pk)
        if run.job_id
    ]
    choice = sweep.substitute(run.pk, candidates)
    message = f"The local copy of this archive is gone from {run.host or 'this server'}; it cannot be uploaded. "
    Upload.objects.filter(pk=upload.pk, state=Upload.State.UPLOADING).update(
        state=Upload.State.FAILED, error=message + choice.reason, finished_at=now, heartbeat_at=None
    )
    Run.add_log(run.pk, f"Upload to {upload.destination_name}: {message}{choice.reason}")
    if choice.run_id is not None and upload.destination_id is not None:
        instead, created = Upload.objects.get_or_create(
            run_id=choice.run_id,
            destination_id=upload.destination_id,
            defaults={"destination_name": upload.destination_name},
        )
        instead_run = Run.objects.get(pk=choice.run_id)
        if created or instead.state == Upload.State.FAILED:
            Upload.objects.filter(pk=instead.pk).update(
                state=Upload.State.PENDING,
                remote_name=instead_run.archive_name,
                bytes_total=instead_run.archive_size or 0,
                attempts=0,
                first_attempt_at=None,
                next_attempt_at=None,
                error="",
            )
            Run.add_log(
                choice.run_id,
                f"Uploading this backup to {upload.destination_name} in place of run #{run.pk}, whose local copy "
                "is gone.",
            )
            enqueue.upload(instead.pk, instead_run.host)
        else:
            Run.add_log(
                choice.run_id,
                f"Run #{run.pk} could not be uploaded to {upload.destination_name} (its local copy is gone); this "
                f"backup's upload there is {instead.get_state_display().lower()}.",
            )
    settle(run.pk)
    return Upload.State.FAILED


def perform_upload(upload: Upload, archive_path: Path, *, progress=None, cancel=None) -> None:
    """Upload the archive, then its manifest, to the upload's destination in one
    session. Raises DestinationError (typed), Cancelled or LostRun."""
    run = upload.run
    job_slug = run.job_slug
    manifest_path = archive_path.with_name(archive_path.name + MANIFEST_SUFFIX)
    size = run.archive_size or archive_path.stat().st_size
    try:
        destination = Destination.objects.get(pk=upload.destination_id)
    except Destination.DoesNotExist:
        from destinations.backends.base import PermanentError

        raise PermanentError("The destination was deleted.") from None
    backend = destination.backend()
    folder = job_folder(job_slug)
    key_files = _local_key_files(run, archive_path.parent)
    items = [
        UploadItem(archive_path, upload.remote_name or archive_path.name, size, run.archive_sha256 or None),
        UploadItem(
            manifest_path, (upload.remote_name or archive_path.name) + MANIFEST_SUFFIX, manifest_path.stat().st_size
        ),
    ]
    with backend.session() as session:
        # Leftovers of killed uploads, unless another upload of this job to the same
        # destination is under way right now (its temporary file is not a leftover).
        others = Upload.objects.filter(
            run__job_id=run.job_id, destination_id=upload.destination_id, state=Upload.State.UPLOADING
        ).exclude(pk=upload.pk)
        if run.job_id is None or not others.exists():
            session.remove_partials(folder)
        if archive_path.name.endswith(AGE_SUFFIX) and key_files:
            if backend.can(READ):
                for key_file in key_files:
                    _ensure_key_file(session, folder, key_file)
                for key_file in _other_key_files(run, upload.destination_id, archive_path.parent):
                    _ensure_key_file(session, folder, key_file, only_if_missing=True)
            else:  # write-only kinds (e-mail): the backup's own key travels with it
                own = key_files[0]
                items.insert(0, UploadItem(own, KEY_FILE_NAME, own.stat().st_size))
        # replace=True: a name repeats on purpose with templates such as
        # "{job}-{weekday}" (last Monday's backup is replaced by this Monday's).
        session.upload_files(
            folder,
            items,
            progress=(lambda done: progress(min(done, size))) if progress else None,
            cancel=cancel,
            replace=True,
        )


def _local_key_files(run: Run, staging: Path) -> list[Path]:
    """The key files to put beside this run's archive, from the staging folder: the run's
    own key under its name (``backupsite-key-<key id>.age``, written again from the run
    row if it is missing here) and ``backupsite-key.age`` (the newest backup's key), when
    that one exists here. Empty when the run is not encrypted with a password."""
    key_file = run.key_file
    if key_file is None:
        return []
    own = agekeys.write_key_file(staging, run.key_file_name, key_file)
    current = staging / KEY_FILE_NAME
    if not current.is_file():
        agekeys.write_key_file(staging, KEY_FILE_NAME, key_file)
    return [own] if own == current else [own, current]


def _other_key_files(run: Run, destination_id: int, staging: Path) -> list[Path]:
    """The key files of the job's other keys whose backups were uploaded to this
    destination (its key was replaced since), from the runs' own copies: put back
    beside the backups if they are missing there, before ``backupsite-key.age`` moves
    on to the newest key."""
    if run.job_id is None:
        return []
    rows = (
        Run.objects.filter(
            job_id=run.job_id, uploads__destination_id=destination_id, uploads__state=Upload.State.SUCCEEDED
        )
        .exclude(age_identity_wrapped="")
        .order_by()
        .values_list("config__job__age_recipient", "age_identity_wrapped")
        .distinct()
    )
    found: dict[str, str] = {}
    for recipient, wrapped in rows:
        if isinstance(recipient, str) and recipient and recipient != run.recipient:
            found.setdefault(recipient, wrapped)
    return [
        agekeys.write_key_file(staging, agekeys.key_file_name(recipient), agekeys.from_text(wrapped))
        for recipient, wrapped in found.items()
    ]


def _ensure_key_file(session, folder: str, key_file: Path, *, only_if_missing: bool = False) -> None:
    """Upload a key file beside the backups unless the same file (or, *only_if_missing*,
    any file of that name) is there. A key's own file (``backupsite-key-<key id>.age``)
    is only ever replaced by the same key (a changed backup password re-wraps it);
    ``backupsite-key.age`` follows the newest key."""
    wanted = key_file.read_bytes()
    try:
        with session.open(folder, key_file.name) as fh:
            if only_if_missing or fh.read(len(wanted) + 1) == wanted:
                return
    except NotFoundError:
        pass
    session.upload(key_file, folder, key_file.name, expected_size=len(wanted), replace=True)


# --- closing the run ------------------------------------------------------------------------
def settle(run_id: int) -> bool:
    """Close the run if its last upload settled: the conditional update (uploading →
    its final state) happens once, whoever calls; then retention, then notifications.
    Runs on the run's host (local retention reads the local copies); elsewhere it hands
    itself to that host's queue. Returns whether this call closed the run."""
    run = Run.objects.filter(pk=run_id, state=Run.State.UPLOADING).first()
    if run is None:
        return False
    if run.host and run.host != enqueue.this_host():
        enqueue.finalize(run_id, run.host)
        return False
    now = timezone.now()
    with transaction.atomic():
        states = list(Upload.objects.filter(run_id=run_id).values_list("state", flat=True))
        if any(state in Upload.OPEN_STATES for state in states):
            return False
        state, message = outcome(states, warning_count=run.warning_count, cancelled=run.cancel_requested, host=run.host)
        lines = [message] if message else []
        figures = {}
        if states:
            totals = Upload.objects.filter(run_id=run_id).aggregate(done=Sum("bytes_done"), total=Sum("bytes_total"))
            figures = {"bytes_done": totals["done"] or 0, "bytes_total": totals["total"] or 0}
        closed = Run.objects.filter(pk=run_id, state=Run.State.UPLOADING).update(
            **figures,
            state=state,
            phase=Run.Phase.RETENTION,
            phase_started_at=now,
            error=message,
            finished_at=now,
            log=Run.log_expression(*lines) if lines else F("log"),
        )
    if not closed:
        return False
    run.refresh_from_db()
    if state != Run.State.CANCELLED:
        arrived = set(
            Upload.objects.filter(run_id=run_id, state=Upload.State.SUCCEEDED).values_list("destination_id", flat=True)
        )
        destinations = [dest for dest in run.config.get("destinations") or [] if dest["id"] in arrived]
        # Local copies whose uploads are still open (a destination being retried) stay.
        protect = {run.archive_name}
        if run.job_id:
            protect |= set(
                Upload.objects.filter(run__job_id=run.job_id, run__host=run.host, state__in=Upload.OPEN_STATES)
                .exclude(run_id=run_id)
                .values_list("run__archive_name", flat=True)
            )
        try:
            lines = retention.after_run(run.config, protect=protect, destinations=destinations)
        except Exception:  # retention never turns a made backup into a failure
            log.exception("Retention after run %s failed", run_id)
            lines = ["Retention: internal error; see the worker log."]
        Run.add_log(run_id, *lines)
    Run.objects.filter(pk=run_id).update(phase=Run.Phase.DONE)
    run.refresh_from_db()
    notifications.run_closed(run)
    return True


def cancel_uploads(run_id: int, who: str = "") -> None:
    """Cancel a run whose archive is made: its waiting uploads fail at once, an upload
    under way stops at its next checkpoint (its worker polls the run's cancel flag), one
    whose worker is gone fails now; the run closes as cancelled when all settled."""
    now = timezone.now()
    Run.objects.filter(pk=run_id, state=Run.State.UPLOADING).update(
        cancel_requested=True, log=Run.log_expression(f"Cancellation requested{who}: the open uploads are stopped.")
    )
    Upload.objects.filter(run_id=run_id, state__in=[Upload.State.PENDING, Upload.State.RETRYING]).update(
        state=Upload.State.FAILED, error="Cancelled by a user.", finished_at=now, next_attempt_at=None
    )
    stale = now - timedelta(seconds=settings.BACKUPSITE_STALE_RUN_SECONDS)
    Upload.objects.filter(run_id=run_id, state=Upload.State.UPLOADING, heartbeat_at__lt=stale).update(
        state=Upload.State.FAILED, error="Cancelled by a user.", finished_at=now, heartbeat_at=None
    )
    settle(run_id)
