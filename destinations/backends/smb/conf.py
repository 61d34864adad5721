"""The Windows share's settings: server, share and folder, user, authentication,
encryption; strict, with the error next to the field it concerns.

What people type is accepted in the forms they know it: ``nas``, ``nas:4455``,
``smb://nas/backups/office`` or the UNC path ``\\\\nas\\backups\\office`` for the server,
``backups/office`` (or ``backups\\office``) for the share and its sub-folders, and
``user``, ``DOMAIN\\user`` or ``user@domain.example`` for the user.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from destinations.backends.base import Conf, ConfError
from destinations.backends.net import check_port, parse_server
from destinations.netguard import check_host

DEFAULT_PORT = 445

#: Authentication protocols smbprotocol (through pyspnego) offers.
NEGOTIATE = "negotiate"
NTLM = "ntlm"
KERBEROS = "kerberos"
AUTH_PROTOCOLS = (NEGOTIATE, NTLM, KERBEROS)

# Characters Windows does not allow in share names (MS-SRVS NetName) and in file names.
_SHARE_BAD = re.compile(r'[\x00-\x1f\x7f"\\/\[\]:|<>+=;,*?]')
_NAME_BAD = re.compile(r'[\x00-\x1f\x7f"\\/:|<>*?]')
_RESERVED = re.compile(r"\A(CON|PRN|AUX|NUL|COM[0-9]|LPT[0-9])(\..*)?\Z", re.IGNORECASE)
_USER_BAD = re.compile(r'[\x00-\x1f\x7f"/\[\]:;|=,+*?<>]')


def check_share(value: str, field: str = "share") -> str:
    if not isinstance(value, str) or not value:
        raise ConfError("The share is required (the name after the server, e.g. “backups”).", field)
    if len(value) > 80 or _SHARE_BAD.search(value):
        raise ConfError("The share name contains characters that are not allowed.", field)
    if value.upper() == "IPC$":
        raise ConfError("IPC$ is not a folder share.", field)
    return value


def check_path(value: str, field: str = "share") -> str:
    """Sub-folders inside the share: ``""`` or names joined by ``/``."""
    if value == "":
        return ""
    if not isinstance(value, str):
        raise ConfError("Invalid folder.", field)
    for part in value.split("/"):
        if not part or part in (".", ".."):
            raise ConfError("The folder must not contain empty names, “.” or “..”.", field)
        if _NAME_BAD.search(part) or len(part.encode("utf-16-le")) > 510:
            raise ConfError(f"The folder name “{part}” contains characters Windows does not allow.", field)
        if part[-1] in " ." or _RESERVED.match(part):
            raise ConfError(f"The folder name “{part}” is not allowed on Windows shares.", field)
    return value


def check_user(value: str, field: str = "user") -> str:
    """``user``, ``DOMAIN\\user`` or ``user@domain``; never empty (no anonymous logins)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfError("The user name is required (anonymous and guest logins are not used).", field)
    user = value.strip()
    if len(user) > 256 or _USER_BAD.search(user):
        raise ConfError("The user name contains characters that are not allowed.", field)
    if "\\" in user:
        domain, _, name = user.partition("\\")
        if not domain or not name or "\\" in name or "@" in name:
            raise ConfError("Write the user as DOMAIN\\user, user@domain or just user.", field)
    elif "@" in user:
        name, _, domain = user.rpartition("@")
        if not name or not domain:
            raise ConfError("Write the user as DOMAIN\\user, user@domain or just user.", field)
    return user


def split_share(value: str, field: str = "share") -> tuple[str, str]:
    """``backups/office/daily`` (slashes or backslashes, leading ones ignored) →
    ``("backups", "office/daily")``."""
    text = (value or "").strip().replace("\\", "/").strip("/")
    share, _, path = text.partition("/")
    path = "/".join(p for p in path.split("/") if p != "") if path else ""
    return check_share(share, field), check_path(path, field)


def split_server(value: str, field: str = "server") -> tuple[str, int | None, str]:
    """The server field as typed → host, port (or None) and a ``share/path`` typed
    after the host (``smb://nas/backups``, ``\\\\nas\\backups``), else ``""``."""
    text = (value or "").strip()
    if text.startswith("\\\\") or text.startswith("//"):
        text = text.lstrip("\\/").replace("\\", "/")
    server = parse_server(text, schemes=("smb",), field=field)
    return server.host, server.port, server.folder


@dataclass(frozen=True)
class SmbConf(Conf):
    host: str = ""
    port: int = DEFAULT_PORT
    #: The share name, and the folders inside it (``office/backups``; "" = its root).
    share: str = ""
    path: str = ""
    #: ``user``, ``DOMAIN\\user`` or ``user@domain``.
    user: str = ""
    #: How to log in: ``negotiate`` (Kerberos where it is set up, else NTLM), ``ntlm`` or ``kerberos``.
    auth: str = NEGOTIATE
    #: Refuse to connect unless the whole session is encrypted (SMB 3).
    encrypt: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.host, str):
            raise ConfError("The server is required.", "server")
        object.__setattr__(self, "host", check_host(self.host, "server"))
        object.__setattr__(self, "port", check_port(self.port, DEFAULT_PORT, "server"))
        if not isinstance(self.share, str) or not isinstance(self.path, str):
            raise ConfError("Invalid share.", "share")
        check_share(self.share)
        check_path(self.path)
        object.__setattr__(self, "user", check_user(self.user))
        if self.auth not in AUTH_PROTOCOLS:
            raise ConfError(f"Authentication must be one of: {', '.join(AUTH_PROTOCOLS)}.", "auth")
        if not isinstance(self.encrypt, bool):
            raise ConfError("“Require encryption” must be true or false.", "encrypt")

    @property
    def unc(self) -> str:
        """``\\\\nas\\backups\\office`` (the port is not part of a UNC path)."""
        parts = [self.share, *(self.path.split("/") if self.path else [])]
        return "\\\\" + self.host + "\\" + "\\".join(parts)
