"""Server hard drive: a directory on a local filesystem."""

from __future__ import annotations

import errno
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from django.conf import settings

from backupsite.slugs import UnsafeFolderName, safe_folder_name
from destinations.backends.base import ROOT_FOLDER, Backend, Conf, DestinationError, RemoteFile
from jobs.engine.atomic import PARTIAL_SUFFIX, atomic_path, remove_partials

COPY_CHUNK = 1 << 20


def allowed_roots() -> list[Path]:
    return [Path(p).resolve() for p in settings.BACKUPSITE_LOCAL_ROOTS]


def validate_local_path(value: str) -> str:
    """An absolute, normalised directory inside one of the allowed roots (no ``..``,
    no NUL or control characters, no symlink escaping the root)."""
    if not isinstance(value, str) or not value:
        raise ValueError("A directory path is required.")
    if any(ord(c) < 32 for c in value) or "\\" in value:
        raise ValueError("The path contains characters that are not allowed.")
    if not value.startswith("/"):
        raise ValueError("The path must be absolute (start with /).")
    if any(part == ".." for part in value.split("/")):
        raise ValueError("The path must not contain '..'.")
    resolved = Path(value).resolve()
    roots = allowed_roots()
    if not any(resolved == root or root in resolved.parents for root in roots):
        listed = ", ".join(str(r) for r in roots)
        raise ValueError(f"The path must be inside one of the allowed folders: {listed}.")
    return os.path.normpath(value)


@dataclass(frozen=True)
class LocalConf(Conf):
    path: str = ""

    def __post_init__(self) -> None:
        validate_local_path(self.path)


def _oserror(exc: OSError, what: str) -> DestinationError:
    if exc.errno == errno.ENOSPC:
        return DestinationError(f"No space left on the destination while {what}.", permanent=True)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return DestinationError(f"Permission denied while {what}.", permanent=True)
    return DestinationError(f"{exc.strerror or exc} while {what}.", permanent=False)


class LocalBackend(Backend):
    kind = "local"
    label = "Server hard drive"
    conf_class = LocalConf

    @classmethod
    def describe_conf(cls, conf: LocalConf) -> str:
        return f"{cls.label}: {conf.path}"

    def job_dir(self, job_slug: str) -> Path:
        try:
            return Path(self.conf.path) / ROOT_FOLDER / safe_folder_name(job_slug, "job folder name")
        except UnsafeFolderName as exc:
            raise DestinationError(str(exc), permanent=True) from None

    def _check_base(self) -> None:
        base = Path(self.conf.path)
        if not base.is_dir():
            raise DestinationError(f"The folder {base} does not exist.", permanent=True)

    def test(self) -> str:
        self._check_base()
        folder = Path(self.conf.path) / ROOT_FOLDER
        try:
            folder.mkdir(exist_ok=True)
            probe = folder / f".write-test{PARTIAL_SUFFIX}"
            probe.write_bytes(b"backupsite")
            probe.unlink()
            usage = os.statvfs(folder)
        except OSError as exc:
            raise _oserror(exc, "writing a test file") from None
        free_gb = usage.f_bavail * usage.f_frsize / 1e9
        return f"Writable, {free_gb:.1f} GB free."

    def upload(self, local_path, job_slug, remote_name, *, expected_size, expected_sha256=None, progress=None):
        self._check_base()
        final = self.job_dir(job_slug) / remote_name
        digest = hashlib.sha256()
        done = 0
        try:
            # private=False: the copy follows the umask, like any file people put there.
            with atomic_path(final, private=False) as tmp, open(local_path, "rb") as src, open(tmp, "wb") as dst:
                buf = bytearray(COPY_CHUNK)
                view = memoryview(buf)
                while n := src.readinto(buf):
                    chunk = view[:n]
                    digest.update(chunk)
                    dst.write(chunk)
                    done += n
                    if progress:
                        progress(done)
                dst.flush()
                if done != expected_size:
                    raise DestinationError(
                        f"Size mismatch after copying {remote_name}: {done} bytes instead of {expected_size}."
                    )
                if expected_sha256 and digest.hexdigest() != expected_sha256:
                    raise DestinationError(f"Checksum mismatch after copying {remote_name}.")
        except OSError as exc:
            raise _oserror(exc, f"writing {remote_name}") from None

    def list(self, job_slug):
        folder = self.job_dir(job_slug)
        if not folder.is_dir():
            return []
        files = []
        for child in sorted(folder.iterdir()):
            if child.name.startswith(".") or not child.is_file():
                continue
            st = child.stat()
            files.append(RemoteFile(child.name, st.st_size, st.st_mtime))
        return files

    def delete(self, job_slug, name):
        try:
            (self.job_dir(job_slug) / name).unlink(missing_ok=True)
        except OSError as exc:
            raise _oserror(exc, f"deleting {name}") from None

    def open(self, job_slug, name) -> BinaryIO:
        try:
            return open(self.job_dir(job_slug) / name, "rb")
        except FileNotFoundError:
            raise DestinationError(f"{name} is not at this destination.", permanent=True) from None
        except OSError as exc:
            raise _oserror(exc, f"reading {name}") from None

    def remove_partials(self, job_slug):
        return len(remove_partials(self.job_dir(job_slug)))
