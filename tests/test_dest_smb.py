"""The Windows share kind against a real Samba server (``tests/kinds/smb.py``): what the
contract module does not cover — the settings as people type them, each failure mode
with its own message, no guest fallback, no shared sessions, timeouts on a silent or
stalled server, a cut connection, a full disk, encryption, every signing algorithm, a
300 MB upload, and the password nowhere."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from smbprotocol import Dialects
from smbprotocol.connection import Connection, SigningAlgorithms
from smbprotocol.exceptions import SMBResponseException
from smbprotocol.header import Commands, NtStatus
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

from destinations.backends.base import ConfError, DestinationError, PermanentError, TransientError
from destinations.backends.smb import SmbBackend, SmbConf
from destinations.backends.smb import client as smb_client
from destinations.backends.smb.client import SmbClient, sign_parts
from destinations.backends.smb.forms import SmbForm
from tests.kinds import KindUnderTest
from tests.tcpproxy import TcpProxy

pytest_plugins = ["tests.kinds.smb"]
pytestmark = pytest.mark.django_db

MIB = 1 << 20


def backend(kind: KindUnderTest, secrets: dict | None = None, **settings) -> SmbBackend:
    return kind.backend(settings={**kind.settings, **settings}, secrets=kind.secrets if secrets is None else secrets)


def random_file(tmp_path: Path, size: int, name: str = "payload.bin") -> tuple[Path, str]:
    path = tmp_path / name
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        left = size
        while left:
            block = os.urandom(min(4 * MIB, left))
            out.write(block)
            digest.update(block)
            left -= len(block)
    return path, digest.hexdigest()


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def share_dir(kind: KindUnderTest, smb_server) -> Path:
    return smb_server.shares["backups"] / kind.settings["path"]


# --- the settings, as people type them ------------------------------------------------
@pytest.mark.parametrize(
    ("server", "share", "expected"),
    [
        ("nas.office.lan", "backups", ("nas.office.lan", 445, "backups", "")),
        ("nas:4455", "backups/office/daily", ("nas", 4455, "backups", "office/daily")),
        ("smb://nas/backups/office", "", ("nas", 445, "backups", "office")),
        (r"\\nas\backups\office", "", ("nas", 445, "backups", "office")),
        ("192.168.1.20", r"\backups\office\\", ("192.168.1.20", 445, "backups", "office")),
        ("[2001:db8::5]:445", "backups", ("2001:db8::5", 445, "backups", "")),
    ],
)
def test_the_form_splits_what_people_type(server, share, expected):
    form = SmbForm({"smb-server": server, "smb-share": share, "smb-user": r"OFFICE\backup", "smb-password": "pw"})
    assert form.is_valid(), form.errors
    settings = form.parsed_settings
    assert (settings["host"], settings["port"], settings["share"], settings["path"]) == expected
    assert settings["user"] == r"OFFICE\backup" and settings["auth"] == "negotiate"


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"smb-server": "ftp://nas/x"}, "server", "smb://"),
        ({"smb-server": "nas:99999"}, "server", "port"),
        ({"smb-server": "user:pw@nas"}, "server", "own fields"),
        ({"smb-share": ""}, "share", "share is required"),
        ({"smb-share": "IPC$"}, "share", "IPC$"),
        ({"smb-share": "backups/../etc"}, "share", "“..”"),
        ({"smb-share": "backups/a:b"}, "share", "not allow"),
        ({"smb-share": "backups/CON"}, "share", "not allowed"),
        ({"smb-server": r"\\nas\other", "smb-share": "backups"}, "share", "another share"),
        ({"smb-user": "OFFICE\\"}, "user", "DOMAIN\\user"),
        ({"smb-user": "a@"}, "user", "DOMAIN\\user"),
        ({"smb-auth": "basic"}, "auth", "valid choice"),
        ({"smb-password": ""}, "password", "password is required"),
    ],
)
def test_bad_settings_are_refused_next_to_their_field(data, field, message):
    values = {"smb-server": "nas", "smb-share": "backups", "smb-user": "backup", "smb-password": "pw", **data}
    form = SmbForm(values)
    assert not form.is_valid()
    assert field in form.errors, form.errors
    assert any(message in error for error in form.errors[field]), form.errors[field]


def test_the_conf_is_strict():
    with pytest.raises(ConfError, match="Unknown setting"):
        SmbConf.parse({"host": "nas", "share": "b", "user": "u", "domain": "x"})
    with pytest.raises(ConfError) as info:
        SmbConf.parse({"host": "nas", "share": "b", "user": ""})
    assert info.value.field == "user"
    with pytest.raises(ConfError) as info:
        SmbConf.parse({"host": "nas", "share": "b", "user": "u", "encrypt": "yes"})
    assert info.value.field == "encrypt"


def test_kerberos_may_go_without_a_password_and_the_form_never_shows_one():
    assert SmbForm(
        {"smb-server": "nas", "smb-share": "b", "smb-user": "u@EXAMPLE.COM", "smb-auth": "kerberos"}
    ).is_valid()
    stored = {"password": "stored-secret-value"}
    settings = {"host": "nas", "port": 4455, "share": "backups", "path": "office", "user": "u"}
    form = SmbForm(settings=settings, secrets=stored)
    html = form.as_p()
    assert "stored-secret-value" not in html
    assert 'value="nas:4455"' in html and 'value="backups/office"' in html
    blank = SmbForm(
        {"smb-server": "nas:4455", "smb-share": "backups/office", "smb-user": "u", "smb-auth": "ntlm"},
        settings=settings,
        secrets=stored,
    )
    assert blank.is_valid(), blank.errors
    assert blank.secrets_from_cleaned(blank.cleaned_data) == stored  # blank keeps the stored password


def test_description_and_repr_show_where_not_the_password():
    conf = SmbConf(host="nas", port=4455, share="backups", path="office/daily", user=r"OFFICE\backup")
    backend_ = SmbBackend(conf, {"password": "hunter2-secret"})
    assert repr(backend_) == r"<SmbBackend Windows share: \\nas\backups\office\daily (port 4455) as OFFICE\backup>"
    assert backend_.describe_folder("backupsite/job") == r"\\nas\backups\office\daily\backupsite\job"
    assert "hunter2" not in repr(backend_)


def test_signatures_match_smbprotocol_for_every_algorithm():
    """The kind signs its WRITE requests itself, incrementally: the same bytes as
    smbprotocol's own signing (checked for all three algorithms)."""
    key = os.urandom(16)
    header = os.urandom(64)[:48] + bytes(16) + os.urandom(48)  # signature field zeroed
    payload = os.urandom(3 * MIB + 7)
    cases = [
        (Dialects.SMB_3_1_1, SigningAlgorithms.AES_GMAC),
        (Dialects.SMB_3_1_1, SigningAlgorithms.AES_CMAC),
        (Dialects.SMB_3_0_2, None),  # AES-CMAC
        (Dialects.SMB_2_1_0, None),  # HMAC-SHA256
    ]
    for dialect, algorithm in cases:
        conn = Connection(uuid.uuid4(), "127.0.0.1", 445)
        conn.dialect, conn.signing_algorithm_id = dialect, algorithm
        expected = conn._generate_signature(header + payload, key, 4242, False, Commands.SMB2_WRITE)
        ours = sign_parts(smb_client.signing_algorithm(conn), key, 4242, [header, memoryview(payload)])
        assert ours == expected, (hex(dialect), algorithm)


