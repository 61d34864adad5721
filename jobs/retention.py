"""Retention: delete this job's old backups, and nothing else.

Principle 3 of the architecture, made concrete. In one folder (a destination's
``backupsite/<job slug>/`` or the local copies folder) a file is a *candidate* for
deletion only if

* its name matches the regular expression derived from **this** job's file-name template
  and slug (anchored at both ends), followed by ``.tar.zst`` or ``.tar.zst.age``, and
* its manifest ``<archive>.manifest.json`` is in the same listing (a manifest is written
  last, so an archive without one is unfinished or not ours).

Everything else (other jobs' archives, a user's own files, hidden temporary files,
archives without a manifest, the key files ``backupsite-key.age`` and
``backupsite-key-<key id>.age``) is never touched. Among the
candidates:

* the newest one (by modification time, ties broken by name) is always kept, and so is
  every name in ``protect`` (the archive the current run just wrote);
* ``keep_last=N`` deletes every candidate beyond the newest N (N below 1 counts as 1);
* ``max_age_days=D`` deletes every candidate older than D days (strictly older than
  ``now - D days``);
* with both, a candidate is deleted when *either* rule says so ("keep at most N, and
  nothing older than D days"), but never the newest; with neither, nothing is deleted;
* a candidate's time is the backend's modification time; if the backend reports none,
  the ``{date}``/``{time}`` in the name (in the time zone names are rendered in; a date
  without a time counts as the *end* of that day); if neither is available the file
  cannot be dated and is kept (it also does not use up one of the N places).

A manifest whose archive is gone (the deleter crashed between the two deletes, or a user
removed the archive) is an *orphan*. It is deleted only when retention is configured, its
archive name matches this job's pattern, it is not protected, and it is older than the
newest candidate (so a slow listing can never make us delete the manifest of the backup
that is being written right now).

:func:`plan` is pure (no I/O, no Django); :func:`apply` lists a folder through the
destination contract (:class:`~destinations.backends.base.Backend`), plans, and deletes
each archive *before* its manifest, collecting errors instead of raising.
:func:`apply_local` does it for the local copies (``BACKUPSITE_ARCHIVE_DIR/<slug>``),
:func:`apply_to_destination` for one destination by id, and :func:`after_run` for both,
as the run's "retention" phase calls it, returning lines for the run log.
"""

from __future__ import annotations

import logging
import math
import re
import string
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from pathlib import Path

from destinations.backends.base import DestinationError, RemoteFile, check_slug, job_folder
from jobs.engine.agekeys import AGE_SUFFIX, is_key_file_name
from jobs.naming import ARCHIVE_SUFFIX, MANIFEST_SUFFIX, validate_template

log = logging.getLogger(__name__)
ENCRYPTED_SUFFIX = ARCHIVE_SUFFIX + AGE_SUFFIX  # ".tar.zst.age"
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_FIELD_PATTERNS = {
    "date": r"\d{4}-\d{2}-\d{2}",
    "time": r"\d{6}",
    "weekday": "(?:" + "|".join(WEEKDAYS) + ")",
    "run": r"\d+",
}


# --- names ----------------------------------------------------------------------------
def archive_pattern(template: str, job_slug: str) -> re.Pattern[str]:
    """The regex of this job's archive names, suffix included, anchored at both ends.

    ``{job}`` is the escaped slug, ``{date}``/``{time}``/``{weekday}``/``{run}`` are
    named groups (a placeholder used twice must repeat the same text), literal text is
    escaped. Raises ValueError for an invalid template or an empty slug.
    """
    validate_template(template)
    if not job_slug:
        raise ValueError("The job has no slug.")
    parts: list[str] = []
    seen: set[str] = set()
    for literal, name, _spec, _conversion in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if name is None:
            continue
        if name == "job":
            parts.append(re.escape(job_slug))
        elif name in seen:
            parts.append(f"(?P={name})")
        else:
            parts.append(f"(?P<{name}>{_FIELD_PATTERNS[name]})")
            seen.add(name)
    suffixes = "|".join(re.escape(s) for s in (ENCRYPTED_SUFFIX, ARCHIVE_SUFFIX))
    # Anchored at both ends, whether the caller uses fullmatch, match or search.
    return re.compile(r"\A" + "".join(parts) + f"(?:{suffixes})" + r"\Z")


def manifest_name(archive: str) -> str:
    return archive + MANIFEST_SUFFIX


def _time_from_name(match: re.Match[str], tz: tzinfo) -> datetime | None:
    """When the name says the archive was made, or None. A date without a time is the
    end of that day: the youngest the archive can be (never delete too early)."""
    groups = match.groupdict()
    if not groups.get("date"):
        return None
    try:
        day = date.fromisoformat(groups["date"])
        if groups.get("time"):
            clock = groups["time"]
            return datetime.combine(day, time(int(clock[:2]), int(clock[2:4]), int(clock[4:])), tzinfo=tz)
        return datetime.combine(day + timedelta(days=1), time(), tzinfo=tz)
    except (ValueError, OverflowError):
        return None


