"""A kind made for the page tests: a local folder behind a pretend server identity and a
password, so the destination pages' fingerprint confirmation, secrets and test flows
run through the registry exactly as they will for SFTP or FTPS (those kinds are built
on other branches; their own tests prove the protocol side). Nothing here is mocked
beyond the identity itself: files really go to the folder.

Tests register it with ``register(monkeypatch)`` (adds it to
``destinations.backends.REGISTRY`` for that test only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from django import forms

from destinations.backends.base import (
    Conf,
    ConfError,
    Fingerprint,
    FingerprintError,
    PermanentError,
)
from destinations.backends.local import LocalBackend, LocalSession, validate_local_path
from destinations.forms import KindForm
from destinations.netguard import check_host, resolve  # after the backends: netguard imports them

SERVER_KEY = "SHA256:pretendhostkeyJ5tq2yKkAmnXWkQ3dE0ivDfXf9yGvYJv0"
OTHER_KEY = "SHA256:anotherhostkeyQ9Ytz1gq7Kq0q7eXb3mN4vHcX2fN8pLw"
PASSWORD = "correct-horse-battery-staple-42"  # the pretend server's password

#: Every login attempt with the password it carried (to prove none happens before the
#: server's identity is confirmed).
LOGINS: list[str] = []
#: The identity the pretend server shows (tests switch it to OTHER_KEY).
SHOWN = {"key": SERVER_KEY}


@dataclass(frozen=True)
class PinnedConf(Conf):
    path: str = ""
    user: str = ""
    #: Set by confirming the fingerprint on the test page; not a form field.
    host_key: str = ""
    #: Optional: a host the session resolves through netguard first, as network kinds do.
    host: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path.startswith("/"):
            raise ConfError("The path must be absolute (start with /).", "path")
        if not isinstance(self.user, str) or not self.user:
            raise ConfError("The user is required.", "user")

    def validate(self) -> None:
        object.__setattr__(self, "path", validate_local_path(self.path))


class PinnedBackend(LocalBackend):
    kind = "pinned"
    label = "Pinned test server"
    conf_class = PinnedConf
    secret_fields = ("password",)
    form_class_path = "tests.kinds.pinned.PinnedForm"
    help_text = "A pretend server with a host key and a password (tests only)."

    @classmethod
    def describe_conf(cls, conf) -> str:
        return f"{cls.label}: {conf.user}@{conf.path}"

    def base_dir(self) -> Path:
        base = Path(self.conf.path)
        base.mkdir(parents=True, exist_ok=True)
        return base

    def session(self) -> LocalSession:
        if self.conf.host:
            resolve(check_host(self.conf.host), 22, timeout=self.timeout)
        shown = Fingerprint("ssh-host-key", SHOWN["key"], "host_key", "ssh-ed25519")
        if not self.conf.host_key:
            raise FingerprintError("The server's host key is not confirmed yet: check it, then trust it.", shown)
        if self.conf.host_key != SHOWN["key"]:
            raise FingerprintError(
                f"The server's host key changed: {SHOWN['key']} instead of the confirmed {self.conf.host_key}. "
                "Refused.",
                shown,
            )
        LOGINS.append(self._secrets.get("password", ""))
        if self._secrets.get("password") != PASSWORD:
            raise PermanentError("The server refused the user name or password.")
        session = LocalSession(self, self.base_dir())
        session.fingerprint = Fingerprint("ssh-host-key", SHOWN["key"], "host_key", "ssh-ed25519", trusted=True)
        return session


class PinnedForm(KindForm):
    backend_class = PinnedBackend
    secret_fields = ("password",)

    path = forms.CharField(label="Folder", max_length=500)
    user = forms.CharField(label="User", max_length=100)
    host = forms.CharField(label="Server", max_length=200, required=False)
    password = forms.CharField(label="Password", max_length=200, strip=False)


def typed(folder: Path) -> dict:
    """What an administrator types into this kind's fieldset (its form's data keys; the
    wizard adds its step's prefix)."""
    return {"pinned-path": str(folder), "pinned-user": "backup", "pinned-password": PASSWORD}


def register(monkeypatch) -> type[PinnedBackend]:
    from destinations.backends import REGISTRY

    monkeypatch.setitem(REGISTRY, PinnedBackend.kind, PinnedBackend)
    LOGINS.clear()
    SHOWN["key"] = SERVER_KEY
    return PinnedBackend


def pinned_fingerprint(setting: str = "host_key", value: str = SERVER_KEY) -> Fingerprint:
    return Fingerprint("ssh-host-key", value, setting, "ssh-ed25519")
