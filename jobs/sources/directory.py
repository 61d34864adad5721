"""Directory sources: a folder with include/exclude globs; symlinks kept as links.

A directory source never archives the panel's own files (its database, key files,
archives, queue, mail: ``backupsite.sensitive.panel_paths``): a folder that covers them
leaves them out and says so in the run log; a folder inside one of them is refused.

With ``BACKUPSITE_SOURCE_ROOTS`` set, the folder (after following symlinks) must lie
inside one of those folders (:func:`check_source_path`, which the form, the run and the
SQLite kind's file path all go through; RELIABILITY 18).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.utils.translation import gettext_lazy as _

from backupsite.sensitive import check_directory_source, panel_paths_under
from jobs.engine import walk_directory
from jobs.engine.walk import measure_directory
from jobs.sources.base import ConfError, SourceError, SourceKind, on_field

MAX_GLOBS = 100


def source_roots() -> list[Path]:
    """``BACKUPSITE_SOURCE_ROOTS``, resolved; empty: any folder (but the panel's own)."""
    return [Path(p).resolve() for p in getattr(settings, "BACKUPSITE_SOURCE_ROOTS", None) or []]


def check_path_syntax(value, what: str = "folder") -> str:
    """An absolute path without NUL, control characters, backslashes or ``..``; returns
    it normalised. ValueError (a message for users) otherwise."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"The {what} is required.")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("The path contains characters that are not allowed (NUL or control characters).")
    if "\\" in value:
        raise ValueError("The path must not contain backslashes (use / between folders; “..\\” is refused).")
    if not value.startswith("/"):
        raise ValueError("The path must be absolute (start with /).")
    if ".." in value.split("/"):
        raise ValueError("The path must not contain “..”.")
    return os.path.normpath(value)


def check_source_path(value, what: str = "folder") -> str:
    """:func:`check_path_syntax`, then: after following every symlink the path is inside
    one of :func:`source_roots` (when set), and it is not one of the panel's own files
    or folders, nor inside one. Returns the normalised path (as typed, not resolved)."""
    path = check_path_syntax(value, what)
    real = Path(os.path.realpath(path))
    roots = source_roots()
    if roots and not any(real == root or root in real.parents for root in roots):
        listed = ", ".join(str(r) for r in roots)
        if real != Path(path):
            raise ValueError(f"{path} leads to {real} (a symbolic link), outside the allowed folders: {listed}.")
        raise ValueError(f"The path must be inside one of the allowed folders (BACKUPSITE_SOURCE_ROOTS): {listed}.")
    check_directory_source(path)
    return path


def _globs(value, field_name: str) -> list[str]:
    if value in (None, ""):
        return []
    if not isinstance(value, list | tuple):
        raise ConfError("Give the patterns as a list.", field_name)
    patterns = [str(p) for p in value]
    if len(patterns) > MAX_GLOBS:
        raise ConfError(f"At most {MAX_GLOBS} patterns.", field_name)
    for pattern in patterns:
        if not pattern.strip() or any(ord(c) < 32 or ord(c) == 127 for c in pattern):
            raise ConfError(f"{pattern!r} is not a usable pattern (empty, or control characters).", field_name)
    return patterns


@dataclass(frozen=True)
class DirectoryConf:
    path: str
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, data: dict) -> DirectoryConf:
        data = data or {}
        path = data.get("path")
        if not isinstance(path, str) or not path.startswith("/") or "\x00" in path:
            raise ConfError("A directory source needs an absolute path.", "path")
        return cls(
            os.path.normpath(path), _globs(data.get("include"), "include"), _globs(data.get("exclude"), "exclude")
        )

    def validate(self) -> None:
        """The checks that look at this server (allowed roots, the panel's own files)."""
        on_field("path", check_source_path, self.path)


class DirectorySource(SourceKind):
    kind = "directory"
    label = _("Directory")
    help_text = _("A folder on this server, with optional include and exclude patterns.")
    form_class_path = "jobs.sources.forms.DirectoryForm"
    conf_class = DirectoryConf

    @property
    def conf(self) -> DirectoryConf:
        return DirectoryConf.parse(self.settings)

    def describe(self) -> str:
        return f"Directory {self.conf.path}"

    def _check(self) -> DirectoryConf:
        conf = self.conf
        try:
            conf.validate()
        except ValueError as exc:
            raise SourceError(f"Directory source “{self.name}”: {exc}") from None
        if not os.path.isdir(conf.path):
            raise SourceError(f"The directory {conf.path} does not exist or is not a directory.")
        if not os.access(conf.path, os.R_OK | os.X_OK):
            raise SourceError(f"The directory {conf.path} cannot be read by backupsite.")
        return conf

    def _skipped(self, conf: DirectoryConf) -> list[str]:
        return [item.path for item in panel_paths_under(conf.path)]

    def measure(self) -> tuple[int, int]:
        conf = self._check()
        return measure_directory(conf.path, include=conf.include, exclude=conf.exclude, skip_paths=self._skipped(conf))

    def log_notes(self) -> list[str]:
        conf = self.conf
        present = [item for item in panel_paths_under(conf.path) if os.path.lexists(item.path)]
        if not present:
            return []
        listed = ", ".join(f"{item.path} ({item.what})" for item in present)
        return [
            f"Directory {conf.path}: left out the panel's own files and folders: {listed}. "
            "Back up the panel with the “Panel database” source, in an encrypted job."
        ]

    @contextlib.contextmanager
    def entries(self, staging, on_error):
        conf = self._check()
        yield walk_directory(
            conf.path,
            self.slug,
            include=conf.include,
            exclude=conf.exclude,
            on_error=on_error,
            skip_paths=self._skipped(conf),
        )
