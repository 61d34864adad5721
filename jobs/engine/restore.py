"""Extract an archive safely (Django-free).

:func:`safe_extract` restores a ``.tar.zst`` (or ``.tar.zst.age``) stream into an empty
or new folder, and only if every member passes the checks below. The stream is read
once, so members are checked as they arrive, and everything is written into a private
folder *inside* the target (same filesystem): a refused or damaged archive leaves the
target as it was (empty, or not there), a killed restore leaves only a hidden
``.backupsite-restore-…`` folder, and the files appear in the target (by rename) only
after the whole archive was read and matched its manifest.

Refused (the whole restore, naming the member): absolute names, ``..`` components,
names that are empty or contain NUL; hard links (the engine never writes them), device
nodes, FIFOs and any other special type; sparse members; symlinks with an empty target;
any member below a symlink of the archive (a write "through" a link, wherever the link
points); a member whose path already exists (duplicates). Python's
``tarfile.data_filter`` runs on every file and folder on top of that and may refuse
more; its result gives the file modes (no setuid/setgid/sticky, no group/other write,
owner read/write). Owners are not restored.

Symbolic links are restored as links, whatever they point to: a real tree (an
installation folder) holds links to ``/etc/...`` or ``../shared``, and refusing them
would refuse the whole backup. They are created last, after every file and folder was
written, with ``symlink()`` at a path that must not exist yet and below folders this
restore made itself; nothing is ever written through one, followed or resolved (their
times are set with ``follow_symlinks=False``). :attr:`RestoreResult.outside_links` names
those that lead out of the target, for the report.

With a manifest, every member must match it (:class:`~jobs.engine.members.ManifestCheck`,
the rule verify applies too), nothing listed may be missing, and the stored bytes must
match the archive's size and sha256.

A *selection* (:class:`~jobs.engine.members.Selection`: sources, or paths inside them)
restores only the members it covers; the others are read past and never written or
checked against the manifest (the stored bytes still are: the archive is read to its
end).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from jobs.engine.members import (
    ManifestCheck,
    Selection,
    archive_problems,
    expected_archive,
    member_kind,
    stream_problem,
)
from jobs.engine.reader import ArchiveReader, ProgressCallback, StreamError

WORK_PREFIX = ".backupsite-restore-"


class RestoreError(Exception):
    """The restore was refused or failed; nothing was left in the target. The message
    names the member concerned and is meant for users."""


@dataclass
class RestoreResult:
    target: Path
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0  # file data written
    archive_bytes: int = 0  # stored bytes read
    archive_sha256: str = ""
    members_checked: int = 0  # files compared with the manifest
    skipped: int = 0  # members left out by the selection
    seconds: float = 0.0
    #: Symbolic links that lead out of the target (absolute, or up through ``..``):
    #: restored as links, never followed. The first few, for the report; see outside_count.
    outside_links: list[tuple[str, str]] = field(default_factory=list)
    outside_count: int = 0
    selection: Selection | None = None


def _check_name(name: str) -> str:
    """The member's path relative to the target, or raise RestoreError."""
    if not name or "\x00" in name:
        raise RestoreError(f"{name!r}: refused: empty name or NUL character")
    if name.startswith("/"):
        raise RestoreError(f"{name}: refused: absolute path")
    parts = name.split("/")
    if ".." in parts:
        raise RestoreError(f"{name}: refused: path contains '..'")
    clean = "/".join(p for p in parts if p not in ("", "."))
    return clean


def _lenient_name(name: str) -> str:
    """A skipped member's name as far as the through-a-link check needs it."""
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def _check_link_target(name: str, linkname: str) -> None:
    if not linkname or "\x00" in linkname:
        raise RestoreError(f"{name}: refused: symbolic link with an empty target")


def leads_outside(name: str, linkname: str) -> bool:
    """Whether the symlink *name* → *linkname* points out of the folder it is restored
    into, judged on the names alone (nothing is resolved on disk)."""
    if linkname.startswith("/"):
        return True
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), linkname))
    return resolved == ".." or resolved.startswith("../")


MAX_OUTSIDE_LISTED = 10


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _prepare_target(target: Path) -> bool:
    """Check that *target* is empty or absent; create it. Returns whether it was created."""
    if target.is_symlink():
        raise RestoreError(f"The target {target} is a symbolic link; give the real folder.")
    if target.exists():
        if not target.is_dir():
            raise RestoreError(f"The target {target} exists and is not a folder.")
        with os.scandir(target) as entries:
            if next(entries, None) is not None:
                raise RestoreError(f"The target {target} is not empty; restore into an empty or new folder.")
        return False
    if not target.parent.is_dir():
        raise RestoreError(f"The folder {target.parent} does not exist.")
    target.mkdir(mode=0o700)
    return True