# --- the test button -----------------------------------------------------------------
def test_the_test_shows_protocol_signing_free_space_and_the_folder(smb_kind):
    result = backend(smb_kind).test()
    assert result.ok, result.message
    details = dict(result.details)
    assert details["Protocol"] == "SMB 3.1.1"
    assert details["Encryption"] == "off (signed)" and details["Signing"] == "AES-GMAC"
    assert details["Guest access"] == "refused"
    assert result.remote_folder == "\\\\127.0.0.1\\backups\\" + smb_kind.settings["path"] + "\\backupsite"
    assert result.free_bytes is not None and result.free_bytes > 0


def test_free_space_is_the_share_s_own(smb_server, smb_kind):
    if not smb_server.small_mounted:
        pytest.skip("no tmpfs could be mounted for the small share (needs root)")
    with backend(smb_kind, share="small", path="").session() as session:
        free = session.free_space()
    st = os.statvfs(smb_server.shares["small"])
    assert free == st.f_bavail * st.f_frsize


def test_a_wrong_password_fails_with_its_own_message(smb_kind):
    result = backend(smb_kind, secrets={"password": "not-the-password"}).test()
    assert not result.ok
    assert result.message == "The server refused the user name or password."


def test_an_unknown_user_is_never_let_in_as_a_guest(smb_server, smb_kind):
    """The server maps unknown users to its guest account and offers a guest-only share:
    a client that accepted the guest session would get in. The kind refuses it."""
    stranger = f"nobody-{secrets.token_hex(3)}"
    # The control: a client that does not insist on signing lands as a guest and may
    # use the guest share, so the fallback is really offered.
    conn = Connection(uuid.uuid4(), "127.0.0.1", smb_server.port, require_signing=False)
    conn.connect(timeout=10)
    try:
        naive = Session(conn, stranger, "whatever", require_encryption=False)
        naive.connect()
        assert naive.session_key is None  # a guest session
        tree = TreeConnect(naive, "\\\\127.0.0.1\\public")
        tree.connect(require_secure_negotiate=False)
    finally:
        conn.disconnect(close=False)
    for share in ("public", "backups"):
        result = backend(smb_kind, share=share, path="", user=stranger).test()
        assert not result.ok
        assert "only as a guest" in result.message, result.message
    assert list(smb_server.shares["public"].iterdir()) == []  # no probe file went in as a guest


