"""SSH keys: the private key an administrator pastes, and the server's host key.

No Django here (the bench uses it too).
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
from dataclasses import dataclass

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.S)
FINGERPRINT = re.compile(r"\ASHA256:[A-Za-z0-9+/]{43}\Z")


class KeyProblem(ValueError):
    """The pasted key cannot be used. ``field`` is the form field to blame
    (``private_key`` or ``passphrase``); the message never contains the key."""

    def __init__(self, message: str, field: str = "private_key") -> None:
        super().__init__(message)
        self.field = field


def normalize_key_text(text: str) -> str:
    """The key as an OpenSSH/PEM file: CR/LF undone, and a body whose line breaks were
    lost on the way (pasted into a one-line field) wrapped again."""
    text = (text or "").replace("\r\n", "\n").replace("\r", "\n").strip()
    match = _BLOCK.search(text)
    if match is None:
        return text + "\n"
    label, body = match.group(1), match.group(2)
    if ":" in body:  # legacy encrypted PEM headers (Proc-Type, DEK-Info): keep as typed
        return match.group(0).strip() + "\n"
    body = re.sub(r"\s+", "", body)
    width = 70 if label == "OPENSSH PRIVATE KEY" else 64
    lines = [body[i : i + width] for i in range(0, len(body), width)]
    return "\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----"]) + "\n"


@dataclass
class LoadedKey:
    pkey: paramiko.PKey
    private: object  # the cryptography private key (written out for the OpenSSH client)

    @property
    def type_label(self) -> str:
        return key_type_label(self.pkey)

    def openssh_unencrypted(self) -> bytes:
        """The key in OpenSSH's own format without passphrase (for a 0600 temp file)."""
        return self.private.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )


def load_private_key(text: str, passphrase: str | None = None) -> LoadedKey:
    """Parse a pasted private key (OpenSSH or PEM; RSA, ECDSA or Ed25519)."""
    if not text or not text.strip():
        raise KeyProblem("Paste the private key.")
    if "PuTTY-User-Key-File" in text:
        raise KeyProblem(
            "This is a PuTTY key (.ppk). Export it in OpenSSH format first "
            "(PuTTYgen: Conversions → Export OpenSSH key)."
        )
    normalized = normalize_key_text(text)
    data = normalized.encode()
    match = _BLOCK.search(normalized)
    if match is None or "PRIVATE KEY" not in match.group(1):
        if normalized.startswith(("ssh-", "ecdsa-")):
            raise KeyProblem("This is a public key. Paste the private key (the file without .pub).")
        raise KeyProblem("This is not a private key (it should start with -----BEGIN … PRIVATE KEY-----).")
    password = passphrase.encode() if passphrase else None
    ssh_format = match.group(1) == "OPENSSH PRIVATE KEY"

    def loader(data: bytes, password: bytes | None):
        # RSA keys are checked when they sign (a broken key fails the login); the check
        # here would cost half a second on every connection.
        load = serialization.load_ssh_private_key if ssh_format else serialization.load_pem_private_key
        return load(data, password, unsafe_skip_rsa_key_validation=True)

    try:
        try:
            private = loader(data, password)
        except TypeError:
            if password is None:
                raise KeyProblem("The private key is protected by a passphrase: enter it.", "passphrase") from None
            private = loader(data, None)  # a passphrase for a key that has none: ignore it
            password = None
    except KeyProblem:
        raise
    except ValueError:
        if password is not None:
            raise KeyProblem("The passphrase does not open this private key.", "passphrase") from None
        raise KeyProblem("The private key could not be read (damaged or an unsupported format).") from None
    except Exception:  # noqa: BLE001 - cryptography raises various types for odd input
        raise KeyProblem("The private key could not be read (damaged or an unsupported format).") from None
    try:
        # From the decrypted key object: the passphrase's key derivation (bcrypt, about
        # half a second) runs once, not again inside paramiko.
        if isinstance(private, rsa.RSAPrivateKey):
            pkey = paramiko.RSAKey(key=private)
        elif isinstance(private, ec.EllipticCurvePrivateKey):
            pkey = paramiko.ECDSAKey(vals=(private, private.public_key()))
        elif isinstance(private, ed25519.Ed25519PrivateKey):
            plain = private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            )
            pkey = paramiko.Ed25519Key(file_obj=io.StringIO(plain.decode()))
        else:
            raise KeyProblem("Only RSA, ECDSA and Ed25519 keys are supported.")
    except KeyProblem:
        raise
    except Exception:  # noqa: BLE001 - never let a library put key material into a message
        raise KeyProblem("The private key could not be read (damaged or an unsupported format).") from None
    return LoadedKey(pkey, private)


def fingerprint_of(key: paramiko.PKey) -> str:
    """``SHA256:…`` exactly as ``ssh-keygen -l`` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def key_type_label(key: paramiko.PKey) -> str:
    """``ED25519``, ``RSA``, ``ECDSA``: what ``ssh-keygen -l`` prints in brackets."""
    name = key.get_name()
    if name == "ssh-ed25519":
        return "ED25519"
    if name.startswith("ecdsa-"):
        return "ECDSA"
    if "rsa" in name:
        return "RSA"
    return name


def describe_host_key(key: paramiko.PKey) -> str:
    """``ED25519 key, 256 bits (ssh-ed25519)``."""
    return f"{key_type_label(key)} key, {key.get_bits()} bits ({key.get_name()})"


def normalize_fingerprint(value: str) -> str:
    """A stored or typed fingerprint as ``SHA256:<43 base64 characters>``; ``""`` stays."""
    value = (value or "").strip()
    if not value:
        return ""
    if value.lower().startswith("sha256:"):
        value = "SHA256:" + value[7:]
    value = value.rstrip("=")
    if not FINGERPRINT.match(value):
        raise ValueError("A host-key fingerprint looks like SHA256: followed by 43 letters, digits, + or /.")
    return value
