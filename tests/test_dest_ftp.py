"""FTP / FTPS beyond the shared contract: certificates (pinned, system store, wrong host,
changed), each failure mode's own message, TLS session reuse on data connections, the
passive-mode address rule, cut and silent connections mid-upload, a full disk, a 300 MB
upload, and secrets in no message, log record, repr or test result.

Everything runs against the real pyftpdlib server of ``tests/kinds/ftp.py``; nothing is
mocked. Some tests *spy* on the commands the client sends (``FtpClient.putline`` is
wrapped, still sending) to prove that no credential left before a certificate check.
"""

from __future__ import annotations

import ftplib
import hashlib
import json
import logging
import os
import secrets
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from destinations.backends.base import (
    Cancelled,
    DestinationError,
    FingerprintError,
    NotFoundError,
    PermanentError,
    TransientError,
)
from destinations.backends.ftp import FtpBackend, FtpConf
from destinations.backends.ftp.client import FtpClient
from destinations.backends.ftp.forms import FtpForm
from destinations.backends.ftp.listing import parse_list, parse_mlsd
from destinations.backends.ftp.tls import normalize_fingerprint
from tests.conftest import REQUIRE_BINARIES
from tests.tcpproxy import TcpProxy

# Run once, in the default pass (tests/teststack.py): the FTP backend against its server, without the database.
pytestmark = pytest.mark.stack_independent

pytest_plugins = ["tests.kinds.ftp"]

MB = 1024 * 1024


@pytest.fixture(autouse=True)
def _local_destinations(settings):
    settings.BACKUPSITE_ALLOW_LOCAL_DESTINATIONS = True


@pytest.fixture
def folder() -> str:
    return f"backupsite/ftp-{secrets.token_hex(4)}"


@pytest.fixture
def sent(monkeypatch) -> list[str]:
    """Every command line the FTP client sends (it still sends them)."""
    lines: list[str] = []
    original = FtpClient.putline

    def spy(self, line):
        lines.append(line)
        return original(self, line)

    monkeypatch.setattr(FtpClient, "putline", spy)
    return lines


def backend(server, listener="ftps", secrets_=None, **overrides) -> FtpBackend:
    return FtpBackend.from_settings(server.settings(listener, **overrides), secrets_ or server.secrets())


def make_file(path: Path, size: int) -> str:
    """A file of *size* bytes written quickly (a random MiB, varied per MiB); its sha256."""
    block = bytearray(os.urandom(MB))
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        written = 0
        index = 0
        while written < size:
            block[:8] = index.to_bytes(8, "little")
            chunk = memoryview(block)[: min(MB, size - written)]
            out.write(chunk)
            digest.update(chunk)
            written += len(chunk)
            index += 1
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(4 * MB):
            digest.update(chunk)
    return digest.hexdigest()


def no_credentials(lines: list[str]) -> None:
    assert not [line for line in lines if line.upper().startswith(("USER", "PASS"))], lines


# --- certificates --------------------------------------------------------------------------
def test_a_pinned_certificate_is_trusted_and_the_test_reports_tls_facts(ftp_server):
    result = backend(ftp_server).test()
    assert result.ok, result.message
    assert result.fingerprint.trusted and result.fingerprint.value == ftp_server.fingerprint
    assert result.fingerprint.setting == "tls_fingerprint"
    assert "CN=localhost" in result.fingerprint.description
    details = dict(result.details)
    assert details["Encryption"].startswith("TLSv1.")
    assert "PROT P" in details["Encryption"]
    assert details["TLS session reuse"] == "yes"
    assert result.remote_folder.startswith(f"ftp://127.0.0.1:{ftp_server.ports['ftps']}/") and "explicit TLS" in (
        result.remote_folder
    )


