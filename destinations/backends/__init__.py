"""The registry of destination kinds: one dict from kind to backend class.

Adding a kind touches its own module (backend + Conf), its form and its template, and
one line here; nothing else dispatches on the kind.
"""

from __future__ import annotations

from destinations.backends.base import Backend, DestinationError, RemoteFile
from destinations.backends.local import LocalBackend

REGISTRY: dict[str, type[Backend]] = {
    LocalBackend.kind: LocalBackend,
}


def get_kind(kind: str) -> type[Backend]:
    return REGISTRY[kind]


def kind_choices() -> list[tuple[str, str]]:
    return [(kind, cls.label) for kind, cls in REGISTRY.items()]


__all__ = ["REGISTRY", "Backend", "DestinationError", "RemoteFile", "get_kind", "kind_choices"]
