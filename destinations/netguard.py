"""Which network addresses a destination may connect to, resolved once.

A destination's host comes from an administrator, but a test-connection button that
connects anywhere is a port scanner and a way into the cloud's metadata service
(``169.254.169.254``) or into services bound to loopback (Redis on ``127.0.0.1:6379``).
So every network kind resolves its host name **once** through :func:`resolve`, which
refuses loopback, link-local (metadata), unspecified, multicast and reserved addresses
(private LAN ranges are allowed: a NAS lives there), and then connects to the address it
returned, never to the name again (a name that "rebinds" to 127.0.0.1 between the check
and the connection cannot slip through). ``BACKUPSITE_ALLOW_LOCAL_DESTINATIONS`` lifts
the restriction (tests and the demo). The error never echoes what the name resolved to.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from django.conf import settings

from destinations.backends.base import ConfError, PermanentError, TransientError

# Cloud metadata services that are not link-local.
_METADATA = {ipaddress.ip_address("100.100.100.200"), ipaddress.ip_address("fd00:ec2::254")}


def address_allowed(address: str) -> bool:
    """Whether a destination may connect to *address* (an IPv4 or IPv6 literal)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None and not address_allowed(str(embedded)):
            return False
    if ip in _METADATA:
        return False
    return not (ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast or ip.is_reserved)


def local_allowed() -> bool:
    return bool(getattr(settings, "BACKUPSITE_ALLOW_LOCAL_DESTINATIONS", False))


def check_host(value: str, field: str = "host") -> str:
    """A host name or address as typed: no scheme, path, spaces or control characters."""
    if not isinstance(value, str) or not value.strip():
        raise ConfError("The server is required.", field)
    host = value.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if any(c.isspace() or ord(c) < 32 or c in "/\\@?#" for c in host) or len(host) > 253:
        raise ConfError("The server name contains characters that are not allowed.", field)
    if host.startswith("-"):
        raise ConfError("The server name must not start with “-”.", field)
    return host


@dataclass(frozen=True)
class Target:
    host: str  # as configured (TLS server name, messages)
    address: str  # what was checked and what to connect to
    port: int

    @property
    def sockaddr(self) -> tuple[str, int]:
        return (self.address, self.port)


def resolve(host: str, port: int, *, timeout: float | None = None) -> Target:
    """Resolve *host* once and return the address to connect to; refuse addresses a
    destination must not reach (every address the name resolves to must be allowed)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)):
            raise PermanentError(f"The server name {host} could not be found (DNS).") from None
        raise TransientError(f"The server name {host} could not be looked up right now (DNS).") from None
    except (UnicodeError, OSError):
        raise PermanentError(f"The server name {host} could not be found (DNS).") from None
    addresses = []
    for info in infos:
        address = info[4][0]
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise PermanentError(f"The server name {host} could not be found (DNS).")
    if not local_allowed() and not all(address_allowed(a) for a in addresses):
        raise PermanentError(
            "This server address is not allowed for a destination (loopback, link-local and cloud "
            "metadata addresses are refused; set BACKUPSITE_ALLOW_LOCAL_DESTINATIONS to allow them)."
        )
    return Target(host=host, address=addresses[0], port=port)


def connect(target: Target, timeout: float) -> socket.socket:
    """A TCP connection to the checked address, with a timeout on connect and on every
    later read and write."""
    try:
        sock = socket.create_connection(target.sockaddr, timeout=timeout)
    except TimeoutError:
        raise TransientError(f"The server {target.host} did not answer within {timeout:g} seconds.") from None
    except ConnectionRefusedError:
        raise TransientError(f"The server {target.host} refused the connection on port {target.port}.") from None
    except OSError as exc:
        raise TransientError(f"Could not connect to {target.host} ({exc.strerror or type(exc).__name__}).") from None
    sock.settimeout(timeout)
    return sock