def test_an_unconfirmed_certificate_is_shown_for_confirmation_before_any_login(ftp_server, sent):
    result = backend(ftp_server, tls_fingerprint="").test()
    assert not result.ok
    assert result.needs_confirmation
    assert result.fingerprint.value == ftp_server.fingerprint
    assert result.fingerprint.setting == "tls_fingerprint"
    assert "not trust" in result.message and ftp_server.fingerprint in result.message
    assert "AUTH TLS" in sent
    no_credentials(sent)
    # The administrator confirms: the value goes into the named setting, and it works.
    confirmed = backend(ftp_server, tls_fingerprint=result.fingerprint.value).test()
    assert confirmed.ok, confirmed.message


def test_a_certificate_from_a_trusted_authority_needs_no_pin(ftp_server, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(ftp_server.pki["ca"]))  # the "system store"
    result = backend(ftp_server, tls_fingerprint="").test()
    assert result.ok, result.message
    assert result.fingerprint.trusted and not result.needs_confirmation


def test_a_certificate_for_another_host_is_refused_unless_pinned(ftp_server, monkeypatch, sent):
    monkeypatch.setenv("SSL_CERT_FILE", str(ftp_server.pki["ca"]))  # trusted issuer, wrong name
    result = backend(ftp_server, "other").test()
    assert not result.ok and result.needs_confirmation
    assert "other.example.net" in result.message and "not for 127.0.0.1" in result.message
    assert result.fingerprint.value == ftp_server.other_fingerprint
    no_credentials(sent)
    pinned = backend(ftp_server, "other", tls_fingerprint=ftp_server.other_fingerprint).test()
    assert pinned.ok, pinned.message


def test_a_changed_certificate_is_refused_naming_both_fingerprints(ftp_server, sent):
    wrong = backend(ftp_server, "other", tls_fingerprint=ftp_server.fingerprint)
    with pytest.raises(FingerprintError) as info:
        wrong.session()
    message = str(info.value)
    assert "has changed" in message
    assert ftp_server.fingerprint in message and ftp_server.other_fingerprint in message
    assert info.value.fingerprint.value == ftp_server.other_fingerprint and not info.value.fingerprint.trusted
    no_credentials(sent)


def test_data_connections_reuse_the_tls_session_which_the_server_enforces(ftp_server, tmp_path):
    # Stock ftplib (no session reuse) is refused by the server's data connections...
    context = ssl.create_default_context(cafile=str(ftp_server.pki["ca"]))
    stock = ftplib.FTP_TLS(context=context, timeout=10)
    stock.connect("127.0.0.1", ftp_server.ports["ftps"])
    stock.login("backup", ftp_server.passwords["backup"])
    stock.prot_p()
    with pytest.raises(ftplib.error_perm, match=r"^522"):
        stock.nlst()
    stock.close()
    # ... while ours resumes the control connection's session every time.
    path = tmp_path / "a.bin"
    sha = make_file(path, 3 * MB)
    with backend(ftp_server).session() as session:
        session.upload(path, "backupsite", "reuse.bin", expected_size=3 * MB, expected_sha256=sha)
        assert session.client.session_reused is True
        session.delete("backupsite", "reuse.bin")


# --- the passive-mode address rule and old servers ------------------------------------------
def test_the_address_a_pasv_reply_announces_is_never_used(ftp_server, tmp_path, folder, sent, monkeypatch):
    replies = []
    original = FtpClient.sendcmd

    def record(self, cmd):
        resp = original(self, cmd)
        if cmd == "PASV":
            replies.append(resp)
        return resp

    monkeypatch.setattr(FtpClient, "sendcmd", record)
    path = tmp_path / "p.bin"
    sha = make_file(path, MB + 3)
    with backend(ftp_server, "legacy").session() as session:
        session.upload(path, folder, "p.bin", expected_size=MB + 3, expected_sha256=sha)
        assert [f.name for f in session.list(folder)] == ["p.bin"]
        assert session.listing_command == "LIST" and session.client.epsv is False
    assert replies and all("127,0,0,3" in r for r in replies)  # nothing listens there
    assert "EPSV" in sent and not [line for line in sent if line.startswith(("PORT", "EPRT"))]
    assert (ftp_server.home / folder / "p.bin").read_bytes() == path.read_bytes()