def _time_from_backend(modified: float | None) -> datetime | None:
    if modified is None or not math.isfinite(modified):
        return None
    try:
        return datetime.fromtimestamp(modified, UTC)
    except (ValueError, OverflowError, OSError):
        return None


# --- planning ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """What retention would do in one folder. Every listed name has a reason."""

    #: This job's archives to delete, oldest first. Each goes with its manifest.
    delete: list[str]
    #: This job's archives that stay, newest first (undatable ones last).
    keep: list[str]
    #: Manifests of this job whose archive is gone; deleted after the archives.
    orphans: list[str] = field(default_factory=list)
    #: Everything else in the folder: never touched.
    ignored: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def files_to_delete(self) -> list[str]:
        """In the order :func:`apply` deletes them: archive, its manifest, …, orphans."""
        names = []
        for archive in self.delete:
            names += [archive, manifest_name(archive)]
        return names + list(self.orphans)


def _days(n: int) -> str:
    return f"{n} day" if n == 1 else f"{n} days"


def plan(
    files: Iterable[RemoteFile],
    *,
    template: str,
    job_slug: str,
    keep_last: int | None,
    max_age_days: int | None,
    now: datetime,
    protect: Collection[str] = (),
    name_tz: tzinfo | None = None,
) -> Plan:
    """Decide which of this job's backups in one folder listing to delete (no I/O).

    ``now`` must be timezone-aware. ``name_tz`` is the time zone the ``{date}``/``{time}``
    in names were rendered in (default: ``now``'s). ``protect`` holds archive (or manifest)
    names that must stay whatever the rules say. Raises ValueError for an invalid template,
    an empty slug, a naive ``now`` or a negative setting.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware.")
    if keep_last is not None and keep_last < 0:
        raise ValueError("keep_last must not be negative.")
    if max_age_days is not None and max_age_days < 0:
        raise ValueError("max_age_days must not be negative.")
    pattern = archive_pattern(template, job_slug)
    tz = name_tz or now.tzinfo
    protected = set(protect)
    listing: dict[str, RemoteFile] = {}
    for remote in files:
        listing.setdefault(remote.name, remote)

    reasons: dict[str, str] = {}
    ignored: list[str] = []
    candidates: list[tuple[str, datetime | None]] = []
    orphan_candidates: list[tuple[str, datetime | None]] = []
    for name, remote in listing.items():
        why = ""
        if name.startswith("."):
            why = "hidden or temporary file"
        elif is_key_file_name(name):
            why = "an encryption key of the job's backups"
        elif name.endswith(MANIFEST_SUFFIX):
            archive = name[: -len(MANIFEST_SUFFIX)]
            match = pattern.fullmatch(archive)
            if match is None:
                why = "not a manifest of this job's backups"
            elif archive in listing:
                continue  # decided together with its archive
            elif {archive.removesuffix(AGE_SUFFIX), archive.removesuffix(AGE_SUFFIX) + AGE_SUFFIX} & listing.keys():
                why = "its archive is here with the other suffix (encrypted or not)"
            else:
                when = _time_from_backend(remote.modified) or _time_from_name(match, tz)
                orphan_candidates.append((name, when))
                continue
        else:
            match = pattern.fullmatch(name)
            if match is None:
                why = "does not match this job's naming pattern"
            elif manifest_name(name) not in listing:
                why = "no manifest: unfinished, or not written by backupsite"
            else:
                when = _time_from_backend(remote.modified) or _time_from_name(match, tz)
                candidates.append((name, when))
                continue
        ignored.append(name)
        reasons[name] = f"never touched: {why}"

    configured = keep_last is not None or max_age_days is not None
    limit = max(keep_last, 1) if keep_last is not None else None
    cutoff = now - timedelta(days=max_age_days) if max_age_days is not None else None
    dated = sorted(((w, n) for n, w in candidates if w is not None), reverse=True)
    undated = sorted(n for n, w in candidates if w is None)

    delete: list[str] = []
    keep: list[str] = []
    for rank, (when, name) in enumerate(dated):
        rules = []
        if limit is not None and rank >= limit:
            rules.append(f"beyond the newest {limit}")
        if cutoff is not None and when < cutoff:
            rules.append(f"older than {_days(max_age_days)}")  # type: ignore[arg-type]
        if name in protected or manifest_name(name) in protected:
            keep.append(name)
            reasons[name] = "kept: protected (written by this run)"
        elif rank == 0:
            keep.append(name)
            reasons[name] = "kept: the newest backup is always kept"
        elif rules:
            delete.append(name)
            reasons[name] = "deleted: " + " and ".join(rules)
        else:
            keep.append(name)
            if not configured:
                reasons[name] = "kept: no retention configured"
            else:
                within = []
                if limit is not None:
                    within.append(f"among the newest {limit}")
                if cutoff is not None:
                    within.append(f"not older than {_days(max_age_days)}")  # type: ignore[arg-type]
                reasons[name] = "kept: " + " and ".join(within)
    for name in undated:
        keep.append(name)
        reasons[name] = "kept: cannot be dated (no modification time, no date in the name)"
    delete.reverse()  # oldest first

    orphans: list[str] = []
    newest = dated[0][0] if dated else None
    for name, when in sorted(orphan_candidates):
        archive = name[: -len(MANIFEST_SUFFIX)]
        if not configured:
            why = "no retention configured"
        elif name in protected or archive in protected:
            why = "protected (written by this run)"
        elif when is None:
            why = "cannot be dated"
        elif newest is None or when >= newest:
            why = "no newer complete backup here"
        else:
            orphans.append(name)
            reasons[name] = "deleted: manifest whose archive is gone"
            continue
        ignored.append(name)
        reasons[name] = f"kept: manifest whose archive is gone, but {why}"

    return Plan(delete=delete, keep=keep, orphans=orphans, ignored=sorted(ignored), reasons=reasons)


# --- applying ---------------------------------------------------------------------------
@dataclass
class Result:
    """What retention did in one folder. ``errors`` are readable, secret-free messages."""

    deleted: list[str] = field(default_factory=list)  # file names, archives and manifests
    kept: list[str] = field(default_factory=list)  # this job's archives that stay
    errors: list[str] = field(default_factory=list)
    plan: Plan | None = None
    skipped: str = ""  # why retention did not run there (a kind that cannot delete)

    @property
    def ok(self) -> bool:
        return not self.errors

    def log_lines(self, where: str) -> list[str]:
        """Lines for the run log, e.g. ``log_lines("Local disk")``."""
        if self.skipped:
            return [f"Retention at {where}: {self.skipped}"]
        if self.plan is None and not self.errors:
            return []
        archives = [n for n in self.deleted if not n.endswith(MANIFEST_SUFFIX)]
        lines = [f"Retention at {where}: deleted {len(archives)} old backup(s), kept {len(self.kept)}."]
        lines += [f"Retention at {where}: deleted {name}" for name in self.deleted]
        lines += [f"Retention at {where}: {error}" for error in self.errors]
        return lines


def _job_config(job_snapshot: dict) -> dict:
    """Accept a run's whole ``config`` (``services.snapshot``) or its ``"job"`` part."""
    inner = job_snapshot.get("job")
    return inner if isinstance(inner, dict) else job_snapshot