def test_a_wrong_password_on_the_guest_share_is_refused_too(smb_kind):
    result = backend(smb_kind, secrets={"password": "wrong"}, share="public", path="").test()
    assert not result.ok
    assert result.message == "The server refused the user name or password."


def test_destinations_never_share_a_logged_in_session(smb_kind):
    """smbclient's pool would hand the second backend the first one's session (same
    server, same user name): here each has its own connection and login."""
    right = backend(smb_kind)
    wrong = backend(smb_kind, secrets={"password": "wrong-password"})
    with right.session() as session:
        assert session.list("") == []
        result = wrong.test()  # while the good session is open
    assert not result.ok and "refused the user name or password" in result.message
    import smbclient._pool

    assert smbclient._pool._SMB_CONNECTIONS == {}  # the global pool is never used


def test_a_missing_share_and_a_missing_folder_are_named(smb_kind):
    result = backend(smb_kind, share="no-such-share").test()
    assert not result.ok and result.message == "The share “no-such-share” does not exist on 127.0.0.1."
    result = backend(smb_kind, path=smb_kind.settings["path"] + "/missing/sub").test()
    assert not result.ok
    assert "missing/sub" in result.message and "create it there first" in result.message


def test_a_share_the_user_may_not_use_is_refused(smb_kind):
    result = backend(smb_kind, share="closed", path="").test()
    assert not result.ok and result.message == "The user may not use the share “closed” on 127.0.0.1."


def test_kerberos_without_its_library_says_what_is_missing(smb_kind):
    if smb_client.kerberos_available():
        pytest.skip("gssapi is installed here")
    result = backend(smb_kind, auth="kerberos", user="backup@EXAMPLE.COM").test()
    assert not result.ok and "gssapi" in result.message


