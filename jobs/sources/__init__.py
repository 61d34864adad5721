"""The registry of source kinds: one dict from kind to class.

A source kind turns its settings into archive entries (``jobs.engine.Entry``) and can
measure its size for the wizard. Runs build kinds from the JSON snapshot of the job
they run with, so a run keeps the configuration it started with. Adding a kind touches
its own module and one line here.
"""

from __future__ import annotations

from jobs.sources.base import SourceError, SourceKind
from jobs.sources.directory import DirectorySource
from jobs.sources.mysql import MysqlSource
from jobs.sources.panel import PanelDatabaseSource
from jobs.sources.postgres import PostgresSource
from jobs.sources.sqlite import SqliteSource

REGISTRY: dict[str, type[SourceKind]] = {
    DirectorySource.kind: DirectorySource,
    PostgresSource.kind: PostgresSource,
    MysqlSource.kind: MysqlSource,
    SqliteSource.kind: SqliteSource,
    PanelDatabaseSource.kind: PanelDatabaseSource,
}


def get_kind(kind: str) -> type[SourceKind]:
    try:
        return REGISTRY[kind]
    except KeyError:
        raise SourceError(f"Unknown source kind {kind!r}.") from None


def kind_choices() -> list[tuple[str, str]]:
    return [(kind, cls.label) for kind, cls in REGISTRY.items()]


__all__ = ["REGISTRY", "SourceError", "SourceKind", "get_kind", "kind_choices"]
