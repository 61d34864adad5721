"""The registry of destination kinds: one dict from kind to backend class.

Adding a kind touches its own module (backend + Conf + form), its template if it needs
one, and one line here; nothing else dispatches on the kind. The backend names its form
(``Backend.form_class_path``), its secret fields and its capabilities.
"""

from __future__ import annotations

from destinations.backends.base import (
    Backend,
    DestinationError,
    NotFoundError,
    PermanentError,
    RemoteFile,
    TestResult,
    TransientError,
    UnsupportedError,
)
from destinations.backends.ftp import FtpBackend
from destinations.backends.local import LocalBackend

REGISTRY: dict[str, type[Backend]] = {
    LocalBackend.kind: LocalBackend,
    FtpBackend.kind: FtpBackend,
}


def get_kind(kind: str) -> type[Backend]:
    try:
        return REGISTRY[kind]
    except KeyError:
        raise PermanentError(f"Unknown destination kind {kind!r}.") from None


def kind_choices() -> list[tuple[str, str]]:
    return [(kind, cls.label) for kind, cls in REGISTRY.items()]


__all__ = [
    "REGISTRY",
    "Backend",
    "DestinationError",
    "NotFoundError",
    "PermanentError",
    "RemoteFile",
    "TestResult",
    "TransientError",
    "UnsupportedError",
    "get_kind",
    "kind_choices",
]