def safe_extract(
    stream: BinaryIO,
    target: Path | str,
    identities: Iterable | None = None,
    manifest: dict | None = None,
    *,
    encrypted: bool | None = None,
    only: Selection | Iterable[str] | None = None,
    progress: ProgressCallback | None = None,
    decrypt_in: str = "process",
    progress_interval: float = 0.5,
) -> RestoreResult:
    """Restore the archive read from *stream* into *target* (empty or not existing).

    *identities*: age identities ("AGE-SECRET-KEY-…" or pyrage objects) for an
    encrypted archive; whether it is encrypted comes from the manifest, else from
    *encrypted*, else from the first bytes. With *manifest*, every member is checked
    against it. *only* (a :class:`Selection` or archive paths) restores just those
    paths and what is below them; each must name something in the manifest. Raises
    :class:`RestoreError` (nothing left behind), ``SelectionError`` (a bad path in
    *only*) or ``SourceReadError`` / ``DecryptionError``.
    """
    started = time.monotonic()
    target = Path(os.path.abspath(target))
    selection = only if isinstance(only, Selection) or only is None else Selection.of(only)
    check = ManifestCheck(manifest, selection) if manifest is not None else None
    exp_size = exp_sha = None
    if manifest is not None:
        exp_size, exp_sha, encrypted = expected_archive(manifest)
    if check is not None and selection is not None:
        unmatched = selection.unmatched(check.table)
        if unmatched:
            raise RestoreError(f"{unmatched[0]}: not in this backup (nothing was restored)")
    created = _prepare_target(target)
    work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=target))
    try:
        try:
            extraction = _Extraction(work, check, selection, exp_size, progress, progress_interval)
            result = extraction.run(stream, identities, encrypted, exp_sha, decrypt_in)
            _move_into(work, target)
        except OSError as exc:
            where = ""
            if exc.filename:
                name = str(exc.filename)
                where = f" ({os.path.relpath(name, work) if _inside(name, str(work)) else name})"
            raise RestoreError(f"Writing the restored files failed: {exc.strerror or exc}{where}") from exc
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                target.rmdir()
        raise
    result.target = target
    result.seconds = time.monotonic() - started
    return result


