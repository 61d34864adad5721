"""Restore: only into an empty or new folder, every member checked before anything is
written, nothing outside the target, nothing left behind when refused (RELIABILITY
item 16); a real run restores to the tree it backed up."""

from __future__ import annotations

import io
import os
import re
import sqlite3
import stat
import tarfile
from pathlib import Path

import pytest
import zstandard
from django.core.management import CommandError, call_command

from jobs import services
from jobs.engine.restore import RestoreError, safe_extract
from jobs.models import Run
from jobs.restores import restore_run
from jobs.verification import VerificationError
from tests.conftest import make_tree, trees_identical
from tests.test_verify import PASSWORD, build_archive, encrypt_archive, flip_byte, make_encrypted, truncate

FILE, DIR, SYM, LNK = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE


def tar_zst(*members) -> bytes:
    """A .tar.zst built with tarfile from (name, type, data-or-linkname[, mode]) tuples."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, kind, payload, *rest in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = rest[0] if rest else (0o755 if kind == DIR else 0o644)
            info.mtime = 1_700_000_000
            if kind == FILE:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                if kind in (SYM, LNK):
                    info.linkname = payload
                if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
                    info.devmajor, info.devminor = 1, 3
                tar.addfile(info)
    # The names really are in the archive as written (tarfile does not clean them).
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as check:
        assert [m.name for m in check.getmembers()] == [m[0].rstrip("/") for m in members]
    return zstandard.ZstdCompressor().compress(buf.getvalue())


def assert_untouched(place, target_exists: bool = True) -> None:
    assert sorted(p.name for p in place["outside"].iterdir()) == ["keep.txt"]
    assert (place["outside"] / "keep.txt").read_text() == "sentinel"
    assert sorted(p.name for p in place["root"].iterdir()) == sorted(
        ["outside", *(["target"] if target_exists else [])]
    )
    if target_exists:
        assert list(place["target"].iterdir()) == []
    assert not Path("/tmp/outside-backupsite-test").exists()


def malicious_cases(outside: Path) -> dict:
    return {
        "dotdot": (
            [("good.txt", FILE, b"ok"), ("../escape.txt", FILE, b"x")],
            "../escape.txt: refused: path contains '..'",
        ),
        "dotdot-deep": ([("a/b/../../../escape.txt", FILE, b"x")], "path contains '..'"),
        "absolute": ([(f"{outside}/abs.txt", FILE, b"x")], "refused: absolute path"),
        "absolute-etc": ([("/etc/backupsite-test-x", FILE, b"x")], "refused: absolute path"),
        "symlink-absolute-then-write": (
            [("evil", SYM, str(outside)), ("evil/pwned.txt", FILE, b"x")],
            "evil/pwned.txt: refused: it would be written through the symbolic link evil",
        ),
        "symlink-tmp-then-write": (
            [("evil", SYM, "/tmp/outside-backupsite-test"), ("evil/pwned.txt", FILE, b"x")],
            "evil/pwned.txt: refused: it would be written through the symbolic link evil",
        ),
        "symlink-absolute-then-a-folder-through-it": (
            [("evil", SYM, str(outside)), ("evil/sub/", DIR, b""), ("evil/sub/x", FILE, b"x")],
            "evil/sub: refused: it would be written through the symbolic link evil",
        ),
        "symlink-absolute-then-a-link-through-it": (
            [("evil", SYM, str(outside)), ("evil/l", SYM, "/etc/passwd")],
            "evil/l: refused: it would be written through the symbolic link evil",
        ),
        "symlink-relative-escape-then-write": (
            [("docs/", DIR, b""), ("docs/evil", SYM, "../../outside"), ("docs/evil/pwned.txt", FILE, b"x")],
            "docs/evil/pwned.txt: refused: it would be written through the symbolic link docs/evil",
        ),
        "write-before-the-absolute-symlink": (
            [("evil/pwned.txt", FILE, b"x"), ("evil", SYM, str(outside))],
            "evil: refused: the path already exists",
        ),
        "write-through-an-inside-symlink": (
            [("sub/", DIR, b""), ("link", SYM, "sub"), ("link/x.txt", FILE, b"x")],
            "link/x.txt: refused: it would be written through the symbolic link link",
        ),
        "hardlink-to-etc-passwd": ([("passwd", LNK, "/etc/passwd")], "passwd: refused: hard link"),
        "hardlink-inside": ([("a.txt", FILE, b"x"), ("b.txt", LNK, "a.txt")], "b.txt: refused: hard link"),
        "character-device": ([("null", tarfile.CHRTYPE, b"")], "null: refused: device node"),
        "block-device": ([("sda", tarfile.BLKTYPE, b"")], "sda: refused: device node"),
        "fifo": ([("pipe", tarfile.FIFOTYPE, b"")], "pipe: refused: FIFO"),
        "duplicate": ([("a.txt", FILE, b"1"), ("a.txt", FILE, b"2")], "a.txt: refused: appears twice"),
        "file-over-a-symlink": ([("a", SYM, "b"), ("a", FILE, b"x")], "a: refused: appears twice"),
        "folder-replaced-by-a-symlink": (
            [("d/x.txt", FILE, b"x"), ("d", SYM, ".")],
            "d: refused: the path already exists",
        ),
    }


CASES = list(malicious_cases(Path("/x")))


@pytest.mark.parametrize("case", CASES)
def test_malicious_members_are_refused_and_nothing_is_written(place, case):
    members, message = malicious_cases(place["outside"])[case]
    data = tar_zst(*members)
    with pytest.raises(RestoreError) as info:
        safe_extract(io.BytesIO(data), place["target"])
    assert message in str(info.value)
    assert_untouched(place)


@pytest.mark.parametrize("case", ["dotdot", "symlink-absolute-then-write", "hardlink-to-etc-passwd", "fifo"])
def test_a_refused_restore_into_a_new_folder_leaves_no_folder(place, case):
    place["target"].rmdir()
    members, message = malicious_cases(place["outside"])[case]
    with pytest.raises(RestoreError, match=re.escape(message.split(":")[0])):
        safe_extract(io.BytesIO(tar_zst(*members)), place["target"])
    assert_untouched(place, target_exists=False)


def test_the_data_filter_applies_on_top(place):
    data = tar_zst(
        ("tool", FILE, b"#!/bin/sh\n", 0o4755),  # setuid
        ("shared.txt", FILE, b"x", 0o666),  # world-writable
        ("private.txt", FILE, b"x", 0o400),  # owner cannot write
    )
    safe_extract(io.BytesIO(data), place["target"])
    mode = lambda name: stat.S_IMODE(os.lstat(place["target"] / name).st_mode)  # noqa: E731
    assert mode("tool") == 0o755
    assert mode("shared.txt") == 0o644
    assert mode("private.txt") == 0o600


def test_a_non_empty_target_is_refused_and_left_alone(place):
    (place["target"] / "mine.txt").write_text("precious")
    with pytest.raises(RestoreError, match="not empty"):
        safe_extract(io.BytesIO(tar_zst(("mine.txt", FILE, b"overwritten"))), place["target"])
    assert (place["target"] / "mine.txt").read_text() == "precious"
    assert sorted(p.name for p in place["target"].iterdir()) == ["mine.txt"]


def test_a_target_that_is_a_symlink_is_refused(place):
    link = place["root"] / "link"
    link.symlink_to(place["outside"])
    with pytest.raises(RestoreError, match="symbolic link"):
        safe_extract(io.BytesIO(tar_zst(("a.txt", FILE, b"x"))), link)
    assert sorted(p.name for p in place["outside"].iterdir()) == ["keep.txt"]


def test_a_good_archive_restores_the_same_tree(tmp_path):
    src = make_tree(tmp_path / "src")
    archive, manifest = build_archive(tmp_path, src)
    target = tmp_path / "restore"
    with open(archive, "rb") as fh:
        result = safe_extract(fh, target, manifest=manifest)
    assert trees_identical(src, target / "data")
    assert os.readlink(target / "data" / "link-to-notes") == "docs/notes.md"
    assert result.files == 5 and result.symlinks == 1 and result.members_checked == 5
    assert result.archive_sha256 == manifest["archive"]["sha256"]
    # Modification times come back too.
    assert int(os.stat(target / "data" / "blob.bin").st_mtime) == int(os.stat(src / "blob.bin").st_mtime)
    assert not [p for p in target.iterdir() if p.name.startswith(".backupsite-restore-")]


def test_files_appear_in_the_target_only_at_the_end(tmp_path):
    src = make_tree(tmp_path / "src")
    archive, manifest = build_archive(tmp_path, src)
    target = tmp_path / "restore"
    seen = []

    def progress(done, total):
        seen.append(sorted(p.name for p in target.iterdir()))

    with open(archive, "rb") as fh:
        safe_extract(fh, target, manifest=manifest, progress=progress, progress_interval=0)
    assert len(seen) > 1
    for listing in seen:
        assert len(listing) == 1 and listing[0].startswith(".backupsite-restore-")
    assert sorted(p.name for p in target.iterdir()) == ["data"]


@pytest.mark.parametrize("decrypt_in", ["process", "thread"])
def test_an_encrypted_archive_restores(tmp_path, decrypt_in):
    import pyrage

    identity = pyrage.x25519.Identity.generate()
    src = make_tree(tmp_path / "src")
    archive, manifest = encrypt_archive(*build_archive(tmp_path, src), str(identity.to_public()))
    target = tmp_path / "restore"
    with open(archive, "rb") as fh:
        safe_extract(fh, target, [str(identity)], manifest, decrypt_in=decrypt_in)
    assert trees_identical(src, target / "data")
    # Without a manifest the format is told from the first bytes.
    with open(archive, "rb") as fh:
        safe_extract(fh, tmp_path / "again", [identity])
    assert trees_identical(src, tmp_path / "again" / "data")


def test_a_damaged_archive_restores_nothing(tmp_path):
    src = make_tree(tmp_path / "src")
    archive, manifest = build_archive(tmp_path, src)
    flip_byte(archive)
    target = tmp_path / "restore"
    with pytest.raises(RestoreError, match=r"data/blob\.bin: checksum mismatch"), open(archive, "rb") as fh:
        safe_extract(fh, target, manifest=manifest)
    assert not target.exists()


def test_a_truncated_archive_restores_nothing(tmp_path):
    src = make_tree(tmp_path / "src")
    archive, manifest = build_archive(tmp_path, src)
    truncate(archive, archive.stat().st_size // 2)
    target = tmp_path / "restore"
    target.mkdir()
    with pytest.raises(RestoreError, match="truncated"), open(archive, "rb") as fh:
        safe_extract(fh, target, manifest=manifest)
    assert list(target.iterdir()) == []


def test_a_member_the_manifest_does_not_list_is_refused(tmp_path):
    src = make_tree(tmp_path / "src")
    archive, manifest = build_archive(tmp_path, src)
    manifest["members"] = [m for m in manifest["members"] if m["path"] != "data/empty.txt"]
    with (
        pytest.raises(RestoreError, match=r"data/empty\.txt: unexpected member \(not in the manifest\)"),
        open(archive, "rb") as fh,
    ):
        safe_extract(fh, tmp_path / "restore", manifest=manifest)
    assert not (tmp_path / "restore").exists()


# --- Django: restore a real run -------------------------------------------------------
def test_a_real_run_restores_to_its_source_tree(finished_run, source_tree, tmp_path):
    report = restore_run(finished_run, tmp_path / "restore")
    assert trees_identical(source_tree, tmp_path / "restore" / "office-files")
    assert report.result.files == 5
    report = restore_run(finished_run, tmp_path / "from-destination", destination="Local disk")
    assert "Local disk" in report.where
    assert trees_identical(source_tree, tmp_path / "from-destination" / "office-files")


def test_an_encrypted_run_restores_with_the_password(finished_run, folders, source_tree, tmp_path):
    run = make_encrypted(finished_run, folders)
    with pytest.raises(VerificationError, match="Wrong backup password"):
        restore_run(run, tmp_path / "restore", password="nope")
    assert not (tmp_path / "restore").exists()
    restore_run(run, tmp_path / "restore", destination="Local disk", password=PASSWORD)
    assert trees_identical(source_tree, tmp_path / "restore" / "office-files")


def test_restorebackup_exit_codes(finished_run, source_tree, tmp_path):
    out = io.StringIO()
    call_command("restorebackup", str(finished_run.pk), "--target", str(tmp_path / "r"), stdout=out)
    assert "Restored 5 files" in out.getvalue()
    assert trees_identical(source_tree, tmp_path / "r" / "office-files")

    with pytest.raises(CommandError) as info:  # not empty any more
        call_command("restorebackup", str(finished_run.pk), "--target", str(tmp_path / "r"))
    assert info.value.returncode == 1 and "not empty" in str(info.value)

    with pytest.raises(CommandError) as info:
        call_command("restorebackup", "9999", "--target", str(tmp_path / "x"))
    assert info.value.returncode == 2

    flip_byte(finished_run.local_file)
    with pytest.raises(CommandError) as info:
        call_command("restorebackup", str(finished_run.pk), "--target", str(tmp_path / "bad"))
    assert info.value.returncode == 1 and "office-files/blob.bin: checksum mismatch" in str(info.value)
    assert not (tmp_path / "bad").exists()


def test_restorebackup_with_a_password_file(finished_run, folders, source_tree, tmp_path):
    run = make_encrypted(finished_run, folders)
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n")
    call_command(
        "restorebackup",
        str(run.pk),
        "--target",
        str(tmp_path / "r"),
        "--password-file",
        str(secret),
        stdout=io.StringIO(),
    )
    assert trees_identical(source_tree, tmp_path / "r" / "office-files")


def test_database_url_without_a_database_source_is_explained(finished_run, tmp_path):
    with pytest.raises(CommandError) as info:
        call_command(
            "restorebackup",
            str(finished_run.pk),
            "--target",
            str(tmp_path / "r"),
            "--database-url",
            f"sqlite:///{tmp_path}/x.sqlite3",
        )
    assert info.value.returncode == 2 and "Nothing in this backup can be restored into a database" in str(info.value)
    assert not (tmp_path / "r").exists()


@pytest.fixture
def sqlite_run(db, folders, tmp_path):
    from jobs.models import Job, Source
    from jobs.sources import REGISTRY

    if "sqlite" not in REGISTRY or not hasattr(REGISTRY["sqlite"], "restore_into"):
        pytest.skip("the sqlite source kind has no restore_into yet")
    path = tmp_path / "app.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (x TEXT)")
        conn.execute("INSERT INTO t VALUES ('hello')")
    conn.close()
    source = Source.objects.create(name="App DB", kind="sqlite", settings={"path": str(path)})
    job = Job.objects.create(name="DB backup")
    job.sources.set([source])
    run = services.execute_run(services.create_run(job).pk)
    assert run.state == Run.State.SUCCEEDED, run.error
    return run


def test_a_database_dump_is_loaded_only_when_asked(sqlite_run, tmp_path):
    call_command("restorebackup", str(sqlite_run.pk), "--target", str(tmp_path / "files"), stdout=io.StringIO())
    assert (tmp_path / "files" / "app-db" / "app.sqlite3").is_file()
    restored = tmp_path / "restored.sqlite3"
    assert not restored.exists()
    out = io.StringIO()
    call_command(
        "restorebackup",
        str(sqlite_run.pk),
        "--target",
        str(tmp_path / "files2"),
        "--database-url",
        f"sqlite:///{restored}",
        stdout=out,
    )
    assert "was loaded into the database" in out.getvalue()
    with sqlite3.connect(restored) as conn:
        assert conn.execute("SELECT x FROM t").fetchall() == [("hello",)]
    conn.close()


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_the_panel_database_is_never_restored_over_by_default(sqlite_run, tmp_path, settings):
    panel = tmp_path / "panel.sqlite3"
    sqlite3.connect(panel).close()
    settings.DATABASES = {**settings.DATABASES, "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(panel)}}
    with pytest.raises(CommandError) as info:
        call_command(
            "restorebackup",
            str(sqlite_run.pk),
            "--target",
            str(tmp_path / "files"),
            "--database-url",
            f"sqlite:///{panel}",
        )
    assert "panel's own live database" in str(info.value)
    assert not (tmp_path / "files").exists()  # refused before anything was extracted
    assert panel.stat().st_size == 0


def test_restorebackup_restores_links_to_etc_and_only_what_is_asked(job, source_tree, tmp_path):
    os.symlink("/etc", source_tree / "etc-link")
    run = services.execute_run(services.create_run(job).pk)
    assert run.state == Run.State.SUCCEEDED, run.error
    out = io.StringIO()
    call_command("restorebackup", str(run.pk), "--target", str(tmp_path / "all"), stdout=out)
    assert os.readlink(tmp_path / "all" / "office-files" / "etc-link") == "/etc"
    assert trees_identical(source_tree, tmp_path / "all" / "office-files")
    assert "1 symbolic link(s) lead outside the restored folder (office-files/etc-link → /etc)" in out.getvalue()

    out = io.StringIO()
    call_command(
        "restorebackup",
        str(run.pk),
        "--target",
        str(tmp_path / "some"),
        "--only",
        "office-files/docs/2026",
        "--only",
        "office-files/blob.bin",
        stdout=out,
    )
    restored = sorted(str(p.relative_to(tmp_path / "some")) for p in (tmp_path / "some").rglob("*"))
    assert restored == [
        "office-files",
        "office-files/blob.bin",
        "office-files/docs",
        "office-files/docs/2026",
        "office-files/docs/2026/invoice.txt",
    ]
    assert "Only office-files/blob.bin, office-files/docs/2026 was restored" in out.getvalue()

    for bad, message in (("office-files/nope", "not in this backup"), ("../etc", "'..'")):
        with pytest.raises(CommandError) as info:
            call_command("restorebackup", str(run.pk), "--target", str(tmp_path / "bad"), "--only", bad)
        assert message in str(info.value)
        assert not (tmp_path / "bad").exists()