def test_listings_show_regular_files_only(ftp_server, folder):
    (ftp_server.home / folder / "sub dir").mkdir(parents=True)
    (ftp_server.home / folder / "a file with spaces.tar.zst").write_bytes(b"12345")
    os.symlink("a file with spaces.tar.zst", ftp_server.home / folder / "link")
    for listener in ("ftps", "legacy"):
        with backend(ftp_server, listener).session() as session:
            listed = {f.name: f.size for f in session.list(folder)}
        assert listed.get("a file with spaces.tar.zst") == 5, listener
        assert "sub dir" not in listed, listener


def test_a_download_closed_early_leaves_the_session_usable(ftp_server, tmp_path, folder):
    path = tmp_path / "d.bin"
    sha = make_file(path, 8 * MB)
    with backend(ftp_server).session() as session:
        session.upload(path, folder, "d.bin", expected_size=8 * MB, expected_sha256=sha)
        with session.open(folder, "d.bin") as fh:
            assert len(fh.read(1000)) > 0
        assert [f.name for f in session.list(folder)] == ["d.bin"]
        with session.open(folder, "d.bin", offset=8 * MB - 10) as fh:
            assert fh.read(100) == path.read_bytes()[-10:]


def test_a_stream_opened_on_the_backend_owns_its_session(ftp_server, tmp_path, folder):
    """Downloads and verify read through ``Backend.open``: one session per stream."""
    path = tmp_path / "o.bin"
    sha = make_file(path, 5 * MB + 7)
    ftps = backend(ftp_server)
    ftps.upload(path, folder, "o.bin", expected_size=5 * MB + 7, expected_sha256=sha)
    with ftps.open(folder, "o.bin", offset=MB) as stream:
        data = b"".join(iter(lambda: stream.read(MB), b""))
    assert data == path.read_bytes()[MB:]
    with pytest.raises(NotFoundError):
        ftps.open(folder, "nothing.bin")


# --- failure modes, each with its own message ------------------------------------------------
def test_a_wrong_password_says_so(ftp_server):
    wrong = "wrong-" + secrets.token_hex(4)
    result = backend(ftp_server, secrets_={"password": wrong}).test()
    assert not result.ok
    assert "refused the user name or password" in result.message and "530" in result.message
    assert wrong not in result.message


def test_a_read_only_user_fails_the_test_at_the_write(ftp_server):
    result = backend(ftp_server, user="reader", secrets_=ftp_server.secrets("reader")).test()
    assert not result.ok
    assert "While uploading" in result.message and "permission denied" in result.message


def test_a_missing_folder_says_which(ftp_server):
    result = backend(ftp_server, folder="branch-nowhere").test()
    assert not result.ok
    assert result.message == "The folder branch-nowhere does not exist on 127.0.0.1 (or this user may not open it)."
    (ftp_server.home / "branch-here").mkdir(exist_ok=True)
    ok = backend(ftp_server, folder="branch-here").test()
    assert ok.ok, ok.message
    assert "/branch-here/backupsite" in ok.remote_folder


def test_a_silent_server_fails_within_the_timeout(ftp_server, settings):
    settings.BACKUPSITE_DESTINATION_TIMEOUT = 1.5
    with TcpProxy(None) as hole:
        started = time.monotonic()
        result = backend(ftp_server, port=hole.port).test()
        elapsed = time.monotonic() - started
    assert not result.ok
    assert "did not answer within 1.5 seconds" in result.message and "greeting" in result.message
    assert elapsed < 4


def test_a_closed_port_is_a_transient_error(ftp_server):
    with TcpProxy(None) as gone:
        port = gone.port
    with pytest.raises(TransientError, match="refused the connection"):
        backend(ftp_server, port=port).session()


def test_plain_ftp_warns_that_the_password_travels_in_clear(ftp_server):
    result = backend(ftp_server, "plain").test()
    assert result.ok, result.message
    assert "Warning: plain FTP" in result.message and "unencrypted" in result.message
    assert dict(result.details)["Encryption"] == "none: plain FTP"
    assert result.fingerprint is None


