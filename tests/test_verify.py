"""Verification: a stored archive (plain or age-encrypted) is read back in one stream and
compared with its manifest. A flipped byte or a truncation is caught and named, the run
or upload is marked invalid and report-to is alerted (RELIABILITY item 2)."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import os
import shutil
import tarfile
import tracemalloc
from pathlib import Path

import pyrage
import pytest
import zstandard
from django.core import mail
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client
from django.urls import reverse

from jobs import services
from jobs.engine import agekeys, walk_directory, write_archive, write_manifest
from jobs.engine.stored import SourceReadError
from jobs.engine.verify import verify_archive
from jobs.models import Run, Upload
from jobs.verification import VerificationError, verify_run
from tests.conftest import make_tree

PASSWORD = "correct horse battery staple"
ZSTD_MAGIC_BYTES = b"\x28\xb5\x2f\xfd"


# --- helpers (also used by test_restore.py) -------------------------------------------
def build_archive(tmp_path: Path, src: Path, prefix: str = "data") -> tuple[Path, dict]:
    """A .tar.zst of *src* written by the engine, and its manifest (as a dict)."""
    archive = tmp_path / "backup.tar.zst"
    members = io.StringIO()
    with open(archive, "wb") as out:
        result = write_archive(walk_directory(str(src), prefix), out, members_out=members)
    members.seek(0)
    text = io.StringIO()
    header = {
        "sources": [],
        "archive": {
            "name": archive.name,
            "size": result.size,
            "sha256": result.sha256,
            "compression": "zstd",
            "encryption": None,
        },
    }
    write_manifest(text, header, members)
    return archive, json.loads(text.getvalue())


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def encrypt_archive(archive: Path, manifest: dict, recipient: str) -> tuple[Path, dict]:
    """``<archive>.age`` encrypted with pyrage.encrypt_io, and the manifest describing it."""
    encrypted = archive.with_name(archive.name + ".age")
    with open(archive, "rb") as src, open(encrypted, "wb") as dst:
        pyrage.encrypt_io(src, dst, [pyrage.x25519.Recipient.from_str(recipient)])
    manifest = json.loads(json.dumps(manifest))
    manifest["archive"].update(
        name=encrypted.name,
        size=encrypted.stat().st_size,
        sha256=sha256_file(encrypted),
        encryption={"scheme": "age", "recipient": recipient},
    )
    return encrypted, manifest


def flip_byte(path: Path, offset: int | None = None) -> int:
    data = bytearray(path.read_bytes())
    offset = len(data) // 2 if offset is None else offset
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))
    return offset


def truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(size)


@pytest.fixture
def tree(tmp_path) -> Path:
    return make_tree(tmp_path / "src")


@pytest.fixture
def plain(tmp_path, tree):
    return build_archive(tmp_path, tree)


@pytest.fixture
def keypair():
    identity = pyrage.x25519.Identity.generate()
    return str(identity), str(identity.to_public())


@pytest.fixture
def encrypted(plain, keypair):
    return encrypt_archive(*plain, keypair[1])


def check(path: Path, manifest: dict, identities=None, **kwargs):
    with open(path, "rb") as fh:
        return verify_archive(fh, manifest, identities, **kwargs)


# --- the engine -------------------------------------------------------------------------
def test_a_good_archive_verifies(plain):
    archive, manifest = plain
    result = check(archive, manifest)
    assert result.ok, result.problems
    assert result.problems == []
    assert result.members_checked == 5
    assert result.bytes == archive.stat().st_size
    assert result.archive_sha256 == manifest["archive"]["sha256"]
    assert "5 files match" in result.message


@pytest.mark.parametrize("decrypt_in", ["process", "thread"])
def test_a_good_encrypted_archive_verifies(encrypted, keypair, decrypt_in):
    archive, manifest = encrypted
    result = check(archive, manifest, [keypair[0]], decrypt_in=decrypt_in)
    assert result.ok, result.problems
    assert result.members_checked == 5 and result.contents_checked
    # pyrage identity objects work too.
    assert check(archive, manifest, [agekeys.identity_object(keypair[0])]).ok


def test_a_flipped_byte_is_named(plain):
    archive, manifest = plain
    # The middle of this archive is inside blob.bin (3 MiB of random bytes, stored by zstd
    # as raw blocks): the flip changes that file's content.
    flip_byte(archive)
    result = check(archive, manifest)
    assert not result.ok
    assert result.problems[0] == "data/blob.bin: checksum mismatch"
    assert any(p.startswith("archive checksum mismatch") for p in result.problems)
    assert "data/blob.bin: checksum mismatch" in result.message


@pytest.mark.parametrize("decrypt_in", ["process", "thread"])
def test_a_flipped_byte_in_an_encrypted_archive_is_named(encrypted, keypair, decrypt_in):
    archive, manifest = encrypted
    flip_byte(archive)
    result = check(archive, manifest, [keypair[0]], decrypt_in=decrypt_in)
    assert not result.ok
    assert result.problems[0].startswith("data/blob.bin: archive damaged inside this member (decryption failed")
    assert any(p.startswith("archive checksum mismatch") for p in result.problems)
    assert result.bytes == archive.stat().st_size  # still read to the end


def test_a_flipped_byte_in_a_compressed_block_is_caught(tmp_path):
    import random

    rng = random.Random(7)
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 9))) for _ in range(5000)]
    src = tmp_path / "text"
    src.mkdir()
    for name in ("a.txt", "b.txt"):
        (src / name).write_text(" ".join(rng.choice(words) for _ in range(300_000)))
    archive, manifest = build_archive(tmp_path, src)
    assert archive.stat().st_size < 2_000_000  # compressed blocks, not raw ones
    flip_byte(archive, archive.stat().st_size * 3 // 4)  # inside b.txt's compressed data
    result = check(archive, manifest)
    assert not result.ok
    assert result.problems[0].startswith("data/b.txt: "), result.problems
    assert any(p.startswith("archive checksum mismatch") for p in result.problems)


@pytest.mark.parametrize("where", ["middle", "end"])
def test_a_truncated_archive_is_caught(plain, where):
    archive, manifest = plain
    size = archive.stat().st_size
    truncate(archive, size // 2 if where == "middle" else size - 3)
    result = check(archive, manifest)
    assert not result.ok
    if where == "middle":
        assert result.problems[0] == "data/blob.bin: archive truncated inside this member"
    assert any(p.startswith("archive truncated: ") for p in result.problems)


@pytest.mark.parametrize("decrypt_in", ["process", "thread"])
def test_a_truncated_encrypted_archive_is_caught(encrypted, keypair, decrypt_in):
    archive, manifest = encrypted
    truncate(archive, archive.stat().st_size - 100)
    result = check(archive, manifest, [keypair[0]], decrypt_in=decrypt_in)
    assert not result.ok
    assert "truncated" in result.problems[0]
    assert any(p.startswith("archive truncated: ") for p in result.problems)


def test_missing_and_unexpected_members_are_named(plain):
    archive, manifest = plain
    manifest["members"] = [m for m in manifest["members"] if m["path"] != "data/empty.txt"]
    manifest["members"].append({"path": "data/ghost.txt", "type": "file", "size": 1, "sha256": "0" * 64})
    result = check(archive, manifest)
    assert not result.ok
    assert "data/empty.txt: unexpected member (not in the manifest)" in result.problems
    assert "data/ghost.txt: missing from the archive" in result.problems


def test_a_manifest_that_lies_about_a_symlink_or_a_size_is_caught(plain):
    archive, manifest = plain
    for member in manifest["members"]:
        if member["type"] == "symlink":
            member["target"] = "/etc/passwd"
        if member["path"] == "data/docs/notes.md":
            member["size"] += 1
    problems = check(archive, manifest).problems
    assert "data/link-to-notes: link target differs from the manifest" in problems
    assert any(p.startswith("data/docs/notes.md: size mismatch") for p in problems)


def test_the_wrong_key_fails_without_a_traceback(encrypted):
    archive, manifest = encrypted
    other = str(pyrage.x25519.Identity.generate())
    result = check(archive, manifest, [other])
    assert not result.ok
    assert "decryption failed" in result.problems[0]
    assert result.bytes == archive.stat().st_size


def test_without_a_key_only_the_stored_bytes_are_checked(encrypted):
    archive, manifest = encrypted
    result = check(archive, manifest, None)
    assert result.ok and not result.contents_checked
    assert "contents not checked" in result.message
    flip_byte(archive)
    result = check(archive, manifest, None)
    assert not result.ok and result.problems[0].startswith("archive checksum mismatch")


def test_garbage_is_not_an_archive(tmp_path, plain):
    _, manifest = plain
    junk = tmp_path / "junk"
    junk.write_bytes(os.urandom(4096))
    manifest["archive"].update(size=4096, sha256=sha256_file(junk))
    result = check(junk, manifest)
    assert not result.ok
    assert result.problems[0].startswith("archive unreadable (zstd:")


def test_a_manifest_wrong_about_encryption_is_explained(plain, encrypted, keypair):
    archive, manifest = encrypted
    manifest["archive"]["encryption"] = None
    result = check(archive, manifest)
    assert result.problems[0] == (
        "archive unreadable (the archive is age-encrypted, but its manifest says it is not encrypted)"
    )
    archive, manifest = plain
    manifest["archive"]["encryption"] = {"scheme": "age"}
    result = check(archive, manifest, [keypair[0]])
    assert "a plain zstd stream, but its manifest says it is encrypted" in result.problems[0]


@pytest.mark.parametrize("mode", ["plain", "process", "thread"])
def test_a_read_error_of_the_source_is_not_a_verdict(plain, encrypted, keypair, mode):
    archive, manifest = plain if mode == "plain" else encrypted
    identities = None if mode == "plain" else [keypair[0]]

    class Flaky(io.RawIOBase):
        def __init__(self):
            self.fh = open(archive, "rb")  # noqa: SIM115
            self.reads = 0

        def read(self, n=-1):
            self.reads += 1
            if self.reads > 2:
                raise ConnectionResetError("connection reset by peer")
            return self.fh.read(min(n, 65536))

    with pytest.raises(SourceReadError, match="connection reset"):
        verify_archive(Flaky(), manifest, identities, decrypt_in="thread" if mode == "thread" else "process")


def test_memory_stays_bounded_with_a_highly_compressible_file(tmp_path):
    """A file of 256 MiB of zeros compresses to almost nothing; verifying it must not
    hold it (or any large part of it) in memory."""
    src = tmp_path / "zeros"
    src.mkdir()
    with open(src / "zeros.bin", "wb") as fh:
        fh.truncate(256 << 20)
    archive, manifest = build_archive(tmp_path, src)
    assert archive.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        result = check(archive, manifest)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.ok, result.problems
    assert result.content_bytes == 256 << 20
    assert peak < 16 << 20, f"peak Python allocations {peak} bytes"


def test_a_bad_tar_header_in_the_middle_is_reported(tmp_path):
    """tarfile stops quietly at an invalid header; the verifier notices the rest."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in ("d/a.txt", "d/b.txt"):
            info = tarfile.TarInfo(name)
            info.size = 600
            tar.addfile(info, io.BytesIO(b"x" * 600))
    data = bytearray(buf.getvalue())
    second_header = 512 + 1024
    data[second_header + 100] ^= 0x01  # the mode field: the header checksum no longer matches
    archive = tmp_path / "bad.tar.zst"
    archive.write_bytes(zstandard.ZstdCompressor().compress(bytes(data)))
    manifest = {
        "archive": {"size": archive.stat().st_size, "sha256": sha256_file(archive), "encryption": None},
        "members": [
            {"path": n, "type": "file", "size": 600, "sha256": hashlib.sha256(b"x" * 600).hexdigest()}
            for n in ("d/a.txt", "d/b.txt")
        ],
    }
    result = check(archive, manifest)
    assert not result.ok
    assert result.problems[0] == "archive damaged after d/a.txt: unreadable tar header, the rest cannot be read"


