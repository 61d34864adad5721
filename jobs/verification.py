"""Verify runs: the Django side of ``jobs.engine.verify``; where archives are read from.

The views, the ``verifybackup`` / ``restorebackup`` commands (and later a Celery task)
all call these functions. An archive is read from the run's local copy or from one of
its destinations, with the manifest from the same place.

* :func:`verify_run` records the outcome on the Run (local copy) or on the Upload
  (destination): ``verified_at``, ``verify_ok``, ``verify_message``; a damaged backup
  is e-mailed to the job's report-to addresses. Problems that say nothing about the
  backup (a wrong password, an unreachable destination) raise
  :class:`VerificationError` and record nothing.
* Restores (:mod:`jobs.restores`) read the archive through the same :func:`archive_location`,
  :func:`load_manifest` and :func:`identities_for`.

The backup password unwraps the job's age identity in memory, for this call only: it is
never stored, logged or put into a message.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from destinations.backends import DestinationError, NotFoundError
from destinations.backends.base import READ, Backend, job_folder
from destinations.backends.local import staging_copies
from destinations.models import Destination
from jobs.engine import agekeys
from jobs.engine.decrypt import DecryptionError
from jobs.engine.manifest import read_manifest
from jobs.engine.stored import SourceReadError
from jobs.engine.verify import VerifyResult, verify_archive
from jobs.models import Run, Upload, VerifyTicket
from jobs.naming import MANIFEST_SUFFIX
from jobs.notifications import send_alert

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 2000
KEY_FILE_LIMIT = 64 * 1024


class VerificationError(Exception):
    """The backup could not be verified or restored for a reason that says nothing about
    the backup itself (no copy here, wrong password, destination unreachable, bad
    target). Nothing was recorded. The message is meant for users."""


@dataclass
class Location:
    """Where a run's archive is read from: the local copy or one destination, both
    through the destination contract (a backend and the folder the run's files are in)."""

    label: str  # "the local copy", "destination “NAS”"
    archive_name: str
    backend: Backend
    folder: str
    upload: Upload | None = None
    local_path: Path | None = None

    def open(self, name: str) -> BinaryIO:
        return self.backend.open(self.folder, name)

    def open_archive(self) -> BinaryIO:
        return self.open(self.archive_name)

    def open_manifest(self) -> BinaryIO:
        return self.open(self.archive_name + MANIFEST_SUFFIX)

    @property
    def is_local(self) -> bool:
        return self.upload is None


def _find_destination(destination) -> Destination:
    if isinstance(destination, Destination):
        return destination
    text = str(destination)
    found = Destination.objects.filter(name=text).first() or Destination.objects.filter(slug=text).first()
    if found is None and text.isdigit():
        found = Destination.objects.filter(pk=int(text)).first()
    if found is None:
        raise VerificationError(f"No destination named {text!r}.")
    return found


def archive_location(run: Run, destination=None) -> Location:
    """The local copy (``destination=None``) or the run's upload to *destination*
    (a Destination, or its name, slug or id)."""
    if not run.archive_name or run.archive_size is None:
        raise VerificationError(f"Run #{run.pk} has no archive.")
    if destination is None:
        path = run.local_file
        if path is None or not path.is_file():
            raise VerificationError(
                f"The archive of run #{run.pk} is no longer on this server; verify it at a destination."
            )
        return Location("the local copy", path.name, staging_copies(), path.parent.name, local_path=path)
    dest = _find_destination(destination)
    upload = run.uploads.filter(destination=dest).first()
    if upload is None or upload.state != Upload.State.SUCCEEDED:
        raise VerificationError(f"Run #{run.pk} was not uploaded to “{dest.name}”.")
    try:
        backend = dest.backend()
        folder = job_folder(run.job_slug)
    except DestinationError as exc:
        raise VerificationError(f"Destination “{dest.name}”: {exc}") from None
    if not backend.can(READ):
        raise VerificationError(
            f"Destination “{dest.name}” ({backend.label}) cannot be read back: verify the local copy instead."
        )
    return Location(
        f"destination “{dest.name}”", upload.remote_name or run.archive_name, backend, folder, upload=upload
    )


class Unreadable(Exception):
    """The manifest or archive is missing or unreadable where it should be (a finding)."""


def load_manifest(location: Location) -> dict:
    try:
        with location.open_manifest() as raw, io.TextIOWrapper(raw, encoding="utf-8") as text:
            return read_manifest(text)
    except (FileNotFoundError, NotFoundError):
        raise Unreadable(f"the manifest is missing from {location.label}") from None
    except DestinationError as exc:
        if exc.permanent:
            raise Unreadable(f"the manifest cannot be read from {location.label}: {exc}") from None
        raise VerificationError(f"Reading the manifest from {location.label} failed: {exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise Unreadable(f"the manifest at {location.label} is not valid: {exc}") from None
    except OSError as exc:
        raise VerificationError(f"Reading the manifest from {location.label} failed: {exc.strerror or exc}") from None


def _key_files(run: Run, manifest: dict, location: Location) -> Iterator[bytes]:
    """The key files that may open this archive, best first: the run's own (or its job's,
    if it is the archive's key), the job's current wrapping of the same key (a password
    change that crossed the run's archive stage), then at *location* the key file its
    manifest names (``archive.encryption.key_file``), then ``backupsite-key.age``."""
    key_file = run.key_file
    if key_file is not None:
        yield key_file
    job = run.job if run.job_id is not None else None
    if job is not None and job.key_file not in (None, key_file) and run.recipient == job.age_recipient:
        yield job.key_file
    encryption = (manifest.get("archive") or {}).get("encryption")
    named = encryption.get("key_file") if isinstance(encryption, dict) else None
    names = [named] if isinstance(named, str) and agekeys.is_key_file_name(named) else []
    for name in [*names, agekeys.KEY_FILE_NAME]:
        with contextlib.suppress(DestinationError, OSError), location.open(name) as fh:
            found = fh.read(KEY_FILE_LIMIT)
            if found and found != key_file:
                yield found


def identities_for(run: Run, manifest: dict, location: Location, password, identities, checksum_only: bool):
    """The age identities to decrypt with, or None (not encrypted / checksum only). With a
    password: the identity of the first key file (:func:`_key_files`) that the password
    opens and that is the archive's key."""
    encryption = (manifest.get("archive") or {}).get("encryption")
    if not encryption:
        return None
    if identities:
        return list(identities)
    candidates = _key_files(run, manifest, location)
    if not password:
        if checksum_only:
            return None
        if next(candidates, None) is not None:
            raise VerificationError("This backup is encrypted: the backup password is needed to check its contents.")
        raise VerificationError(
            "This backup is encrypted to a key that is not on this server: give the age identity file "
            "(or check only the stored file's checksum)."
        )
    recipient = encryption.get("recipient") if isinstance(encryption, dict) else None
    problems = []  # the best candidate's problem is the one to tell
    for key_file in candidates:
        try:
            identity = agekeys.unwrap_identity(key_file, password)
        except agekeys.KeyError_ as exc:
            problems.append(str(exc))
            continue
        if recipient and str(agekeys.identity_object(identity).to_public()) != recipient:
            problems.append(f"This archive was encrypted to {recipient}; no key file here holds that key.")
            continue
        return [identity]
    raise VerificationError(problems[0] if problems else "The backup's key file is not available.")


# --- verify ---------------------------------------------------------------------------
def verify_run(
    run: Run,
    destination=None,
    password: str | None = None,
    *,
    identities=None,
    checksum_only: bool = False,
    notify: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyResult:
    """Verify *run*'s archive at the local copy or at *destination* and record the outcome.

    Encrypted archives need *password* (the job's backup password) or *identities*;
    with *checksum_only* only the stored bytes are compared with the manifest. Raises
    :class:`VerificationError` when the backup could not be checked at all.
    """
    location = archive_location(run, destination)
    result: VerifyResult
    try:
        manifest = load_manifest(location)
        ids = identities_for(run, manifest, location, password, identities, checksum_only)
        archive = manifest.get("archive") or {}
        try:
            stream = location.open_archive()
        except (FileNotFoundError, NotFoundError):
            raise Unreadable(f"the archive is missing from {location.label}") from None
        except DestinationError as exc:
            if exc.permanent:
                raise Unreadable(f"the archive cannot be read from {location.label}: {exc}") from None
            raise VerificationError(f"Reading the archive from {location.label} failed: {exc}") from None
        with stream:
            result = verify_archive(stream, manifest, ids, progress)
        # The database row is the truth: a manifest rewritten together with its archive
        # must not pass.
        if run.archive_sha256 and (
            archive.get("sha256") != run.archive_sha256 or archive.get("size") != run.archive_size
        ):
            result.add("the manifest's archive size or checksum differs from the one recorded for this run")
            result.ok = False
    except Unreadable as exc:
        result = VerifyResult(ok=False)
        result.add(str(exc))
    except SourceReadError as exc:
        raise VerificationError(f"Reading the archive from {location.label} failed: {exc.__cause__ or exc}") from None
    except DecryptionError as exc:
        raise VerificationError(str(exc)) from None
    record_verification(run, location.upload, result)
    log.info("Verified run %s at %s: %s", run.pk, location.label, result.message)
    if not result.ok and notify:
        notify_verify_failed(run, location.label, result.message)
    result.where = location.label
    return result


def _set_status(run: Run, upload: Upload | None, message: str) -> None:
    """A verification that is queued, or could not run: no verdict on the backup."""
    values = {"verified_at": None, "verify_ok": None, "verify_message": message[:MESSAGE_LIMIT]}
    if upload is not None:
        Upload.objects.filter(pk=upload.pk).update(**values)
    else:
        Run.objects.filter(pk=run.pk).update(**values)


def request_verification(
    run: Run, destination=None, password: str | None = None, *, checksum_only: bool = False, user=None
) -> VerifyTicket:
    """Queue a verification for a worker (the panel's Verify button).

    Everything a user can get wrong is checked here, at once (the copy exists, the
    manifest is readable, the password unwraps the job's key); the identity then travels
    only inside an encrypted ticket row, never through the broker. A check of the local
    copy goes to the queue of the host that has it."""
    from jobs import enqueue

    location = archive_location(run, destination)
    try:
        manifest = load_manifest(location)
    except Unreadable as exc:
        raise VerificationError(f"The manifest cannot be read: {exc}") from None
    identities = identities_for(run, manifest, location, password, None, checksum_only)
    ticket = VerifyTicket.objects.create(
        run=run,
        destination=location.upload.destination if location.upload is not None else None,
        checksum_only=checksum_only,
        secrets={"identities": list(identities or [])},
        requested_by=user if user is not None and user.is_authenticated else None,
    )
    _set_status(run, location.upload, "Verification queued; the result appears here when it is done.")
    enqueue.verification(ticket.pk, run.host if location.is_local else None)
    return ticket


def run_ticket(ticket_id: int) -> VerifyResult | None:
    """The worker's side: take the ticket (deleting it, and the identity, first), verify,
    with its progress on an Activity row of the run (the run page shows it)."""
    from jobs.models import Activity
    from jobs.progress import RowProgress

    with transaction.atomic():
        ticket = VerifyTicket.objects.select_for_update().filter(pk=ticket_id).first()
        if ticket is None:  # already done by another delivery, or expired
            return None
        identities = list(ticket.secrets.get("identities") or []) or None
        run, destination, checksum_only = ticket.run, ticket.destination, ticket.checksum_only
        ticket.delete()
    where = "the local copy" if destination is None else f"destination “{destination.name}”"
    activity = Activity.objects.create(
        run=run,
        kind=Activity.Kind.VERIFY,
        where=where,
        bytes_total=run.archive_size or 0,
        host=settings.BACKUPSITE_HOST,
    )
    progress = RowProgress(lambda done, total: _activity_progress(activity.pk, done, total))
    try:
        result = verify_run(
            run,
            destination,
            identities=identities,
            checksum_only=checksum_only,
            progress=lambda done, total: progress(done, total),
        )
    except VerificationError as exc:
        try:
            upload = archive_location(run, destination).upload
        except VerificationError:
            upload = None
        _set_status(run, upload, f"Could not verify: {exc}")
        _activity_done(activity.pk, False, f"Could not verify: {exc}")
        return None
    _activity_done(activity.pk, result.ok, result.message, result.bytes)
    return result


def _activity_progress(activity_id: int, done: int, total: int) -> None:
    from jobs.models import Activity

    Activity.objects.filter(pk=activity_id).update(bytes_done=done, bytes_total=total, updated_at=timezone.now())


def _activity_done(activity_id: int, ok: bool, message: str, done: int | None = None) -> None:
    from jobs.models import Activity

    values = {
        "state": Activity.State.SUCCEEDED if ok else Activity.State.FAILED,
        "message": message[:MESSAGE_LIMIT],
        "finished_at": timezone.now(),
        "updated_at": timezone.now(),
    }
    if done is not None:
        values["bytes_done"] = done
    Activity.objects.filter(pk=activity_id).update(**values)


def record_verification(run: Run, upload: Upload | None, result: VerifyResult) -> None:
    """Store the outcome on the Upload (destination) or the Run (local copy), touching
    only those fields (other workers update the same rows)."""
    now = timezone.now()
    values = {"verified_at": now, "verify_ok": result.ok, "verify_message": result.message[:MESSAGE_LIMIT]}
    if upload is not None:
        Upload.objects.filter(pk=upload.pk).update(**values)
        target = upload
    else:
        Run.objects.filter(pk=run.pk).update(**values)
        target = run
    for key, value in values.items():
        setattr(target, key, value)


def _report_to(run: Run) -> list[str]:
    if run.job is not None:
        return run.job.report_to_list
    return list(run.config.get("job", {}).get("report_to") or [])


def notify_verify_failed(run: Run, where: str, message: str) -> bool:
    """E-mail the job's report-to addresses that a stored backup is damaged. Never raises."""
    return send_alert(
        _report_to(run),
        "verify_failed",
        {"run": run, "where": where, "message": message},
        what=f"verification e-mail for run {run.pk}",
    )


__all__ = [
    "Location",
    "Unreadable",
    "VerificationError",
    "archive_location",
    "identities_for",
    "load_manifest",
    "notify_verify_failed",
    "record_verification",
    "request_verification",
    "verify_run",
]
