"""Directory sources: a folder with include/exclude globs; symlinks kept as links.

A directory source never archives the panel's own files (its database, key files,
archives, queue, mail: ``backupsite.sensitive.panel_paths``): a folder that covers them
leaves them out and says so in the run log; a folder inside one of them is refused.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

from backupsite.sensitive import check_directory_source, panel_paths_under
from jobs.engine import walk_directory
from jobs.engine.walk import measure_directory
from jobs.sources.base import SourceError, SourceKind


@dataclass(frozen=True)
class DirectoryConf:
    path: str
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, data: dict) -> DirectoryConf:
        path = data.get("path")
        if not isinstance(path, str) or not path.startswith("/") or "\x00" in path:
            raise ValueError("A directory source needs an absolute path.")
        include = [str(p) for p in data.get("include") or []]
        exclude = [str(p) for p in data.get("exclude") or []]
        return cls(os.path.normpath(path), include, exclude)


class DirectorySource(SourceKind):
    kind = "directory"
    label = "Directory"

    @property
    def conf(self) -> DirectoryConf:
        return DirectoryConf.parse(self.settings)

    def describe(self) -> str:
        return f"Directory {self.conf.path}"

    def _check(self) -> DirectoryConf:
        conf = self.conf
        try:
            check_directory_source(conf.path)
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
