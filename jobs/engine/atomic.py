"""Write a file under a temporary name and rename it only once it is complete."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from backupsite.private import FILE_MODE, private_dir  # standard library only, no Django

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
def atomic_path(final: Path, *, fsync: bool = True, private: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to *final*; on success fsync and rename it to
    *final*; on any exception (including KeyboardInterrupt) remove it.

    ``private=True`` (the panel's own files: archives, manifests, key files under the
    data dir): the temporary file already exists, empty and 0600, when the block starts
    (opening it with ``open(tmp, "wb")`` keeps that mode), and missing folders are made
    0700. ``private=False`` (files at a local destination, meant for people to read):
    the caller's ``open()`` creates the file and folders with the process umask, so the
    final file has the mode any other file there would have."""
    final = Path(final)
    tmp = partial_name(final)
    if private:
        private_dir(final.parent)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)  # a leftover of a killed run may have had another mode
        finally:
            os.close(fd)
    else:
        final.parent.mkdir(parents=True, exist_ok=True)
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
