"""Directory sources: a folder with include/exclude globs; symlinks kept as links."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

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
        if not os.path.isdir(conf.path):
            raise SourceError(f"The directory {conf.path} does not exist or is not a directory.")
        if not os.access(conf.path, os.R_OK | os.X_OK):
            raise SourceError(f"The directory {conf.path} cannot be read by backupsite.")
        return conf

    def measure(self) -> tuple[int, int]:
        conf = self._check()
        return measure_directory(conf.path, include=conf.include, exclude=conf.exclude)

    @contextlib.contextmanager
    def entries(self, staging, on_error):
        conf = self._check()
        yield walk_directory(conf.path, self.slug, include=conf.include, exclude=conf.exclude, on_error=on_error)