def test_plain_ftp_against_a_server_that_requires_tls_hints_at_it(ftp_server):
    result = backend(ftp_server, "ftps", plain_ftp=True).test()
    assert not result.ok
    assert "untick “plain FTP”" in result.message


def test_tls_is_never_silently_dropped(ftp_server, sent):
    result = backend(ftp_server, "plain", plain_ftp=False).test()
    assert not result.ok
    assert "does not offer TLS" in result.message
    no_credentials(sent)


def test_a_full_disk_is_a_permanent_error_and_leaves_nothing(ftp_server, tmp_path, folder):
    if ftp_server.full_home is None:
        message = "cannot mount a small tmpfs here (not root?): no full disk for the FTP server"
        if REQUIRE_BINARIES:
            pytest.fail(message)
        pytest.skip(message)
    path = tmp_path / "big.bin"
    sha = make_file(path, 3 * MB)  # the disk holds 2 MiB
    full = backend(ftp_server, user="full", secrets_=ftp_server.secrets("full"))
    with full.session() as session, pytest.raises(PermanentError) as info:
        session.upload(path, folder, "big.tar.zst", expected_size=3 * MB, expected_sha256=sha)
    assert "no space is left" in str(info.value)
    assert not isinstance(info.value, TransientError)
    assert sorted(os.listdir(ftp_server.full_home / folder)) == []


# --- cut and silent connections mid-upload ---------------------------------------------------
def _proxied(ftp_server):
    """Proxies on 127.0.0.2 in front of the legacy listener's control port and each of
    its passive ports: the client connects to the control address, so its data
    connections go through them too."""
    control = TcpProxy(("127.0.0.1", ftp_server.ports["legacy"]), host="127.0.0.2")
    data = [TcpProxy(("127.0.0.1", p), host="127.0.0.2", port=p) for p in ftp_server.legacy_passive_ports]
    return control, data


def test_a_connection_cut_mid_upload_leaves_only_a_hidden_partial_removed_later(ftp_server, tmp_path, folder, settings):
    settings.BACKUPSITE_DESTINATION_TIMEOUT = 5
    path = tmp_path / "cut.bin"
    sha = make_file(path, 48 * MB)
    control, data = _proxied(ftp_server)
    cut_at = []

    def progress(done: int) -> None:
        if done > 8 * MB and not cut_at:
            cut_at.append(sum(p.bytes_up for p in data))
            for proxy in (control, *data):
                proxy.cut()

    cut_backend = backend(ftp_server, "legacy", host="127.0.0.2", port=control.port)
    try:
        started = time.monotonic()
        with cut_backend.session() as session, pytest.raises(TransientError) as info:
            session.upload(path, folder, "cut.tar.zst", expected_size=48 * MB, expected_sha256=sha, progress=progress)
        elapsed = time.monotonic() - started
    finally:
        for proxy in (control, *data):
            proxy.close()
    assert cut_at and cut_at[0] > 4 * MB  # the data really went through the proxies
    assert "lost" in str(info.value) or "failed" in str(info.value), info.value
    assert elapsed < 10, (elapsed, info.value)
    names = os.listdir(ftp_server.home / folder)
    assert "cut.tar.zst" not in names
    assert all(name.startswith(".") for name in names)  # at most the hidden partial
    with backend(ftp_server, "legacy").session() as session:
        assert session.list(folder) == []
        session.remove_partials(folder)
    assert os.listdir(ftp_server.home / folder) == []


