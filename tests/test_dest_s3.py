"""The S3-compatible kind: failure modes, multipart uploads and their abort, address
pinning, secrets. Against moto's server mode (``tests/kinds/s3.py``); the contract cases
run in ``tests/test_destination_contract.py``."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from pathlib import Path

import pytest

from destinations.backends.base import (
    Cancelled,
    ConfError,
    DestinationError,
    NotFoundError,
    PermanentError,
    TransientError,
)
from destinations.backends.s3 import S3Backend, S3Conf, S3Form, S3Session
from destinations.models import Destination
from tests.kinds import upload_in_thread
from tests.tcpproxy import TcpProxy

pytest_plugins = ["tests.kinds.s3"]
pytestmark = pytest.mark.django_db

MiB = 1024 * 1024
BUCKET = "backupsite-test"  # what tests/kinds/s3.py creates
PREFIX = "office/server1"


def backend(server, secret=None, **overrides) -> S3Backend:
    return Destination(
        name="s3",
        kind="s3",
        settings=server.settings(**overrides),
        secrets={"secret_key": secret or server.secret_key},
    ).backend()


def make_file(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def key(folder: str, name: str) -> str:
    return f"{PREFIX}/{folder}/{name}"


def exists(raw, folder: str, name: str) -> bool:
    return raw.list_objects_v2(Bucket=BUCKET, Prefix=key(folder, name)).get("KeyCount", 0) > 0


def incomplete_uploads(raw, folder: str = "") -> list[str]:
    return [u["Key"] for u in raw.list_multipart_uploads(Bucket=BUCKET, Prefix=f"{PREFIX}/{folder}").get("Uploads", [])]


@pytest.fixture
def local_ok(settings):
    settings.BACKUPSITE_ALLOW_LOCAL_DESTINATIONS = True


@pytest.fixture
def small_parts(monkeypatch):
    """5 MiB parts (S3's minimum) so a 12 MiB file is a three-part multipart upload."""
    monkeypatch.setattr(S3Session, "multipart_threshold", 5 * MiB)
    monkeypatch.setattr(S3Session, "part_size", 5 * MiB)


@pytest.fixture
def folder():
    return f"backupsite/s3-{os.urandom(4).hex()}"


# --- settings and form -----------------------------------------------------------------
def test_conf_is_strict_and_names_the_field():
    good = {"bucket": "my-bucket", "access_key": "AKIA1"}
    assert S3Conf.parse(good).effective_endpoint == "https://s3.us-east-1.amazonaws.com"
    with pytest.raises(ConfError, match="Unknown setting"):
        S3Conf.parse({**good, "secret_key": "x"})  # a secret never goes into the settings
    for field, value in [
        ("endpoint_url", "ftp://x"),
        ("endpoint_url", "https://host/path"),
        ("endpoint_url", "https://user:pw@host"),
        ("bucket", "Bad_Bucket"),
        ("bucket", "1.2.3.4"),
        ("region", "EU Central"),
        ("prefix", "a/../b"),
        ("access_key", "with space"),
    ]:
        with pytest.raises(ConfError) as info:
            S3Conf.parse({**good, field: value})
        assert info.value.field == field, (field, value)
    conf = S3Conf.parse({**good, "prefix": "/office//server1/", "endpoint_url": "http://nas.lan:9000/"})
    assert conf.prefix == "office/server1"
    assert conf.scheme_host_port == ("http", "nas.lan", 9000)


def test_form_maps_fields_and_never_renders_the_secret():
    data = {
        "s3-endpoint_url": "https://s3.example.net",
        "s3-region": "eu-central-1",
        "s3-bucket": "backups",
        "s3-prefix": "branch1",
        "s3-access_key": "AKIAEXAMPLE",
        "s3-secret_key": "the-secret-key",
        "s3-path_style": "on",
    }
    form = S3Form(data)
    assert form.is_valid(), form.errors
    assert form.parsed_settings["path_style"] is True
    assert "secret_key" not in form.parsed_settings
    assert form.secrets_from_cleaned(form.cleaned_data) == {"secret_key": "the-secret-key"}
    edit = S3Form(settings=form.parsed_settings, secrets={"secret_key": "the-secret-key"})
    assert "the-secret-key" not in str(edit)
    assert not edit.fields["secret_key"].required
    bad = S3Form({**data, "s3-endpoint_url": "https://s3.example.net/some/path"})
    assert not bad.is_valid()
    assert "without a path" in str(bad.errors["endpoint_url"])


# --- failure modes ------------------------------------------------------------------------
def test_wrong_secret_key_fails_the_test_with_its_own_message(moto_server, local_ok):
    result = backend(moto_server, secret="wrong-secret-key-123").test()
    assert not result.ok
    assert "access key or the secret key" in result.message
    assert "wrong-secret-key-123" not in json.dumps(result.to_dict())


def test_unknown_access_key_is_refused(moto_server, local_ok):
    result = backend(moto_server, access_key="AKIADOESNOTEXIST").test()
    assert not result.ok
    assert "access key or the secret key" in result.message


def test_missing_bucket_is_named(moto_server, local_ok):
    result = backend(moto_server, bucket="no-such-bucket").test()
    assert not result.ok
    assert "The bucket no-such-bucket does not exist" in result.message


def test_a_silent_server_times_out_within_the_timeout(moto_server, settings):
    settings.BACKUPSITE_ALLOW_LOCAL_DESTINATIONS = True
    settings.BACKUPSITE_DESTINATION_TIMEOUT = 1
    with TcpProxy(None) as hole:
        started = time.monotonic()
        result = backend(moto_server, endpoint_url=f"http://127.0.0.1:{hole.port}").test()
        elapsed = time.monotonic() - started
    assert not result.ok
    assert "did not answer within 1 seconds" in result.message
    assert elapsed < 6, elapsed  # one retry at most: 2 × 1 s plus backoff


def test_loopback_is_refused_before_connecting_unless_allowed(moto_server, settings):
    settings.BACKUPSITE_ALLOW_LOCAL_DESTINATIONS = False
    with TcpProxy(("127.0.0.1", moto_server.port)) as proxy:
        result = backend(moto_server, endpoint_url=f"http://127.0.0.1:{proxy.port}").test()
        assert not result.ok
        assert "not allowed for a destination" in result.message
        assert proxy.connections == 0  # refused before any byte (or key) was sent


@pytest.mark.parametrize("path_style", [True, False], ids=["path-style", "virtual-hosted"])
def test_connections_go_to_the_checked_address_even_if_the_name_rebinds(
    moto_server, local_ok, monkeypatch, tmp_path, path_style
):
    """The name is resolved once (netguard); botocore never resolves it again, so a DNS
    answer that changes to another address after the check is not followed. (A host
    name without a dot: moto then reads the bucket from the path, or from the first
    label of ``<bucket>.s3rebind`` for virtual-hosted addressing.)"""
    real = socket.getaddrinfo
    asked = []

    def rebinding(host, port, *args, **kwargs):
        if isinstance(host, str) and host.endswith("s3rebind"):
            asked.append(host)
            # First answer: the store. Later answers: a loopback address nothing listens on.
            return real("127.0.0.1" if len(asked) == 1 else "127.0.0.9", port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    path = tmp_path / "a.bin"
    sha = make_file(path, 2 * MiB)
    b = backend(moto_server, endpoint_url=f"http://s3rebind:{moto_server.port}", path_style=path_style)
    with b.session() as session:
        session.upload(path, "backupsite/rebind", "a.bin", expected_size=2 * MiB, expected_sha256=sha, replace=True)
        assert [f.name for f in session.list("backupsite/rebind")] == ["a.bin"]
        session.delete("backupsite/rebind", "a.bin")
    assert asked == ["s3rebind" if path_style else f"{BUCKET}.s3rebind"]


# --- multipart ------------------------------------------------------------------------------
def test_multipart_upload_arrives_and_its_etag_is_checked(moto_server, local_ok, small_parts, tmp_path, folder):
    path = tmp_path / "big.bin"
    sha = make_file(path, 12 * MiB + 3)
    seen = []
    with backend(moto_server).session() as session:
        session.upload(
            path, folder, "big.tar.zst", expected_size=path.stat().st_size, expected_sha256=sha, progress=seen.append
        )
    raw = moto_server.client()
    head = raw.head_object(Bucket=BUCKET, Key=key(folder, "big.tar.zst"))
    assert head["ETag"].strip('"').endswith("-3")  # three parts, composite ETag verified by the backend
    assert head["Metadata"] == {"backupsite-sha256": sha}
    body = raw.get_object(Bucket=BUCKET, Key=key(folder, "big.tar.zst"))["Body"].read()
    assert hashlib.sha256(body).hexdigest() == sha
    assert seen == sorted(seen) and seen[-1] == path.stat().st_size and len(seen) >= 3
    assert incomplete_uploads(raw, folder) == []


def test_cancel_mid_multipart_aborts_the_upload(moto_server, local_ok, small_parts, tmp_path, folder):
    path = tmp_path / "big.bin"
    sha = make_file(path, 12 * MiB)
    parts = []

    def cancel() -> bool:
        return len(parts) >= 1  # after the first part went up

    with backend(moto_server).session() as session, pytest.raises(Cancelled):
        session.upload(
            path,
            folder,
            "big.tar.zst",
            expected_size=12 * MiB,
            expected_sha256=sha,
            progress=parts.append,
            cancel=cancel,
        )
    raw = moto_server.client()
    assert parts, "no part was sent before the cancel"
    assert not exists(raw, folder, "big.tar.zst")
    assert incomplete_uploads(raw, folder) == []


def test_a_local_checksum_mismatch_aborts_before_completing(moto_server, local_ok, small_parts, tmp_path, folder):
    path = tmp_path / "big.bin"
    make_file(path, 11 * MiB)
    with backend(moto_server).session() as session, pytest.raises(PermanentError, match="does not match its checksum"):
        session.upload(path, folder, "big.tar.zst", expected_size=11 * MiB, expected_sha256="0" * 64)
    raw = moto_server.client()
    assert not exists(raw, folder, "big.tar.zst")
    assert incomplete_uploads(raw, folder) == []


def test_a_cut_connection_mid_multipart_aborts_and_is_transient(moto_server, settings, small_parts, tmp_path, folder):
    settings.BACKUPSITE_ALLOW_LOCAL_DESTINATIONS = True
    settings.BACKUPSITE_DESTINATION_TIMEOUT = 5
    path = tmp_path / "big.bin"
    sha = make_file(path, 30 * MiB)
    with TcpProxy(("127.0.0.1", moto_server.port)) as proxy:
        b = backend(moto_server, endpoint_url=f"http://127.0.0.1:{proxy.port}")
        thread, errors = upload_in_thread(b, path, folder, "cut.tar.zst", 30 * MiB, sha)
        proxy.wait_for_upload(8 * MiB)  # into the second part
        proxy.cut()
        # botocore retries a request once: cut the retry too, then let the abort through.
        proxy.wait_for_upload(proxy.bytes_up + MiB)
        proxy.cut()
        thread.join(60)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], TransientError), errors
    raw = moto_server.client()
    assert not exists(raw, folder, "cut.tar.zst")
    assert incomplete_uploads(raw, folder) == []  # the abort went through a new connection


