"""Files and folders only the panel's own user may open: 0600 files in 0700 folders.

Everything the panel keeps under its data directory (the SQLite database with sessions
and password hashes, archives, manifests, key files, e-mails, the queue) is made with
these helpers, which set the mode explicitly where the file or folder is made. The
process umask is deliberately left alone: files written at local or USB destinations
and exported spreadsheets follow it, so the people meant to read them still can.

Existing files and folders are never re-moded here (an administrator may have opened a
folder to a group on purpose); the system check ``backupsite.W003`` warns instead.

This module imports nothing but the standard library: the archive engine, which must not
import Django, uses it too.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import IO, Any

DIR_MODE = 0o700
FILE_MODE = 0o600
#: Permission bits that let someone other than the owner in.
SHARED_BITS = 0o077

_FLAGS = {
    "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
}


def private_dir(path: str | os.PathLike) -> Path:
    """Make the folder *path* and any missing parents as 0700 folders; return it.

    Folders that already exist keep their mode. Raises NotADirectoryError if *path*
    exists and is not a folder, and OSError if it cannot be made."""
    path = Path(path)
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, DIR_MODE)
        except FileExistsError:  # made meanwhile by another process: not ours to re-mode
            continue
        os.chmod(folder, DIR_MODE)  # exact, whatever the umask took away from mkdir's mode
    if not path.is_dir():
        raise NotADirectoryError(f"{path} exists and is not a folder.")
    return path


def open_private(path: str | os.PathLike, mode: str = "wb", **kwargs: Any) -> IO:
    """``open(path, mode)`` for writing ("w", "a" or "x", text or binary), but the file is
    created 0600 and set to 0600 if it already existed (we are the one writing it)."""
    kind = mode.replace("b", "").replace("t", "").replace("+", "")
    if kind not in _FLAGS:
        raise ValueError(f"open_private writes files; mode {mode!r} is not supported.")
    flags = _FLAGS[kind] | getattr(os, "O_CLOEXEC", 0)
    if "+" in mode:
        flags = (flags & ~os.O_WRONLY) | os.O_RDWR
    fd = os.open(path, flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        return os.fdopen(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        raise


def create_private_file(path: str | os.PathLike) -> Path:
    """Create the empty file *path* with mode 0600 unless it exists (then it is left as
    it is), so that whoever opens it next (SQLite) keeps that mode."""
    path = Path(path)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), FILE_MODE))
        os.chmod(path, FILE_MODE)
    return path


def write_private(path: str | os.PathLike, data: bytes | str, encoding: str = "utf-8") -> None:
    """Write *data* to *path* (replacing its content) as a 0600 file."""
    if isinstance(data, str):
        with open_private(path, "w", encoding=encoding) as fh:
            fh.write(data)
    else:
        with open_private(path, "wb") as fh:
            fh.write(data)


def shared_mode(path: str | os.PathLike) -> int | None:
    """The permission bits of *path* if group or others have any of them, else None
    (also None when *path* does not exist)."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None
    return mode if mode & SHARED_BITS else None