def test_a_network_that_goes_silent_mid_upload_fails_within_the_timeout(ftp_server, tmp_path, folder, settings):
    settings.BACKUPSITE_DESTINATION_TIMEOUT = 2
    path = tmp_path / "stall.bin"
    sha = make_file(path, 48 * MB)
    control, data = _proxied(ftp_server)
    frozen = []

    def progress(done: int) -> None:
        if done > 4 * MB and not frozen:
            frozen.append(time.monotonic())
            for proxy in (control, *data):
                proxy.freeze()

    stalled = backend(ftp_server, "legacy", host="127.0.0.2", port=control.port)
    try:
        with stalled.session() as session, pytest.raises(TransientError) as info:
            session.upload(path, folder, "stall.tar.zst", expected_size=48 * MB, expected_sha256=sha, progress=progress)
        waited = time.monotonic() - frozen[0]
    finally:
        for proxy in (control, *data):
            proxy.close()
    assert "did not answer within 2 seconds" in str(info.value), info.value
    assert waited < 2 + 3, waited
    assert "stall.tar.zst" not in os.listdir(ftp_server.home / folder)


_KILLED_UPLOADER = """
import json, os, sys, time
from pathlib import Path
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
import django
django.setup()
from django.conf import settings
settings.BACKUPSITE_ALLOW_LOCAL_DESTINATIONS = True
from destinations.backends.ftp import FtpBackend
job = json.loads(Path(sys.argv[1]).read_text())
Path(sys.argv[1]).unlink()
backend = FtpBackend.from_settings(job["settings"], job["secrets"])
with backend.session() as session:
    session.upload(Path(job["path"]), job["folder"], "killed.tar.zst", expected_size=job["size"],
                   progress=lambda done: time.sleep(0.02))  # about 50 MiB/s: time to kill it
"""


@pytest.mark.slow
def test_a_worker_killed_mid_upload_leaves_only_a_partial_the_next_upload_removes(ftp_server, tmp_path, folder):
    """RELIABILITY 1 for FTP: SIGKILL of the uploading process."""
    path = tmp_path / "k.bin"
    make_file(path, 64 * MB)
    job = tmp_path / "job.json"
    job.write_text(
        json.dumps(
            {
                "settings": ftp_server.settings(),
                "secrets": ftp_server.secrets(),
                "path": str(path),
                "folder": folder,
                "size": 64 * MB,
            }
        )
    )
    job.chmod(0o600)
    repo = Path(__file__).resolve().parent.parent
    child = subprocess.Popen([sys.executable, "-c", _KILLED_UPLOADER, str(job)], cwd=repo)
    partial = ftp_server.home / folder / ".killed.tar.zst.partial"
    deadline = time.monotonic() + 60
    try:
        while not (partial.exists() and partial.stat().st_size > 8 * MB):
            assert child.poll() is None, "the uploader ended before it could be killed"
            assert time.monotonic() < deadline, "the upload did not start"
            time.sleep(0.01)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    time.sleep(0.2)  # the server notices the dropped connection
    assert os.listdir(ftp_server.home / folder) == [".killed.tar.zst.partial"]
    with backend(ftp_server).session() as session:  # what the next upload does first
        assert session.remove_partials(folder) == [".killed.tar.zst.partial"]
    assert os.listdir(ftp_server.home / folder) == []


def test_a_cancelled_upload_leaves_the_session_usable(ftp_server, tmp_path, folder):
    path = tmp_path / "c.bin"
    sha = make_file(path, 16 * MB)
    small = tmp_path / "s.bin"
    small_sha = make_file(small, 1000)
    with backend(ftp_server).session() as session:
        with pytest.raises(Cancelled):
            session.upload(path, folder, "c.tar.zst", expected_size=16 * MB, expected_sha256=sha, cancel=lambda: True)
        session.upload(small, folder, "s.bin", expected_size=1000, expected_sha256=small_sha)
        assert [f.name for f in session.list(folder)] == ["s.bin"]
    assert sorted(os.listdir(ftp_server.home / folder)) == ["s.bin"]


