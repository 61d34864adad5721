"""The SFTP kind against a real OpenSSH ``sshd`` started for the test session
(:mod:`tests.sshd`: its own host key, a free loopback port, dedicated local accounts).

``sshd_server`` has three accounts: ``password`` (password login), ``key`` (two Ed25519
keys, the second with a passphrase) and ``rsa`` (an RSA key); ``sshd_server.stray_key``
is authorised nowhere. ``sftp_kind`` logs in with the password into its login directory
(``path="."``); ``sftp_key_kind`` with the key into an absolute folder. Both have the
host key already confirmed.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REQUIRE_BINARIES
from tests.kinds import KindUnderTest, file_access, folder_path
from tests.sshd import SshdUnavailable, SshServer, SshUser, UserSpec, generate_key


def start_or_skip(**kwargs) -> SshServer:
    try:
        return SshServer.start(**kwargs)
    except SshdUnavailable as exc:
        if REQUIRE_BINARIES and "root" not in str(exc):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def sshd_server():
    server = start_or_skip(
        users=[
            UserSpec("password", password=True),
            UserSpec("key", keys=1, passphrase_keys=1),
            UserSpec("rsa", keys=1, key_type="rsa"),
        ],
    )
    stray_dir = Path(tempfile.mkdtemp(prefix="backupsite-stray-key-"))
    server.stray_key = generate_key(stray_dir, "stray")  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(stray_dir, ignore_errors=True)


def raw_access(user: SshUser, base: Path) -> dict:
    """Read and write the server's storage directly (as root), files owned by the user."""

    def raw_write(folder: str, name: str, data: bytes) -> None:
        user.makedirs(folder_path(base, folder))
        path = folder_path(base, folder) / name
        path.write_bytes(data)
        user.chown(path)

    return file_access(base, raw_write)


@pytest.fixture
def sftp_kind(sshd_server, settings) -> KindUnderTest:
    settings.BACKUPSITE_ALLOW_LOCAL_DESTINATIONS = True
    user = sshd_server.users["password"]
    return KindUnderTest(
        kind="sftp",
        settings={
            "host": sshd_server.host,
            "port": sshd_server.port,
            "path": ".",
            "user": user.name,
            "host_key_fingerprint": sshd_server.fingerprint,
        },
        secrets={"password": user.password},
        wrong_secrets={"password": user.password + "-wrong"},
        plain_secrets=[user.password],
        **raw_access(user, user.home),
    )


@pytest.fixture
def sftp_key_kind(sshd_server, settings) -> KindUnderTest:
    settings.BACKUPSITE_ALLOW_LOCAL_DESTINATIONS = True
    user = sshd_server.users["key"]
    key = user.keys[0]  # without passphrase (its key derivation costs ~0.5 s a login)
    base = user.home / "store"
    if not base.is_dir():
        user.makedirs(base)
    return KindUnderTest(
        kind="sftp",
        settings={
            "host": sshd_server.host,
            "port": sshd_server.port,
            "path": str(base),
            "user": user.name,
            "host_key_fingerprint": sshd_server.fingerprint,
        },
        secrets={"private_key": key.private_pem},
        wrong_secrets={"private_key": sshd_server.stray_key.private_pem},
        plain_secrets=[key.private_pem.splitlines()[2]],
        **raw_access(user, base),
    )