def test_remove_partials_aborts_a_killed_workers_multipart_upload(moto_server, local_ok, folder):
    raw = moto_server.client()
    mine = raw.create_multipart_upload(Bucket=BUCKET, Key=key(folder, "killed.tar.zst"))["UploadId"]
    raw.upload_part(Bucket=BUCKET, Key=key(folder, "killed.tar.zst"), UploadId=mine, PartNumber=1, Body=b"x" * 100)
    other = raw.create_multipart_upload(Bucket=BUCKET, Key=key(folder + "-other", "x.tar.zst"))["UploadId"]
    deeper = raw.create_multipart_upload(Bucket=BUCKET, Key=key(folder, "sub/y.tar.zst"))["UploadId"]
    with backend(moto_server).session() as session:
        assert session.remove_partials(folder) == ["killed.tar.zst (incomplete upload)"]
    assert incomplete_uploads(raw, folder + "/") == [key(folder, "sub/y.tar.zst")]
    assert incomplete_uploads(raw, folder + "-other") == [key(folder + "-other", "x.tar.zst")]
    raw.abort_multipart_upload(Bucket=BUCKET, Key=key(folder + "-other", "x.tar.zst"), UploadId=other)
    raw.abort_multipart_upload(Bucket=BUCKET, Key=key(folder, "sub/y.tar.zst"), UploadId=deeper)


