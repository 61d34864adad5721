"""Restore runs: the Django side of ``jobs.engine.restore``.

* :func:`restore_run` extracts a run's archive (from its local copy or a destination)
  into an empty or new folder, refusing dangerous members and anything that does not
  match the manifest; *only* restores some sources or paths; with a database URL it also
  loads a database dump through the source kind's ``restore_into`` (the command line
  only). ``restorebackup`` calls it directly.
* The Restore page never extracts inside the web request: :func:`request_restore`
  checks everything a user can get wrong at once (the copy, the manifest, the password,
  the target, the chosen paths), then creates a :class:`~jobs.models.Restore` row (state
  and progress, which the page polls) and a :class:`~jobs.models.RestoreTicket` holding
  the unwrapped key, encrypted; :func:`run_restore_ticket` is the worker's side: it
  deletes the ticket first, then restores, writing progress to the row.
* :func:`newer_backups` is the warning shown before restoring an older backup.

The backup password unwraps the job's age identity in memory: it is never stored, logged
or put into a message; the identity travels only inside the encrypted ticket row, never
through the broker.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from backupsite.private import private_dir
from destinations.backends import DestinationError, NotFoundError
from jobs.engine.decrypt import DecryptionError
from jobs.engine.members import Selection, SelectionError, manifest_table
from jobs.engine.restore import WORK_PREFIX, RestoreError, RestoreResult, safe_extract
from jobs.engine.stored import SourceReadError
from jobs.models import Activity, Restore, RestoreTicket, Run
from jobs.progress import Heartbeat, RowProgress
from jobs.runstate import requester
from jobs.verification import (
    Unreadable,
    VerificationError,
    _activity_done,
    _activity_progress,
    archive_location,
    identities_for,
    load_manifest,
)

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 4000
#: Folders offered in the page's path field (a datalist): this deep, at most this many.
OUTLINE_DEPTH = 3
OUTLINE_LIMIT = 300
#: A queued restore nobody picked up within this long is failed and its key removed.
TICKET_MAX_AGE = timezone.timedelta(days=1)


# --- where restores may go ----------------------------------------------------------
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
        raise VerificationError(_("A target folder is required."))
    value = value.strip()
    if any(ord(c) < 32 or ord(c) == 127 for c in value) or "\\" in value:
        raise VerificationError(_("The target folder contains characters that are not allowed."))
    if not value.startswith("/"):
        raise VerificationError(_("The target folder must be an absolute path (start with /)."))
    if ".." in value.split("/"):
        raise VerificationError(_("The target folder must not contain '..'."))
    resolved = Path(value).resolve()
    roots = restore_roots()
    if not any(root in resolved.parents for root in roots):
        listed = ", ".join(str(r) for r in roots)
        raise VerificationError(_("Restores from the web go into a new folder inside %(roots)s.") % {"roots": listed})
    return resolved


def check_target_free(target: Path) -> None:
    """Refuse at once what the extraction would refuse later: a target that is not an
    empty folder, or whose parent folder is missing."""
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise VerificationError(_("%(target)s exists and is not a folder.") % {"target": target})
    if target.is_dir() and any(target.iterdir()):
        raise VerificationError(_("%(target)s is not empty; restore into an empty or new folder.") % {"target": target})
    if not target.exists() and not target.parent.is_dir():
        raise VerificationError(_("The folder %(folder)s does not exist.") % {"folder": target.parent})


# --- the outcome --------------------------------------------------------------------
@dataclass
class RestoreReport:
    result: RestoreResult
    where: str
    databases: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        r = self.result
        text = [
            f"Restored {r.files} files, {r.dirs} folders and {r.symlinks} symbolic links "
            f"({r.bytes} bytes) from {self.where} into {r.target}; every file matched the manifest."
        ]
        if r.selection is not None:
            text.append(f"Only {r.selection.describe()} was restored ({r.skipped} other members left out).")
        if r.outside_count:
            shown = ", ".join(f"{name} → {link}" for name, link in r.outside_links[:3])
            more = " …" if r.outside_count > 3 else ""
            text.append(
                f"{r.outside_count} symbolic link(s) lead outside the restored folder ({shown}{more}); "
                "they were recreated as links and not followed."
            )
        return " ".join(text + self.databases)

    def details(self) -> dict:
        """What the Restore row keeps for its page."""
        r = self.result
        return {
            "target": str(r.target),
            "files": r.files,
            "dirs": r.dirs,
            "symlinks": r.symlinks,
            "bytes": r.bytes,
            "skipped": r.skipped,
            "members_checked": r.members_checked,
            "selection": list(r.selection.paths) if r.selection is not None else [],
            "outside_count": r.outside_count,
            "outside_links": [list(pair) for pair in r.outside_links],
            "seconds": round(r.seconds, 1),
        }


# --- databases (the command line only) ----------------------------------------------
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


def _refuse_panel_database(database_url: str, allow: bool) -> None:
    """The source kinds' own check (hosts compared by address, sockets, file identity)."""
    import environ

    from jobs.sources.dbtools import is_panel_database

    if allow:
        return
    try:
        config = environ.Env.db_url_config(database_url)
    except Exception:  # noqa: BLE001 - a bad URL is reported by the kind's restore_into
        return
    if is_panel_database(config):
        raise VerificationError(
            "That database is the panel's own live database: refusing to restore over it "
            "(the command's --allow-panel-database overrides this)."
        )


