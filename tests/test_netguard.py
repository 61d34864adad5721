"""Which addresses a destination may reach: resolved once, loopback, link-local and
metadata refused unless BACKUPSITE_ALLOW_LOCAL_DESTINATIONS (RELIABILITY 19)."""

from __future__ import annotations

import socket

import pytest

from destinations import netguard
from destinations.backends.base import ConfError, PermanentError

# Run once, in the default pass (tests/teststack.py): address checks: pure functions.
pytestmark = pytest.mark.stack_independent


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.1.2.3",
        "::1",
        "169.254.169.254",
        "fe80::1",
        "0.0.0.0",
        "::",
        "224.0.0.1",
        "100.100.100.200",
        "fd00:ec2::254",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "2002:7f00:1::1",
    ],
)
def test_forbidden_addresses(address):
    assert not netguard.address_allowed(address)


@pytest.mark.parametrize("address", ["192.168.1.20", "10.0.0.5", "172.16.3.4", "8.8.8.8", "2001:db8::1", "fd12::5"])
def test_lan_and_public_addresses_are_allowed(address):
    assert netguard.address_allowed(address)


def test_resolve_refuses_loopback_with_a_generic_message(settings):
    settings.BACKUPSITE_ALLOW_LOCAL_DESTINATIONS = False
    for host in ("127.0.0.1", "localhost", "[::1]".strip("[]"), "169.254.169.254"):
        with pytest.raises(PermanentError) as info:
            netguard.resolve(host, 6379)
        assert "not allowed" in str(info.value) and "127.0.0.1" not in str(info.value)


def test_resolve_refuses_a_name_with_any_forbidden_address(settings, monkeypatch):
    """A name that resolves to a LAN address *and* loopback (rebinding) is refused as a whole."""
    settings.BACKUPSITE_ALLOW_LOCAL_DESTINATIONS = False

    def fake(host, port, type=0):
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.168.1.9", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    with pytest.raises(PermanentError):
        netguard.resolve("rebind.example", 22)


def test_resolve_returns_the_checked_address_to_connect_to(settings, monkeypatch):
    settings.BACKUPSITE_ALLOW_LOCAL_DESTINATIONS = False
    monkeypatch.setattr(
        socket, "getaddrinfo", lambda host, port, type=0: [(socket.AF_INET, 1, 6, "", ("192.168.1.9", port))]
    )
    target = netguard.resolve("nas.example", 22)
    assert target.sockaddr == ("192.168.1.9", 22) and target.host == "nas.example"


def test_allow_local_lifts_the_restriction(settings):
    settings.BACKUPSITE_ALLOW_LOCAL_DESTINATIONS = True
    assert netguard.resolve("127.0.0.1", 22).address == "127.0.0.1"


def test_an_unknown_name_is_a_permanent_error():
    with pytest.raises(PermanentError, match="could not be found"):
        netguard.resolve("no-such-host.invalid", 22)


@pytest.mark.parametrize("bad", ["", "  ", "ftp://x", "a b", "x/y", "user@host", "-oProxyCommand", "a\nb"])
def test_check_host_refuses_odd_input(bad):
    with pytest.raises(ConfError):
        netguard.check_host(bad)


def test_connect_times_out_and_says_so(settings):
    """A port nobody listens on is refused at once; a blackhole address times out within the timeout."""
    settings.BACKUPSITE_ALLOW_LOCAL_DESTINATIONS = True
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(Exception, match="refused the connection"):
        netguard.connect(netguard.resolve("127.0.0.1", port), timeout=2)


@pytest.mark.parametrize(
    ("typed", "host", "port", "folder"),
    [
        ("backup.example.net", "backup.example.net", None, ""),
        ("backup.example.net/branch1", "backup.example.net", None, "branch1"),
        ("ftp://backup.example.net/branch1/", "backup.example.net", None, "branch1"),
        ("ftp://Backup.Example.net:2121/a/b", "backup.example.net", 2121, "a/b"),
        ("[2001:db8::5]:22/x", "2001:db8::5", 22, "x"),
        (" 192.168.1.20/backups ", "192.168.1.20", None, "backups"),
    ],
)
def test_the_server_field_is_split_as_users_type_it(typed, host, port, folder):
    from destinations.backends.net import parse_server

    parsed = parse_server(typed, schemes=("ftp", "ftps"))
    assert (parsed.host, parsed.port, parsed.folder) == (host, port, folder)


@pytest.mark.parametrize(
    "typed", ["", "http://x", "ftp://user:pw@x/a", "x/../etc", "x:99999", "x?a=1", "x\\y", "ftp://"]
)
def test_the_server_field_refuses_odd_input(typed):
    from destinations.backends.net import parse_server

    with pytest.raises(ConfError):
        parse_server(typed, schemes=("ftp", "ftps"))
