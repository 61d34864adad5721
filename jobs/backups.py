"""One run's backup: keep it forever, or delete it everywhere it is.

*Keep forever* is a flag on the run (``Run.keep_forever``) that retention honours
(``jobs.retention.kept_forever``): the archive stays here and at every destination
whatever the job's rules say.

*Delete this backup* removes the archive and its manifest from this server and from
every destination it was uploaded to whose kind can delete (write-only kinds, such as
e-mail, keep their copy: the page says so before). A one-off run's key file goes too
(it belongs to that backup alone); a job's key files (``backupsite-key.age``,
``backupsite-key-<key id>.age``) stay, its other backups need them. The run stays in
the history, with what was deleted in its log.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.utils import timezone
from django.utils.translation import gettext as _

from destinations.backends import DestinationError, NotFoundError
from destinations.backends.base import DELETE, job_folder
from jobs.engine.agekeys import KEY_FILE_NAME
from jobs.models import Run, Upload
from jobs.naming import MANIFEST_SUFFIX
from jobs.runstate import by_whom


class BackupProtected(Exception):
    """The backup cannot be deleted now (kept forever, or its run is still active)."""


@dataclass
class Place:
    """Where a copy of the backup is, and whether "delete" can remove it there."""

    label: str
    can_delete: bool
    why_not: str = ""
    upload: Upload | None = None


def places(run: Run) -> list[Place]:
    found = []
    if run.can_download:
        found.append(Place(_("This server (local copy)"), True))
    for upload in run.uploads.filter(state=Upload.State.SUCCEEDED).select_related("destination"):
        destination = upload.destination
        if destination is None:
            found.append(Place(upload.destination_name, False, _("the destination was deleted"), upload))
        elif not destination.can(DELETE):
            why = _("%(kind)s destinations cannot delete files") % {"kind": destination.kind_label}
            found.append(Place(destination.name, False, why, upload))
        else:
            found.append(Place(destination.name, True, upload=upload))
    return found


def set_keep_forever(run: Run, keep: bool, *, user=None) -> None:
    line = f"Marked “keep forever”{by_whom(user)}." if keep else f"“Keep forever” removed{by_whom(user)}."
    run.keep_forever = keep
    Run.objects.filter(pk=run.pk).update(keep_forever=keep, log=Run.log_expression(line))


def _names(run: Run, remote_name: str) -> list[str]:
    names = [remote_name, remote_name + MANIFEST_SUFFIX]
    if run.is_oneoff:  # its keys are its own; a job's key files stay for its other backups
        names.extend(dict.fromkeys([KEY_FILE_NAME, run.key_file_name]))
    return names


def delete_backup(run: Run, *, user=None) -> list[str]:
    """Delete the backup of *run* everywhere it can be deleted; returns what happened,
    one readable line per place (also written to the run log). Never raises for a
    destination problem (that copy stays and the line says why)."""
    if run.keep_forever:
        raise BackupProtected(_("This backup is marked “keep forever”; remove the mark first."))
    if run.is_active:
        raise BackupProtected(_("This run is still active; cancel it or let it finish first."))
    lines: list[str] = []
    path = run.local_file
    if path is not None and path.exists():
        for name in _names(run, path.name):
            (path.parent / name).unlink(missing_ok=True)
        lines.append(_("This server: deleted the local copy."))
    for place in places(run):
        upload = place.upload
        if upload is None:
            continue
        if not place.can_delete:
            lines.append(_("%(place)s: kept (%(why)s).") % {"place": place.label, "why": place.why_not})
            continue
        try:
            with upload.destination.backend().session() as session:
                folder = job_folder(run.job_slug)
                for name in _names(run, upload.remote_name or run.archive_name):
                    try:
                        session.delete(folder, name)
                    except NotFoundError:
                        pass
        except DestinationError as exc:
            text = _("%(place)s: could not delete (%(error)s); the copy is still there.")
            lines.append(text % {"place": place.label, "error": exc})
            continue
        Upload.objects.filter(pk=upload.pk).update(state=Upload.State.DELETED, error="")
        lines.append(_("%(place)s: deleted.") % {"place": place.label})
    now = timezone.now()
    run.local_path, run.deleted_at = "", now
    Run.objects.filter(pk=run.pk).update(
        local_path="",
        deleted_at=now,
        log=Run.log_expression(f"Backup deleted{by_whom(user)}:", *(f"  {line}" for line in lines)),
    )
    return lines
