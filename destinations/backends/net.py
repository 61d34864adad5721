"""What the network kinds share: the "server" field as users type it, and ports."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from destinations.backends.base import ConfError
from destinations.netguard import check_host


@dataclass(frozen=True)
class ServerField:
    host: str
    port: int | None
    folder: str  # "" or "branch1/backups" (no leading or trailing slash)
    scheme: str = ""


def parse_server(value: str, *, schemes: tuple[str, ...], field: str = "server") -> ServerField:
    """Split what POS vendors tell their users to type into host, port and folder:
    ``backup.example.net``, ``backup.example.net/branch1``, ``ftp://backup.example.net:2121/branch1``,
    ``[2001:db8::5]:22/x``. A scheme not in *schemes* is refused; user names and
    passwords in the URL are refused (they belong in their own fields)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfError("The server is required.", field)
    text = value.strip()
    if any(ord(c) < 32 or ord(c) == 127 for c in text) or "\\" in text:
        raise ConfError("The server contains characters that are not allowed.", field)
    if "://" not in text:
        text = "//" + text
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme and scheme not in schemes:
        raise ConfError(f"Use {' or '.join(s + '://' for s in schemes)} here (not {scheme}://).", field)
    if parts.username or parts.password or "@" in parts.netloc:
        raise ConfError("Put the user name and password in their own fields, not in the server.", field)
    if parts.query or parts.fragment:
        raise ConfError("The server must not contain “?” or “#”.", field)
    try:
        port = parts.port
    except ValueError:
        raise ConfError("The port must be a number between 1 and 65535.", field) from None
    host = check_host(parts.hostname or "", field)
    folder = "/".join(p for p in unquote(parts.path).split("/") if p)
    if any(p in (".", "..") for p in folder.split("/")):
        raise ConfError("The folder must not contain “.” or “..”.", field)
    return ServerField(host=host, port=port, folder=folder, scheme=scheme)


def check_port(value, default: int, field: str = "port") -> int:
    if value in (None, ""):
        return default
    if isinstance(value, bool):
        raise ConfError("The port must be a number between 1 and 65535.", field)
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ConfError("The port must be a number between 1 and 65535.", field) from None
    if not 1 <= port <= 65535:
        raise ConfError("The port must be a number between 1 and 65535.", field)
    return port


def is_certificate_error(exc: BaseException) -> bool:
    """Whether *exc* (or what it wraps) is a failed TLS certificate check, as opposed to
    a TLS connection cut or reset (libraries such as requests and botocore wrap both in
    one ``SSLError``: the first is permanent, the second transient)."""
    import ssl

    seen: set[int] = set()
    pending: list[object] = [exc]
    while pending:
        current = pending.pop()
        if not isinstance(current, BaseException) or id(current) in seen or len(seen) > 20:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(current):
            return True
        pending += [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
    return False
