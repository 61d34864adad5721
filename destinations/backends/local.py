"""Server hard drive: a directory on a local filesystem (also the base of USB storage,
and of the local copies folder under ``BACKUPSITE_ARCHIVE_DIR``)."""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.utils.translation import gettext_lazy as _

from backupsite.private import private_dir
from destinations.backends.base import (
    Backend,
    Conf,
    ConfError,
    DestinationError,
    FileTreeSession,
    NotFoundError,
    PermanentError,
    RemoteFile,
    TransientError,
    check_folder,
)

COPY_CHUNK = 1 << 20


def allowed_roots() -> list[Path]:
    return [Path(p).resolve() for p in settings.BACKUPSITE_LOCAL_ROOTS]


def validate_local_path(value: str) -> str:
    """An absolute, normalised directory inside one of the allowed roots (no ``..``,
    no NUL or control characters, no symlink escaping the root)."""
    if not isinstance(value, str) or not value:
        raise ConfError("A directory path is required.", "path")
    if any(ord(c) < 32 for c in value) or "\\" in value:
        raise ConfError("The path contains characters that are not allowed.", "path")
    if not value.startswith("/"):
        raise ConfError("The path must be absolute (start with /).", "path")
    if any(part == ".." for part in value.split("/")):
        raise ConfError("The path must not contain '..'.", "path")
    resolved = Path(value).resolve()
    roots = allowed_roots()
    if not any(resolved == root or root in resolved.parents for root in roots):
        listed = ", ".join(str(r) for r in roots)
        raise ConfError(f"The path must be inside one of the allowed folders: {listed}.", "path")
    return os.path.normpath(value)


@dataclass(frozen=True)
class LocalConf(Conf):
    path: str = ""
    #: Create the folder if it does not exist (else a missing folder is an error: a
    #: typo must not silently fill another disk).
    create: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path.startswith("/") or "\x00" in self.path:
            raise ConfError("The path must be absolute (start with /).", "path")
        if not isinstance(self.create, bool):
            raise ConfError("“Create the folder” must be true or false.", "create")

    def validate(self) -> None:
        object.__setattr__(self, "path", validate_local_path(self.path))


def oserror(exc: OSError, what: str) -> DestinationError:
    """An OSError as a typed destination error, without paths a user need not see."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return PermanentError(f"No space left on the destination while {what}.")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermanentError(f"Permission denied while {what}.")
    if exc.errno == errno.ENOENT:
        return NotFoundError(f"Not found while {what}.")
    if exc.errno in (errno.EIO, errno.ENODEV, errno.ENXIO):
        return TransientError(f"Input/output error while {what} (is the disk still there?).")
    return TransientError(f"{exc.strerror or exc} while {what}.")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalSession(FileTreeSession):
    rename_replaces = True  # rename(2) replaces atomically

    def __init__(self, backend: LocalBackend, base: Path, *, file_mode: int | None = None) -> None:
        super().__init__(backend)
        self.base = base
        self.file_mode = file_mode  # None: follow the umask (files people read at a destination)

    def path(self, folder, name=None):
        folder_path = self.base / folder if folder else self.base
        return str(folder_path / name) if name is not None else str(folder_path)

    def _inside(self, path: Path) -> None:
        resolved = path.resolve()
        base = self.base.resolve()
        if resolved != base and base not in resolved.parents:
            raise PermanentError("The destination folder leads outside its base folder (a symbolic link?).")

    def _makedirs(self, folder_path):
        path = Path(folder_path)
        try:
            if self.file_mode is not None:  # the panel's own folders: 0700
                private_dir(path)
            else:
                path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise oserror(exc, "creating the folder") from None
        self._inside(path)

    def _write(self, source, remote_path):
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        mode = self.file_mode if self.file_mode is not None else 0o666
        try:
            fd = os.open(remote_path, flags, mode)
            with os.fdopen(fd, "wb") as out:
                if self.file_mode is not None:
                    os.fchmod(out.fileno(), self.file_mode)
                buf = bytearray(COPY_CHUNK)
                view = memoryview(buf)
                while n := source.readinto(buf):
                    out.write(view[:n])
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            raise oserror(exc, f"writing {Path(remote_path).name.removeprefix('.')}") from None

    def _size(self, remote_path):
        try:
            st = os.lstat(remote_path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise oserror(exc, "reading a file's size") from None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def _rename(self, src, dst):
        try:
            os.replace(src, dst)
            fsync_dir(Path(dst).parent)
        except OSError as exc:
            raise oserror(exc, "renaming the uploaded file") from None

    def _remove(self, remote_path):
        try:
            os.unlink(remote_path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise oserror(exc, f"deleting {Path(remote_path).name}") from None

    def _listdir(self, folder_path):
        files = []
        try:
            with os.scandir(folder_path) as entries:
                for entry in entries:
                    if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
                        continue
                    st = entry.stat(follow_symlinks=False)
                    files.append(RemoteFile(entry.name, st.st_size, st.st_mtime))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise oserror(exc, "listing the folder") from None
        return sorted(files, key=lambda f: f.name)

    def _open(self, remote_path, offset):
        try:
            fd = os.open(remote_path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            raise NotFoundError(f"{Path(remote_path).name} is not at this destination.") from None
        except OSError as exc:
            raise oserror(exc, f"reading {Path(remote_path).name}") from None
        fh = os.fdopen(fd, "rb")
        if offset:
            fh.seek(offset)
        return fh

    def free_space(self):
        try:
            usage = os.statvfs(self.base)
        except OSError:
            return None
        return usage.f_bavail * usage.f_frsize


class LocalBackend(Backend):
    kind = "local"
    label = _("Server hard drive")
    conf_class = LocalConf
    form_class_path = "destinations.forms.LocalForm"
    help_text = _("A folder on this server's disks (a second disk, a mounted NAS share).")

    #: Mode of files written; None follows the umask (files at a destination are meant
    #: to be read by people). The local copies folder uses 0600.
    file_mode: int | None = None

    @classmethod
    def describe_conf(cls, conf: LocalConf) -> str:
        return f"{cls.label}: {conf.path}"

    def describe_folder(self, folder: str) -> str:
        return str(Path(self.conf.path) / folder) if folder else self.conf.path

    @classmethod
    def for_directory(cls, path: Path, *, file_mode: int | None = None) -> LocalBackend:
        """A backend for a folder chosen by the code, not by a user (the local copies
        under ``BACKUPSITE_ARCHIVE_DIR``): the allowed-roots check does not apply."""
        backend = cls(LocalConf(path=str(path), create=True))
        backend.file_mode = file_mode
        return backend

    def base_dir(self) -> Path:
        base = Path(self.conf.path)
        if not base.is_dir():
            if not self.conf.create:
                raise PermanentError(f"The folder {base} does not exist.")
            try:
                base.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise oserror(exc, f"creating {base}") from None
        return base

    def session(self) -> LocalSession:
        return LocalSession(self, self.base_dir(), file_mode=self.file_mode)


def staging_copies() -> LocalBackend:
    """The local copies of every archive: ``BACKUPSITE_ARCHIVE_DIR/<job slug>/`` (folder
    = the job's slug), private to the panel (files 0600)."""
    return LocalBackend.for_directory(Path(settings.BACKUPSITE_ARCHIVE_DIR), file_mode=0o600)


__all__ = ["LocalBackend", "LocalConf", "LocalSession", "check_folder", "staging_copies", "validate_local_path"]
