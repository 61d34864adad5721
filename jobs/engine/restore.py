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
nodes, FIFOs and any other special type; sparse members; symlinks whose target is
absolute or leads outside the target (checked on the name when the member arrives, and
again on the finished tree, because a later symlink can change where an earlier one
points); any member below a symlink of the archive (a write "through" a link); a member
whose path already exists (duplicates). Python's ``tarfile.data_filter`` runs on every
member on top of that and may refuse more; its result gives the file modes (no
setuid/setgid/sticky, no group/other write, owner read/write). Owners are not restored.

Symlinks are created last, after every file and directory was written, so nothing is
ever written through one. With a manifest, every member must be listed there with the
same type, size and sha256 (symlinks: the same target), nothing listed may be missing,
and the stored bytes must match the archive's size and sha256.
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
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from jobs.engine.verify import (
    ArchiveReader,
    ProgressCallback,
    StreamError,
    _kind,
    _manifest_table,
    archive_problems,
    expected_archive,
    stream_problem,
)

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
    seconds: float = 0.0


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


def _check_link_target(name: str, linkname: str) -> None:
    if not linkname or "\x00" in linkname:
        raise RestoreError(f"{name}: refused: symbolic link with an empty target")
    if linkname.startswith("/"):
        raise RestoreError(f"{name}: refused: symbolic link to an absolute path ({linkname})")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), linkname))
    if resolved == ".." or resolved.startswith("../"):
        raise RestoreError(f"{name}: refused: symbolic link pointing outside the target ({linkname})")


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
    progress: ProgressCallback | None = None,
    decrypt_in: str = "process",
    progress_interval: float = 0.5,
) -> RestoreResult:
    """Restore the archive read from *stream* into *target* (empty or not existing).

    *identities*: age identities ("AGE-SECRET-KEY-…" or pyrage objects) for an
    encrypted archive; whether it is encrypted comes from the manifest, else from
    *encrypted*, else from the first bytes. With *manifest*, every member is checked
    against it. Raises :class:`RestoreError` (nothing left behind) or
    ``verify.SourceReadError`` / ``verify.DecryptionError``.
    """
    started = time.monotonic()
    target = Path(os.path.abspath(target))
    exp_size = exp_sha = None
    table: dict[str, dict] | None = None
    if manifest is not None:
        exp_size, exp_sha, encrypted = expected_archive(manifest)
        table = _manifest_table(manifest)
    created = _prepare_target(target)
    work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=target))
    try:
        try:
            result = _extract(
                stream, work, identities, table, encrypted, exp_size, exp_sha, progress, decrypt_in, progress_interval
            )
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


