"""FTP / FTPS: a session-scoped pyftpdlib server (a child process, see
``tests/kinds/ftp_server.py``) and the KindUnderTest fixtures the contract runs against.

Listeners of the one server process, all on 127.0.0.1:

* ``ftps``: explicit TLS required on control and data connections, TLS session reuse
  required on data connections, a certificate for localhost/127.0.0.1 from a private CA
  (untrusted by the system: pinned in the fixtures, or trusted through ``SSL_CERT_FILE``);
* ``plain``: plain FTP;
* ``other``: like ``ftps`` with a certificate for ``other.example.net`` (wrong host);
* ``legacy``: like ``ftps`` but without EPSV, MLSD/MLST and SIZE, announcing 127.0.0.3
  in its PASV replies (where nothing listens), passive ports fixed (``legacy_passive_ports``)
  so the tests can put proxies in front of the data connections too.

Users: ``backup`` (read/write, home ``home``), ``reader`` (read-only, same home) and, where
a tmpfs can be mounted (root), ``full`` whose home is a 2 MiB tmpfs (a full disk).
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.kinds import KindUnderTest, file_access
from tests.kinds import ftp_server as server_program

FULL_DISK_BYTES = 2 * 1024 * 1024


def free_port() -> int:
    # (not tests.servers.free_port: importing that plugin module here, before pytest
    # registers it, would keep pytest from rewriting its asserts)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class FtpTestServer:
    directory: Path
    ports: dict[str, int]
    pki: dict[str, Path]
    passwords: dict[str, str]
    home: Path
    full_home: Path | None
    legacy_passive_ports: list[int]
    fingerprint: str = ""  # of the localhost certificate
    other_fingerprint: str = ""
    host: str = "127.0.0.1"
    users: dict[str, Path] = field(default_factory=dict)

    def settings(self, listener: str = "ftps", *, user: str = "backup", **overrides) -> dict:
        values = {"host": self.host, "port": self.ports[listener], "user": user}
        if listener == "plain":
            values["plain_ftp"] = True
        elif listener in ("ftps", "legacy"):
            values["tls_fingerprint"] = self.fingerprint
        values.update(overrides)
        return values

    def secrets(self, user: str = "backup") -> dict:
        return {"password": self.passwords[user]}


def _mount_tmpfs(path: Path, size: int) -> bool:
    """A small tmpfs (a disk that fills up), where this machine lets us mount one."""
    if shutil.which("mount") is None:
        return False
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


@pytest.fixture(scope="session")
def ftp_server():
    directory = Path(tempfile.mkdtemp(prefix="backupsite-ftp-"))
    pki = server_program.make_pki(directory / "pki")
    home = directory / "home"
    home.mkdir()
    full_home = directory / "full"
    full_home.mkdir()
    mounted = _mount_tmpfs(full_home, FULL_DISK_BYTES)
    # Blanks, quotes, a backslash and non-ASCII: the password must survive the protocol.
    passwords = {name: f"pw {name} \"'\\ ü-{secrets.token_hex(6)}" for name in ("backup", "reader", "full")}
    users = [
        {"name": "backup", "password": passwords["backup"], "home": str(home), "perm": "elradfmwMT"},
        {"name": "reader", "password": passwords["reader"], "home": str(home), "perm": "elr"},
    ]
    if mounted:
        users.append({"name": "full", "password": passwords["full"], "home": str(full_home), "perm": "elradfmwMT"})
    legacy_ports = [free_port() for _ in range(3)]
    tls_localhost = {"tls": True, "cert": str(pki["localhost_cert"]), "key": str(pki["localhost_key"])}
    config = {
        "users": users,
        "listeners": [
            {"name": "ftps", **tls_localhost, "require_reuse": True},
            {"name": "plain"},
            {"name": "other", "tls": True, "cert": str(pki["other_cert"]), "key": str(pki["other_key"])},
            {
                "name": "legacy",
                **tls_localhost,
                "require_reuse": True,
                "drop": ["EPSV", "MLSD", "MLST", "SIZE"],
                "masquerade": "127.0.0.3",
                "passive_ports": legacy_ports,
            },
        ],
    }
    proc, ports = server_program.start(config, directory)
    server = FtpTestServer(
        directory=directory,
        ports=ports,
        pki=pki,
        passwords=passwords,
        home=home,
        full_home=full_home if mounted else None,
        legacy_passive_ports=legacy_ports,
        fingerprint=server_program.certificate_sha256(pki["localhost_cert"]),
        other_fingerprint=server_program.certificate_sha256(pki["other_cert"]),
    )
    try:
        yield server
    finally:
        server_program.stop(proc)
        if mounted:
            subprocess.run(["umount", str(full_home)], capture_output=True, check=False)
        with contextlib.suppress(OSError):
            shutil.rmtree(directory)


def _kind(server: FtpTestServer, settings, listener: str) -> KindUnderTest:
    settings.BACKUPSITE_ALLOW_LOCAL_DESTINATIONS = True
    return KindUnderTest(
        kind="ftp",
        settings=server.settings(listener),
        secrets=server.secrets(),
        **file_access(server.home),
        wrong_secrets={"password": "wrong-" + secrets.token_hex(4)},
        plain_secrets=[server.passwords["backup"]],
    )


@pytest.fixture
def ftps_kind(ftp_server, settings) -> KindUnderTest:
    """FTPS (explicit TLS, session reuse required), the certificate pinned."""
    return _kind(ftp_server, settings, "ftps")


@pytest.fixture
def ftp_plain_kind(ftp_server, settings) -> KindUnderTest:
    """Plain FTP, ticked on purpose."""
    return _kind(ftp_server, settings, "plain")


@pytest.fixture
def ftp_legacy_kind(ftp_server, settings) -> KindUnderTest:
    """FTPS to an old server: PASV with a bogus announced address, LIST, no SIZE."""
    return _kind(ftp_server, settings, "legacy")
