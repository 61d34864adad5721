"""The SFTP kind against a real OpenSSH sshd (``tests.kinds.sftp``): host-key
confirmation, each failure mode with its own message, timeouts, cut connections, large
files, downloads with offsets, the OpenSSH client path for key logins, the form.

The shared contract (``tests/test_destination_contract.py``) runs too, for a password
and a key login."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paramiko
import pytest

from destinations.backends import sftp as sftp_kind_module
from destinations.backends.base import (
    Cancelled,
    ConfError,
    FingerprintError,
    NotFoundError,
    PermanentError,
    TransientError,
)
from destinations.backends.sftp import SftpConf, openssh
from destinations.backends.sftp.form import SftpForm
from tests.kinds import KindUnderTest
from tests.sshd import SshServer, free_port
from tests.tcpproxy import TcpProxy

pytest_plugins = ["tests.kinds.sftp"]
pytestmark = pytest.mark.django_db

REPO = Path(__file__).resolve().parent.parent
MIB = 1 << 20


@pytest.fixture
def folder() -> str:
    return f"backupsite/sftp-{secrets.token_hex(4)}"


def with_settings(kind: KindUnderTest, **changes) -> dict:
    return {**kind.settings, **changes}


def make_file(path: Path, size: int, *, sparse_every: int = 0) -> str:
    """Random bytes, or (``sparse_every``) a sparse file with 1 MiB of random bytes at
    every *sparse_every* offset: large files made in a moment. Returns the sha256."""
    with open(path, "wb") as fh:
        if sparse_every:
            fh.truncate(size)
            for offset in range(0, size - MIB, sparse_every):
                fh.seek(offset)
                fh.write(os.urandom(MIB))
        else:
            block = os.urandom(min(size, MIB))
            left = size
            while left:
                fh.write(block[: min(left, len(block))])
                left -= min(left, len(block))
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(4 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


def new_log(server: SshServer, mark: int, *, until: str | None = None, wait: float = 5.0) -> str:
    """What sshd logged since *mark* (waiting up to *wait* s for a line matching *until*)."""
    deadline = time.monotonic() + wait
    while True:
        with open(server.log, "rb") as fh:
            fh.seek(mark)
            text = fh.read().decode(errors="replace")
        if until is None or re.search(until, text) or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def log_mark(server: SshServer) -> int:
    return server.log.stat().st_size


# --- the host key ----------------------------------------------------------------------
def test_the_first_test_shows_the_host_key_and_sends_no_credentials(sftp_kind, sshd_server):
    user = sshd_server.users["password"]
    unconfirmed = with_settings(sftp_kind, host_key_fingerprint="")
    mark = log_mark(sshd_server)
    # Even with a wrong password: nothing is sent before the key is confirmed.
    result = sftp_kind.backend(settings=unconfirmed, secrets={"password": "wrong password"}).test()
    assert not result.ok
    assert result.needs_confirmation
    fp = result.fingerprint
    assert fp.kind == "ssh-host-key" and fp.setting == "host_key_fingerprint" and not fp.trusted
    assert fp.value == sshd_server.fingerprint  # exactly as ssh-keygen -l prints it
    assert "ED25519" in fp.description
    assert "Confirm" in result.message and sshd_server.fingerprint in result.message
    logged = new_log(sshd_server, mark, until=r"preauth|closed|Disconnected")
    assert "Connection from" in logged
    assert user.name not in logged, "a login was attempted before the host key was confirmed"

    # The administrator confirms (the pages store Fingerprint.value under Fingerprint.setting).
    confirmed = {**unconfirmed, fp.setting: fp.value}
    result = sftp_kind.backend(settings=confirmed).test()
    assert result.ok, result.message
    assert result.fingerprint.trusted and result.fingerprint.value == sshd_server.fingerprint
    details = dict(result.details)
    assert sshd_server.fingerprint in details["Host key"]
    assert details["Login"] == "password"
    assert details["Encryption"].startswith("aes") and "gcm" in details["Encryption"]  # AES-GCM preferred
    assert details["Replacing files"].startswith("atomic")
    assert result.free_bytes and result.free_bytes > 0  # statvfs@openssh.com
    assert result.remote_folder.startswith(f"sftp://127.0.0.1:{sshd_server.port}/")
    assert result.remote_folder.endswith(f"{user.name}/backupsite")


def test_a_changed_host_key_is_refused_naming_both_fingerprints(sftp_kind, sshd_server):
    impostor = SshServer.start(share_users_with=sshd_server)  # same accounts, another host key
    try:
        assert impostor.fingerprint != sshd_server.fingerprint
        settings = with_settings(sftp_kind, port=impostor.port)  # pinned: the real server's key
        mark = log_mark(impostor)
        result = sftp_kind.backend(settings=settings).test()
        assert not result.ok
        assert sshd_server.fingerprint in result.message and impostor.fingerprint in result.message
        assert "changed" in result.message
        assert result.fingerprint.value == impostor.fingerprint and not result.fingerprint.trusted
        with pytest.raises(FingerprintError):
            sftp_kind.backend(settings=settings).session()
        logged = new_log(impostor, mark, until=r"preauth|closed|Disconnected")
        assert sshd_server.users["password"].name not in logged, "the password went to the impostor"
    finally:
        impostor.stop()


# --- credentials -------------------------------------------------------------------------
def test_a_wrong_password_says_so_and_is_never_shown_or_logged(sftp_kind, caplog):
    caplog.set_level(logging.DEBUG)
    right = sftp_kind.secrets["password"]
    wrong = right + "-wrong"
    result = sftp_kind.backend(secrets={"password": wrong}).test()
    assert not result.ok
    assert "wrong user name or password" in result.message
    with pytest.raises(PermanentError) as info:
        sftp_kind.backend(secrets={"password": wrong}).session()
    # A whole successful session too: connect, upload, list, read, delete.
    backend = sftp_kind.backend()
    assert backend.test().ok
    for secret in (right, wrong):
        assert secret not in result.message
        assert secret not in repr(result) and secret not in str(result.to_dict())
        assert secret not in str(info.value) and secret not in repr(info.value)
        assert secret not in repr(backend)
        for record in caplog.records:
            assert secret not in record.getMessage(), record.name
            assert secret not in repr(record.args), record.name
    assert any(r.name.startswith("paramiko") for r in caplog.records)  # the libraries' DEBUG logs were seen


def test_keys_refused_and_passphrases_wrong_or_missing_have_their_own_messages(sftp_key_kind, sshd_server):
    user = sshd_server.users["key"]
    protected = user.keys[1]
    result = sftp_key_kind.backend(secrets={"private_key": sshd_server.stray_key.private_pem}).test()
    assert not result.ok and "refused the key" in result.message

    result = sftp_key_kind.backend(secrets={"private_key": protected.private_pem, "passphrase": "not it"}).test()
    assert not result.ok and "passphrase does not open" in result.message
    assert "not it" not in result.message

    result = sftp_key_kind.backend(secrets={"private_key": protected.private_pem}).test()
    assert not result.ok and "protected by a passphrase" in result.message

    result = sftp_key_kind.backend(
        secrets={"private_key": protected.private_pem, "passphrase": protected.passphrase}
    ).test()
    assert result.ok, result.message
    assert dict(result.details)["Login"] == "key (ED25519)"
    assert protected.passphrase not in str(result.to_dict())


def test_an_rsa_key_logs_in(sftp_kind, sshd_server):
    user = sshd_server.users["rsa"]
    settings = with_settings(sftp_kind, user=user.name)
    result = sftp_kind.backend(settings=settings, secrets={"private_key": user.keys[0].private_pem}).test()
    assert result.ok, result.message
    assert dict(result.details)["Login"] == "key (RSA)"


def test_neither_password_nor_key_is_a_clear_error(sftp_kind):
    result = sftp_kind.backend(secrets={}).test()
    assert not result.ok and "password or a private key" in result.message


# --- unreachable, silent, missing --------------------------------------------------------
def test_a_server_that_accepts_but_never_greets_times_out(sftp_kind, settings):
    settings.BACKUPSITE_DESTINATION_TIMEOUT = 1.5
    with TcpProxy(None) as hole:
        started = time.monotonic()
        with pytest.raises(TransientError) as info:
            sftp_kind.backend(settings=with_settings(sftp_kind, port=hole.port)).session()
        elapsed = time.monotonic() - started
        assert hole.connections == 1
    assert elapsed < 5, f"took {elapsed:.1f} s with a 1.5 s timeout"
    assert "no SSH greeting within 1.5 seconds" in info.value.message


def test_a_server_that_greets_and_then_goes_silent_times_out(sftp_kind, settings):
    settings.BACKUPSITE_DESTINATION_TIMEOUT = 1.5
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def serve():
        conn, _ = listener.accept()
        accepted.append(conn)
        conn.sendall(b"SSH-2.0-OpenSSH_9.2p1 Silent\r\n")  # and then nothing (no key exchange)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        result = sftp_kind.backend(settings=with_settings(sftp_kind, port=listener.getsockname()[1])).test()
        elapsed = time.monotonic() - started
    finally:
        for conn in accepted:
            conn.close()
        listener.close()
    assert not result.ok
    assert elapsed < 6, f"took {elapsed:.1f} s with a 1.5 s timeout"
    assert "within 1.5 seconds" in result.message
    assert "Silent" not in result.message  # the server's banner is never echoed


def test_a_closed_port_is_refused(sftp_kind):
    result = sftp_kind.backend(settings=with_settings(sftp_kind, port=free_port())).test()
    assert not result.ok and "refused the connection" in result.message


def test_not_an_ssh_server_is_said_plainly(sftp_kind, settings):
    settings.BACKUPSITE_DESTINATION_TIMEOUT = 3
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = listener.accept()
        conn.sendall(b"220 ftp.example.net FTP server ready (secret banner)\r\n")
        time.sleep(2)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        result = sftp_kind.backend(settings=with_settings(sftp_kind, port=listener.getsockname()[1])).test()
    finally:
        listener.close()
    assert not result.ok
    assert "does not speak SSH" in result.message
    assert "secret banner" not in result.message


def test_a_missing_folder_or_a_file_as_folder_is_reported(sftp_kind, sshd_server):
    user = sshd_server.users["password"]
    result = sftp_kind.backend(settings=with_settings(sftp_kind, path="/nonexistent/backups")).test()
    assert not result.ok and result.message == "The folder /nonexistent/backups does not exist on the server."
    with pytest.raises(NotFoundError):
        sftp_kind.backend(settings=with_settings(sftp_kind, path="missing-folder")).session()
    (user.home / "a-file").write_bytes(b"x")
    result = sftp_kind.backend(settings=with_settings(sftp_kind, path="a-file")).test()
    assert not result.ok and "is not a folder" in result.message


def test_a_folder_without_write_permission_is_reported(sftp_kind, sshd_server):
    user = sshd_server.users["password"]
    locked = user.home / f"locked-{secrets.token_hex(3)}"
    locked.mkdir(mode=0o555)  # owned by root, not writable by the account
    result = sftp_kind.backend(settings=with_settings(sftp_kind, path=locked.name)).test()
    assert not result.ok and "Permission denied" in result.message


def test_a_full_disk_fails_at_once_with_its_own_message(sftp_kind, sshd_server, tmp_path):
    user = sshd_server.users["password"]
    full = user.home / f"full-{secrets.token_hex(3)}"
    full.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(full)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here to fill: {mounted.stderr.decode().strip()}")
    try:
        user.chown(full)
        path = tmp_path / "big.bin"
        sha = make_file(path, 6 * MIB)
        backend = sftp_kind.backend(settings=with_settings(sftp_kind, path=full.name))
        with backend.session() as session:
            with pytest.raises(PermanentError) as info:
                session.upload(path, "backupsite", "big.tar.zst", expected_size=6 * MIB, expected_sha256=sha)
            assert "No space left on the destination" in info.value.message
            assert session.list("backupsite") == []
        assert sorted(p.name for p in (full / "backupsite").iterdir()) == []  # not even the partial
    finally:
        subprocess.run(["umount", "-l", str(full)], capture_output=True)


# --- cut and stalled connections ------------------------------------------------------------
class FreezableProxy(TcpProxy):
    """A TcpProxy that can stop forwarding without closing anything (a network that
    silently drops everything)."""

    def __init__(self, target):
        self.frozen = threading.Event()
        super().__init__(target)

    def _pump(self, src, dst, up):
        src.settimeout(None)
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while self.frozen.is_set():
                    time.sleep(0.05)
                dst.sendall(data)
                with self._lock:
                    if up:
                        self.bytes_up += len(data)
                    else:
                        self.bytes_down += len(data)
        except OSError:
            pass


@pytest.fixture(params=["password", "key"])
def login(request, sftp_kind, sftp_key_kind) -> KindUnderTest:
    """Both logins: password (paramiko's transfers) and key (OpenSSH's client for large files)."""
    return sftp_kind if request.param == "password" else sftp_key_kind


@pytest.fixture
def openssh_calls(monkeypatch) -> list:
    calls = []
    real = openssh.upload

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(openssh, "upload", spy)
    return calls


def test_a_cut_connection_mid_upload_leaves_nothing_under_the_final_name(login, tmp_path, folder, openssh_calls):
    path = tmp_path / "cut.bin"
    sha = make_file(path, 64 * MIB)
    with TcpProxy(("127.0.0.1", login.settings["port"])) as proxy:
        backend = login.backend(settings=with_settings(login, port=proxy.port))
        cut = []

        def progress(done: int) -> None:
            if done >= 12 * MIB and not cut:
                cut.append(done)
                proxy.cut()

        started = time.monotonic()
        with pytest.raises(TransientError) as info, backend.session() as session:
            session.upload(path, folder, "cut.tar.zst", expected_size=64 * MIB, expected_sha256=sha, progress=progress)
        assert time.monotonic() - started < 60
    assert cut, "the upload never got far enough to be cut"
    assert "cut.tar.zst" not in login.raw_names(folder)
    assert info.value.message
    assert bool(openssh_calls) == ("private_key" in login.secrets)  # key logins went through OpenSSH


def test_a_network_that_goes_silent_mid_upload_times_out(sftp_kind, tmp_path, folder, settings):
    settings.BACKUPSITE_DESTINATION_TIMEOUT = 2
    path = tmp_path / "stall.bin"
    sha = make_file(path, 64 * MIB)
    proxy = FreezableProxy(("127.0.0.1", sftp_kind.settings["port"]))
    try:
        backend = sftp_kind.backend(settings=with_settings(sftp_kind, port=proxy.port))

        def progress(done: int) -> None:
            if done >= 8 * MIB:
                proxy.frozen.set()

        with backend.session() as session:
            started = time.monotonic()
            with pytest.raises(TransientError) as info:
                session.upload(
                    path, folder, "stall.tar.zst", expected_size=64 * MIB, expected_sha256=sha, progress=progress
                )
            elapsed = time.monotonic() - started
    finally:
        proxy.frozen.clear()
        proxy.close()
    assert proxy.frozen is not None and elapsed < 15, f"took {elapsed:.1f} s with a 2 s timeout"
    assert "2 seconds" in info.value.message
    assert "stall.tar.zst" not in sftp_kind.raw_names(folder)


# --- large files ----------------------------------------------------------------------------
@pytest.mark.slow
def test_a_300_mb_upload_arrives_with_the_right_checksum(login, tmp_path, folder, openssh_calls):
    size = 300 * MIB
    path = tmp_path / "big.bin"
    sha = make_file(path, size, sparse_every=16 * MIB)
    try:
        started = time.monotonic()
        with login.backend().session() as session:
            session.upload(path, folder, "big.tar.zst", expected_size=size, expected_sha256=sha)
            assert session.stat(folder, "big.tar.zst").size == size
            with session.open(folder, "big.tar.zst", offset=size - 5 * MIB) as fh:
                tail = hashlib.sha256(fh.read(10 * MIB)).hexdigest()
        elapsed = time.monotonic() - started
        digest = hashlib.sha256()
        with open(_raw_path(login, folder, "big.tar.zst"), "rb") as fh:
            while chunk := fh.read(4 * MIB):
                digest.update(chunk)
        assert digest.hexdigest() == sha
        with open(path, "rb") as fh:
            fh.seek(size - 5 * MIB)
            assert hashlib.sha256(fh.read()).hexdigest() == tail
        assert bool(openssh_calls) == ("private_key" in login.secrets)
        print(f"300 MB via {'OpenSSH' if openssh_calls else 'paramiko'}: {size / elapsed / 1e6:.0f} MB/s")
    finally:
        path.unlink(missing_ok=True)
        Path(_raw_path(login, folder, "big.tar.zst")).unlink(missing_ok=True)


def _raw_path(kind: KindUnderTest, folder: str, name: str) -> str:
    """The file as the server stores it (the kind's base is its home or an absolute path)."""
    base = kind.settings["path"]
    if base == ".":
        import pwd

        base = pwd.getpwnam(kind.settings["user"]).pw_dir
    return os.path.join(base, folder, name)


# --- downloads -----------------------------------------------------------------------------
def test_downloads_stream_from_any_offset_and_streams_can_interleave(sftp_kind, tmp_path, folder):
    size = 5 * MIB + 123
    path = tmp_path / "dl.bin"
    make_file(path, size)
    data = path.read_bytes()
    with sftp_kind.backend().session() as session:
        session.upload(path, folder, "dl.tar.zst", expected_size=size)
        for offset in (0, 1, 255 * 1024, 255 * 1024 + 1, 5 * MIB + 100, size, size + 10):
            with session.open(folder, "dl.tar.zst", offset) as fh:
                got = bytearray()
                while chunk := fh.read(70_001):  # odd sizes, across request boundaries
                    got += chunk
            assert bytes(got) == data[offset:], offset
        a = session.open(folder, "dl.tar.zst")
        b = session.open(folder, "dl.tar.zst", 3 * MIB)
        parts_a, parts_b = [a.read(MIB)], [b.read(MIB)]
        a.close()  # closed early: its channel goes, the session stays usable
        parts_b.append(b.read(10 * MIB))
        b.close()
        assert parts_a[0] == data[:MIB] and b"".join(parts_b) == data[3 * MIB :]
        assert [f.name for f in session.list(folder)] == ["dl.tar.zst"]
        buf = bytearray(MIB)
        with session.open(folder, "dl.tar.zst", size - 10) as fh:
            assert fh.readinto(buf) == 10 and bytes(buf[:10]) == data[-10:]


def test_a_download_whose_connection_is_cut_raises_a_transient_error(sftp_kind, tmp_path, folder):
    path = tmp_path / "dl.bin"
    make_file(path, 32 * MIB)
    with sftp_kind.backend().session() as session:
        session.upload(path, folder, "dl.tar.zst", expected_size=32 * MIB)
    with TcpProxy(("127.0.0.1", sftp_kind.settings["port"])) as proxy:
        stream = sftp_kind.backend(settings=with_settings(sftp_kind, port=proxy.port)).open(folder, "dl.tar.zst")
        assert len(stream.read(MIB)) == MIB
        proxy.cut()
        with pytest.raises(TransientError):
            while stream.read(MIB):
                pass
        stream.close()


# --- server features -------------------------------------------------------------------------
def test_request_sizes_and_features_follow_what_the_server_announces(sftp_kind):
    with sftp_kind.backend().session() as session:
        assert {"posix-rename@openssh.com", "statvfs@openssh.com", "limits@openssh.com"} <= set(
            session.client.extensions
        )
        assert session.write_size == session.read_size == 255 * 1024  # limits@openssh.com
        assert session.rename_replaces
        assert session.free_space() > 0


def test_replace_without_posix_rename_swaps_the_files(sftp_kind, tmp_path, folder):
    first, second = tmp_path / "1", tmp_path / "2"
    first.write_bytes(b"old" * 100)
    second.write_bytes(b"new" * 200)
    with sftp_kind.backend().session() as session:
        # OpenSSH always offers posix-rename; a server without it is simulated here.
        session.rename_replaces = False
        session.upload(first, folder, "plan.xlsx", expected_size=300)
        session.upload(second, folder, "plan.xlsx", expected_size=600, replace=True)
        with session.open(folder, "plan.xlsx") as fh:
            assert fh.read() == b"new" * 200
    assert sftp_kind.raw_names(folder) == ["plan.xlsx"]


def test_no_policy_that_accepts_unknown_host_keys_anywhere():
    offenders = []
    for top in ("destinations", "jobs", "backupsite", "bench"):
        for path in (REPO / top).rglob("*.py"):
            text = path.read_text()
            for word in ("AutoAddPolicy", "WarningPolicy", "set_missing_host_key_policy", "StrictHostKeyChecking=no"):
                if word in text:
                    offenders.append(f"{path.relative_to(REPO)}: {word}")
    assert offenders == []


# --- the OpenSSH client path (key logins) ---------------------------------------------------
def test_openssh_uploads_keep_the_key_in_a_private_file_that_is_removed(
    sftp_key_kind, sshd_server, tmp_path, folder, monkeypatch
):
    protected = sshd_server.users["key"].keys[1]
    secrets_ = {"private_key": protected.private_pem, "passphrase": protected.passphrase}
    seen = {}
    real_write, real_popen = openssh._write_private, subprocess.Popen

    def write_private(path, data):
        real_write(path, data)
        seen["dir"] = path.parent
        seen["dir_mode"] = stat.S_IMODE(path.parent.stat().st_mode)
        seen["key_mode"] = stat.S_IMODE(path.stat().st_mode)
        seen["key"] = data

    def popen(args, **kwargs):
        seen["args"] = list(args)
        seen["env"] = dict(kwargs.get("env") or {})
        seen["known_hosts"] = (seen["dir"] / "known_hosts").read_text()
        return real_popen(args, **kwargs)

    monkeypatch.setattr(openssh, "_write_private", write_private)
    monkeypatch.setattr(openssh.subprocess, "Popen", popen)
    path = tmp_path / "via-openssh.bin"
    size = sftp_kind_module.OPENSSH_MIN_SIZE + 12345
    sha = make_file(path, size, sparse_every=8 * MIB)
    with sftp_key_kind.backend(secrets=secrets_).session() as session:
        session.upload(path, folder, 'odd "name" [1] *.tar.zst', expected_size=size, expected_sha256=sha)
        assert session.bulk_via == "openssh"
        assert session.stat(folder, 'odd "name" [1] *.tar.zst').size == size
    assert seen["dir_mode"] == 0o700 and seen["key_mode"] == 0o600
    assert not seen["dir"].exists(), "the key's directory was not removed"
    assert seen["key"].startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert "StrictHostKeyChecking=yes" in seen["args"] and "BatchMode=yes" in seen["args"]
    assert sshd_server.host_key.public_line.split()[1] in seen["known_hosts"]
    command_line = " ".join(seen["args"]) + " ".join(seen["env"].values())
    assert protected.passphrase not in command_line
    assert protected.private_pem.splitlines()[1] not in command_line
    assert "SSH_AUTH_SOCK" not in seen["env"]


def test_the_openssh_client_refuses_any_other_host_key(sftp_key_kind, sshd_server, tmp_path):
    """The one-off known_hosts holds the key paramiko checked; another key is refused."""
    from destinations.backends.sftp.keys import load_private_key

    user = sshd_server.users["key"]
    path = tmp_path / "x.bin"
    path.write_bytes(b"x" * 1000)
    other = sshd_server.stray_key.public_line.split()
    login = openssh.Login(
        address="127.0.0.1",
        port=sshd_server.port,
        user=user.name,
        host_key_type="ssh-ed25519",
        host_key_line=f"{other[0]} {other[1]}",  # not the server's key
        private_key=load_private_key(user.keys[0].private_pem).openssh_unencrypted(),
    )
    with pytest.raises(openssh.ClientFailed) as info:
        openssh.upload(login, path, "refused.bin", timeout=10, remote_size=lambda: None, on_progress=lambda n: None)
    assert not info.value.started
    assert not (user.home / "refused.bin").exists()


def test_cancel_stops_the_openssh_client(sftp_key_kind, tmp_path, folder, monkeypatch):
    procs = []
    real_popen = subprocess.Popen

    def popen(args, **kwargs):
        procs.append(real_popen(args, **kwargs))
        return procs[-1]

    monkeypatch.setattr(openssh.subprocess, "Popen", popen)
    path = tmp_path / "cancel.bin"
    size = 96 * MIB
    sha = make_file(path, size)
    asked = []

    def cancel() -> bool:
        asked.append(1)
        return len(asked) > 2

    with sftp_key_kind.backend().session() as session, pytest.raises(Cancelled):
        session.upload(path, folder, "cancel.tar.zst", expected_size=size, expected_sha256=sha, cancel=cancel)
    assert procs and procs[0].poll() is not None, "the sftp client is still running"
    assert "cancel.tar.zst" not in sftp_key_kind.raw_names(folder)
    assert [n for n in sftp_key_kind.raw_names(folder) if n.startswith(".")] == []


# --- settings and form ---------------------------------------------------------------------
def test_conf_is_strict_and_normalises():
    base = {"host": "backup.example.net", "user": "bk"}
    assert SftpConf.parse(base).path == "."
    assert SftpConf.parse({**base, "path": "/srv//backups/"}).path == "/srv/backups"
    assert SftpConf.parse({**base, "path": "./branch1/"}).path == "branch1"
    assert SftpConf.parse({**base, "host_key_fingerprint": "sha256:" + "A" * 43 + "="}).host_key_fingerprint == (
        "SHA256:" + "A" * 43
    )
    for bad, field in [
        ({"colour": "blue"}, None),
        ({"host": ""}, "host"),
        ({"user": ""}, "user"),
        ({"port": 70000}, "port"),
        ({"path": "/srv/../etc"}, "path"),
        ({"path": "..\\windows"}, "path"),
        ({"path": "a\x00b"}, "path"),
        ({"host_key_fingerprint": "MD5:aa:bb"}, "host_key_fingerprint"),
    ]:
        with pytest.raises(ConfError) as info:
            SftpConf.parse({**base, **bad})
        assert info.value.field == field, bad


def form(data: dict, *, settings=None, secrets=None) -> SftpForm:
    return SftpForm({f"sftp-{k}": v for k, v in data.items()}, settings=settings, secrets=secrets)


def test_the_server_field_takes_what_vendors_tell_users_to_type():
    for server, port, expected in [
        ("backup.example.net", "", {"host": "backup.example.net", "port": 22, "path": "."}),
        ("backup.example.net/branch1", "", {"host": "backup.example.net", "port": 22, "path": "branch1"}),
        ("sftp://backup.example.net:2222/branch1", "", {"host": "backup.example.net", "port": 2222, "path": "branch1"}),
        ("[2001:db8::5]:2200", "", {"host": "2001:db8::5", "port": 2200, "path": "."}),
        ("backup.example.net", "2022", {"host": "backup.example.net", "port": 2022, "path": "."}),
    ]:
        f = form({"server": server, "port": port, "path": "", "user": "bk", "password": "pw"})
        assert f.is_valid(), f.errors
        assert {k: f.parsed_settings[k] for k in expected} == expected, server
    f = form({"server": "ftp://backup.example.net", "user": "bk", "password": "pw"})
    assert not f.is_valid() and "server" in f.errors
    f = form({"server": "backup.example.net/branch1", "path": "/srv", "user": "bk", "password": "pw"})
    assert not f.is_valid() and "path" in f.errors
    f = form({"server": "sftp://backup.example.net:2222", "port": "2022", "user": "bk", "password": "pw"})
    assert not f.is_valid() and "port" in f.errors
    f = form({"server": "user:pw@backup.example.net", "user": "bk", "password": "pw"})
    assert not f.is_valid() and "server" in f.errors


def test_the_form_checks_keys_and_never_renders_secrets(sshd_server):
    protected = sshd_server.users["key"].keys[1]
    f = form({"server": "h.example", "user": "bk"})
    assert not f.is_valid() and "password" in f.errors  # a password or a key is needed
    f = form({"server": "h.example", "user": "bk", "private_key": "hello"})
    assert not f.is_valid() and "private_key" in f.errors
    f = form({"server": "h.example", "user": "bk", "private_key": protected.private_pem, "passphrase": "nope"})
    assert not f.is_valid() and "passphrase" in f.errors
    html = f.as_p()
    assert "nope" not in html and protected.private_pem.splitlines()[1] not in html
    f = form(
        {"server": "h.example", "user": "bk", "private_key": protected.private_pem, "passphrase": protected.passphrase}
    )
    assert f.is_valid(), f.errors
    assert f.secrets_from_cleaned(f.cleaned_data) == {
        "private_key": protected.private_pem,
        "passphrase": protected.passphrase,
    }
    assert "private_key" not in f.parsed_settings and "passphrase" not in f.parsed_settings


def test_blank_secrets_are_kept_and_the_confirmed_key_stays_with_its_server():
    stored = {"host": "h.example", "port": 22, "path": ".", "user": "bk", "host_key_fingerprint": "SHA256:" + "B" * 43}
    data = {"server": "h.example", "port": "22", "path": ".", "user": "bk"}
    f = form(data, settings=stored, secrets={"password": "s3cr3t-old"})
    assert f.initial["server"] == "h.example"
    assert f.is_valid(), f.errors
    assert f.secrets_from_cleaned(f.cleaned_data) == {"password": "s3cr3t-old"}
    assert f.parsed_settings["host_key_fingerprint"] == stored["host_key_fingerprint"]
    assert "s3cr3t-old" not in f.as_p()
    f = form({"server": "other.example", "user": "bk"}, settings=stored, secrets={"password": "old"})
    assert f.is_valid(), f.errors
    assert f.parsed_settings["host_key_fingerprint"] == ""  # another server: its key must be confirmed


def test_describe_and_repr_show_no_secret(sftp_kind):
    backend = sftp_kind.backend()
    text = backend.describe_conf(backend.conf)
    assert text == f"SFTP: {sftp_kind.settings['user']}@127.0.0.1:{sftp_kind.settings['port']} ~"
    assert sftp_kind.secrets["password"] not in repr(backend)


KILLED_WORKER = """
import json, sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from django.conf import settings
settings.configure(BACKUPSITE_DESTINATION_TIMEOUT=30, BACKUPSITE_ALLOW_LOCAL_DESTINATIONS=True)
from destinations.backends.sftp import SftpBackend, SftpConf
spec = json.loads(sys.stdin.read())
backend = SftpBackend(SftpConf(**spec["conf"]), spec["secrets"])
with backend.session() as session:
    session.upload(Path(spec["local"]), spec["folder"], spec["name"], expected_size=spec["size"])
"""


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(int(pid))
            except OSError:
                continue
    return found


def test_a_killed_worker_takes_the_openssh_client_with_it_and_leaves_no_key(sftp_key_kind, tmp_path, folder):
    size = 400 * MIB
    path = tmp_path / "killed.bin"
    make_file(path, size, sparse_every=32 * MIB)
    base = Path(sftp_key_kind.settings["path"])
    partial = base / folder / ".killed.tar.zst.partial"
    spec = {
        "conf": sftp_key_kind.settings,
        "secrets": sftp_key_kind.secrets,
        "local": str(path),
        "folder": folder,
        "name": "killed.tar.zst",
        "size": size,
    }
    worker = subprocess.Popen([sys.executable, "-c", KILLED_WORKER.format(repo=str(REPO))], stdin=subprocess.PIPE)
    worker.stdin.write(json.dumps(spec).encode())
    worker.stdin.close()
    deadline = time.monotonic() + 60
    while not (partial.exists() and partial.stat().st_size >= 16 * MIB):
        assert worker.poll() is None, "the worker ended before it could be killed"
        assert time.monotonic() < deadline, "the upload did not start"
        time.sleep(0.02)
    stale = [
        p
        for p in (*Path("/dev/shm").glob("backupsite-sftp-*"), *Path(tempfile.gettempdir()).glob("backupsite-sftp-*"))
        if (p / "pid").exists() and (p / "pid").read_text() == str(worker.pid)
    ]
    worker.kill()  # SIGKILL: no finally runs
    worker.wait()
    assert len(stale) == 1
    assert not (stale[0] / "key").exists(), "the key file outlived the login"
    # The client got the parent-death signal: the partial stops growing, no process remains.
    deadline = time.monotonic() + 10
    while _processes_mentioning(str(stale[0])):
        assert time.monotonic() < deadline, "the sftp client outlived its worker"
        time.sleep(0.05)
    grown = partial.stat().st_size
    time.sleep(0.5)
    assert partial.stat().st_size == grown < size
    assert "killed.tar.zst" not in sftp_key_kind.raw_names(folder)
    # The next run cleans up: the partial (remove_partials) and the stale directory (sweep).
    again = tmp_path / "again.bin"
    make_file(again, sftp_kind_module.OPENSSH_MIN_SIZE + 1, sparse_every=16 * MIB)
    with sftp_key_kind.backend().session() as session:
        assert session.remove_partials(folder) == [".killed.tar.zst.partial"]
        session.upload(again, folder, "again.tar.zst", expected_size=again.stat().st_size)
        assert session.bulk_via == "openssh"
    assert not stale[0].exists(), "the stale directory was not swept"


def test_downloads_work_without_fstat(sftp_kind, tmp_path, folder, monkeypatch):
    """A server that does not answer FSTAT (OpenSSH does; simulated): the stream reads
    ahead without knowing the size."""
    from destinations.backends.sftp import stream

    def no_fstat(self, handle):
        raise stream.SftpStatus(stream.FX_OP_UNSUPPORTED)

    monkeypatch.setattr(stream.RawSftp, "fstat_size", no_fstat)
    size = 3 * MIB + 7
    path = tmp_path / "nofstat.bin"
    make_file(path, size)
    data = path.read_bytes()
    with sftp_kind.backend().session() as session:
        session.upload(path, folder, "f.tar.zst", expected_size=size)
        for offset in (0, MIB + 3, size):
            with session.open(folder, "f.tar.zst", offset) as fh:
                assert fh.read() == data[offset:]


class StallingServer(paramiko.ServerInterface):
    """An SSH server (paramiko's server side) that stops answering at one step: the
    login, the sftp subsystem request, or the SFTP greeting (no SFTP server behind)."""

    def __init__(self, stall_at: str, release: threading.Event) -> None:
        self.stall_at = stall_at
        self.release = release

    def get_allowed_auths(self, username):
        return "password"

    def check_auth_password(self, username, password):
        if self.stall_at == "login":
            self.release.wait(30)
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED

    def check_channel_subsystem_request(self, channel, name):
        if self.stall_at == "subsystem":
            self.release.wait(30)
        return True


@pytest.mark.parametrize(
    ("stall_at", "expected"),
    [
        ("login", "did not answer the login within 1.5 seconds"),
        ("subsystem", "did not open an SFTP channel within 1.5 seconds"),
        ("sftp", "did not answer within 1.5 seconds while starting SFTP"),
    ],
)
def test_a_server_that_stops_answering_after_the_handshake_times_out(sftp_kind, settings, stall_at, expected):
    from destinations.backends.sftp.keys import fingerprint_of

    settings.BACKUPSITE_DESTINATION_TIMEOUT = 1.5
    host_key = paramiko.ECDSAKey.generate()
    listener = socket.create_server(("127.0.0.1", 0))
    release = threading.Event()
    transports = []

    def serve():
        conn, _ = listener.accept()
        transport = paramiko.Transport(conn)
        transport.add_server_key(host_key)
        transports.append(transport)
        transport.start_server(server=StallingServer(stall_at, release))

    threading.Thread(target=serve, daemon=True).start()
    settings_ = with_settings(sftp_kind, port=listener.getsockname()[1], host_key_fingerprint=fingerprint_of(host_key))
    try:
        started = time.monotonic()
        with pytest.raises(TransientError) as info:
            sftp_kind.backend(settings=settings_).session()
        elapsed = time.monotonic() - started
    finally:
        release.set()
        for transport in transports:
            transport.close()
        listener.close()
    assert expected in info.value.message
    assert elapsed < 8, f"took {elapsed:.1f} s with a 1.5 s timeout"


def test_a_closed_channel_is_a_lost_connection_not_a_refusal():
    """paramiko raises OSError("Socket is closed") (no errno) from a channel whose
    connection was cut, and OSError(text) (no errno) for a failure status: only the
    latter is the server refusing."""
    from destinations.backends.sftp import map_error

    assert isinstance(map_error(OSError("Socket is closed"), "reading x", 5), TransientError)
    assert isinstance(map_error(OSError("Failure"), "reading x", 5), PermanentError)
