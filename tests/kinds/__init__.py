"""One module per destination kind: a session-scoped real server (where the kind needs
one) and a :class:`KindUnderTest` fixture that ``tests/test_destination_contract.py``
runs the whole contract against. A new kind gets the whole suite by adding its module
here, its name to ``pytest_plugins`` and its fixture name to ``KIND_FIXTURES`` there."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class KindUnderTest:
    """A destination of one kind, configured against a real server, plus raw access to
    that server's storage (bypassing the backend) so the tests can check what is really
    there."""

    kind: str
    settings: dict
    secrets: dict = field(default_factory=dict)
    #: Names of every file really in ``<base>/<folder>`` at the server, hidden ones too.
    raw_names: Callable[[str], list[str]] | None = None
    #: The bytes of ``<base>/<folder>/<name>`` as the server stores them.
    raw_read: Callable[[str, str], bytes] | None = None
    #: Put a file there behind the backend's back (foreign files, leftovers).
    raw_write: Callable[[str, str, bytes], None] | None = None
    #: Settings/secrets that must fail the test button (a wrong password).
    wrong_secrets: dict | None = None
    #: The plain secret values that must never appear in messages or reprs.
    plain_secrets: list[str] = field(default_factory=list)

    def destination(self, **overrides):
        from destinations.models import Destination

        values = {
            "name": f"{self.kind} under test",
            "kind": self.kind,
            "settings": self.settings,
            "secrets": self.secrets,
        }
        values.update(overrides)
        return Destination(**values)

    def backend(self, **overrides):
        return self.destination(**overrides).backend()


def folder_path(base: Path, folder: str) -> Path:
    """``<base>/<folder>`` (*base* itself for ``""``)."""
    return base / folder if folder else base


def file_access(base: Path, raw_write: Callable[[str, str, bytes], None] | None = None) -> dict:
    """``raw_names`` / ``raw_read`` / ``raw_write`` of a :class:`KindUnderTest` whose server
    keeps the destination's files in the local folder *base* (the base path). Files are
    written plainly unless the kind passes its own *raw_write* (another owner, the
    server's own tool)."""

    def raw_names(folder: str) -> list[str]:
        path = folder_path(base, folder)
        return sorted(p.name for p in path.iterdir()) if path.is_dir() else []

    def raw_read(folder: str, name: str) -> bytes:
        return (folder_path(base, folder) / name).read_bytes()

    def plain_write(folder: str, name: str, data: bytes) -> None:
        folder_path(base, folder).mkdir(parents=True, exist_ok=True)
        (folder_path(base, folder) / name).write_bytes(data)

    return {"raw_names": raw_names, "raw_read": raw_read, "raw_write": raw_write or plain_write}


def upload_in_thread(
    backend, path: Path, folder: str, name: str, size: int, sha256: str
) -> tuple[threading.Thread, list]:
    """Start uploading *path* as ``<folder>/<name>`` through *backend* (a session of its
    own) in a thread, for a test that cuts the connection meanwhile. Returns the started
    thread and the list that collects what the upload raised."""
    errors: list[BaseException] = []

    def run():
        try:
            with backend.session() as session:
                session.upload(path, folder, name, expected_size=size, expected_sha256=sha256)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors
