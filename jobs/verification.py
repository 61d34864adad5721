"""Verify and restore runs: the Django side of ``jobs.engine.verify`` / ``jobs.engine.restore``.

The views, the ``verifybackup`` / ``restorebackup`` commands (and later a Celery task)
all call these functions. An archive is read from the run's local copy or from one of
its destinations, with the manifest from the same place.

* :func:`verify_run` records the outcome on the Run (local copy) or on the Upload
  (destination): ``verified_at``, ``verify_ok``, ``verify_message``; a damaged backup
  is e-mailed to the job's report-to addresses. Problems that say nothing about the
  backup (a wrong password, an unreachable destination) raise
  :class:`VerificationError` and record nothing.
* :func:`restore_run` extracts into an empty or new folder (refusing dangerous members
  and anything that does not match the manifest) and, only when asked with a database
  URL, loads a database dump through the source kind's ``restore_into``.

The backup password unwraps the job's age identity in memory, for this call only: it is
never stored, logged or put into a message.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from backupsite.private import private_dir
from destinations.backends import DestinationError, NotFoundError
from destinations.backends.base import READ, Backend, job_folder
from destinations.backends.local import staging_copies
from destinations.models import Destination
from jobs.engine import agekeys
from jobs.engine.decrypt import DecryptionError
from jobs.engine.manifest import read_manifest
from jobs.engine.restore import RestoreError, RestoreResult, safe_extract
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


class _Unreadable(Exception):
    """The manifest or archive is missing or unreadable where it should be (a finding)."""


def _load_manifest(location: Location) -> dict:
    try:
        with location.open_manifest() as raw, io.TextIOWrapper(raw, encoding="utf-8") as text:
            return read_manifest(text)
    except (FileNotFoundError, NotFoundError):
        raise _Unreadable(f"the manifest is missing from {location.label}") from None
    except DestinationError as exc:
        if exc.permanent:
            raise _Unreadable(f"the manifest cannot be read from {location.label}: {exc}") from None
        raise VerificationError(f"Reading the manifest from {location.label} failed: {exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Unreadable(f"the manifest at {location.label} is not valid: {exc}") from None
    except OSError as exc:
        raise VerificationError(f"Reading the manifest from {location.label} failed: {exc.strerror or exc}") from None


def _key_file(run: Run, location: Location) -> bytes | None:
    job = run.job
    if job is not None and job.age_identity_wrapped:
        return agekeys.from_text(job.age_identity_wrapped)
    if not location.is_local:
        with contextlib.suppress(DestinationError, OSError), location.open(agekeys.KEY_FILE_NAME) as fh:
            return fh.read(KEY_FILE_LIMIT)
    return None


def _identities(run: Run, manifest: dict, location: Location, password, identities, checksum_only: bool):
    """The age identities to decrypt with, or None (not encrypted / checksum only)."""
    encryption = (manifest.get("archive") or {}).get("encryption")
    if not encryption:
        return None
    if identities:
        return list(identities)
    if not password:
        if checksum_only:
            return None
        if _key_file(run, location) is not None:
            raise VerificationError("This backup is encrypted: the backup password is needed to check its contents.")
        raise VerificationError(
            "This backup is encrypted to a key that is not on this server: give the age identity file "
            "(or check only the stored file's checksum)."
        )
    key_file = _key_file(run, location)
    if key_file is None:
        raise VerificationError("The job's key file (backupsite-key.age) is not available.")
    try:
        identity = agekeys.unwrap_identity(key_file, password)
    except agekeys.KeyError_ as exc:
        raise VerificationError(str(exc)) from None
    recipient = encryption.get("recipient") if isinstance(encryption, dict) else None
    if recipient and str(agekeys.identity_object(identity).to_public()) != recipient:
        raise VerificationError(f"This archive was encrypted to {recipient}, which is not the job's current key.")
    return [identity]


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
        manifest = _load_manifest(location)
        ids = _identities(run, manifest, location, password, identities, checksum_only)
        archive = manifest.get("archive") or {}
        try:
            stream = location.open_archive()
        except (FileNotFoundError, NotFoundError):
            raise _Unreadable(f"the archive is missing from {location.label}") from None
        except DestinationError as exc:
            if exc.permanent:
                raise _Unreadable(f"the archive cannot be read from {location.label}: {exc}") from None
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
    except _Unreadable as exc:
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
    only inside an encrypted ticket row, never through the broker."""
    from jobs import tasks

    location = archive_location(run, destination)
    try:
        manifest = _load_manifest(location)
    except _Unreadable as exc:
        raise VerificationError(f"The manifest cannot be read: {exc}") from None
    identities = _identities(run, manifest, location, password, None, checksum_only)
    ticket = VerifyTicket.objects.create(
        run=run,
        destination=location.upload.destination if location.upload is not None else None,
        checksum_only=checksum_only,
        secrets={"identities": list(identities or [])},
        requested_by=user if user is not None and user.is_authenticated else None,
    )
    _set_status(run, location.upload, "Verification queued; the result appears here when it is done.")
    transaction.on_commit(lambda: tasks.verify_ticket.delay(ticket.pk))
    return ticket


