"""Partial restore in the engine: only the selected sources or paths are extracted and
checked against the manifest; the rest of the archive is read past (its stored bytes are
still checked), never written."""

from __future__ import annotations

import io
import os

import pytest

from jobs.engine.members import Selection, SelectionError, clean_path
from jobs.engine.restore import RestoreError, safe_extract
from tests.conftest import make_tree
from tests.test_restore import DIR, FILE, SYM, tar_zst
from tests.test_verify import build_archive, flip_byte


def listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def archive(tmp_path):
    src = make_tree(tmp_path / "src")
    return build_archive(tmp_path, src)


def test_only_one_folder_is_restored(tmp_path, archive):
    path, manifest = archive
    with open(path, "rb") as fh:
        result = safe_extract(fh, tmp_path / "r", manifest=manifest, only=["data/docs"])
    assert listing(tmp_path / "r") == [
        "data",
        "data/docs",
        "data/docs/2026",
        "data/docs/2026/invoice.txt",
        "data/docs/notes.md",
    ]
    assert (tmp_path / "r" / "data" / "docs" / "notes.md").read_text() == "# Notes\nünïcødé ✓\n"
    assert result.files == 2 and result.members_checked == 2 and result.skipped > 0
    assert result.archive_sha256 == manifest["archive"]["sha256"]  # the whole archive was read


def test_one_file_and_a_symlink(tmp_path, archive):
    path, manifest = archive
    with open(path, "rb") as fh:
        safe_extract(fh, tmp_path / "r", manifest=manifest, only=["data/blob.bin", "data/link-to-notes"])
    assert listing(tmp_path / "r") == ["data", "data/blob.bin", "data/link-to-notes"]
    assert os.readlink(tmp_path / "r" / "data" / "link-to-notes") == "docs/notes.md"


def test_damage_outside_the_selection_is_still_caught_by_the_archive_checksum(tmp_path, archive):
    path, manifest = archive
    flip_byte(path)  # inside blob.bin, which is not selected
    with pytest.raises(RestoreError, match="checksum"), open(path, "rb") as fh:
        safe_extract(fh, tmp_path / "r", manifest=manifest, only=["data/docs"])
    assert not (tmp_path / "r").exists()


def test_a_path_the_manifest_does_not_have_is_refused_before_reading(tmp_path, archive):
    _, manifest = archive

    class Unread(io.BytesIO):
        def read(self, *args):
            raise AssertionError("the archive must not be read")

    with pytest.raises(RestoreError, match="data/nope: not in this backup"):
        safe_extract(Unread(), tmp_path / "r", manifest=manifest, only=["data/docs", "data/nope"])
    assert not (tmp_path / "r").exists()


def test_a_selected_member_missing_from_the_archive_is_named(tmp_path, archive):
    path, manifest = archive
    manifest["members"].append({"path": "data/docs/ghost.txt", "type": "file", "size": 1, "sha256": "0" * 64})
    with pytest.raises(RestoreError, match=r"data/docs/ghost\.txt: missing from the archive"), open(path, "rb") as fh:
        safe_extract(fh, tmp_path / "r", manifest=manifest, only=["data/docs"])
    # Outside the selection a member the manifest lists but the archive lacks is no concern
    # of this restore (the archive's own checksum still matched).
    with open(path, "rb") as fh:
        safe_extract(fh, tmp_path / "r2", manifest=manifest, only=["data/blob.bin"])


def test_skipped_members_are_neither_written_nor_checked(tmp_path):
    # The unselected member would be refused (a device), the selected one is fine.
    data = tar_zst(("keep/a.txt", FILE, b"a"), ("other/", DIR, b""), ("other/evil", SYM, "/etc"))
    safe_extract(io.BytesIO(data), tmp_path / "r", only=["keep"])
    assert listing(tmp_path / "r") == ["keep", "keep/a.txt"]


def test_a_selected_path_below_a_skipped_symlink_is_refused(tmp_path):
    data = tar_zst(("etc", SYM, "/etc"), ("etc/backupsite-pwned", FILE, b"x"))
    with pytest.raises(RestoreError, match="written through the symbolic link etc"):
        safe_extract(io.BytesIO(data), tmp_path / "r", only=["etc/backupsite-pwned"])
    assert not os.path.exists("/etc/backupsite-pwned")


@pytest.mark.parametrize(
    "value, message",
    [
        ("/etc/passwd", "without a leading /"),
        ("data/../../etc", "'..'"),
        ("data/\x00x", "control characters"),
        ("  ", "empty"),
        ("./", "not a path"),
    ],
)
def test_bad_selection_paths(value, message):
    with pytest.raises(SelectionError, match=message):
        clean_path(value)


def test_selection_keeps_the_widest_paths():
    selection = Selection.of(["data/docs/2026", "data/docs/", "./data/docs", "other"])
    assert selection.paths == ("data/docs", "other")
    assert selection.covers("data/docs") and selection.covers("data/docs/x")
    assert not selection.covers("data/docsx") and not selection.covers("data")
    assert Selection.of([]) is None
