"""The panel's own database, for disaster recovery of backupsite itself.

It holds every password hash, so it is *sensitive*: an archive with it is for
administrators only (download, verify, restore), and the job page warns when it goes
into an unencrypted job. The dump never carries the rows of the tables registered in
``backupsite.sensitive`` (sessions, verification tickets, the cache): a restored panel
works and asks everyone to log in again. The manifest lists them
(``excluded_table_data``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from django.utils.translation import gettext_lazy as _

from backupsite.sensitive import excluded_table_names
from jobs.sources import dbtools
from jobs.sources.base import SourceError, SourceKind, TestResult
from jobs.sources.dbtools import engine_family
from jobs.sources.sqlite import SqliteSource


class _PanelSqlite(SqliteSource):
    """The panel's own SQLite file: one of the panel's paths on purpose, so the checks for
    a user-configured SQLite source (allowed roots, not a panel file) do not apply."""

    def validate_conf(self, conf) -> None:
        return None


class PanelDatabaseSource(SourceKind):
    """backupsite's own database, for disaster recovery of the panel itself. Always
    present, whatever engine the panel runs on: SQLite (online backup API) or
    PostgreSQL (``pg_dump -Fc``)."""

    kind = "panel_database"
    label = _("Panel database")
    help_text = _("backupsite's own database, for disaster recovery of the panel (always there, cannot be deleted).")
    form_class_path = "jobs.sources.forms.PanelDatabaseForm"
    sensitive = True
    testable = True
    singleton = True

    ARCNAMES = {"sqlite3": "backupsite.sqlite3", "postgresql": "backupsite.pgdump"}

    def _delegate(self) -> SourceKind:
        """The kind that does the work, configured from the panel's database settings."""
        db = dbtools.panel_database_config()
        family = engine_family(db.get("ENGINE", ""))
        excluded = excluded_table_names()
        if family == "sqlite3":
            return _PanelSqlite(self.name, self.slug, {"path": str(db["NAME"]), "exclude_table_data": excluded})
        if family == "postgresql":
            from jobs.sources.postgres import PostgresSource

            options = db.get("OPTIONS") or {}
            settings = {
                "host": str(db.get("HOST") or ""),
                "port": db.get("PORT") or "",
                "database": str(db.get("NAME") or ""),
                "user": str(db.get("USER") or ""),
                "sslmode": str(options.get("sslmode") or ""),
                "exclude_table_data": excluded,
            }
            return PostgresSource(self.name, self.slug, settings, {"password": db.get("PASSWORD") or ""})
        raise SourceError(f"Backing up a {db.get('ENGINE')} panel database is not supported.")

    def describe(self) -> str:
        engine = engine_family(dbtools.panel_database_config().get("ENGINE", ""))
        return "backupsite's own database ({})".format(
            {"sqlite3": "SQLite", "postgresql": "PostgreSQL"}.get(engine, engine)
        )

    def measure(self) -> tuple[int, int]:
        return self._delegate().measure()

    def test(self) -> TestResult:
        return self._delegate().test()

    def manifest_info(self) -> dict:
        return {"excluded_table_data": excluded_table_names()}

    def log_notes(self) -> list[str]:
        tables = ", ".join(excluded_table_names())
        return [
            f"{self.name}: the rows of {tables} are left out (sessions and tokens); "
            "a panel restored from this backup asks everyone to log in again."
        ]

    @contextlib.contextmanager
    def entries(self, staging, on_error):
        delegate = self._delegate()
        family = engine_family(dbtools.panel_database_config().get("ENGINE", ""))
        with delegate.dump(staging, f"{self.slug}/{self.ARCNAMES[family]}") as items:
            yield items

    @staticmethod
    def restore_into(dump_path: Path, database_url: str, *, allow_panel_database: bool = False) -> None:
        """Restore a panel backup (``backupsite.sqlite3`` or ``backupsite.pgdump``) into
        the database the URL names, never over the live panel database."""
        scheme = database_url.split("://", 1)[0].lower() if isinstance(database_url, str) else ""
        if scheme.startswith("sqlite"):
            return SqliteSource.restore_into(dump_path, database_url, allow_panel_database=allow_panel_database)
        if scheme.startswith("postgres") or scheme == "pgsql":
            from jobs.sources.postgres import PostgresSource

            return PostgresSource.restore_into(dump_path, database_url, allow_panel_database=allow_panel_database)
        raise ValueError("The panel database restores into a sqlite:/// or postgres:// URL.")