def run_ticket(ticket_id: int) -> VerifyResult | None:
    """The worker's side: take the ticket (deleting it, and the identity, first), verify."""
    with transaction.atomic():
        ticket = VerifyTicket.objects.select_for_update().filter(pk=ticket_id).first()
        if ticket is None:  # already done by another delivery, or expired
            return None
        identities = list(ticket.secrets.get("identities") or []) or None
        run, destination, checksum_only = ticket.run, ticket.destination, ticket.checksum_only
        ticket.delete()
    try:
        return verify_run(run, destination, identities=identities, checksum_only=checksum_only)
    except VerificationError as exc:
        try:
            upload = archive_location(run, destination).upload
        except VerificationError:
            upload = None
        _set_status(run, upload, f"Could not verify: {exc}")
        return None


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


# --- restore --------------------------------------------------------------------------
def restore_roots() -> list[Path]:
    """Folders the web restore may write into: ``BACKUPSITE_RESTORE_ROOTS`` if set, else
    ``<data dir>/restores`` only (never the archive folder or the destinations' roots).
    ``<data dir>/restores`` is the panel's own folder: made on first use, 0700."""
    default = Path(settings.DATA_DIR) / "restores"
    roots = [Path(p) for p in getattr(settings, "BACKUPSITE_RESTORE_ROOTS", None) or [default]]
    if default in roots:
        private_dir(default)
    return [root.resolve() for root in roots]


def validate_restore_target(value: str) -> Path:
    """An absolute path strictly inside one of :func:`restore_roots` (no ``..``, no
    control characters, no symlink leading out of the root)."""
    if not isinstance(value, str) or not value.strip():
        raise VerificationError("A target folder is required.")
    value = value.strip()
    if any(ord(c) < 32 or ord(c) == 127 for c in value) or "\\" in value:
        raise VerificationError("The target folder contains characters that are not allowed.")
    if not value.startswith("/"):
        raise VerificationError("The target folder must be an absolute path (start with /).")
    if ".." in value.split("/"):
        raise VerificationError("The target folder must not contain '..'.")
    resolved = Path(value).resolve()
    roots = restore_roots()
    if not any(root in resolved.parents for root in roots):
        listed = ", ".join(str(r) for r in roots)
        raise VerificationError(f"Restores from the web go into a new folder inside {listed}.")
    return resolved


@dataclass
class RestoreReport:
    result: RestoreResult
    where: str
    databases: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        r = self.result
        text = (
            f"Restored {r.files} files, {r.dirs} folders and {r.symlinks} symbolic links "
            f"({r.bytes} bytes) from {self.where} into {r.target}; every file matched the manifest."
        )
        return " ".join([text, *self.databases])


def _database_plan(manifest: dict, source_slug: str | None):
    """(source snapshot, kind class, member path) of the dump to load into a database."""
    from jobs.sources import SourceError, get_kind

    sources = manifest.get("sources") or []
    candidates, unsupported = [], []
    for snap in sources:
        if source_slug and snap.get("slug") != source_slug:
            continue
        try:
            cls = get_kind(snap.get("kind", ""))
        except SourceError:
            unsupported.append(snap)
            continue
        if not hasattr(cls, "restore_into"):
            unsupported.append(snap)
            continue
        candidates.append((snap, cls))
    if source_slug and not candidates and not unsupported:
        raise VerificationError(f"This backup has no source {source_slug!r}.")
    if not candidates:
        kinds = ", ".join(sorted({s.get("kind", "?") for s in unsupported})) or "none"
        raise VerificationError(
            f"Nothing in this backup can be restored into a database (source kinds: {kinds}; "
            "only kinds with restore_into can)."
        )
    if len(candidates) > 1:
        slugs = ", ".join(s.get("slug", "?") for s, _ in candidates)
        raise VerificationError(f"This backup holds several databases ({slugs}): choose one source.")
    snap, cls = candidates[0]
    prefix = f"{snap.get('slug')}/"
    dumps = [
        m["path"] for m in manifest.get("members") or [] if m.get("type") == "file" and m["path"].startswith(prefix)
    ]
    if len(dumps) != 1:
        raise VerificationError(f"The source “{snap.get('name')}” has {len(dumps)} files in the archive, not one dump.")
    return snap, cls, dumps[0]


