"""The destination contract, run against every kind's real server.

Each kind provides a :class:`tests.kinds.KindUnderTest` fixture (its module in
``tests/kinds/``, listed in ``pytest_plugins`` and ``KIND_FIXTURES`` below); every case
here then runs against it. Kind-specific behaviour (host keys, certificates, cut
connections, large files) is tested in the kind's own test module.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

import pytest

from destinations.backends import REGISTRY
from destinations.backends.base import (
    DELETE,
    LIST,
    READ,
    REPLACE,
    Cancelled,
    DestinationError,
    NotFoundError,
    PermanentError,
    TestResult,
    UnsupportedError,
    UploadItem,
)
from tests.kinds import KindUnderTest

pytest_plugins = [
    "tests.kinds.local",
    "tests.kinds.usb",
    "tests.kinds.smb",
    "tests.kinds.sftp",
    "tests.kinds.ftp",
    "tests.kinds.s3",
    "tests.mailserver",
    "tests.kinds.mail",
    "tests.kinds.dropbox",
]
KIND_FIXTURES = [
    "local_kind",
    "usb_kind",
    "smb_kind",
    "sftp_kind",
    "sftp_key_kind",
    "ftps_kind",
    "ftp_plain_kind",
    "ftp_legacy_kind",
    "s3_kind",
    "email_kind",
    "dropbox_kind",
]

pytestmark = pytest.mark.django_db


@pytest.fixture(params=KIND_FIXTURES)
def kind(request) -> KindUnderTest:
    return request.getfixturevalue(request.param)


@pytest.fixture
def folder() -> str:
    """A folder of this test's own (the servers are shared by the whole session)."""
    return f"backupsite/contract-{secrets.token_hex(4)}"


def make_file(tmp_path: Path, size: int, name: str = "payload.bin") -> tuple[Path, str]:
    path = tmp_path / name
    data = os.urandom(size)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def upload(session, path: Path, folder: str, name: str, sha: str | None = None, **kwargs) -> None:
    session.upload(path, folder, name, expected_size=path.stat().st_size, expected_sha256=sha, **kwargs)


def read_back(session, folder: str, name: str, offset: int = 0) -> bytes:
    with session.open(folder, name, offset) as fh:
        chunks = []
        while chunk := fh.read(1 << 20):
            chunks.append(chunk)
    return b"".join(chunks)


def no_leftovers(kind: KindUnderTest, folder: str) -> None:
    if kind.raw_names is not None:
        hidden = [n for n in kind.raw_names(folder) if n.startswith(".")]
        assert hidden == [], f"temporary files left behind: {hidden}"


def requires(kind: KindUnderTest, capability: str) -> None:
    if capability not in REGISTRY[kind.kind].capabilities:
        pytest.skip(f"{kind.kind} destinations cannot {capability} (declared)")


# --- the test button -------------------------------------------------------------------
def test_the_test_writes_a_probe_and_reports_what_it_learned(kind):
    result = kind.backend().test()
    assert isinstance(result, TestResult)
    assert result.ok, result.message
    assert result.message and result.remote_folder
    assert result.throughput is not None and result.throughput > 0
    if kind.raw_names is not None:
        assert [n for n in kind.raw_names("backupsite") if "connection-test" in n] == [], "probe file left behind"


def test_wrong_credentials_fail_the_test_without_echoing_them(kind):
    if kind.wrong_secrets is None:
        pytest.skip(f"{kind.kind} has no credentials")
    result = kind.backend(secrets=kind.wrong_secrets).test()
    assert not result.ok
    for secret in [*kind.plain_secrets, *(str(v) for v in kind.wrong_secrets.values())]:
        assert secret not in result.message


def test_repr_and_errors_never_show_secrets(kind, tmp_path, folder):
    backend = kind.backend()
    for secret in kind.plain_secrets:
        assert secret not in repr(backend)
    path, _ = make_file(tmp_path, 10)
    with pytest.raises(DestinationError) as info, backend.session() as session:
        session.upload(path, folder, "x.bin", expected_size=11)
    for secret in kind.plain_secrets:
        assert secret not in str(info.value)


# --- uploads ---------------------------------------------------------------------------
def test_upload_list_stat_open_in_one_session(kind, tmp_path, folder):
    path, sha = make_file(tmp_path, 3 * 1024 * 1024 + 5)
    seen = []
    with kind.backend().session() as session:
        upload(session, path, folder, "backup-1.tar.zst", sha, progress=seen.append)
        if LIST in REGISTRY[kind.kind].capabilities:
            listed = {f.name: f.size for f in session.list(folder)}
            assert listed == {"backup-1.tar.zst": path.stat().st_size}
            assert session.stat(folder, "backup-1.tar.zst").size == path.stat().st_size
        if READ in REGISTRY[kind.kind].capabilities:
            assert read_back(session, folder, "backup-1.tar.zst") == path.read_bytes()
            assert read_back(session, folder, "backup-1.tar.zst", offset=1000) == path.read_bytes()[1000:]
    assert seen and seen[-1] == path.stat().st_size and seen == sorted(seen)
    if kind.raw_read is not None:
        assert kind.raw_read(folder, "backup-1.tar.zst") == path.read_bytes()
    no_leftovers(kind, folder)


def test_upload_files_sends_each_in_order(kind, tmp_path, folder):
    a, sha_a = make_file(tmp_path, 1000, "a.bin")
    b, _ = make_file(tmp_path, 200, "b.json")
    seen = []
    with kind.backend().session() as session:
        session.upload_files(
            folder,
            [UploadItem(a, "a.tar.zst", 1000, sha_a), UploadItem(b, "a.tar.zst.manifest.json", 200)],
            progress=seen.append,
        )
    assert seen[-1] == 1200
    if kind.raw_read is not None:
        assert kind.raw_read(folder, "a.tar.zst") == a.read_bytes()
        assert kind.raw_read(folder, "a.tar.zst.manifest.json") == b.read_bytes()