# --- timeouts and broken connections ---------------------------------------------------
def test_a_silent_server_times_out_within_the_setting(smb_kind, settings):
    settings.BACKUPSITE_DESTINATION_TIMEOUT = 2
    with TcpProxy(None) as silent:  # accepts, never answers
        started = time.monotonic()
        result = backend(smb_kind, port=silent.port).test()
        elapsed = time.monotonic() - started
    assert not result.ok
    assert result.message == f"The server 127.0.0.1 did not answer within 2 seconds (port {silent.port})."
    assert elapsed < 6


def test_loopback_is_refused_unless_local_destinations_are_allowed(smb_server, smb_kind, settings):
    settings.BACKUPSITE_ALLOW_LOCAL_DESTINATIONS = False
    before = set(smb_server.children())
    result = backend(smb_kind).test()
    assert not result.ok and "not allowed for a destination" in result.message
    assert set(smb_server.children()) == before  # refused before connecting


def test_a_closed_port_is_refused(smb_kind):
    port = unused_port()
    result = backend(smb_kind, port=port).test()
    assert not result.ok and result.message == f"The server 127.0.0.1 refused the connection on port {port}."


def test_a_server_that_stalls_during_the_login_times_out(smb_server, smb_kind, settings, monkeypatch):
    """smbprotocol waits for the login's answers without a limit; the kind's watchdog
    ends it: the smbd process is stopped right after the protocol negotiation."""
    settings.BACKUPSITE_DESTINATION_TIMEOUT = 2
    before = set(smb_server.children())
    stopped: list[int] = []
    negotiate = Connection.connect

    def connect_then_stall(self, *args, **kwargs):
        negotiate(self, *args, **kwargs)
        deadline = time.monotonic() + 5
        while not (new := set(smb_server.children()) - before) and time.monotonic() < deadline:
            time.sleep(0.01)
        stopped.extend(new)
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)

    monkeypatch.setattr(Connection, "connect", connect_then_stall)
    started = time.monotonic()
    try:
        result = backend(smb_kind).test()
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGKILL)
    assert stopped
    assert not result.ok and result.message == "The server 127.0.0.1 did not answer within 2 seconds while logging in."
    assert time.monotonic() - started < 8


def test_a_server_that_stalls_mid_upload_times_out(smb_server, smb_kind, settings, tmp_path):
    """The smbd process serving the upload is stopped (SIGSTOP) after 16 MiB: the
    upload fails within the timeout instead of hanging (RELIABILITY 5)."""
    settings.BACKUPSITE_DESTINATION_TIMEOUT = 2
    path, _ = random_file(tmp_path, 64 * MIB)
    before = set(smb_server.children())
    stopped: list[int] = []

    def progress(done: int) -> None:
        if done >= 16 * MIB and not stopped:
            stopped.extend(set(smb_server.children()) - before)
            for pid in stopped:
                os.kill(pid, signal.SIGSTOP)

    started = time.monotonic()
    try:
        with pytest.raises(TransientError) as info, backend(smb_kind).session() as session:
            session.upload(path, "backupsite/job", "stalled.tar.zst", expected_size=64 * MIB, progress=progress)
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGKILL)
    elapsed = time.monotonic() - started
    assert stopped, "no smbd process served the upload?"
    assert "did not answer within 2 seconds" in info.value.message
    assert elapsed < 12
    assert not (share_dir(smb_kind, smb_server) / "backupsite" / "job" / "stalled.tar.zst").exists()


