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
from destinations.backends.dropbox import DropboxBackend
from destinations.backends.email import EmailBackend
from destinations.backends.ftp import FtpBackend
from destinations.backends.local import LocalBackend
from destinations.backends.s3 import S3Backend
from destinations.backends.sftp import SftpBackend
from destinations.backends.smb import SmbBackend
from destinations.backends.usb import UsbBackend

REGISTRY: dict[str, type[Backend]] = {
    LocalBackend.kind: LocalBackend,
    UsbBackend.kind: UsbBackend,
    SmbBackend.kind: SmbBackend,
    SftpBackend.kind: SftpBackend,
    FtpBackend.kind: FtpBackend,
    S3Backend.kind: S3Backend,
    DropboxBackend.kind: DropboxBackend,
    EmailBackend.kind: EmailBackend,
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
