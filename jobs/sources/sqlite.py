"""SQLite databases: a consistent copy of a live database through the online backup API.

Copying the file with ``cp`` while an application writes can give a torn, corrupt copy
(and misses whatever still sits in the ``-wal`` file). ``sqlite3.Connection.backup``
copies every page under one read transaction instead, so the copy is exactly the
database as of one moment, whoever keeps writing. The source is opened read-only.
The copy is an ordinary SQLite file: restore by copying it into place.

With ``exclude_table_data`` (the panel's own database: sessions, tokens) the rows of
those tables are then deleted from the *copy* (never the live file) with
``secure_delete`` on and the copy is vacuumed, so no deleted row survives in a free page
or a journal; the tables themselves stay.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from django.utils.translation import gettext_lazy as _

from jobs.engine.atomic import fsync_dir
from jobs.sources.base import ConfError, SourceError, TestResult, on_field
from jobs.sources.dbtools import (
    DumpSource,
    RestoreRefused,
    check_table_names,
    parse_database_url,
    refuse_panel_database,
    temp_file,
)

BUSY_TIMEOUT = 60  # seconds to wait for a writer holding an exclusive lock
HEADER = b"SQLite format 3\x00"


@dataclass(frozen=True)
class SqliteConf:
    path: str
    exclude_table_data: tuple[str, ...] = ()

    @classmethod
    def parse(cls, data: dict) -> SqliteConf:
        exclude = on_field("exclude_table_data", check_table_names, (data or {}).get("exclude_table_data"))
        path = (data or {}).get("path")
        if not isinstance(path, str) or not path.startswith("/") or "\x00" in path:
            raise ConfError("A SQLite source needs the absolute path of the database file.", "path")
        if any(ord(c) < 32 or ord(c) == 127 for c in path):
            raise ConfError("The path must not contain control characters.", "path")
        path = os.path.normpath(path)
        if path == "/" or path.endswith("/"):
            raise ConfError("A SQLite source needs the path of a file, not of a folder.", "path")
        return cls(path, exclude)

    def validate(self) -> None:
        """The file is inside BACKUPSITE_SOURCE_ROOTS (when set) and is not one of the
        panel's own files (its database belongs to the "Panel database" source, which
        leaves out sessions and keys)."""
        from jobs.sources.directory import check_source_path

        on_field("path", check_source_path, self.path, "database file")


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def backup_database(source: str | Path, target: Path, *, exclude_table_data=()) -> list[str]:
    """Copy the live SQLite database *source* into the new file *target*, consistently
    (sqlite3.Error on failure). *source* is opened read-only: never written to. The rows
    of *exclude_table_data* are then removed from the copy (:func:`remove_table_data`);
    returns the tables emptied."""
    src = sqlite3.connect(f"{Path(source).absolute().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)  # pages=-1: all pages in one step, under one read transaction
        finally:
            dst.close()
    finally:
        src.close()
    return remove_table_data(target, exclude_table_data) if exclude_table_data else []


def remove_table_data(copy: Path, tables) -> list[str]:
    """Delete every row of those *tables* that exist from the SQLite file *copy* (a
    backup copy: never call this on a live database) so that none survives anywhere in
    the file: ``secure_delete`` zeroes what is deleted, ``VACUUM`` rebuilds the file
    without free pages (old content the live file still had in free pages goes too).
    The copy is switched to a rollback journal first, so nothing waits in a ``-wal``
    file. Returns the tables emptied (their schema stays)."""
    conn = sqlite3.connect(copy, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA secure_delete=ON")
        existing = {
            name.casefold(): name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        emptied = [existing[t.casefold()] for t in tables if t.casefold() in existing]
        conn.execute("BEGIN IMMEDIATE")
        for table in emptied:
            conn.execute(f"DELETE FROM {quote_identifier(table)}")  # noqa: S608 - a quoted identifier
        conn.execute("COMMIT")
        conn.execute("VACUUM")
    finally:
        conn.close()
    return emptied


def database_size(path: str | Path) -> int:
    """The file's size plus what still sits in its write-ahead log."""
    return sum(p.stat().st_size for p in (Path(path), Path(f"{path}-wal")) if p.exists())