def test_a_cut_connection_mid_upload_is_transient_and_leaves_no_final_file(smb_server, smb_kind, tmp_path, caplog):
    path, sha = random_file(tmp_path, 96 * MIB)
    debug_logs(caplog)
    with TcpProxy(("127.0.0.1", smb_server.port)) as proxy:

        def cut_mid_upload() -> None:
            proxy.wait_for_upload(24 * MIB)  # while the data flows
            proxy.cut()

        cutter = threading.Thread(target=cut_mid_upload, daemon=True)
        cutter.start()
        started = time.monotonic()
        with pytest.raises(TransientError) as info, backend(smb_kind, port=proxy.port).session() as session:
            session.upload(path, "backupsite/job", "cut.tar.zst", expected_size=96 * MIB, expected_sha256=sha)
        cutter.join()
    assert time.monotonic() - started < 15
    assert "was lost" in info.value.message, info.value.message
    folder = share_dir(smb_kind, smb_server) / "backupsite" / "job"
    assert not (folder / "cut.tar.zst").exists()
    # A later session cleans up what the cut one could not.
    with backend(smb_kind).session() as session:
        session.remove_partials("backupsite/job")
    assert sorted(p.name for p in folder.iterdir()) == []
    assert_secret_nowhere(smb_server.password, [info.value.message, *log_texts(caplog)])


UPLOADER = """
import os, sys
import django
django.setup()
from django.test.utils import override_settings
from destinations.backends.smb import SmbBackend, SmbConf
conf = SmbConf(host="127.0.0.1", port=int(sys.argv[1]), share="backups", path=sys.argv[2], user=sys.argv[3])
backend = SmbBackend(conf, {"password": os.environ["SMB_TEST_PASSWORD"]})
def progress(done):
    print(done, flush=True)
with override_settings(BACKUPSITE_ALLOW_LOCAL_DESTINATIONS=True), backend.session() as session:
    session.upload(sys.argv[4], "backupsite/job", "killed.tar.zst", expected_size=int(sys.argv[5]), progress=progress)
"""


def test_a_worker_killed_mid_upload_leaves_no_final_file(smb_server, smb_kind, tmp_path):
    """RELIABILITY 1: the uploading process is SIGKILLed; nothing is under the final
    name, and the next session's remove_partials() removes what is left."""
    size = 256 * MIB
    path = tmp_path / "big.bin"
    with open(path, "wb") as out:
        out.truncate(size)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "SMB_TEST_PASSWORD": smb_server.password}
    args = [str(smb_server.port), smb_kind.settings["path"], smb_server.user, str(path), str(size)]
    proc = subprocess.Popen(
        [sys.executable, "-c", UPLOADER, *args], stdout=subprocess.PIPE, cwd=Path(__file__).parent.parent, env=env
    )
    try:
        for line in proc.stdout:  # progress, in bytes read
            if int(line) >= 32 * MIB:
                break
        proc.kill()
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    folder = share_dir(smb_kind, smb_server) / "backupsite" / "job"
    assert not (folder / "killed.tar.zst").exists()
    deadline = time.monotonic() + 10
    while True:  # smbd notices the dead connection and closes the file
        with backend(smb_kind).session() as session:
            session.remove_partials("backupsite/job")
        if sorted(p.name for p in folder.iterdir()) == [] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert sorted(p.name for p in folder.iterdir()) == []


def test_a_full_disk_fails_at_once_and_leaves_nothing(smb_server, smb_kind, tmp_path):
    if not smb_server.small_mounted:
        pytest.skip("no tmpfs could be mounted for the small share (needs root)")
    path, sha = random_file(tmp_path, 12 * MIB)
    with pytest.raises(PermanentError) as info, backend(smb_kind, share="small", path="").session() as session:
        session.upload(path, "backupsite/job", "big.tar.zst", expected_size=12 * MIB, expected_sha256=sha)
    assert "No space left on the share" in info.value.message
    assert sorted(p.name for p in (smb_server.shares["small"] / "backupsite" / "job").iterdir()) == []


