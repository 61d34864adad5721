"""The registry of source kinds: one dict from kind to class.

A source kind turns its settings into archive entries (``jobs.engine.Entry``) and can
measure its size for the wizard. Runs build kinds from the JSON snapshot of the job
they run with, so a run keeps the configuration it started with.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from django.conf import settings as django_settings
from django.db import connections

from jobs.engine import Entry, walk_directory
from jobs.engine.archive import FILE
from jobs.engine.walk import measure_directory

ErrorCallback = Callable[[str, OSError], None]


class SourceError(Exception):
    """A source cannot be read at all (the message is shown to users)."""


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


class SourceKind:
    kind: ClassVar[str]
    label: ClassVar[str]

    def __init__(self, name: str, slug: str, settings: dict) -> None:
        self.name = name
        self.slug = slug
        self.settings = settings or {}

    @classmethod
    def from_snapshot(cls, snap: dict) -> SourceKind:
        return cls(snap["name"], snap["slug"], snap.get("settings", {}))

    def describe(self) -> str:
        return self.label

    def measure(self) -> tuple[int, int]:
        """(bytes, files) this source would put into an archive."""
        raise NotImplementedError

    @contextlib.contextmanager
    def entries(self, staging: Path, on_error: ErrorCallback) -> Iterator[Iterator[Entry]]:
        """Yield an iterator of entries; temporary files live in *staging* and are
        removed when the context exits, whatever happens."""
        raise NotImplementedError
        yield  # pragma: no cover


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


class PanelDatabaseSource(SourceKind):
    """backupsite's own database, for disaster recovery of the panel itself."""

    kind = "panel_database"
    label = "Panel database"

    def describe(self) -> str:
        return f"backupsite's own database ({connections['default'].vendor})"

    def measure(self) -> tuple[int, int]:
        db = django_settings.DATABASES["default"]
        if db["ENGINE"].endswith("sqlite3"):
            path = Path(db["NAME"])
            size = sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
            return size, 1
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT pg_database_size(current_database())")
            return int(cursor.fetchone()[0]), 1

    @contextlib.contextmanager
    def entries(self, staging, on_error):
        db = django_settings.DATABASES["default"]
        staging.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".panel-db-", suffix=".partial", dir=staging)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            if db["ENGINE"].endswith("sqlite3"):
                # The online backup API copies a consistent snapshot of a live database.
                src = sqlite3.connect(f"file:{db['NAME']}?mode=ro", uri=True, timeout=60)
                dst = sqlite3.connect(tmp)
                try:
                    src.backup(dst)
                finally:
                    dst.close()
                    src.close()
                arcname = f"{self.slug}/backupsite.sqlite3"
            elif db["ENGINE"].endswith("postgresql"):
                _pg_dump(db, tmp)
                arcname = f"{self.slug}/backupsite.pgdump"
            else:
                raise SourceError(f"Backing up a {db['ENGINE']} panel database is not supported.")
            yield iter([Entry(arcname, FILE, str(tmp))])
        finally:
            tmp.unlink(missing_ok=True)


def _pg_dump(db: dict, target: Path) -> None:
    env = {**os.environ, "PGPASSWORD": db.get("PASSWORD") or ""}  # never on the command line
    args = ["pg_dump", "-Fc", "--no-password", "-f", str(target)]
    if db.get("HOST"):
        args += ["-h", str(db["HOST"])]
    if db.get("PORT"):
        args += ["-p", str(db["PORT"])]
    if db.get("USER"):
        args += ["-U", str(db["USER"])]
    args.append(str(db["NAME"]))
    try:
        proc = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise SourceError("pg_dump is not installed.") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise SourceError(f"pg_dump failed: {last[:300]}")


REGISTRY: dict[str, type[SourceKind]] = {
    DirectorySource.kind: DirectorySource,
    PanelDatabaseSource.kind: PanelDatabaseSource,
}


def get_kind(kind: str) -> type[SourceKind]:
    try:
        return REGISTRY[kind]
    except KeyError:
        raise SourceError(f"Unknown source kind {kind!r}.") from None


def kind_choices() -> list[tuple[str, str]]:
    return [(kind, cls.label) for kind, cls in REGISTRY.items()]