def test_the_frame_splitter_never_changes_the_bytes():
    """It only decides where reads end: before each frame checksum, and around it."""
    import random

    from jobs.engine.zstdframes import FrameSplitter

    rng = random.Random(3)
    compressor = zstandard.ZstdCompressor(write_checksum=True)
    frames = [
        compressor.compress(os.urandom(300_000) + b"x" * 200_000),
        b"\x50\x2a\x4d\x18" + (5).to_bytes(4, "little") + b"skip!",  # a skippable frame
        compressor.compress(b""),
        zstandard.ZstdCompressor(write_checksum=False).compress(b"no checksum" * 1000),
        compressor.compress(b"last"),
    ]
    stream = b"".join(frames)
    checksum_ends, offset = [], 0
    for frame in frames:
        offset += len(frame)
        if frame.startswith(ZSTD_MAGIC_BYTES) and zstandard.get_frame_parameters(frame).has_checksum:
            checksum_ends.append(offset)

    class Source(io.BytesIO):
        def read(self, n=-1):
            return super().read(rng.randint(1, 70_000))

    splitter = FrameSplitter(Source(stream))
    pieces = []
    while piece := splitter.read(rng.randint(1, 1 << 20)):
        pieces.append(piece)
    assert b"".join(pieces) == stream
    ends = set(itertools.accumulate(len(p) for p in pieces))
    for end in checksum_ends:
        assert end - 4 in ends and end in ends  # each checksum was handed over on its own
    assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(stream), read_across_frames=True).read()