# --- encryption and signing ----------------------------------------------------------------
def roundtrip(backend_: SmbBackend, tmp_path: Path, size: int = 20 * MIB + 3) -> None:
    path, sha = random_file(tmp_path, size)
    with backend_.session() as session:
        session.upload(path, "backupsite/job", "round.tar.zst", expected_size=size, expected_sha256=sha)
        with session.open("backupsite/job", "round.tar.zst", offset=5) as fh:
            digest = hashlib.sha256(path.read_bytes()[:5])
            while chunk := fh.read(3 * MIB):
                digest.update(chunk)
        session.delete("backupsite/job", "round.tar.zst")
    assert digest.hexdigest() == sha


def test_required_encryption_encrypts_the_session(smb_kind, tmp_path):
    result = backend(smb_kind, encrypt=True).test()
    assert result.ok, result.message
    assert dict(result.details)["Encryption"] == "on (AES-128-GCM)"
    roundtrip(backend(smb_kind, encrypt=True), tmp_path)


def test_required_encryption_is_refused_by_a_server_without_it(smb_kind, monkeypatch):
    monkeypatch.setattr(SmbBackend, "dialect", Dialects.SMB_2_1_0)  # SMB 2 has no encryption
    result = backend(smb_kind, encrypt=True).test()
    assert not result.ok
    assert (
        result.message == "Encryption is required, but 127.0.0.1 does not offer SMB 3 encryption (it speaks SMB 2.1)."
    )


def test_a_share_the_server_encrypts_works_without_asking(smb_server, smb_kind, tmp_path):
    smb_server.make_dir("sealed", "base")
    b = backend(smb_kind, share="sealed", path="base")
    result = b.test()
    assert result.ok, result.message
    assert dict(result.details)["Encryption"] == "on (AES-128-GCM)"
    roundtrip(b, tmp_path)


@pytest.mark.parametrize(
    ("dialect", "signing"),
    [
        (Dialects.SMB_3_1_1, "AES-GMAC"),
        (Dialects.SMB_3_0_2, "AES-CMAC"),
        (Dialects.SMB_2_1_0, "HMAC-SHA256"),
        (Dialects.SMB_2_0_2, "HMAC-SHA256"),  # no multi-credit requests: 64 KiB at a time
    ],
)
@pytest.mark.parametrize("fast", [True, False], ids=["own-writes", "library-writes"])
def test_uploads_work_with_every_dialect_and_signing_algorithm(smb_kind, tmp_path, monkeypatch, dialect, signing, fast):
    """Samba checks every signature: a wrong one would end the connection."""
    monkeypatch.setattr(SmbBackend, "dialect", dialect)
    monkeypatch.setattr(SmbBackend, "fast_writes", fast)
    result = backend(smb_kind).test()
    assert result.ok, result.message
    assert dict(result.details)["Signing"] == signing
    roundtrip(backend(smb_kind), tmp_path)


def test_uploads_work_from_one_thread_too(smb_kind, tmp_path, monkeypatch):
    monkeypatch.setattr(SmbBackend, "threaded_writes", False)
    roundtrip(backend(smb_kind), tmp_path)


def test_writes_go_on_while_the_periodic_flush_runs(smb_server, smb_kind, tmp_path, monkeypatch):
    """The FLUSH sent every ``flush_every`` bytes (so the server's disk writes while the
    rest arrives) is not among the writes in flight: the upload waits for it only when
    the next one is due, or at the end; the file arrives whole."""
    flush_every = 4 * MIB
    monkeypatch.setattr(smb_client, "WRITE_CHUNK", 256 * 1024)
    monkeypatch.setattr("destinations.backends.smb.backend.FLUSH_EVERY", flush_every)
    sent = [0]
    flush_waits: list[int] = []  # bytes sent when the upload waited for a FLUSH's answer
    send_write, wait = SmbClient._send_write, SmbClient.wait

    def counting_send(self, handle, data, offset, charge, credit_request):
        request = send_write(self, handle, data, offset, charge, credit_request)
        sent[0] += len(data)
        return request

    def watching_wait(self, request, what):
        if request.message["command"].get_value() == Commands.SMB2_FLUSH:
            flush_waits.append(sent[0])
        return wait(self, request, what)

    monkeypatch.setattr(SmbClient, "_send_write", counting_send)
    monkeypatch.setattr(SmbClient, "wait", watching_wait)
    size = 6 * flush_every + 12345
    path, sha = random_file(tmp_path, size)
    with backend(smb_kind).session() as session:
        session.upload(path, "backupsite/job", "flushed.bin", expected_size=size, expected_sha256=sha)
    target = share_dir(smb_kind, smb_server) / "backupsite" / "job" / "flushed.bin"
    try:
        assert hashlib.sha256(target.read_bytes()).hexdigest() == sha
    finally:
        target.unlink()
    # Six periodic FLUSHes and the final one before the rename; the k-th periodic one
    # (k = 1, 2, ...) is waited for only once the (k+1)-th was due, or at the end.
    assert len(flush_waits) == 7, flush_waits
    for k, at in enumerate(flush_waits[:-2], start=1):
        assert at >= (k + 1) * flush_every, flush_waits
    assert flush_waits[-2:] == [size, size]