def test_a_size_mismatch_leaves_nothing_under_the_final_name(kind, tmp_path, folder):
    path, _ = make_file(tmp_path, 5000)
    with kind.backend().session() as session, pytest.raises(DestinationError):
        session.upload(path, folder, "short.tar.zst", expected_size=4999)
    if kind.raw_names is not None:
        assert "short.tar.zst" not in kind.raw_names(folder)
    no_leftovers(kind, folder)


def test_a_checksum_mismatch_leaves_nothing_under_the_final_name(kind, tmp_path, folder):
    path, _ = make_file(tmp_path, 5000)
    with kind.backend().session() as session, pytest.raises(DestinationError):
        session.upload(path, folder, "bad.tar.zst", expected_size=5000, expected_sha256="0" * 64)
    if kind.raw_names is not None:
        assert "bad.tar.zst" not in kind.raw_names(folder)
    no_leftovers(kind, folder)


def test_cancel_mid_upload_leaves_nothing(kind, tmp_path, folder):
    path, sha = make_file(tmp_path, 8 * 1024 * 1024)
    asked = []

    def cancel() -> bool:
        asked.append(1)
        return len(asked) > 1

    with kind.backend().session() as session, pytest.raises(Cancelled):
        upload(session, path, folder, "cancelled.tar.zst", sha, cancel=cancel, progress=lambda n: None)
    if kind.raw_names is not None:
        assert "cancelled.tar.zst" not in kind.raw_names(folder)
    no_leftovers(kind, folder)


def test_an_existing_file_is_not_overwritten_unless_asked(kind, tmp_path, folder):
    requires(kind, REPLACE)
    first, sha1 = make_file(tmp_path, 2000, "first")
    second, sha2 = make_file(tmp_path, 3000, "second")
    with kind.backend().session() as session:
        upload(session, first, folder, "plan.xlsx", sha1)
        with pytest.raises(PermanentError):
            upload(session, second, folder, "plan.xlsx", sha2)
        upload(session, second, folder, "plan.xlsx", sha2, replace=True)
        if READ in REGISTRY[kind.kind].capabilities:
            assert read_back(session, folder, "plan.xlsx") == second.read_bytes()
    if kind.raw_read is not None:
        assert kind.raw_read(folder, "plan.xlsx") == second.read_bytes()
    no_leftovers(kind, folder)


# --- listing, deleting, reading ---------------------------------------------------------
def test_list_and_delete_touch_only_what_they_are_asked(kind, tmp_path, folder):
    requires(kind, DELETE)
    if kind.raw_write is None:
        pytest.skip("no raw access to the server's storage")
    kind.raw_write(folder, "someone-elses.txt", b"not ours")
    kind.raw_write(folder, ".hidden", b"hidden")
    path, sha = make_file(tmp_path, 100)
    with kind.backend().session() as session:
        upload(session, path, folder, "ours.tar.zst", sha)
        names = sorted(f.name for f in session.list(folder))
        assert names == ["ours.tar.zst", "someone-elses.txt"]  # hidden files are never listed
        session.delete(folder, "ours.tar.zst")
        session.delete(folder, "ours.tar.zst")  # a missing file is not an error
        assert [f.name for f in session.list(folder)] == ["someone-elses.txt"]
    assert sorted(kind.raw_names(folder)) == [".hidden", "someone-elses.txt"]


def test_a_missing_folder_lists_empty_and_a_missing_file_is_not_found(kind, folder):
    requires(kind, LIST)
    with kind.backend().session() as session:
        assert session.list(folder + "-nowhere") == []
        with pytest.raises(NotFoundError):
            session.stat(folder, "nothing.tar.zst")
        if READ in REGISTRY[kind.kind].capabilities:
            with pytest.raises(NotFoundError):
                session.open(folder, "nothing.tar.zst")


def test_remove_partials_removes_only_temporary_files(kind, folder):
    requires(kind, DELETE)
    if kind.raw_write is None:
        pytest.skip("no raw access to the server's storage")
    kind.raw_write(folder, ".killed.tar.zst.partial", b"half")
    kind.raw_write(folder, ".config", b"not ours")
    kind.raw_write(folder, "done.tar.zst", b"done")
    with kind.backend().session() as session:
        assert session.remove_partials(folder) == [".killed.tar.zst.partial"]
    assert sorted(kind.raw_names(folder)) == [".config", "done.tar.zst"]


def test_write_only_kinds_say_so(kind, folder):
    capabilities = REGISTRY[kind.kind].capabilities
    if READ in capabilities and LIST in capabilities:
        pytest.skip("the kind can read and list")
    with kind.backend().session() as session:
        if READ not in capabilities:
            with pytest.raises(UnsupportedError):
                session.open(folder, "x.tar.zst")
        if LIST not in capabilities:
            with pytest.raises(UnsupportedError):
                session.list(folder)


@pytest.mark.parametrize("bad", ["../escape", "/abs", "a/../b", ".hidden", "a//b", "a\\b", "a\x00b"])
def test_odd_folders_and_names_are_refused(kind, tmp_path, bad):
    path, _ = make_file(tmp_path, 10)
    with kind.backend().session() as session:
        with pytest.raises(PermanentError):
            session.upload(path, bad, "x.bin", expected_size=10)
        with pytest.raises(PermanentError):
            session.upload(path, "backupsite", bad, expected_size=10)