@pytest.mark.slow
def test_a_300_mb_upload_arrives_with_the_right_checksum(ftp_server, tmp_path, folder):
    path = tmp_path / "big.tar.zst"
    size = 300 * MB
    sha = make_file(path, size)
    try:
        with backend(ftp_server).session() as session:
            session.upload(path, folder, "big.tar.zst", expected_size=size, expected_sha256=sha)
            assert session.stat(folder, "big.tar.zst").size == size
        stored = ftp_server.home / folder / "big.tar.zst"
        assert sha256_of(stored) == sha
    finally:
        path.unlink(missing_ok=True)
        (ftp_server.home / folder / "big.tar.zst").unlink(missing_ok=True)


# --- secrets ---------------------------------------------------------------------------------
def test_the_password_is_in_no_message_log_record_repr_or_result(ftp_server, tmp_path, folder, caplog):
    password = ftp_server.passwords["backup"]
    caplog.set_level(logging.DEBUG)
    texts = []
    good = backend(ftp_server)
    texts += [repr(good), good.describe_folder(folder), FtpBackend.describe(ftp_server.settings())]
    result = good.test()
    texts.append(json.dumps(result.to_dict()))
    path = tmp_path / "x.bin"
    make_file(path, 1000)
    with good.session() as session:
        texts += [repr(session), repr(session.client), repr(vars(session.client))]
        with pytest.raises(DestinationError) as info:
            session.upload(path, folder, "x.bin", expected_size=999)
        texts.append(str(info.value))
        with pytest.raises(NotFoundError) as info:
            session.open(folder, "missing.bin")
        texts.append(str(info.value))
    for variant in (
        backend(ftp_server, secrets_={"password": password + "x"}),  # wrong password
        backend(ftp_server, "other"),  # changed certificate
        backend(ftp_server, "ftps", plain_ftp=True),  # refused without TLS
    ):
        failed = variant.test()
        texts += [failed.message, json.dumps(failed.to_dict()), repr(variant)]
    texts += [record.getMessage() for record in caplog.records]
    texts += [repr(record.args) for record in caplog.records]
    assert texts
    for text in texts:
        assert password not in text
        assert "banner text" not in text  # server banners never reach a message


def test_a_password_with_a_line_break_is_refused_before_connecting(ftp_server):
    with pytest.raises(PermanentError, match="line break"):
        backend(ftp_server, secrets_={"password": "a\r\nDELE x"}).session()


# --- settings and form --------------------------------------------------------------------------
def form(data: dict, **kwargs) -> FtpForm:
    return FtpForm({f"ftp-{k}": v for k, v in data.items()}, **kwargs)


@pytest.mark.parametrize(
    ("typed", "host", "port", "folder"),
    [
        ("backup.example.net", "backup.example.net", 21, ""),
        ("backup.example.net/branch1", "backup.example.net", 21, "branch1"),
        ("ftp://backup.example.net/branch1/", "backup.example.net", 21, "branch1"),
        ("ftp://backup.example.net:2121/a/b", "backup.example.net", 2121, "a/b"),
        ("[2001:db8::5]:990/x", "2001:db8::5", 990, "x"),
    ],
)
def test_the_server_field_is_split_as_users_type_it(typed, host, port, folder):
    f = form({"server": typed, "user": "u", "password": "p", "port": "21"})
    assert f.is_valid(), f.errors
    assert f.parsed_settings == {
        "host": host,
        "port": port,
        "folder": folder,
        "user": "u",
        "plain_ftp": False,
        "tls_fingerprint": "",
    }


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"server": "ftps://backup.example.net"}, "server", "Implicit FTPS"),
        ({"server": "sftp://backup.example.net"}, "server", "ftp://"),
        ({"server": "u:p@backup.example.net"}, "server", "own fields"),
        ({"server": "ftp://backup.example.net:2121", "port": "2222"}, "port", "2121"),
        ({"server": "backup.example.net/../etc"}, "server", "“..”"),
        ({"server": "backup.example.net", "tls_fingerprint": "abc"}, "tls_fingerprint", "64 hexadecimal"),
        ({"server": "backup.example.net", "password": "a\nb"}, "password", "line breaks"),
    ],
)
def test_bad_settings_land_next_to_their_field(data, field, words):
    f = form({"user": "u", "password": "p", **data})
    assert not f.is_valid()
    assert words in " ".join(f.errors[field]), f.errors