def test_encrypted_uploads_with_aes_ccm_use_the_library_path(smb_kind, tmp_path, monkeypatch):
    monkeypatch.setattr(SmbBackend, "dialect", Dialects.SMB_3_0_2)  # SMB 3.0.x encrypts with AES-128-CCM
    result = backend(smb_kind, encrypt=True).test()
    assert result.ok and dict(result.details)["Encryption"] == "on (AES-128-CCM)"
    roundtrip(backend(smb_kind, encrypt=True), tmp_path)


# --- replacing ------------------------------------------------------------------------------
def test_replace_is_one_rename_and_falls_back_to_the_swap(smb_server, smb_kind, tmp_path, monkeypatch):
    first, sha1 = random_file(tmp_path, 3000, "first")
    second, sha2 = random_file(tmp_path, 4000, "second")
    third, sha3 = random_file(tmp_path, 5000, "third")
    folder = share_dir(smb_kind, smb_server) / "export"
    calls = []
    rename = SmbClient.rename

    def spy(self, src, dst, *, replace):
        calls.append((src.rsplit("\\", 1)[-1], dst.rsplit("\\", 1)[-1], replace))
        return rename(self, src, dst, replace=replace)

    monkeypatch.setattr(SmbClient, "rename", spy)
    with backend(smb_kind).session() as session:
        session.upload(first, "export", "plan.xlsx", expected_size=3000, expected_sha256=sha1)
        calls.clear()
        session.upload(second, "export", "plan.xlsx", expected_size=4000, expected_sha256=sha2, replace=True)
        assert calls == [(".plan.xlsx.partial", "plan.xlsx", True)]  # one SET_INFO, no swap
    assert (folder / "plan.xlsx").read_bytes() == second.read_bytes()

    # A server that cannot rename over a file (mocked: Samba can): the old file stays
    # until the new one is complete, then they are swapped.
    def no_replace(self, src, dst, *, replace):
        if replace:
            raise SMBResponseException(_status_header(NtStatus.STATUS_NOT_SUPPORTED))
        return spy(self, src, dst, replace=replace)

    monkeypatch.setattr(SmbClient, "rename", no_replace)
    calls.clear()
    with backend(smb_kind).session() as session:
        session.upload(third, "export", "plan.xlsx", expected_size=5000, expected_sha256=sha3, replace=True)
    assert calls == [("plan.xlsx", ".plan.xlsx.old", False), (".plan.xlsx.partial", "plan.xlsx", False)]
    assert (folder / "plan.xlsx").read_bytes() == third.read_bytes()
    assert sorted(p.name for p in folder.iterdir()) == ["plan.xlsx"]


def _status_header(status: int):
    from smbprotocol.exceptions import SMB2ErrorResponse
    from smbprotocol.header import SMB2HeaderResponse

    header = SMB2HeaderResponse()
    header["status"] = status
    header["data"] = SMB2ErrorResponse()
    return header