class SqliteSource(DumpSource):
    kind = "sqlite"
    label = _("SQLite database")
    help_text = _("A SQLite database file on this server, copied consistently while it is in use.")
    form_class_path = "jobs.sources.forms.SqliteForm"
    title = "SQLite"
    conf_class = SqliteConf
    temp_prefix = "sqlite"

    def describe(self) -> str:
        return f"{self.label} {self.conf.path}"

    def validate_conf(self, conf: SqliteConf) -> None:
        """The checks of a user-configured file (allowed roots, not the panel's own)."""
        try:
            conf.validate()
        except ValueError as exc:
            raise SourceError(f"{self.what}: {exc}") from None

    def _check(self) -> SqliteConf:
        conf = self.conf
        self.validate_conf(conf)
        if not os.path.isfile(conf.path):
            raise SourceError(f"{self.what}: the file {conf.path} does not exist.")
        if not os.access(conf.path, os.R_OK):
            raise SourceError(f"{self.what}: the file {conf.path} cannot be read by backupsite.")
        return conf

    def dump_name(self) -> str:
        return os.path.basename(self.conf.path)

    def test(self) -> TestResult:
        """Open the file read-only as a database (its header and schema are read) and
        report SQLite's version (the library this panel uses) and the file's size."""
        conf = self._check()
        try:
            conn = sqlite3.connect(f"{Path(conf.path).absolute().as_uri()}?mode=ro", uri=True, timeout=5)
            try:
                version = conn.execute("SELECT sqlite_version()").fetchone()[0]
                tables = conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise SourceError(f"{self.what}: {conf.path} cannot be read as a database: {exc}") from None
        size = database_size(conf.path)
        return TestResult(True, f"{conf.path} is a SQLite database with {tables} table(s).", f"SQLite {version}", size)

    def size(self) -> int:
        return database_size(self._check().path)

    def write_dump(self, target: Path, staging: Path) -> None:
        conf = self._check()
        try:
            backup_database(conf.path, target, exclude_table_data=conf.exclude_table_data)
        except sqlite3.Error as exc:
            raise SourceError(f"{self.what}: cannot copy {conf.path}: {exc}") from None

    @staticmethod
    def restore_into(dump_path: Path, database_url: str, *, allow_panel_database: bool = False) -> None:
        """Copy a backed-up SQLite file to the path a ``sqlite:////absolute/path`` URL
        names. Refuses to overwrite a non-empty file, and the panel's own database."""
        config = parse_database_url(database_url, "sqlite3")
        target = Path(str(config["NAME"]))
        if not target.is_absolute():
            raise ValueError("Give an absolute path: sqlite:////absolute/path/to/file.sqlite3 (four slashes).")
        refuse_panel_database(config, allow_panel_database)
        dump_path = Path(dump_path)
        try:
            with open(dump_path, "rb") as fh:
                if fh.read(len(HEADER)) != HEADER:
                    raise SourceError(f"{dump_path} is not a SQLite database.")
        except FileNotFoundError:
            raise SourceError(f"No dump file at {dump_path}.") from None
        for existing in (target, Path(f"{target}-wal")):
            if existing.exists() and (not existing.is_file() or existing.stat().st_size > 0):
                raise RestoreRefused(f"Refusing to overwrite {existing}: it exists and is not empty.")
        if not target.parent.is_dir():
            raise SourceError(f"The folder {target.parent} does not exist.")
        # Write beside the target, then rename: a reader never sees half a database.
        with temp_file(target.parent, f"restore-{target.name}") as tmp:
            shutil.copyfile(dump_path, tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            if target.exists() and target.stat().st_size > 0:  # appeared meanwhile
                raise RestoreRefused(f"Refusing to overwrite {target}: it exists and is not empty.")
            os.replace(tmp, target)
        fsync_dir(target.parent)