def _describe(exc: Exception, name: str) -> str:
    if isinstance(exc, DestinationError):
        return str(exc)
    reason = getattr(exc, "strerror", None) or type(exc).__name__
    return f"{reason} while deleting {name}."


def apply(
    session,
    job_snapshot: dict,
    *,
    folder: str | None = None,
    now: datetime | None = None,
    protect: Collection[str] = (),
    name_tz: tzinfo | None = None,
) -> Result:
    """List this job's folder through *session*, plan, delete. Never raises for
    destination problems: a failed list or delete is recorded in ``Result.errors`` and
    the other deletes go on. Each archive is deleted first and its manifest second, so
    an interruption leaves an orphan manifest (cleaned up later), never an archive that
    looks unfinished. An archive whose delete failed keeps its manifest.

    *session* is an open destination session (``list(folder)`` / ``delete(folder,
    name)`` of the destination contract); *folder* defaults to the job's folder at a
    destination, ``backupsite/<job slug>``; *job_snapshot* is ``run.config`` (or its
    ``"job"`` part).
    """
    from django.utils import timezone

    job = _job_config(job_snapshot)
    result = Result()
    if job.get("keep_last") is None and job.get("max_age_days") is None:
        return result  # nothing to do: do not even list the folder
    slug = job.get("slug", "")
    now = now or timezone.now()
    try:
        folder = job_folder(slug) if folder is None else folder
        files = session.list(folder)
    except (DestinationError, OSError) as exc:
        result.errors.append(f"Could not list the backups: {_describe(exc, slug)}")
        return result
    try:
        result.plan = plan(
            files,
            template=job.get("archive_name_template", ""),
            job_slug=slug,
            keep_last=job.get("keep_last"),
            max_age_days=job.get("max_age_days"),
            now=now,
            protect=protect,
            name_tz=name_tz or timezone.get_current_timezone(),
        )
    except ValueError as exc:
        result.errors.append(f"Retention skipped: {exc}")
        return result
    result.kept = list(result.plan.keep)

    def delete(name: str) -> bool:
        try:
            session.delete(folder, name)
        except (DestinationError, OSError) as exc:
            result.errors.append(f"Could not delete {name}: {_describe(exc, name)}")
            return False
        result.deleted.append(name)
        return True

    for archive in result.plan.delete:
        if delete(archive):
            delete(manifest_name(archive))
        else:
            result.kept.append(archive)
    for orphan in result.plan.orphans:
        delete(orphan)
    return result