def test_the_form_keeps_a_stored_password_and_never_renders_it():
    stored = {"password": "stored-secret-" + secrets.token_hex(4)}
    settings = {"host": "backup.example.net", "port": 21, "folder": "branch1", "user": "u"}
    f = FtpForm(settings=settings, secrets=stored)
    html = f.as_p()
    assert stored["password"] not in html
    assert 'value="backup.example.net/branch1"' in html
    edited = FtpForm(
        {"ftp-server": "backup.example.net/branch1", "ftp-port": "21", "ftp-user": "u", "ftp-password": ""},
        settings=settings,
        secrets=stored,
    )
    assert edited.is_valid(), edited.errors
    assert edited.secrets_from_cleaned(edited.cleaned_data) == stored
    assert "travel unencrypted" in str(FtpForm.base_fields["plain_ftp"].help_text)


def test_the_conf_is_strict_and_normalises_the_fingerprint():
    digest = hashlib.sha256(b"x").hexdigest()
    conf = FtpConf.parse({"host": "h", "user": "u", "tls_fingerprint": "SHA256: " + digest})
    assert conf.tls_fingerprint == ":".join(digest[i : i + 2] for i in range(0, 64, 2)).upper()
    assert normalize_fingerprint(conf.tls_fingerprint) == conf.tls_fingerprint
    from destinations.backends.base import ConfError

    with pytest.raises(ConfError, match="Unknown setting"):
        FtpConf.parse({"host": "h", "user": "u", "password": "p"})
    with pytest.raises(ConfError) as info:
        FtpConf.parse({"host": "h", "user": ""})
    assert info.value.field == "user"
    with pytest.raises(ConfError) as info:
        FtpConf.parse({"host": "h", "user": "u", "port": True})
    assert info.value.field == "port"


def test_an_address_a_destination_must_not_reach_is_refused(settings):
    settings.BACKUPSITE_ALLOW_LOCAL_DESTINATIONS = False
    with pytest.raises(PermanentError, match="not allowed"):
        FtpBackend.from_settings({"host": "169.254.169.254", "user": "u"}, {"password": "p"}).session()


# --- listing parsers ----------------------------------------------------------------------------
def test_mlsd_lines_are_parsed_to_regular_files():
    lines = [
        "type=cdir;modify=20260101000000; .",
        "type=dir;size=4096;modify=20260101000000; sub",
        "type=file;size=1234;modify=20260102030405.5;perm=r; name with spaces.tar.zst",
        "type=OS.unix=slink:/etc;size=4; link",
        "size=12;type=File;UNIX.mode=0644; Upper.bin",
        "garbage",
    ]
    files = parse_mlsd(lines)
    assert [(f.name, f.size) for f in files] == [("Upper.bin", 12), ("name with spaces.tar.zst", 1234)]
    assert files[1].modified == pytest.approx(1767323045.5)


def test_list_lines_in_unix_and_dos_format_are_parsed():
    lines = [
        "total 3",
        "drwxr-xr-x   2 ftp ftp     4096 Jan 01 12:00 sub",
        "-rw-r--r--   1 ftp ftp     1234 Jan 02  2025 a b.tar.zst",
        "lrwxrwxrwx   1 ftp ftp        4 Jan 02 10:00 link -> a",
        "-rw-r--r--   1 1000 1000     99 Mar 03 04:05 .partial-ish",
        "01-31-24  01:05PM                 5678 win file.zip",
        "01-31-24  01:05PM       <DIR>          windir",
    ]
    files = {f.name: f for f in parse_list(lines)}
    assert {n: f.size for n, f in files.items()} == {"a b.tar.zst": 1234, ".partial-ish": 99, "win file.zip": 5678}
    assert files["a b.tar.zst"].modified == 1735776000.0
    assert files["win file.zip"].modified == 1706706300.0
