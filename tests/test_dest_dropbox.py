"""The Dropbox kind — tested against a LOCAL STAND-IN of the Dropbox API, not Dropbox.

Dropbox's cloud cannot be reached from the test machines. ``tests/kinds/dropbox.py`` is
an HTTPS server implementing exactly the API calls the backend makes (token refresh and
the PKCE code exchange, upload sessions, list, metadata, download, delete, space usage)
with the semantics the backend relies on; the SDK is pointed at it. What passes here
proves our use of the SDK and of those semantics, not Dropbox's own behaviour.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import pytest
from dropbox.content_hash import DropboxContentHasher

from destinations.backends.base import NotFoundError, PermanentError, TransientError
from destinations.backends.dropbox import ContentHasher, DropboxBackend, DropboxForm, DropboxSession, PkceAuthorization
from destinations.models import Destination
from tests.kinds import upload_in_thread
from tests.tcpproxy import TcpProxy

pytest_plugins = ["tests.kinds.dropbox"]
pytestmark = pytest.mark.django_db

MiB = 1024 * 1024


@pytest.fixture
def folder():
    return f"backupsite/dbx-{os.urandom(4).hex()}"


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(DropboxSession, "chunk_size", 4 * MiB)


def backend(standin, **secrets) -> DropboxBackend:
    values = {"app_secret": standin.app_secret, "refresh_token": standin.issue_refresh_token(), **secrets}
    return Destination(name="dbx", kind="dropbox", settings={"app_key": standin.app_key}, secrets=values).backend()


def make_file(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def local_hashes(path: Path) -> tuple[str, str]:
    sha, content = hashlib.sha256(), DropboxContentHasher()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 * MiB):
            sha.update(chunk)
            content.update(chunk)
    return sha.hexdigest(), content.hexdigest()


def sparse_file(path: Path, size: int) -> None:
    with open(path, "wb") as fh:
        fh.truncate(size)
        for offset in range(0, size, 97 * MiB):
            fh.seek(offset)
            fh.write(os.urandom(4096))


# --- pieces ---------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 1, 4 * MiB - 1, 4 * MiB, 4 * MiB + 1, 9 * MiB + 5])
def test_content_hash_matches_the_sdks_reference_implementation(size):
    data = os.urandom(size)
    ours, theirs = ContentHasher(), DropboxContentHasher()
    for start in range(0, size, 3 * MiB + 7):  # uneven pieces across block boundaries
        ours.update(data[start : start + 3 * MiB + 7])
    theirs.update(data)
    assert ours.hexdigest() == theirs.hexdigest()


def test_form_fields_and_secrets():
    form = DropboxForm({"dropbox-app_key": "abc123", "dropbox-refresh_token": "tok-secret"})
    assert form.is_valid(), form.errors
    assert form.parsed_settings == {"app_key": "abc123"}
    assert form.secrets_from_cleaned(form.cleaned_data) == {"refresh_token": "tok-secret"}
    edit = DropboxForm(settings={"app_key": "abc123"}, secrets={"refresh_token": "tok-secret", "app_secret": "s3"})
    assert "tok-secret" not in str(edit) and "s3" not in str(edit.fields["app_secret"].widget.render("x", "s3"))
    assert not DropboxForm({"dropbox-app_key": "bad key!", "dropbox-refresh_token": "x"}).is_valid()


def test_pkce_flow_gives_a_working_refresh_token(dropbox_hosts, folder, tmp_path):
    standin = dropbox_hosts
    started = PkceAuthorization(standin.app_key)
    url = started.authorize_url()
    assert started.code_verifier not in url  # only the challenge travels in the link
    code = standin.approve(url)  # the administrator approves at Dropbox and copies the code
    # The page keeps the verifier in the (server-side) session between the two requests.
    token = PkceAuthorization(standin.app_key, code_verifier=started.code_verifier).finish(code)
    assert token in standin.refresh_tokens
    result = (
        Destination(name="x", kind="dropbox", settings={"app_key": standin.app_key}, secrets={"refresh_token": token})
        .backend()
        .test()
    )  # no app secret needed with PKCE
    assert result.ok, result.message
    with pytest.raises(PermanentError, match="did not accept this code"):
        PkceAuthorization(standin.app_key, code_verifier=started.code_verifier).finish(code)  # used once
    other = PkceAuthorization(standin.app_key)
    with pytest.raises(PermanentError, match="did not accept this code"):
        PkceAuthorization(standin.app_key).finish(standin.approve(other.authorize_url()))  # wrong verifier


# --- failure modes ----------------------------------------------------------------------------
def test_a_wrong_app_secret_or_a_revoked_token_fails_the_test(dropbox_hosts):
    standin = dropbox_hosts
    wrong = backend(standin, app_secret="wrong-secret-xyz").test()
    assert not wrong.ok and wrong.message == "Dropbox refused the app key, the app secret or the refresh token."
    revoked = backend(standin, refresh_token="refresh-revoked").test()
    assert not revoked.ok and "refused the refresh token" in revoked.message
    assert "wrong-secret-xyz" not in wrong.message and "refresh-revoked" not in revoked.message


def test_the_test_reports_free_space(dropbox_hosts):
    result = backend(dropbox_hosts).test()
    assert result.ok, result.message
    assert result.free_bytes == dropbox_hosts.allocated - dropbox_hosts.used()
    assert result.remote_folder == "Dropbox: /backupsite"


def test_a_full_dropbox_is_a_permanent_error_and_leaves_nothing(dropbox_hosts, monkeypatch, folder, tmp_path):
    standin = dropbox_hosts
    monkeypatch.setattr(standin, "allocated", standin.used() + MiB)
    path = tmp_path / "a.bin"
    sha = make_file(path, 2 * MiB)
    with backend(standin).session() as session, pytest.raises(PermanentError, match="The Dropbox is full"):
        session.upload(path, folder, "a.tar.zst", expected_size=2 * MiB, expected_sha256=sha)
    assert standin.names(folder) == []


def test_a_silent_server_times_out_within_the_timeout(dropbox_hosts, settings, monkeypatch):
    settings.BACKUPSITE_DESTINATION_TIMEOUT = 1
    with TcpProxy(None) as hole:
        hosts = {"api": f"localhost:{hole.port}", "content": f"127.0.0.1:{hole.port}", "www": "localhost"}
        monkeypatch.setattr(DropboxBackend, "hosts", hosts)
        started = time.monotonic()
        result = backend(dropbox_hosts).test()
        elapsed = time.monotonic() - started
    assert not result.ok
    assert result.message == "Dropbox did not answer within 1 seconds while logging in."
    assert elapsed < 4, elapsed


def test_an_expired_access_token_mid_upload_is_refreshed_and_the_upload_goes_on(
    dropbox_hosts, small_chunks, folder, tmp_path
):
    standin = dropbox_hosts
    path = tmp_path / "a.bin"
    sha = make_file(path, 18 * MiB + 3)  # five chunks of 4 MiB
    with backend(standin).session() as session:
        refreshes = standin.refreshes
        calls = len(standin.calls)
        standin.expire_tokens_after(3)  # the token dies after the start and two appends
        session.upload(path, folder, "a.tar.zst", expected_size=path.stat().st_size, expected_sha256=sha)
    assert standin.refreshes == refreshes + 1
    uploads = [c for c in standin.calls[calls:] if "upload_session" in c]
    assert uploads[0] == "files/upload_session/start" and uploads[-1] == "files/upload_session/finish"
    assert uploads.count("files/upload_session/append_v2") == 4
    assert standin.read(folder, "a.tar.zst") == path.read_bytes()


def test_a_cut_connection_is_transient_and_leaves_nothing(dropbox_hosts, monkeypatch, settings, folder, tmp_path):
    standin = dropbox_hosts
    settings.BACKUPSITE_DESTINATION_TIMEOUT = 5
    path = tmp_path / "a.bin"
    sha = make_file(path, 40 * MiB)
    with TcpProxy(("127.0.0.1", standin.port)) as proxy:
        hosts = {"api": f"localhost:{proxy.port}", "content": f"127.0.0.1:{proxy.port}", "www": "localhost"}
        monkeypatch.setattr(DropboxBackend, "hosts", hosts)
        monkeypatch.setattr(standin, "hosts", hosts)  # the stand-in checks the Host header
        thread, errors = upload_in_thread(backend(standin), path, folder, "cut.tar.zst", 40 * MiB, sha)
        proxy.wait_for_upload(10 * MiB)
        proxy.cut()
        thread.join(30)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], TransientError), errors
    assert standin.names(folder) == []


def test_delete_never_removes_a_folder_and_listing_pages(dropbox_hosts, folder):
    standin = dropbox_hosts
    for name in ["a", "b", "c", "d", "e"]:
        standin.write(folder, f"{name}.tar.zst", b"x")
    standin.write(f"{folder}/sub", "inner.tar.zst", b"y")
    with backend(standin).session() as session:
        assert [f.name for f in session.list(folder)] == [f"{n}.tar.zst" for n in "abcde"]  # two pages
        session.delete(folder, "sub")  # a folder: never deleted by the backend
        with pytest.raises(NotFoundError):
            session.stat(folder, "sub")
    assert standin.names(f"{folder}/sub") == ["inner.tar.zst"]


# --- sizes (RELIABILITY 9) ------------------------------------------------------------------------
@pytest.mark.slow
def test_a_151_mb_file_goes_up_in_an_upload_session(dropbox_hosts, folder, tmp_path):
    standin = dropbox_hosts
    path = tmp_path / "151mb.bin"
    sparse_file(path, 151 * MiB)
    sha, content = local_hashes(path)
    calls = len(standin.calls)
    try:
        with backend(standin).session() as session:
            session.upload(path, folder, "151mb.tar.zst", expected_size=151 * MiB, expected_sha256=sha)
        assert "files/upload" not in standin.calls[calls:]
        assert standin.calls[calls:].count("files/upload_session/append_v2") == 4  # 32 MiB chunks
        assert standin.files[f"/{folder}/151mb.tar.zst"].content_hash == content
        assert hashlib.sha256(standin.read(folder, "151mb.tar.zst")).hexdigest() == sha
    finally:
        path.unlink()


@pytest.mark.slow
@pytest.mark.timeout(1200)  # ~1 min here; 3 GiB through TLS on a shared 2-core machine
def test_a_multi_gb_file_arrives_with_the_right_content_hash(dropbox_hosts, folder, tmp_path):
    standin = dropbox_hosts
    size = 3 * 1024 * MiB + 12345
    path = tmp_path / "3gb.bin"
    sparse_file(path, size)
    sha, content = local_hashes(path)
    try:
        with backend(standin).session() as session:
            standin.expire_tokens_after(40)  # and the token expires on the way
            session.upload(path, folder, "3gb.tar.zst", expected_size=size, expected_sha256=sha)
            assert session.stat(folder, "3gb.tar.zst").size == size
            with session.open(folder, "3gb.tar.zst", offset=size - 5000) as fh:  # a resumed download
                tail = fh.read()
        assert standin.files[f"/{folder}/3gb.tar.zst"].content_hash == content
        with open(path, "rb") as fh:
            fh.seek(size - 5000)
            assert tail == fh.read()
    finally:
        path.unlink()
        standin.files.pop(f"/{folder}/3gb.tar.zst".lower()).disk.unlink(missing_ok=True)


# --- secrets ------------------------------------------------------------------------------------
def test_no_secret_or_token_in_logs_exceptions_reprs_or_results(dropbox_hosts, caplog, folder, tmp_path):
    caplog.set_level(logging.DEBUG)
    standin = dropbox_hosts
    good = backend(standin)
    bad = backend(standin, app_secret="wrong-app-secret-q")
    results = [good.test(), bad.test()]
    path = tmp_path / "a.bin"
    sha = make_file(path, 1000)
    texts = [repr(good), repr(bad), *(json.dumps(r.to_dict()) for r in results)]
    with good.session() as session:
        texts.append(repr(session))
        session.upload(path, folder, "a.bin", expected_size=1000, expected_sha256=sha)
        with pytest.raises(PermanentError) as info:
            session.upload(path, folder, "a.bin", expected_size=1000)
        texts.append(str(info.value))
    texts += [r.getMessage() for r in caplog.records]
    assert results[0].ok and not results[1].ok
    secrets = [standin.app_secret, "wrong-app-secret-q", good._secrets["refresh_token"], *standin.access_tokens]
    for text in texts:
        for secret in secrets:
            assert secret not in text


def test_an_untrusted_certificate_is_permanent(dropbox_hosts, monkeypatch):
    import certifi

    monkeypatch.setattr(DropboxBackend, "ca_certs", certifi.where())  # public CAs, not the stand-in's
    result = backend(dropbox_hosts).test()
    assert not result.ok
    assert result.message == "The TLS certificate of Dropbox is not trusted (a proxy intercepting TLS?)."