# --- Django: runs, uploads, e-mail, command, page ------------------------------------
@pytest.fixture
def finished_run(job) -> Run:
    run = services.execute_run(services.create_run(job).pk)
    assert run.state == Run.State.SUCCEEDED, run.error
    mail.outbox.clear()
    return run


def remote_copy(run: Run, folders) -> Path:
    return folders["backups"] / "backupsite" / run.job_slug / run.archive_name


def make_encrypted(run: Run, folders, password: str = PASSWORD) -> Run:
    """Turn a finished run into what an encrypting job produces: the job gets an
    identity wrapped with *password*; local copy and upload become ``.tar.zst.age``."""
    identity, recipient = agekeys.new_identity()
    job = run.job
    job.encryption = job.Encryption.PASSWORD
    job.age_recipient = recipient
    job.age_identity_wrapped = agekeys.to_text(agekeys.wrap_identity(identity, password))
    job.save()
    local = run.local_file
    manifest = json.loads(local.with_name(local.name + ".manifest.json").read_text())
    encrypted, manifest = encrypt_archive(local, manifest, recipient)
    for folder in (local.parent, remote_copy(run, folders).parent):
        if folder != local.parent:
            shutil.copyfile(encrypted, folder / encrypted.name)
        (folder / (encrypted.name + ".manifest.json")).write_text(json.dumps(manifest))
    run.archive_name = encrypted.name
    run.local_path = str(Path(run.local_path).with_name(encrypted.name))
    run.archive_size = manifest["archive"]["size"]
    run.archive_sha256 = manifest["archive"]["sha256"]
    run.config["job"]["encryption"] = job.encryption
    run.save()
    run.uploads.update(remote_name=encrypted.name)
    return run