class CorruptingProxy(TcpProxy):
    """Flips one byte of what the client sends, past the request headers."""

    def __init__(self, target, at: int) -> None:
        self.at = at
        self.flipped = False
        super().__init__(target)

    def _pump(self, src, dst, up):
        if not up:
            return super()._pump(src, dst, up)
        sent = 0
        try:
            while data := src.recv(65536):
                if not self.flipped and sent <= self.at < sent + len(data):
                    data = bytearray(data)
                    data[self.at - sent] ^= 0xFF
                    self.flipped = True
                sent += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass


def test_bytes_damaged_on_the_way_never_count_as_a_backup(moto_server, local_ok, tmp_path, folder):
    """A byte flipped in transit: the store's checksum (payload signature, Content-MD5,
    or our ETag check after the upload) refuses it and nothing stays under the name."""
    path = tmp_path / "a.bin"
    sha = make_file(path, 3 * MiB)
    with CorruptingProxy(("127.0.0.1", moto_server.port), at=2 * MiB) as proxy:
        b = backend(moto_server, endpoint_url=f"http://127.0.0.1:{proxy.port}")
        with b.session() as session, pytest.raises(DestinationError):
            session.upload(path, folder, "a.tar.zst", expected_size=3 * MiB, expected_sha256=sha, replace=True)
        assert proxy.flipped
    assert not exists(moto_server.client(), folder, "a.tar.zst")