def selection_of(paths: Iterable[str] | None) -> Selection | None:
    try:
        return Selection.of(paths)
    except SelectionError as exc:
        raise VerificationError(str(exc)) from None


# --- restore -------------------------------------------------------------------------
def restore_run(
    run: Run,
    target,
    *,
    destination=None,
    password: str | None = None,
    identities=None,
    only: Iterable[str] | None = None,
    database_url: str | None = None,
    source_slug: str | None = None,
    allow_panel_database: bool = False,
    web: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> RestoreReport:
    """Restore *run* into *target* (an empty or new folder) from its local copy or
    *destination*; *only* (archive paths: a source's folder, or a path inside one)
    restores just those. With *database_url* also load the backup's database dump into
    that database (never the panel's own unless *allow_panel_database*). *web* restricts
    the target to :func:`restore_roots`. Raises :class:`VerificationError` or
    ``RestoreError`` (nothing restored; the message names the member)."""
    target = validate_restore_target(str(target)) if web else Path(os.path.abspath(target))
    selection = selection_of(only)
    location = archive_location(run, destination)
    try:
        manifest = load_manifest(location)
    except Unreadable as exc:
        raise VerificationError(str(exc)[0].upper() + str(exc)[1:] + ".") from None
    ids = identities_for(run, manifest, location, password, identities, checksum_only=False)
    plan = None
    if database_url:
        plan = _database_plan(manifest, source_slug)
        if selection is not None and not selection.covers(plan[2]):
            raise VerificationError(f"The database dump {plan[2]} is not among the paths chosen with --only.")
        _refuse_panel_database(database_url, allow_panel_database)
    # The run page shows every restore of the run (from here or the command) as an activity.
    activity = Activity.objects.create(
        run=run,
        kind=Activity.Kind.RESTORE,
        where=location.label,
        bytes_total=run.archive_size or 0,
        host=settings.BACKUPSITE_HOST,
    )
    tracked = RowProgress(lambda done, total: _activity_progress(activity.pk, done, total))

    def both(done: int, total: int) -> None:
        tracked(done, total)
        if progress is not None:
            progress(done, total)

    try:
        try:
            with location.open_archive() as stream:
                result = safe_extract(stream, target, ids, manifest, only=selection, progress=both)
        except (FileNotFoundError, NotFoundError):
            raise VerificationError(f"The archive is missing from {location.label}.") from None
        except DestinationError as exc:
            raise VerificationError(f"Reading the archive from {location.label} failed: {exc}") from None
        except SourceReadError as exc:
            raise VerificationError(
                f"Reading the archive from {location.label} failed: {exc.__cause__ or exc}"
            ) from None
        except DecryptionError as exc:
            raise VerificationError(str(exc)) from None
    except Exception as exc:
        _activity_done(activity.pk, False, f"Restore failed: {exc}")
        raise
    _activity_done(activity.pk, True, f"Restored into {result.target}.", result.archive_bytes)
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


# --- what the page offers -----------------------------------------------------------
@dataclass
class Outline:
    """The sources and folders of a backup, from its manifest, for a partial restore."""

    sources: list[dict]  # {"slug", "name", "kind"}
    folders: list[str]
    table: dict[str, dict]

    def unmatched(self, selection: Selection | None) -> list[str]:
        return selection.unmatched(self.table) if selection is not None else []


def outline(manifest: dict) -> Outline:
    table = manifest_table(manifest)
    sources = [
        {"slug": str(s["slug"]), "name": str(s.get("name") or s["slug"]), "kind": str(s.get("kind", ""))}
        for s in manifest.get("sources") or []
        if s.get("slug")
    ]
    folders = sorted(
        key for key, entry in table.items() if entry.get("type") == "dir" and key.count("/") < OUTLINE_DEPTH
    )[:OUTLINE_LIMIT]
    return Outline(sources, folders, table)


def outline_for(run: Run, destination=None) -> Outline | None:
    """The outline of *run*'s backup read from *destination* (or the local copy), or
    None when its manifest cannot be read there."""
    try:
        return outline(load_manifest(archive_location(run, destination)))
    except (VerificationError, Unreadable, DestinationError, OSError):
        return None


@dataclass(frozen=True)
class NewerBackups:
    """Later backups of the same job: restoring this one brings back an older state."""

    count: int
    newest: Run | None

    @property
    def message(self) -> str:
        if not self.count:
            return ""
        when = timezone.localtime(self.newest.created_at).strftime("%Y-%m-%d %H:%M")
        return ngettext(
            "%(count)d newer backup of this job exists; it is from %(when)s (run #%(pk)d). "
            "Restoring this one brings back the files as they were before it.",
            "%(count)d newer backups of this job exist; the newest is from %(when)s (run #%(pk)d). "
            "Restoring this one brings back the files as they were before them.",
            self.count,
        ) % {"count": self.count, "when": when, "pk": self.newest.pk}


GOOD_STATES = (Run.State.SUCCEEDED, Run.State.PARTIAL)


def newer_backups(run: Run) -> NewerBackups:
    """The finished backups of *run*'s job made after it (two queries, whatever the
    history's length: a count and the newest row)."""
    if run.job_id is None:
        return NewerBackups(0, None)
    later = Run.objects.filter(job_id=run.job_id, state__in=GOOD_STATES, archive_size__isnull=False).filter(
        created_at__gt=run.created_at
    )
    count = later.count()
    newest = later.order_by("-created_at", "-pk").first() if count else None
    return NewerBackups(count, newest)


# --- on a worker ----------------------------------------------------------------------
def request_restore(
    run: Run,
    target: str,
    *,
    destination=None,
    password: str | None = None,
    only: Iterable[str] | None = None,
    user=None,
) -> Restore:
    """Queue a restore for a worker (the Restore page). Everything a user can get wrong
    is checked here, at once; the worker checks the target and every member again."""
    # Sent like a verification ticket (request_verification); with several worker hosts
    # a restore from the local copy goes to the run's host, as a verification does.
    from jobs import enqueue

    path = validate_restore_target(str(target))
    check_target_free(path)
    if Restore.objects.filter(target=str(path), state__in=Restore.ACTIVE_STATES).exists():
        raise VerificationError(f"A restore into {path} is already under way.")
    selection = selection_of(only)
    location = archive_location(run, destination)
    try:
        manifest = load_manifest(location)
    except Unreadable as exc:
        raise VerificationError(f"The manifest cannot be read: {exc}") from None
    if selection is not None:
        unmatched = selection.unmatched(manifest_table(manifest))
        if unmatched:
            raise VerificationError(f"{unmatched[0]}: not in this backup.")
    identities = identities_for(run, manifest, location, password, None, checksum_only=False)
    archive = manifest.get("archive") or {}
    with transaction.atomic():
        restore = Restore.objects.create(
            run=run,
            destination=location.upload.destination if location.upload is not None else None,
            location=location.label,
            target=str(path),
            only=list(selection.paths) if selection is not None else [],
            bytes_total=int(archive.get("size") or run.archive_size or 0),
            requested_by=requester(user),
            message=_("Waiting for a worker to pick the restore up."),
        )
        RestoreTicket.objects.create(restore=restore, secrets={"identities": list(identities or [])})
        enqueue.restore(restore.pk, run.host if location.is_local else None)
    return restore


class RestoreProgress:
    """Writes the stored bytes read to the Restore row, at most once per *interval*."""

    def __init__(self, restore_id: int, interval: float = 1.0) -> None:
        self.restore_id = restore_id
        self.interval = interval
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        values = {"bytes_done": done, "heartbeat_at": timezone.now()}
        if total:
            values["bytes_total"] = total
        Restore.objects.filter(pk=self.restore_id, state=Restore.State.RUNNING).update(**values)


class RestoreHeartbeat(Heartbeat):
    """Keeps ``heartbeat_at`` fresh through stretches without progress (a large member
    read past), so the reaper only fails restores whose worker is really gone. A restore
    cannot be cancelled: there is no flag to look at."""

    def __init__(self, restore_id: int, interval: float | None = None) -> None:
        super().__init__(f"heartbeat-restore-{restore_id}", interval)
        self.restore_id = restore_id

    def beat(self) -> bool:
        return bool(
            Restore.objects.filter(pk=self.restore_id, state=Restore.State.RUNNING).update(heartbeat_at=timezone.now())
        )

    def cancel_asked(self) -> bool:
        return False


def _finish(restore_id: int, state: str, message: str, details: dict | None = None) -> None:
    values = {"state": state, "finished_at": timezone.now(), "message": message[:MESSAGE_LIMIT]}
    if details is not None:
        values["details"] = details
    Restore.objects.filter(pk=restore_id, state=Restore.State.RUNNING).update(**values)


def run_restore_ticket(restore_id: int) -> Restore | None:
    """The worker's side: take the ticket (deleting it, and the key, first), restore,
    record the outcome on the Restore row. Returns the row, or None when there was
    nothing to do (another delivery took it, or the reaper ended it)."""
    now = timezone.now()
    with transaction.atomic():
        ticket = RestoreTicket.objects.select_for_update().filter(restore_id=restore_id).first()
        if ticket is None:
            return None
        identities = list(ticket.secrets.get("identities") or []) or None
        ticket.delete()
        claimed = Restore.objects.filter(pk=restore_id, state=Restore.State.QUEUED).update(
            state=Restore.State.RUNNING, started_at=now, heartbeat_at=now, message=_("Restoring…")
        )
    if not claimed:
        return None
    restore = Restore.objects.select_related("run", "destination").get(pk=restore_id)
    beat = RestoreHeartbeat(restore_id)
    beat.start()
    try:
        report = restore_run(
            restore.run,
            restore.target,
            destination=restore.destination,
            identities=identities,
            only=restore.only or None,
            web=True,
            progress=RestoreProgress(restore_id),
        )
    except (VerificationError, RestoreError) as exc:
        log.info("Restore %s of run %s refused or failed: %s", restore_id, restore.run_id, exc)
        _finish(restore_id, Restore.State.FAILED, _("Nothing was restored: %(reason)s") % {"reason": exc})
    except Exception:
        log.exception("Restore %s of run %s failed", restore_id, restore.run_id)
        message = _("Nothing was restored: an unexpected error (see the worker's log).")
        _finish(restore_id, Restore.State.FAILED, message)
    else:
        Restore.objects.filter(pk=restore_id).update(bytes_done=report.result.archive_bytes)
        _finish(restore_id, Restore.State.SUCCEEDED, report.message, report.details())
    finally:
        beat.stop()
    restore.refresh_from_db()
    return restore


# --- housekeeping (the reaper) ------------------------------------------------------------
def _remove_work_folders(target: str) -> list[str]:
    """The hidden ``.backupsite-restore-…`` folders a killed restore left in *target*
    (only inside the restore roots, only folders of that name)."""
    try:
        path = validate_restore_target(target)
    except VerificationError:
        return []
    removed = []
    try:
        entries = list(os.scandir(path))
    except OSError:
        return []
    for entry in entries:
        if entry.name.startswith(WORK_PREFIX) and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.name)
    return removed