def test_folders_in_the_listing_are_not_files(smb_server, smb_kind, tmp_path):
    smb_server.make_dir("backups", smb_kind.settings["path"] + "/backupsite/job/a-folder.tar.zst")
    path, sha = random_file(tmp_path, 100)
    with backend(smb_kind).session() as session:
        session.upload(path, "backupsite/job", "real.tar.zst", expected_size=100, expected_sha256=sha)
        assert [f.name for f in session.list("backupsite/job")] == ["real.tar.zst"]
        session.delete("backupsite/job", "a-folder.tar.zst")  # never a folder
    assert (share_dir(smb_kind, smb_server) / "backupsite/job/a-folder.tar.zst").is_dir()


# --- large files and secrets ------------------------------------------------------------------
@pytest.mark.slow
def test_a_300_mb_upload_arrives_with_the_right_checksum(smb_server, smb_kind, tmp_path):
    size = 300 * 1000 * 1000
    path = tmp_path / "big.tar.zst"
    with open(path, "wb") as out:  # sparse, with random blocks every 32 MiB
        out.truncate(size)
        for offset in range(0, size, 32 * MIB):
            out.seek(offset)
            out.write(os.urandom(min(MIB, size - offset)))
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(4 * MIB):
            digest.update(chunk)
    sha = digest.hexdigest()
    target = share_dir(smb_kind, smb_server) / "backupsite" / "job" / "big.tar.zst"
    try:
        with backend(smb_kind).session() as session:
            session.upload(path, "backupsite/job", "big.tar.zst", expected_size=size, expected_sha256=sha)
        remote = hashlib.sha256()
        with open(target, "rb") as fh:
            while chunk := fh.read(4 * MIB):
                remote.update(chunk)
        assert target.stat().st_size == size and remote.hexdigest() == sha
    finally:
        path.unlink(missing_ok=True)
        target.unlink(missing_ok=True)


def debug_logs(caplog) -> None:
    """Everything at DEBUG, the SMB and authentication libraries included (the
    settings keep them at WARNING)."""
    for name in (None, "smbprotocol", "spnego", "destinations"):
        caplog.set_level(logging.DEBUG, logger=name)


def log_texts(caplog) -> list[str]:
    texts = []
    for record in caplog.records:
        texts.append(record.getMessage())
        texts.append(repr(record.args))
        if record.exc_text:
            texts.append(record.exc_text)
    return texts


def assert_secret_nowhere(secret: str, texts: list[str]) -> None:
    for text in texts:
        assert secret not in text


def test_the_password_is_in_no_message_log_record_repr_or_result(smb_server, smb_kind, tmp_path, caplog, settings):
    debug_logs(caplog)
    password = smb_server.password
    texts: list[str] = []
    good = backend(smb_kind)
    result = good.test()
    assert result.ok
    texts += [json.dumps(result.to_dict()), repr(good)]
    with good.session() as session:
        texts += [repr(session), repr(session.client)]
    bad = backend(smb_kind, secrets={"password": password + "x"})
    result = bad.test()
    assert not result.ok
    texts += [json.dumps(result.to_dict()), repr(bad)]
    path, _ = random_file(tmp_path, 1000)
    for failing in (backend(smb_kind), backend(smb_kind, share="no-such-share")):
        try:
            with failing.session() as session:
                session.upload(path, "backupsite/job", "x.tar.zst", expected_size=999)
        except DestinationError as exc:
            texts += [str(exc), repr(exc)]
    settings.BACKUPSITE_DESTINATION_TIMEOUT = 1
    with TcpProxy(None) as silent:
        texts.append(backend(smb_kind, port=silent.port).test().message)
    texts += log_texts(caplog)
    assert len(caplog.records) > 10  # the library did log (at DEBUG), and none of it shows the password
    assert_secret_nowhere(password, texts)