def _extract(stream, work, identities, table, encrypted, exp_size, exp_sha, progress, decrypt_in, interval):
    root = str(work)
    result = RestoreResult(target=work)
    symlinks: dict[str, tuple[str, int]] = {}  # name → (target, mtime), created at the end
    dirs: list[tuple[str, int]] = []
    seen: set[str] = set()
    known_dirs: set[str] = set()
    last_report = time.monotonic()
    with ArchiveReader(stream, encrypted=encrypted, identities=identities, decrypt_in=decrypt_in) as reader:
        try:
            for info in reader.members():
                name = _check_name(info.name)
                kind = _kind(info)
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
                        continue
                    raise RestoreError(f"{info.name}: refused: not a valid path")
                if kind == "symlink":
                    _check_link_target(name, info.linkname)
                # Nothing below a symlink of this archive, whatever came first.
                parent = posixpath.dirname(name)
                while parent:
                    if parent in symlinks:
                        raise RestoreError(
                            f"{info.name}: refused: it would be written through the symbolic link {parent}"
                        )
                    parent = posixpath.dirname(parent)
                if name in seen:
                    raise RestoreError(f"{info.name}: refused: appears twice in the archive")
                seen.add(name)
                try:
                    filtered = tarfile.data_filter(info, root)
                except tarfile.FilterError as exc:
                    raise RestoreError(f"{info.name}: refused by tarfile's data filter: {exc}") from None
                if table is not None:
                    entry = table.get(name)
                    if entry is None:
                        raise RestoreError(f"{info.name}: not in the manifest")
                    if entry.get("type") != kind:
                        raise RestoreError(
                            f"{info.name}: is a {kind} in the archive, a {entry.get('type')} in the manifest"
                        )
                    if kind == "symlink" and entry.get("target") != info.linkname:
                        raise RestoreError(f"{info.name}: link target differs from the manifest")
                    if kind == "file" and entry.get("size") != info.size:
                        raise RestoreError(f"{info.name}: size differs from the manifest")

                path = os.path.join(root, name)
                _make_parents(root, name, known_dirs)
                if os.path.lexists(path):
                    if kind == "dir" and stat.S_ISDIR(os.lstat(path).st_mode):
                        dirs.append((path, int(info.mtime)))  # created earlier as a parent
                        result.dirs += 1
                        continue
                    raise RestoreError(f"{info.name}: refused: the path already exists (written by an earlier member)")
                if kind == "dir":
                    os.mkdir(path, 0o755)
                    known_dirs.add(name)
                    dirs.append((path, int(info.mtime)))
                    result.dirs += 1
                elif kind == "symlink":
                    symlinks[name] = (info.linkname, int(info.mtime))
                else:
                    digest = hashlib.sha256()
                    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                    fd = os.open(path, flags, 0o600)
                    try:
                        for chunk in reader.member_chunks(info):
                            digest.update(chunk)
                            view = memoryview(chunk)
                            while view:
                                view = view[os.write(fd, view) :]
                            result.bytes += len(chunk)
                            if progress is not None and time.monotonic() - last_report >= interval:
                                last_report = time.monotonic()
                                progress(reader.raw_size, exp_size or 0)
                        os.fchmod(fd, filtered.mode if filtered.mode is not None else 0o644)
                        os.utime(fd, (int(info.mtime), int(info.mtime)))
                    finally:
                        os.close(fd)
                    result.files += 1
                    if table is not None:
                        if digest.hexdigest() != table[name].get("sha256"):
                            raise RestoreError(f"{info.name}: checksum mismatch")
                        result.members_checked += 1
        except StreamError as exc:
            cause = reader.failure_cause()
            reader.raw.drain()
            truncated = exp_size is not None and reader.raw_size < exp_size
            raise RestoreError(
                "The archive cannot be read to its end: " + stream_problem(exc, reader.last, truncated, cause)
            ) from None
        problems = reader.finish()
        if table is not None:
            problems += archive_problems(reader.raw_size, reader.raw_sha256, exp_size, exp_sha)
            missing = [m.get("path") for key, m in table.items() if key not in seen]
            if missing:
                more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                problems.append(f"{missing[0]}: missing from the archive{more}")
        if problems:
            raise RestoreError(problems[0])
        result.archive_bytes, result.archive_sha256 = reader.raw_size, reader.raw_sha256

    # Symlinks last: nothing was ever written through one. Then check where each one
    # really leads, now that all of them exist (a later link can redirect an earlier one).
    for name, (linkname, mtime) in symlinks.items():
        path = os.path.join(root, name)
        _make_parents(root, name, known_dirs)
        if os.path.lexists(path):
            raise RestoreError(f"{name}: refused: the path already exists (written by an earlier member)")
        os.symlink(linkname, path)
        with contextlib.suppress(OSError, NotImplementedError):
            os.utime(path, (mtime, mtime), follow_symlinks=False)
        result.symlinks += 1
    real_root = os.path.realpath(root)
    for name, (linkname, _) in symlinks.items():
        if not _inside(os.path.realpath(os.path.join(root, name)), real_root):
            raise RestoreError(f"{name}: refused: symbolic link pointing outside the target ({linkname})")
    for path, mtime in reversed(dirs):
        with contextlib.suppress(OSError):
            os.utime(path, (mtime, mtime), follow_symlinks=False)
    if progress is not None:
        progress(result.archive_bytes, exp_size or result.archive_bytes)
    return result


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