def reap_restores(now: datetime | None = None) -> int:
    """Fail restores whose worker stopped (no heartbeat for BACKUPSITE_STALE_RUN_SECONDS),
    removing what they left, and restores nobody picked up within a day (with their
    key). Returns how many it ended."""
    now = now or timezone.now()
    ended = 0
    stale = now - timezone.timedelta(seconds=settings.BACKUPSITE_STALE_RUN_SECONDS)
    for restore in Restore.objects.filter(state=Restore.State.RUNNING, heartbeat_at__lt=stale):
        removed = _remove_work_folders(restore.target)
        message = _(
            "The worker doing this restore stopped (it was killed, crashed or its machine restarted); "
            "nothing was restored."
        )
        if removed:
            message += " " + _("Its unfinished files were removed.")
        ended += Restore.objects.filter(pk=restore.pk, state=Restore.State.RUNNING, heartbeat_at__lt=stale).update(
            state=Restore.State.FAILED, finished_at=now, message=message
        )
    old = now - TICKET_MAX_AGE
    RestoreTicket.objects.filter(created_at__lt=old).delete()
    ended += Restore.objects.filter(state=Restore.State.QUEUED, created_at__lt=old).update(
        state=Restore.State.FAILED,
        finished_at=now,
        message=_("No worker picked this restore up within a day; its key was removed. Nothing was restored."),
    )
    return ended


__all__ = [
    "NewerBackups",
    "RestoreReport",
    "newer_backups",
    "outline",
    "outline_for",
    "reap_restores",
    "request_restore",
    "restore_roots",
    "restore_run",
    "run_restore_ticket",
    "validate_restore_target",
]