def test_verify_a_local_copy_records_ok(finished_run):
    result = verify_run(finished_run)
    assert result.ok and result.where == "the local copy"
    finished_run.refresh_from_db()
    assert finished_run.verify_ok is True and finished_run.verified_at is not None
    assert finished_run.verify_message.startswith("OK: 5 files match")
    assert not mail.outbox


def test_verify_at_a_destination_records_on_the_upload(finished_run, job):
    destination = job.destinations.get()
    result = verify_run(finished_run, destination)
    assert result.ok and "Local disk" in result.where
    upload = finished_run.uploads.get()
    assert upload.verify_ok is True and upload.verified_at is not None
    finished_run.refresh_from_db()
    assert finished_run.verified_at is None  # the local copy was not checked


def test_a_flipped_byte_at_a_destination_marks_the_upload_invalid_and_alerts(finished_run, folders):
    flip_byte(remote_copy(finished_run, folders))
    result = verify_run(finished_run, "Local disk")
    assert not result.ok
    upload = finished_run.uploads.get()
    assert upload.verify_ok is False
    assert upload.verify_message.startswith("office-files/blob.bin: checksum mismatch")
    finished_run.refresh_from_db()
    assert finished_run.verify_ok is None
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert sorted(message.to) == ["boss@example.com", "ops@example.com"]
    assert "Office backup" in message.subject and "damaged" in message.subject.lower()
    assert "office-files/blob.bin: checksum mismatch" in message.body
    assert "Local disk" in message.body and f"/runs/{finished_run.pk}/" in message.body


