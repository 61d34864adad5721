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


def is_sensitive(source: dict) -> bool:
    """Whether a source (a run's snapshot entry, or any dict with its ``kind``) makes an
    archive sensitive: its kind says so, the entry is marked ``"sensitive": true``, or the
    kind is unknown (a kind removed since: fail closed)."""
    if source.get("sensitive"):
        return True
    cls = REGISTRY.get(str(source.get("kind", "")))
    return cls is None or cls.sensitive


__all__ = ["REGISTRY", "SourceError", "SourceKind", "get_kind", "is_sensitive", "kind_choices"]