def _is_panel_database(database_url: str) -> bool:
    """Whether *database_url* names the panel's own live database. Uses the source
    kinds' own check when there is one (it compares hosts by address, sockets, ...)."""
    import importlib

    import environ

    try:
        config = environ.Env.db_url_config(database_url)
    except Exception:  # noqa: BLE001 - a bad URL is reported by the kind's restore_into
        return False
    for module in ("jobs.sources.dbtools", "jobs.sources.panel"):
        try:
            check = getattr(importlib.import_module(module), "is_panel_database", None)
        except ImportError:
            continue
        if check is not None:
            return bool(check(config))
    live = settings.DATABASES["default"]
    if config.get("ENGINE") != live.get("ENGINE"):
        return False
    if str(live.get("ENGINE", "")).endswith("sqlite3"):
        return os.path.realpath(str(config.get("NAME"))) == os.path.realpath(str(live.get("NAME")))
    return str(config.get("NAME")) == str(live.get("NAME"))


def _refuse_panel_database(database_url: str, allow: bool) -> None:
    if not allow and _is_panel_database(database_url):
        raise VerificationError(
            "That database is the panel's own live database: refusing to restore over it "
            "(the command's --allow-panel-database overrides this)."
        )


def restore_run(
    run: Run,
    target,
    *,
    destination=None,
    password: str | None = None,
    identities=None,
    database_url: str | None = None,
    source_slug: str | None = None,
    allow_panel_database: bool = False,
    web: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> RestoreReport:
    """Restore *run* into *target* (an empty or new folder) from its local copy or
    *destination*; with *database_url* also load the backup's database dump into that
    database (never the panel's own unless *allow_panel_database*). *web* restricts the
    target to :func:`restore_roots`. Raises :class:`VerificationError` or
    ``RestoreError`` (nothing restored; the message names the member)."""
    target = validate_restore_target(str(target)) if web else Path(os.path.abspath(target))
    location = archive_location(run, destination)
    try:
        manifest = _load_manifest(location)
    except _Unreadable as exc:
        raise VerificationError(str(exc)[0].upper() + str(exc)[1:] + ".") from None
    ids = _identities(run, manifest, location, password, identities, checksum_only=False)
    plan = None
    if database_url:
        plan = _database_plan(manifest, source_slug)
        _refuse_panel_database(database_url, allow_panel_database)
    try:
        with location.open_archive() as stream:
            result = safe_extract(stream, target, ids, manifest, progress=progress)
    except (FileNotFoundError, NotFoundError):
        raise VerificationError(f"The archive is missing from {location.label}.") from None
    except DestinationError as exc:
        raise VerificationError(f"Reading the archive from {location.label} failed: {exc}") from None
    except SourceReadError as exc:
        raise VerificationError(f"Reading the archive from {location.label} failed: {exc.__cause__ or exc}") from None
    except DecryptionError as exc:
        raise VerificationError(str(exc)) from None
    report = RestoreReport(result, location.label)
    log.info("Restored run %s from %s into %s", run.pk, location.label, result.target)
    if plan is not None:
        snap, cls, member = plan
        dump = result.target / member
        kwargs = {"allow_panel_database": True} if allow_panel_database else {}
        try:
            cls.restore_into(dump, database_url, **kwargs)
        except Exception as exc:  # noqa: BLE001 - SourceError, ValueError, RestoreRefused, tool errors
            raise VerificationError(
                f"The files were restored into {result.target}, but loading {member} into the database failed: {exc}"
            ) from None
        report.databases.append(f"The dump {member} of “{snap.get('name')}” was loaded into the database.")
    return report


__all__ = [
    "Location",
    "RestoreError",
    "RestoreReport",
    "VerificationError",
    "archive_location",
    "notify_verify_failed",
    "record_verification",
    "restore_roots",
    "restore_run",
    "validate_restore_target",
    "verify_run",
]