def test_a_truncated_local_copy_is_caught(finished_run):
    truncate(finished_run.local_file, finished_run.archive_size // 2)
    result = verify_run(finished_run)
    assert not result.ok
    assert "truncated" in result.problems[0]
    finished_run.refresh_from_db()
    assert finished_run.verify_ok is False and "truncated" in finished_run.verify_message
    assert len(mail.outbox) == 1


def test_an_archive_missing_at_the_destination_is_a_finding(finished_run, folders):
    remote_copy(finished_run, folders).unlink()
    result = verify_run(finished_run, "Local disk")
    assert not result.ok and "the archive is missing from destination" in result.message
    assert finished_run.uploads.get().verify_ok is False


def test_a_manifest_rewritten_with_its_archive_is_caught(finished_run, folders, tmp_path):
    """The database row is the truth: a consistent but different archive + manifest fail."""
    other = make_tree(tmp_path / "other")
    archive, manifest = build_archive(tmp_path, other, prefix="office-files")
    target = remote_copy(finished_run, folders)
    shutil.copyfile(archive, target)
    target.with_name(target.name + ".manifest.json").write_text(json.dumps(manifest))
    result = verify_run(finished_run, "Local disk")
    assert not result.ok
    assert any("recorded for this run" in p for p in result.problems)


def test_no_local_copy_is_an_error_not_a_verdict(finished_run):
    finished_run.local_file.unlink()
    with pytest.raises(VerificationError, match="no longer on this server"):
        verify_run(finished_run)
    finished_run.refresh_from_db()
    assert finished_run.verified_at is None


def test_encrypted_run_verifies_with_the_password(finished_run, folders):
    run = make_encrypted(finished_run, folders)
    result = verify_run(run, password=PASSWORD)
    assert result.ok and result.contents_checked, result.problems
    result = verify_run(run, "Local disk", PASSWORD)
    assert result.ok
    assert run.uploads.get().verify_ok is True


def test_encrypted_run_wrong_or_missing_password(finished_run, folders):
    run = make_encrypted(finished_run, folders)
    with pytest.raises(VerificationError, match="Wrong backup password"):
        verify_run(run, password="not it")
    with pytest.raises(VerificationError, match="password is needed"):
        verify_run(run)
    run.refresh_from_db()
    assert run.verified_at is None
    assert not mail.outbox
    result = verify_run(run, checksum_only=True)
    assert result.ok and not result.contents_checked


def test_a_flipped_byte_in_an_encrypted_upload_is_named_and_alerted(finished_run, folders):
    run = make_encrypted(finished_run, folders)
    flip_byte(remote_copy(run, folders))
    result = verify_run(run, "Local disk", PASSWORD)
    assert not result.ok
    assert result.problems[0].startswith("office-files/blob.bin: archive damaged inside this member")
    assert run.uploads.get().verify_ok is False
    assert len(mail.outbox) == 1 and "office-files/blob.bin" in mail.outbox[0].body


def test_the_key_file_at_the_destination_is_used_when_the_job_is_gone(finished_run, folders):
    run = make_encrypted(finished_run, folders)
    key = agekeys.from_text(run.job.age_identity_wrapped)
    (remote_copy(run, folders).parent / agekeys.KEY_FILE_NAME).write_bytes(key)
    run.job.delete()
    run.refresh_from_db()
    assert run.job is None
    assert verify_run(run, "Local disk", PASSWORD).ok


# --- the command ------------------------------------------------------------------------
def test_verifybackup_exit_codes(finished_run, folders):
    out = io.StringIO()
    call_command("verifybackup", str(finished_run.pk), stdout=out)
    assert "5 files match the manifest" in out.getvalue()
    call_command("verifybackup", str(finished_run.pk), "--destination", "Local disk", stdout=io.StringIO())

    flip_byte(remote_copy(finished_run, folders))
    with pytest.raises(CommandError) as info:
        call_command("verifybackup", str(finished_run.pk), "--destination", "Local disk")
    assert info.value.returncode == 1
    assert "\n" not in str(info.value)
    assert "office-files/blob.bin: checksum mismatch" in str(info.value)

    with pytest.raises(CommandError) as info:
        call_command("verifybackup", "9999")
    assert info.value.returncode == 2


def test_verifybackup_with_a_password_file(finished_run, folders, tmp_path):
    run = make_encrypted(finished_run, folders)
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    out = io.StringIO()
    call_command("verifybackup", str(run.pk), "--password-file", str(secret), stdout=out)
    assert "files match" in out.getvalue()
    secret.write_text("wrong\n")
    with pytest.raises(CommandError) as info:
        call_command("verifybackup", str(run.pk), "--password-file", str(secret))
    assert info.value.returncode == 2 and "Wrong backup password" in str(info.value)


# --- the page -------------------------------------------------------------------------
def test_the_run_page_offers_verify_to_operators_not_viewers(client, bob, charlie, finished_run):
    client.force_login(bob)
    page = client.get(finished_run.get_absolute_url()).content.decode()
    assert reverse("jobs:run_verify", args=[finished_run.pk]) in page
    assert "never verified" in page
    assert reverse("jobs:run_restore", args=[finished_run.pk]) not in page  # administrators only
    client.force_login(charlie)
    page = client.get(finished_run.get_absolute_url()).content.decode()
    assert 'action="' + reverse("jobs:run_verify", args=[finished_run.pk]) not in page


@pytest.mark.parametrize("user,status", [("charlie", 403), ("dave", 403), ("bob", 302), ("alice", 302)])
def test_verify_permission_per_role(client, request, finished_run, user, status, django_capture_on_commit_callbacks):
    client.force_login(request.getfixturevalue(user))
    with django_capture_on_commit_callbacks(execute=True):  # the queued task runs (eager Celery)
        response = client.post(reverse("jobs:run_verify", args=[finished_run.pk]), {"location": "local"})
    assert response.status_code == status
    finished_run.refresh_from_db()
    assert (finished_run.verified_at is not None) == (status == 302)


def test_verify_button_queues_a_task_and_the_page_shows_the_result(
    client, bob, finished_run, folders, django_capture_on_commit_callbacks
):
    from jobs.models import VerifyTicket

    client.force_login(bob)
    url = reverse("jobs:run_verify", args=[finished_run.pk])
    with django_capture_on_commit_callbacks(execute=False) as queued:
        response = client.post(url, {"location": "local"}, follow=True)
    page = response.content.decode()
    assert "Verification started in the background" in page
    assert "Verification queued" in page  # the card says so until the worker is done
    assert len(queued) == 1 and VerifyTicket.objects.count() == 1
    queued[0]()  # the worker
    assert VerifyTicket.objects.count() == 0
    page = client.get(finished_run.get_absolute_url()).content.decode()
    assert "5 files match the manifest" in page and "FAILED" not in page

    flip_byte(remote_copy(finished_run, folders))
    destination = finished_run.uploads.get().destination
    with django_capture_on_commit_callbacks(execute=True):
        client.post(url, {"location": str(destination.pk)})
    page = client.get(finished_run.get_absolute_url()).content.decode()
    assert "FAILED" in page and "office-files/blob.bin: checksum mismatch" in page
    assert len(mail.outbox) == 1


def test_a_verification_nobody_picked_up_is_removed_with_its_identity(finished_run, folders):
    from django.utils import timezone

    from jobs.models import VerifyTicket
    from jobs.services import reap_stale_runs

    run = make_encrypted(finished_run, folders)
    from jobs.verification import request_verification

    ticket = request_verification(run, password=PASSWORD)
    assert ticket.secrets["identities"][0].startswith("AGE-SECRET-KEY-")
    with connection.cursor() as cursor:
        cursor.execute("SELECT secrets FROM jobs_verifyticket")
        assert "AGE-SECRET-KEY" not in cursor.fetchone()[0]  # encrypted at rest
    VerifyTicket.objects.filter(pk=ticket.pk).update(created_at=timezone.now() - timezone.timedelta(days=2))
    reap_stale_runs()
    assert not VerifyTicket.objects.exists()


def test_verify_needs_csrf(bob, finished_run):
    client = Client(enforce_csrf_checks=True)
    client.force_login(bob)
    response = client.post(reverse("jobs:run_verify", args=[finished_run.pk]), {"location": "local"})
    assert response.status_code == 403
    finished_run.refresh_from_db()
    assert finished_run.verified_at is None


def test_the_password_is_never_stored_or_shown(
    client, bob, finished_run, folders, caplog, django_capture_on_commit_callbacks
):
    run = make_encrypted(finished_run, folders)
    client.force_login(bob)
    url = reverse("jobs:run_verify", args=[run.pk])
    assert 'type="password"' in client.get(run.get_absolute_url()).content.decode()
    with caplog.at_level(logging.DEBUG), django_capture_on_commit_callbacks(execute=True):
        ok = client.post(url, {"location": "local", "password": PASSWORD}, follow=True)
        wrong = client.post(url, {"location": "local", "password": PASSWORD + "x"})
    ok = client.get(run.get_absolute_url())
    assert "files match the manifest" in ok.content.decode()
    assert wrong.status_code == 200 and "Wrong backup password" in wrong.content.decode()
    assert PASSWORD not in ok.content.decode() and PASSWORD not in wrong.content.decode()
    assert PASSWORD not in caplog.text
    run.refresh_from_db()
    for value in (run.verify_message, run.log, run.error, json.dumps(run.config)):
        assert PASSWORD not in value
    for upload in Upload.objects.all():
        assert PASSWORD not in upload.verify_message + upload.error
    from django.contrib.sessions.models import Session

    for session in Session.objects.all():
        assert PASSWORD not in json.dumps(session.get_decoded())
    assert all(PASSWORD not in m.body for m in mail.outbox)