def kept_forever(job_snapshot: dict) -> set[str]:
    """Archive names of this job's runs marked "keep forever" (``Run.keep_forever``):
    :func:`after_run` and :func:`apply_to_destination` add them to ``protect``, so
    retention never removes them (also those of a deleted job whose slug a new job took:
    they are found by the folder their snapshot names). Callers of :func:`apply` and
    :func:`apply_local` outside these two pass them in ``protect`` themselves."""
    from django.db.models import Q

    from jobs.models import Run

    job = _job_config(job_snapshot)
    slug, job_id = job.get("slug") or "", job.get("id")
    if not slug and job_id is None:
        return set()
    match = Q(config__job__slug=slug) if slug else Q()
    if job_id is not None:
        match |= Q(job_id=job_id)
    names = Run.objects.filter(match, keep_forever=True).exclude(archive_name="").values_list("archive_name", flat=True)
    return set(names)


# --- the local copies folder ------------------------------------------------------------
def apply_local(
    job_snapshot: dict, *, now: datetime | None = None, protect: Collection[str] = (), root: Path | None = None
) -> Result:
    """Retention for this server's local copies (``BACKUPSITE_ARCHIVE_DIR/<job slug>/``),
    through the same local backend the "server hard drive" destination uses."""
    from destinations.backends.local import LocalBackend, staging_copies

    job = _job_config(job_snapshot)
    if job.get("keep_last") is None and job.get("max_age_days") is None:
        return Result()
    backend = LocalBackend.for_directory(root, file_mode=0o600) if root is not None else staging_copies()
    slug = job.get("slug", "")
    try:
        folder = check_slug(slug)  # the local copies: <archive dir>/<job slug>/
        with backend.session() as session:
            return apply(session, job_snapshot, folder=folder, now=now, protect=protect)
    except DestinationError as exc:
        return Result(errors=[str(exc)])


def apply_to_destination(
    destination_id: int, job_snapshot: dict, *, now: datetime | None = None, protect: Collection[str] = ()
) -> Result:
    """Retention at one destination, by primary key; a deleted destination, invalid
    settings or a kind that cannot list and delete (e-mail) are reported, never raised."""
    from destinations.backends.base import DELETE, LIST
    from destinations.models import Destination

    job = _job_config(job_snapshot)
    if job.get("keep_last") is None and job.get("max_age_days") is None:
        return Result()  # nothing to do: do not even connect
    try:
        destination = Destination.objects.get(pk=destination_id)
        backend = destination.backend()
        if not (backend.can(LIST) and backend.can(DELETE)):
            return Result(skipped=f"{backend.label} destinations cannot list or delete old backups; skipped.")
        protect = set(protect) | kept_forever(job_snapshot)
        with backend.session() as session:
            return apply(session, job_snapshot, now=now, protect=protect)
    except Destination.DoesNotExist:
        return Result(errors=["The destination was deleted."])
    except DestinationError as exc:
        return Result(errors=[str(exc)])


def after_run(
    job_snapshot: dict,
    *,
    protect: Collection[str],
    destinations: Iterable[dict] = (),
    now: datetime | None = None,
) -> list[str]:
    """Retention for a run that wrote an archive: this server's local copies, then every
    destination in *destinations* (``{"id", "name"}`` items of ``run.config``: pass only
    those the archive arrived at). Returns lines for the run log. Never raises: retention
    problems must not turn a backup that was made into a failed run."""
    from django.utils import timezone

    now = now or timezone.now()
    protect = set(protect) | kept_forever(job_snapshot)
    places: list[tuple[str, Callable[[], Result]]] = [
        ("this server", lambda: apply_local(job_snapshot, now=now, protect=protect))
    ]
    for dest in destinations:
        places.append(
            (
                dest.get("name") or f"destination {dest['id']}",
                lambda dest=dest: apply_to_destination(dest["id"], job_snapshot, now=now, protect=protect),
            )
        )
    lines: list[str] = []
    for where, run_retention in places:
        try:
            lines += run_retention().log_lines(where)
        except Exception:  # a bug here must not fail a backup that was made (logged with traceback)
            log.exception("Retention at %s failed", where)
            lines.append(f"Retention at {where}: internal error; see the worker log.")
    return lines