# --- listing ----------------------------------------------------------------------------
def test_listing_is_one_folder_level(moto_server, local_ok, folder):
    raw = moto_server.client()
    for name in ["a.tar.zst", "sub/deeper.tar.zst", ".hidden", "b.json"]:
        raw.put_object(Bucket=BUCKET, Key=key(folder, name), Body=b"x")
    raw.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{folder}-sibling/c.tar.zst", Body=b"x")
    with backend(moto_server).session() as session:
        assert [f.name for f in session.list(folder)] == ["a.tar.zst", "b.json"]
        assert session.stat(folder, "a.tar.zst").size == 1
        with pytest.raises(NotFoundError):
            session.stat(folder, "sub")
        with session.open(folder, "a.tar.zst", offset=1) as fh:
            assert fh.read() == b""


# --- large files (RELIABILITY 10 at size) -------------------------------------------------
@pytest.mark.slow
def test_a_300_mb_upload_arrives_with_the_right_checksum(moto_server, local_ok, tmp_path, folder):
    path = tmp_path / "300mb.bin"
    size = 300 * MiB
    with open(path, "wb") as fh:  # sparse, with random blocks so the parts differ
        fh.truncate(size)
        for offset in range(0, size, 7 * MiB):
            fh.seek(offset)
            fh.write(os.urandom(4096))
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 * MiB):
            digest.update(chunk)
    try:
        with backend(moto_server).session() as session:
            session.upload(path, folder, "300mb.tar.zst", expected_size=size, expected_sha256=digest.hexdigest())
            remote = hashlib.sha256()
            with session.open(folder, "300mb.tar.zst") as fh:
                while chunk := fh.read(8 * MiB):
                    remote.update(chunk)
            assert remote.hexdigest() == digest.hexdigest()
            assert incomplete_uploads(moto_server.client(), folder) == []
            session.delete(folder, "300mb.tar.zst")
    finally:
        path.unlink()


# --- secrets --------------------------------------------------------------------------------
def test_the_secret_key_is_in_no_log_exception_repr_or_result(moto_server, local_ok, caplog, tmp_path, folder):
    caplog.set_level(logging.DEBUG)
    secret = moto_server.secret_key
    wrong = "wrong-" + secret[::-1]
    good, bad = backend(moto_server), backend(moto_server, secret=wrong)
    results = [good.test(), bad.test()]
    path = tmp_path / "x.bin"
    sha = make_file(path, 100)
    texts = [repr(good), repr(bad), *(json.dumps(r.to_dict()) for r in results)]
    with good.session() as session:
        texts.append(repr(session))
        session.upload(path, folder, "x.bin", expected_size=100, expected_sha256=sha)
        with pytest.raises(DestinationError) as info:
            session.upload(path, folder, "x.bin", expected_size=100)  # exists
        texts.append(str(info.value))
    with pytest.raises(DestinationError) as info, bad.session() as session:
        session.upload(path, folder, "y.bin", expected_size=100)
    texts.append(str(info.value))
    texts += [r.getMessage() for r in caplog.records]
    assert results[0].ok and not results[1].ok
    assert any("botocore" in r.name for r in caplog.records), "botocore's debug log was not captured"
    for text in texts:
        assert secret not in text and wrong not in text