class _Extraction:
    """One restore into the private folder *work*: members are checked and written as
    they arrive, symlinks recorded and made at the end."""

    def __init__(self, work: Path, check, selection, exp_size, progress, interval) -> None:
        self.root = str(work)
        self.check: ManifestCheck | None = check
        self.selection: Selection | None = selection
        self.exp_size = exp_size
        self.progress = progress
        self.interval = interval
        self.result = RestoreResult(target=work, selection=selection)
        self.symlinks: dict[str, tuple[str, int]] = {}  # restored: name → (target, mtime), made at the end
        self.all_links: set[str] = set()  # every symlink of the archive, restored or skipped
        self.dirs: list[tuple[str, int]] = []
        self.seen: set[str] = set()
        self.known_dirs: set[str] = set()
        self.last_report = time.monotonic()
        self.reader: ArchiveReader | None = None

    def report(self) -> None:
        if self.progress is not None and time.monotonic() - self.last_report >= self.interval:
            self.last_report = time.monotonic()
            self.progress(self.reader.raw_size, self.exp_size or 0)

    def run(self, stream, identities, encrypted, exp_sha, decrypt_in) -> RestoreResult:
        result = self.result
        with ArchiveReader(stream, encrypted=encrypted, identities=identities, decrypt_in=decrypt_in) as reader:
            self.reader = reader
            try:
                for info in reader.members():
                    self.member(info)
                    self.report()
            except StreamError as exc:
                cause = reader.failure_cause()
                reader.raw.drain()
                truncated = self.exp_size is not None and reader.raw_size < self.exp_size
                raise RestoreError(
                    "The archive cannot be read to its end: " + stream_problem(exc, reader.last, truncated, cause)
                ) from None
            problems = reader.finish()
            if self.check is not None:
                problems += archive_problems(reader.raw_size, reader.raw_sha256, self.exp_size, exp_sha)
                missing = self.check.missing()
                if missing:
                    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                    problems.append(f"{missing[0]}: missing from the archive{more}")
            if problems:
                raise RestoreError(problems[0])
            result.archive_bytes, result.archive_sha256 = reader.raw_size, reader.raw_sha256
        self.make_symlinks()
        for path, mtime in reversed(self.dirs):
            with contextlib.suppress(OSError):
                os.utime(path, (mtime, mtime), follow_symlinks=False)
        if self.progress is not None:
            self.progress(result.archive_bytes, self.exp_size or result.archive_bytes)
        return result

    # --- one member -------------------------------------------------------------------
    def member(self, info: tarfile.TarInfo) -> None:
        if self.selection is not None and not self.selection.covers(_lenient_name(info.name)):
            # Read past it. Its name still counts for "below a symlink of the archive".
            if info.issym():
                self.all_links.add(_lenient_name(info.name))
            self.result.skipped += 1
            return
        name = _check_name(info.name)
        kind = member_kind(info)
        if kind == "hardlink":
            raise RestoreError(f"{info.name}: refused: hard link (to {info.linkname})")
        if kind == "device":
            raise RestoreError(f"{info.name}: refused: device node")
        if kind == "fifo":
            raise RestoreError(f"{info.name}: refused: FIFO (named pipe)")
        if kind not in ("file", "dir", "symlink"):
            raise RestoreError(f"{info.name}: refused: unsupported member type {info.type!r}")
        if kind == "file" and info.sparse is not None:
            raise RestoreError(f"{info.name}: refused: sparse member")
        if not name:
            if kind == "dir":  # "./": the target itself
                return
            raise RestoreError(f"{info.name}: refused: not a valid path")
        if kind == "symlink":
            _check_link_target(name, info.linkname)
        # Nothing below a symlink of this archive, whatever came first and wherever it points.
        parent = posixpath.dirname(name)
        while parent:
            if parent in self.all_links:
                raise RestoreError(f"{info.name}: refused: it would be written through the symbolic link {parent}")
            parent = posixpath.dirname(parent)
        if name in self.seen:
            raise RestoreError(f"{info.name}: refused: appears twice in the archive")
        self.seen.add(name)
        filtered = None
        if kind != "symlink":
            # The data filter refuses every absolute or escaping link target; links are
            # judged above (made last, never followed), names by _check_name.
            try:
                filtered = tarfile.data_filter(info, self.root)
            except tarfile.FilterError as exc:
                raise RestoreError(f"{info.name}: refused by tarfile's data filter: {exc}") from None
        if self.check is not None:
            problem = self.check.member(name, info)
            if problem is not None:
                raise RestoreError(problem)

        path = os.path.join(self.root, name)
        _make_parents(self.root, name, self.known_dirs)
        if os.path.lexists(path):
            if kind == "dir" and stat.S_ISDIR(os.lstat(path).st_mode):
                self.dirs.append((path, int(info.mtime)))  # created earlier as a parent
                self.result.dirs += 1
                return
            raise RestoreError(f"{info.name}: refused: the path already exists (written by an earlier member)")
        if kind == "dir":
            os.mkdir(path, 0o755)
            self.known_dirs.add(name)
            self.dirs.append((path, int(info.mtime)))
            self.result.dirs += 1
        elif kind == "symlink":
            self.symlinks[name] = (info.linkname, int(info.mtime))
            self.all_links.add(name)
        else:
            self.write_file(info, name, path, filtered)

    def write_file(self, info: tarfile.TarInfo, name: str, path: str, filtered) -> None:
        result = self.result
        digest = hashlib.sha256()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        try:
            for chunk in self.reader.member_chunks(info):
                digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
                result.bytes += len(chunk)
                self.report()
            os.fchmod(fd, filtered.mode if filtered.mode is not None else 0o644)
            os.utime(fd, (int(info.mtime), int(info.mtime)))
        finally:
            os.close(fd)
        result.files += 1
        if self.check is not None:
            problem = self.check.content(name, digest.hexdigest())
            if problem is not None:
                raise RestoreError(problem)
            result.members_checked += 1

    def make_symlinks(self) -> None:
        """Symlinks last: nothing was ever written through one, none is followed."""
        result = self.result
        for name, (linkname, mtime) in self.symlinks.items():
            path = os.path.join(self.root, name)
            _make_parents(self.root, name, self.known_dirs)
            if os.path.lexists(path):
                raise RestoreError(f"{name}: refused: the path already exists (written by an earlier member)")
            os.symlink(linkname, path)
            with contextlib.suppress(OSError, NotImplementedError):
                os.utime(path, (mtime, mtime), follow_symlinks=False)
            result.symlinks += 1
            if leads_outside(name, linkname):
                result.outside_count += 1
                if len(result.outside_links) < MAX_OUTSIDE_LISTED:
                    result.outside_links.append((name, linkname))


def _make_parents(root: str, name: str, known: set[str]) -> None:
    """Create the missing parent folders of *name* below *root*, each checked to be a
    real folder (never a symlink). *known* holds folders already checked or made here
    (only this restore writes into its private 0700 folder, so they stay folders)."""
    parent = posixpath.dirname(name)
    if not parent or parent in known:
        return
    current = root
    done = ""
    for part in parent.split("/"):
        current = os.path.join(current, part)
        done = f"{done}/{part}" if done else part
        if done in known:
            continue
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            os.mkdir(current, 0o755)
        else:
            if not stat.S_ISDIR(st.st_mode):
                raise RestoreError(f"{name}: refused: {done} is not a folder")
        known.add(done)


def _move_into(work: Path, target: Path) -> None:
    """Move the extracted tree from the private folder into the target (same filesystem)."""
    with os.scandir(target) as entries:
        others = [e.name for e in entries if e.name != work.name]
    if others:
        raise RestoreError(f"Something else was written into {target} during the restore; nothing was restored.")
    names = os.listdir(work)
    if work.name in names:
        raise RestoreError(f"{work.name}: refused: a member has the name of the restore's private folder")
    for name in names:
        os.rename(work / name, target / name)
    work.rmdir()
