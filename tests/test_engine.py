"""The archive engine on its own: stock tools restore what it writes, the manifest
matches, and nothing partial is ever left under the final name."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
from pathlib import Path

import pytest

from jobs.engine import Entry, atomic_path, walk_directory, write_archive, write_manifest
from jobs.engine.archive import DIR, FILE, SYMLINK
from jobs.engine.atomic import partial_name, remove_partials
from tests.conftest import make_tree, require_binary, restore_with_stock_tools, trees_identical

# Run once, in the default pass (tests/teststack.py): the archive engine imports no Django: nothing of the stack.
pytestmark = pytest.mark.stack_independent


def build(tmp_path: Path, src: Path) -> tuple[Path, dict]:
    archive = tmp_path / "out.tar.zst"
    members = io.StringIO()
    with atomic_path(archive) as tmp, open(tmp, "wb") as out:
        result = write_archive(walk_directory(str(src), "data"), out, members_out=members)
    members.seek(0)
    text = io.StringIO()
    write_manifest(text, {"archive": {"size": result.size, "sha256": result.sha256}}, members)
    return archive, {"result": result, "manifest": json.loads(text.getvalue())}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_stock_zstd_and_tar_restore_an_identical_tree(tmp_path):
    require_binary("zstd")
    require_binary("tar")
    src = make_tree(tmp_path / "src")
    archive, _ = build(tmp_path, src)
    target = tmp_path / "restore"
    restore_with_stock_tools(archive, target)
    assert trees_identical(src, target / "data")
    assert os.readlink(target / "data" / "link-to-notes") == "docs/notes.md"
    assert (target / "data" / "empty-dir").is_dir()
    # zstd's own integrity check agrees.
    subprocess.run(["zstd", "-tq", str(archive)], check=True)


def test_manifest_lists_every_member_with_matching_checksums(tmp_path):
    src = make_tree(tmp_path / "src")
    archive, info = build(tmp_path, src)
    manifest, result = info["manifest"], info["result"]
    assert manifest["format"] == "backupsite-manifest/1"
    assert manifest["archive"] == {"size": archive.stat().st_size, "sha256": sha256(archive)}
    files = {m["path"]: m for m in manifest["members"] if m["type"] == FILE}
    expected = {f"data/{p.relative_to(src)}" for p in src.rglob("*") if p.is_file() and not p.is_symlink()}
    assert set(files) == expected
    assert result.file_count == len(expected)
    for path, member in files.items():
        real = src / Path(path).relative_to("data")
        assert member["size"] == real.stat().st_size
        assert member["sha256"] == sha256(real)
    links = [m for m in manifest["members"] if m["type"] == SYMLINK]
    assert links == [{"path": "data/link-to-notes", "type": "symlink", "target": "docs/notes.md"}]
    assert any(m["type"] == DIR and m["path"] == "data/empty-dir/" for m in manifest["members"])


def test_excluded_patterns_and_unreadable_entries_are_reported_not_silent(tmp_path):
    src = make_tree(tmp_path / "src")
    (src / "cache.tmp").write_text("skip me")
    os.mkfifo(src / "a-fifo")
    errors = []
    entries = list(walk_directory(str(src), "d", exclude=["*.tmp"], on_error=lambda w, e: errors.append(w)))
    names = {e.arcname for e in entries}
    assert "d/cache.tmp" not in names
    assert errors == ["d/a-fifo"]
    # A file that disappears between the walk and the read is a warning, not a crash.
    gone = Entry("d/gone.txt", FILE, str(src / "gone.txt"))
    result = write_archive(iter([gone]), io.BytesIO())
    assert result.file_count == 0
    assert result.warnings and "d/gone.txt" in result.warnings[0]


def test_a_failure_while_writing_leaves_nothing_under_the_final_name(tmp_path):
    src = make_tree(tmp_path / "src")
    final = tmp_path / "out" / "backup.tar.zst"

    def exploding():
        for n, entry in enumerate(walk_directory(str(src), "data")):
            if n == 4:
                raise OSError(28, "No space left on device")
            yield entry

    with pytest.raises(OSError), atomic_path(final) as tmp, open(tmp, "wb") as out:
        write_archive(exploding(), out)
    assert not final.exists()
    assert not partial_name(final).exists()
    assert list(final.parent.iterdir()) == []


def test_leftover_partials_of_a_killed_writer_are_removed(tmp_path):
    leftover = partial_name(tmp_path / "x.tar.zst")
    leftover.write_bytes(b"half")
    keep = tmp_path / "x.tar.zst.manifest.json"
    keep.write_text("{}")
    assert remove_partials(tmp_path) == [leftover]
    assert keep.exists()


def test_a_file_that_shrinks_while_read_keeps_the_tar_consistent(tmp_path, monkeypatch):
    require_binary("zstd")
    require_binary("tar")
    path = tmp_path / "growing.log"
    path.write_bytes(b"x" * 5000)
    real_readv = os.readv

    def truncating_readv(fd, buffers):
        # The file is cut to 1000 bytes after its header (size 5000) was written.
        if os.fstat(fd).st_size == 5000:
            os.truncate(path, 1000)
        return real_readv(fd, buffers)

    monkeypatch.setattr(os, "readv", truncating_readv)
    out = io.BytesIO()
    result = write_archive(iter([Entry("d/growing.log", FILE, str(path))]), out)
    monkeypatch.undo()
    assert any("shrank" in w for w in result.warnings), result.warnings
    tar = subprocess.run(["zstd", "-dc"], input=out.getvalue(), capture_output=True, check=True).stdout
    listing = subprocess.run(["tar", "-tvf", "-"], input=tar, capture_output=True, check=True).stdout.decode()
    assert " 5000 " in listing and "d/growing.log" in listing


@pytest.mark.parametrize(
    ("name", "kind", "size", "link"),
    [
        ("data/a.txt", FILE, 12345, ""),
        ("data/ünïcødé ✓.txt", FILE, 0, ""),
        ("data/dir/", DIR, 0, ""),
        ("data/link", SYMLINK, 0, "../target with spaces"),
        ("d/" + "x" * 98, FILE, 7, ""),  # exactly 100 bytes
        ("d/" + "y" * 150, FILE, 7, ""),  # GNU long name: tarfile path
        ("data/big.bin", FILE, 9 * 1024**3, ""),  # above 8 GiB: tarfile path
    ],
)
def test_fast_tar_headers_are_identical_to_tarfiles(tmp_path, name, kind, size, link):
    import tarfile

    from jobs.engine.archive import _header, _tarfile_header

    st = os.lstat(tmp_path)
    types = {FILE: tarfile.REGTYPE, DIR: tarfile.DIRTYPE, SYMLINK: tarfile.SYMTYPE}
    entry = Entry(name, kind, linkname=link)
    assert _header(entry, st, size, types[kind]) == _tarfile_header(entry, st, size, types[kind])


def test_an_encrypted_archive_restores_with_age_zstd_and_tar(tmp_path):
    require_binary("age")
    from jobs.engine.agekeys import new_identity

    identity, recipient = new_identity()
    src = make_tree(tmp_path / "src")
    archive = tmp_path / "out.tar.zst.age"
    with open(archive, "wb") as out:
        result = write_archive(walk_directory(str(src), "data"), out, recipients=[recipient])
    assert result.size == archive.stat().st_size and result.sha256 == sha256(archive)
    assert archive.read_bytes().startswith(b"age-encryption.org/v1\n")
    key = tmp_path / "key.txt"
    key.write_text(identity + "\n")
    plain = tmp_path / "out.tar.zst"
    subprocess.run(["age", "-d", "-i", str(key), "-o", str(plain), str(archive)], check=True)
    restore_with_stock_tools(plain, tmp_path / "restore")
    assert trees_identical(src, tmp_path / "restore" / "data")
