"""What every source kind implements."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import ClassVar

from backupsite.slugs import UnsafeFolderName, safe_folder_name
from jobs.engine import Entry

ErrorCallback = Callable[[str, OSError], None]

# Set by the run around its sources: returns True once a user asked to cancel. Long
# client programs (database dumps) poll it and stop, instead of finishing first.
cancel_check: ContextVar[Callable[[], bool] | None] = ContextVar("cancel_check", default=None)


class SourceError(Exception):
    """A source cannot be read at all (the message is shown to users)."""


class SourceKind:
    kind: ClassVar[str]
    label: ClassVar[str]
    #: An archive holding this source may be downloaded, verified and restored only with
    #: the ``jobs.access_sensitive_run`` permission (administrators): the panel's own
    #: database carries every password hash.
    sensitive: ClassVar[bool] = False

    def __init__(self, name: str, slug: str, settings: dict, secrets: dict | None = None) -> None:
        self.name = name
        # The slug names the source's folder in the archive and its temporary files in
        # the staging folder: refuse "../x" from a row changed behind save()'s back.
        try:
            self.slug = safe_folder_name(slug, "source's folder name")
        except UnsafeFolderName as exc:
            raise SourceError(f"{name}: {exc}") from None
        self.settings = settings or {}
        # Credentials (database passwords): from the Source row's encrypted field, never
        # from the run's JSON snapshot, never on a command line or in a message.
        self._secrets = dict(secrets or {})

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.slug}>"

    @classmethod
    def from_snapshot(cls, snap: dict, secrets: dict | None = None) -> SourceKind:
        return cls(snap["name"], snap["slug"], snap.get("settings", {}), secrets)

    def describe(self) -> str:
        return self.label

    def measure(self) -> tuple[int, int]:
        """(bytes, files) this source would put into an archive."""
        raise NotImplementedError

    def manifest_info(self) -> dict:
        """Extra keys for this source's entry in the manifest header (``sources``)."""
        return {}

    def log_notes(self) -> list[str]:
        """Lines for the run log, before archiving, about what this source leaves out."""
        return []

    @contextlib.contextmanager
    def entries(self, staging: Path, on_error: ErrorCallback) -> Iterator[Iterator[Entry]]:
        """Yield an iterator of entries; temporary files live in *staging* and are
        removed when the context exits, whatever happens."""
        raise NotImplementedError
        yield  # pragma: no cover
