"""What every source kind implements."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, TypeVar

from backupsite.slugs import UnsafeFolderName, safe_folder_name
from jobs.engine import Entry

ErrorCallback = Callable[[str, OSError], None]

# Set by the run around its sources: returns True once a user asked to cancel. Long
# client programs (database dumps) poll it and stop, instead of finishing first.
cancel_check: ContextVar[Callable[[], bool] | None] = ContextVar("cancel_check", default=None)


class SourceError(Exception):
    """A source cannot be read at all (the message is shown to users)."""


class ConfError(ValueError):
    """A setting of a source kind is not valid. ``field`` names the setting, so a form
    shows the message next to that field (None: the settings as a whole)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


T = TypeVar("T")


def on_field(field: str, check: Callable[..., T], *args, **kwargs) -> T:
    """``check(*args, **kwargs)``, its ValueError re-raised as a ConfError on *field*."""
    try:
        return check(*args, **kwargs)
    except ConfError:
        raise
    except ValueError as exc:
        raise ConfError(str(exc), field) from None


@dataclass(frozen=True)
class TestResult:
    """What the *Test* button learned about a source: whether it answered, its server's
    version and the size of what would be backed up. Never a secret."""

    ok: bool
    message: str
    version: str = ""
    size_bytes: int | None = None

    __test__ = False  # not a pytest test class


class SourceKind:
    kind: ClassVar[str]
    label: ClassVar[str]
    #: A short description shown when choosing the kind.
    help_text: ClassVar[str] = ""
    #: Dotted path of the kind's form (a ``jobs.sources.forms.SourceKindForm`` subclass).
    form_class_path: ClassVar[str] = ""
    #: Settings kept encrypted in ``Source.secrets`` (never rendered back into a form).
    secret_fields: ClassVar[tuple[str, ...]] = ()
    #: The *Test* button connects (database kinds) and reports version and size.
    testable: ClassVar[bool] = False
    #: Exactly one source of this kind exists, made by a migration; it cannot be created
    #: or deleted from the pages (the panel's own database).
    singleton: ClassVar[bool] = False
    #: The kind's settings schema: ``parse(dict)`` (ConfError/ValueError), and optionally
    #: ``validate()`` for the checks that look at this server. None: no settings.
    conf_class: ClassVar[type | None] = None
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

    @classmethod
    def check_settings(cls, settings: dict):
        """Parse and validate *settings* as a run will read them; the parsed conf (None
        for a kind without settings). Raises ConfError (or ValueError)."""
        if cls.conf_class is None:
            return None
        conf = cls.conf_class.parse(settings)
        validate = getattr(conf, "validate", None)
        if validate is not None:
            validate()
        return conf

    @classmethod
    def form_class(cls):
        from django.utils.module_loading import import_string

        return import_string(cls.form_class_path)

    def describe(self) -> str:
        return self.label

    def test(self) -> TestResult:
        """Connect and report (database kinds override this)."""
        raise NotImplementedError

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
