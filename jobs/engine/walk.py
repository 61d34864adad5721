"""Walk a directory tree into archive entries, deterministic and without following links."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Collection, Iterator, Sequence

from jobs.engine.archive import DIR, FILE, SYMLINK, Entry


def _matches(relpath: str, patterns: Sequence[str]) -> bool:
    name = relpath.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(relpath, p) or fnmatch.fnmatchcase(name, p) for p in patterns)


def walk_directory(
    root: str,
    prefix: str,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    on_error: Callable[[str, OSError], None] | None = None,
    skip_paths: Collection[str] = (),
) -> Iterator[Entry]:
    """Yield entries for *root* and everything below it, named ``prefix/<relative path>``.

    Symlinks are stored as links and never followed. *exclude* patterns skip files and
    whole directories; *include* patterns (if any) restrict which files are taken.
    Patterns match the path relative to *root* or the bare name (``*.log``, ``cache/*``).
    *skip_paths* are absolute paths (symlinks resolved) never taken, whatever the
    patterns say: files, or folders with everything below them. Unreadable directories
    are reported through *on_error* and skipped.
    """
    root = os.path.abspath(root)
    # Names to skip per folder: one lookup per folder, not one per file. Nothing below
    # the root is followed, so the root's real path + a relative path is a real path.
    skip: dict[str, set[str]] = {}
    for path in skip_paths:
        parent, name = os.path.split(os.path.normpath(path))
        skip.setdefault(parent, set()).add(name)
    real_root = os.path.realpath(root) if skip else root
    stack: list[tuple[str, str, os.stat_result]] = [(root, "", os.lstat(root))]
    while stack:
        directory, rel_dir, dir_st = stack.pop()
        yield Entry(f"{prefix}/{rel_dir}".rstrip("/"), DIR, directory, dir_st)
        skipped = skip.get(os.path.join(real_root, rel_dir).rstrip("/") or "/") if skip else None
        try:
            with os.scandir(directory) as it:
                children = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if on_error:
                on_error(f"{prefix}/{rel_dir}".rstrip("/"), exc)
            continue
        subdirs = []
        for child in children:
            rel = f"{rel_dir}{child.name}" if rel_dir else child.name
            if exclude and _matches(rel, exclude):
                continue
            if skipped and child.name in skipped:
                continue
            arcname = f"{prefix}/{rel}"
            try:
                if child.is_symlink():
                    yield Entry(
                        arcname, SYMLINK, child.path, child.stat(follow_symlinks=False), os.readlink(child.path)
                    )
                elif child.is_dir(follow_symlinks=False):
                    subdirs.append((child, rel))
                elif child.is_file(follow_symlinks=False):
                    if include and not _matches(rel, include):
                        continue
                    yield Entry(arcname, FILE, child.path)
                elif on_error:
                    on_error(arcname, OSError(0, "special file (device, socket or FIFO) skipped"))
            except OSError as exc:
                if on_error:
                    on_error(arcname, exc)
        # Subdirectories after the files of their parent, depth first, in name order.
        for child, rel in reversed(subdirs):
            try:
                stack.append((child.path, rel + "/", child.stat(follow_symlinks=False)))
            except OSError as exc:
                if on_error:
                    on_error(f"{prefix}/{rel}", exc)


def measure_directory(
    root: str, *, exclude: Sequence[str] = (), include: Sequence[str] = (), skip_paths: Collection[str] = ()
) -> tuple[int, int]:
    """Return (bytes, files) that :func:`walk_directory` would archive from *root*."""
    total = files = 0
    for entry in walk_directory(root, "x", include=include, exclude=exclude, skip_paths=skip_paths):
        if entry.kind == FILE:
            try:
                total += os.stat(entry.path, follow_symlinks=False).st_size
                files += 1
            except OSError:
                pass
    return total, files
