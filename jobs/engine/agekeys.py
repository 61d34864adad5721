"""age keys of a job (Django-free).

A job that encrypts has an X25519 identity. Archives are encrypted to its public key
("age1…"), so backing up never needs a secret. The identity itself is kept only as an age
file encrypted with the job's backup password (``pyrage.passphrase``): that file is
``backupsite-key.age``, stored in the database and uploaded beside the backups, so a
destination plus the password restores with the stock tool::

    age -d -i backupsite-key.age NAME.tar.zst.age | zstd -d | tar -x

(``age`` asks for the password.) Changing the password re-wraps the same identity, so
old backups stay readable with the new password.

A job whose key is replaced (encryption switched off or to a public key, then a password
again) gets a new identity; its older backups still need the old one. So each key also has
a file of its own, ``backupsite-key-<key id>.age`` (:func:`key_file_name`, the key id a
short hash of the public key), written beside the backups once per key and never removed
by retention; the manifest of an archive names it (``archive.encryption.key_file``).
``backupsite-key.age`` is the newest backup's key, for the simple case.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import pyrage

from jobs.engine.atomic import atomic_path

KEY_FILE_NAME = "backupsite-key.age"
AGE_SUFFIX = ".age"
KEY_ID_LENGTH = 12
#: Every key file name: ``backupsite-key.age`` and ``backupsite-key-<key id>.age``.
KEY_FILE_PATTERN = re.compile(rf"backupsite-key(?:-[0-9a-f]{{{KEY_ID_LENGTH}}})?\.age")


class KeyError_(Exception):
    """A key or password problem, with a message meant for users."""


def new_identity() -> tuple[str, str]:
    """Return (identity "AGE-SECRET-KEY-1…", recipient "age1…")."""
    identity = pyrage.x25519.Identity.generate()
    return str(identity), str(identity.to_public())


def validate_recipient(recipient: str) -> str:
    recipient = recipient.strip()
    try:
        pyrage.x25519.Recipient.from_str(recipient)
    except Exception:  # noqa: BLE001 - pyrage raises several types for bad input
        raise KeyError_("This is not an age public key (it starts with “age1”).") from None
    return recipient


def key_id(recipient: str) -> str:
    """A short, stable name of a public key ("age1…"): the first hex digits of its sha256."""
    return hashlib.sha256(recipient.strip().encode()).hexdigest()[:KEY_ID_LENGTH]


def key_file_name(recipient: str) -> str:
    """The name of the key file of *recipient*'s identity: ``backupsite-key-<key id>.age``."""
    return f"backupsite-key-{key_id(recipient)}{AGE_SUFFIX}"


def is_key_file_name(name: str) -> bool:
    return KEY_FILE_PATTERN.fullmatch(name) is not None


def write_key_file(folder: Path, name: str, key_file: bytes) -> Path:
    """Write *key_file* as *folder*/*name* (atomically, unless the same bytes are there)."""
    path = folder / name
    if not (path.is_file() and path.read_bytes() == key_file):
        with atomic_path(path) as tmp:
            tmp.write_bytes(key_file)
    return path


def wrap_identity(identity: str, password: str) -> bytes:
    """The key file: *identity* (with a comment line, as age-keygen writes it) encrypted
    with *password*. Returns the bytes of ``backupsite-key.age``."""
    if not password:
        raise KeyError_("A backup password is required.")
    recipient = str(pyrage.x25519.Identity.from_str(identity).to_public())
    text = f"# backupsite job key\n# public key: {recipient}\n{identity}\n"
    return pyrage.passphrase.encrypt(text.encode(), password)


def unwrap_identity(key_file: bytes, password: str) -> str:
    """The identity inside a key file; a wrong password raises :class:`KeyError_`."""
    try:
        text = pyrage.passphrase.decrypt(key_file, password).decode()
    except Exception:  # noqa: BLE001 - pyrage.DecryptError and friends
        raise KeyError_("Wrong backup password (or not a backupsite key file).") from None
    for line in text.splitlines():
        if line.startswith("AGE-SECRET-KEY-"):
            return line.strip()
    raise KeyError_("The key file holds no age identity.")


def rewrap(key_file: bytes, old_password: str, new_password: str) -> bytes:
    return wrap_identity(unwrap_identity(key_file, old_password), new_password)


def to_text(key_file: bytes) -> str:
    return base64.b64encode(key_file).decode()


def from_text(text: str) -> bytes:
    return base64.b64decode(text.encode())


def identity_object(identity: str):
    return pyrage.x25519.Identity.from_str(identity)
