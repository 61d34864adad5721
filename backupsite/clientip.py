"""The client's address, as far as it can be trusted.

``REMOTE_ADDR`` is the peer of this process: the client itself, or a reverse proxy in
front of the panel. Only when that peer is one of ``BACKUPSITE_TRUSTED_PROXIES``
(addresses or networks: ``127.0.0.1, 10.0.0.0/8, ::1``) is ``X-Forwarded-For`` read,
from the right: every proxy appends the address it received the request from, so the
first address from the right that is *not* a trusted proxy is the client. Anything a
client put in the header itself stays to the left of that and is never believed; a
malformed entry stops the walk at the last trusted hop.

Without trusted proxies (the default) the header is ignored entirely, so a spoofed
``X-Forwarded-For`` changes nothing: not the audit log's IP, not the login throttling
(django-axes is given this function), not the rate limiter's per-address keys.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from django.conf import settings

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=16)
def _networks(entries: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries if entry.strip())


def parse_proxies(entries) -> tuple[IPNetwork, ...]:
    """The trusted proxies as networks; ValueError names a bad entry."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(str(entry).strip(), strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or network.") from None
    return tuple(networks)


def _address(value: str):
    value = value.strip()
    if value.startswith("[") and "]" in value:  # "[::1]:443"
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:  # "192.0.2.1:443"
        value = value.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address, networks: tuple[IPNetwork, ...]) -> bool:
    return any(address.version == net.version and address in net for net in networks)


def client_ip(request) -> str | None:
    """The client's address for *request* (see the module docstring), or None."""
    if request is None:
        return None
    meta = getattr(request, "META", {})
    peer = _address(str(meta.get("REMOTE_ADDR") or ""))
    if peer is None:
        return None
    networks = _networks(tuple(getattr(settings, "BACKUPSITE_TRUSTED_PROXIES", ()) or ()))
    if not networks or not _trusted(peer, networks):
        return str(peer)
    forwarded = [part for part in str(meta.get("HTTP_X_FORWARDED_FOR") or "").split(",") if part.strip()]
    current = peer
    for entry in reversed(forwarded):
        hop = _address(entry)
        if hop is None:
            break  # garbage: believe no further than the last trusted proxy
        current = hop
        if not _trusted(hop, networks):
            break
    return str(current)
