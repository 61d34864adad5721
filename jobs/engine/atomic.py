"""Write a file under a temporary name and rename it only once it is complete."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

PARTIAL_SUFFIX = ".partial"


def partial_name(final: Path) -> Path:
    """The temporary name of *final*: hidden, with a suffix no reader mistakes for done."""
    return final.with_name(f".{final.name}{PARTIAL_SUFFIX}")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(final: Path, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to *final*; on success fsync and rename it to
    *final*; on any exception (including KeyboardInterrupt) remove it."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(final)
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, final)
        if fsync:
            fsync_dir(final.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def remove_partials(directory: Path) -> list[Path]:
    """Delete leftover temporary files (a worker killed mid-write) in *directory*."""
    removed = []
    if not directory.is_dir():
        return removed
    for child in directory.iterdir():
        if child.name.startswith(".") and child.name.endswith(PARTIAL_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                child.unlink()
                removed.append(child)
    return removed
