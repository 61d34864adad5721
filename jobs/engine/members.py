"""The one rule for "this member matches the manifest", and what a partial restore picks
(Django-free).

Verify (:mod:`jobs.engine.verify`) and restore (:mod:`jobs.engine.restore`) both read an
archive member by member and ask the same questions of each: is it listed, with the same
type, the same symlink target, the same size, and (once its data was read) the same
sha256; is anything listed missing; do the stored bytes have the size and sha256 the
manifest says. The answers (and their wording) live here only.

:class:`Selection` is the part of an archive a partial restore extracts: whole sources
(their folder, ``office-files``) or a path inside one (``office-files/docs/2026``).
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterable
from dataclasses import dataclass

from jobs.engine.reader import StreamError


def member_kind(info: tarfile.TarInfo) -> str:
    """The manifest's word for a tar member's type."""
    if info.isreg():
        return "file"
    if info.isdir():
        return "dir"
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hardlink"
    if info.ischr() or info.isblk():
        return "device"
    if info.isfifo():
        return "fifo"
    return "other"


def manifest_table(manifest: dict) -> dict[str, dict]:
    """The manifest's members by path (folders without their trailing ``/``)."""
    table = {}
    for member in manifest.get("members") or []:
        path = str(member.get("path", ""))
        key = path.rstrip("/") if member.get("type") == "dir" else path
        table[key] = member
    return table


class SelectionError(ValueError):
    """A path given for a partial restore is not a plain relative path (the message is
    for users)."""


def clean_path(value: str) -> str:
    """A path inside an archive as a partial restore takes it: relative, ``/``-separated,
    no ``..``, no NUL or control characters; ``./`` and trailing ``/`` dropped."""
    if not isinstance(value, str) or not value.strip():
        raise SelectionError("An empty path was given.")
    value = value.strip()
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise SelectionError(f"{value!r}: paths must not contain control characters.")
    if value.startswith("/"):
        raise SelectionError(f"{value}: give the path as it is in the archive, without a leading /.")
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise SelectionError(f"{value}: paths must not contain '..'.")
    if not parts:
        raise SelectionError(f"{value}: not a path inside the archive.")
    return "/".join(parts)


@dataclass(frozen=True)
class Selection:
    """Archive paths to restore: each one itself and everything below it."""

    paths: tuple[str, ...]

    @classmethod
    def of(cls, paths: Iterable[str] | None) -> Selection | None:
        """A selection of *paths* (checked by :func:`clean_path`), or None for "all"."""
        cleaned = sorted({clean_path(p) for p in paths or ()})
        # "a" covers "a/b": keep the shortest.
        kept = [p for p in cleaned if not any(p.startswith(q + "/") for q in cleaned if q != p)]
        return cls(tuple(kept)) if kept else None

    def covers(self, name: str) -> bool:
        return any(name == p or name.startswith(p + "/") for p in self.paths)

    def unmatched(self, table: dict[str, dict]) -> list[str]:
        """Selected paths that name nothing in the manifest's *table*."""
        return [p for p in self.paths if not any(key == p or key.startswith(p + "/") for key in table)]

    def describe(self) -> str:
        return ", ".join(self.paths)


class ManifestCheck:
    """The manifest's members, checked one by one as the archive is read.

    :meth:`member` says what is wrong with a member (None: it matches), :meth:`content`
    what is wrong with its data's sha256, :meth:`missing` what the manifest lists that
    was not seen. With a *selection* only the selected members count.
    """

    def __init__(self, manifest: dict, selection: Selection | None = None) -> None:
        self.table = manifest_table(manifest)
        self.selection = selection
        self.seen: set[str] = set()

    def member(self, name: str, info: tarfile.TarInfo) -> str | None:
        """The problem with member *info* (read under the name *name*), or None. Marks
        the member as seen."""
        entry = self.table.get(name)
        if entry is None:
            return f"{name}: unexpected member (not in the manifest)"
        if name in self.seen:
            return f"{name}: appears twice in the archive"
        self.seen.add(name)
        kind, want = member_kind(info), entry.get("type")
        if kind != want:
            return f"{name}: is a {kind} in the archive, a {want} in the manifest"
        if kind == "symlink" and info.linkname != entry.get("target"):
            return f"{name}: link target differs from the manifest"
        if kind == "file":
            if info.sparse is not None:
                return f"{name}: sparse member (the engine never writes these)"
            if info.size != entry.get("size"):
                return f"{name}: size mismatch ({info.size} bytes, the manifest says {entry.get('size')})"
        return None

    def content(self, name: str, sha256: str) -> str | None:
        """The problem with the data of file *name* (its sha256 as read), or None."""
        if sha256 != self.table[name].get("sha256"):
            return f"{name}: checksum mismatch"
        return None

    def missing(self) -> list[str]:
        """Paths the manifest lists (and the selection covers) that were not seen."""
        selection = self.selection
        return [
            str(entry.get("path"))
            for key, entry in self.table.items()
            if key not in self.seen and (selection is None or selection.covers(key))
        ]


def expected_archive(manifest: dict) -> tuple[int, str, bool]:
    """(size, sha256, encrypted) of the stored archive according to *manifest*."""
    archive = manifest.get("archive")
    if not isinstance(archive, dict) or not isinstance(archive.get("size"), int) or not archive.get("sha256"):
        raise ValueError("The manifest does not describe its archive (size and sha256).")
    return archive["size"], str(archive["sha256"]).lower(), bool(archive.get("encryption"))


def archive_problems(size: int, sha256: str, exp_size: int, exp_sha256: str) -> list[str]:
    """What is wrong with the stored bytes (their size and sha256) against the manifest."""
    if size < exp_size:
        return [f"archive truncated: {size} of {exp_size} bytes"]
    if size > exp_size:
        return [f"archive has {size - exp_size} bytes more than the manifest says ({size} instead of {exp_size})"]
    if sha256 != exp_sha256:
        return [f"archive checksum mismatch (sha256 {sha256}, the manifest says {exp_sha256})"]
    return []


def stream_problem(exc: StreamError, last: str, truncated: bool, cause: str | None) -> str:
    """The archive could not be read to its end: where, and why."""
    reason = cause or exc.message
    if exc.member:
        if truncated:
            return f"{exc.member}: archive truncated inside this member"
        return f"{exc.member}: archive damaged inside this member ({reason})"
    where = f" after {last}" if last else ""
    if truncated:
        return f"archive truncated{where}"
    return f"archive unreadable{where} ({reason})"
