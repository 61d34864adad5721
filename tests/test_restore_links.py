"""Symbolic links that lead out of the restored folder (``/etc/...`` targets in an
installation folder, ``../shared``): restored as links, last, never followed and never
written through; every other refusal stays (RELIABILITY 16)."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from jobs.engine.restore import RestoreError, leads_outside, safe_extract
from tests.conftest import make_tree, trees_identical
from tests.test_restore import DIR, FILE, SYM, assert_untouched, tar_zst
from tests.test_verify import build_archive


def real_tree_with_outside_links(root):
    """An installation-like tree: links to /etc, to a file in /etc, up and out, dangling."""
    make_tree(root)
    (root / "conf").mkdir()
    os.symlink("/etc", root / "conf" / "system")
    os.symlink("/etc/hostname", root / "conf" / "hostname")
    os.symlink("../../../shared/lib", root / "conf" / "shared-lib")
    os.symlink("/nonexistent/backupsite-dangling", root / "dangling")
    return root


def test_a_tree_with_absolute_symlinks_restores_them_as_links(tmp_path):
    src = real_tree_with_outside_links(tmp_path / "src")
    archive, manifest = build_archive(tmp_path, src)
    target = tmp_path / "restore"
    with open(archive, "rb") as fh:
        result = safe_extract(fh, target, manifest=manifest)
    restored = target / "data"
    assert trees_identical(src, restored)
    assert os.readlink(restored / "conf" / "system") == "/etc"
    assert os.readlink(restored / "conf" / "hostname") == "/etc/hostname"
    assert os.readlink(restored / "dangling") == "/nonexistent/backupsite-dangling"
    assert (restored / "conf" / "system").is_symlink()  # a link, not a copy of /etc
    assert result.symlinks == 5 and result.outside_count == 4
    assert ("data/conf/system", "/etc") in result.outside_links
    assert ("data/conf/shared-lib", "../../../shared/lib") in result.outside_links


def test_link_times_are_set_without_following_the_link(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    os.utime(outside, (1_000_000_000, 1_000_000_000))
    data = tar_zst(("etc-link", SYM, str(outside)))
    safe_extract(io.BytesIO(data), tmp_path / "restore")
    assert os.readlink(tmp_path / "restore" / "etc-link") == str(outside)
    assert int(os.stat(outside).st_mtime) == 1_000_000_000  # the file the link points to is untouched
    assert int(os.lstat(tmp_path / "restore" / "etc-link").st_mtime) == 1_700_000_000


def test_links_redirected_by_other_links_are_kept_as_links(place):
    # "m" reaches outside only through "l": both are restored as links, nothing else.
    data = tar_zst(("l", SYM, "."), ("m", SYM, "l/../outside"), ("a.txt", FILE, b"x"))
    result = safe_extract(io.BytesIO(data), place["target"])
    assert os.readlink(place["target"] / "m") == "l/../outside"
    assert result.symlinks == 2 and (place["target"] / "a.txt").read_bytes() == b"x"
    assert sorted(p.name for p in place["outside"].iterdir()) == ["keep.txt"]


@pytest.mark.parametrize(
    "members, message",
    [
        ([("etc", SYM, "/etc"), ("etc/backupsite-pwned", FILE, b"x")], "it would be written through"),
        ([("d/", DIR, b""), ("d/up", SYM, "../.."), ("d/up/x", FILE, b"x")], "it would be written through"),
        ([("passwd", tarfile.LNKTYPE, "/etc/passwd")], "hard link"),
        ([("/etc/backupsite-pwned", FILE, b"x")], "absolute path"),
        ([("../backupsite-pwned", FILE, b"x")], "'..'"),
        ([("null", tarfile.CHRTYPE, b"")], "device node"),
        ([("empty", SYM, "")], "empty target"),
    ],
)
def test_every_other_refusal_stays(place, members, message):
    with pytest.raises(RestoreError, match=message):
        safe_extract(io.BytesIO(tar_zst(*members)), place["target"])
    assert_untouched(place)
    assert not os.path.exists("/etc/backupsite-pwned")


@pytest.mark.parametrize(
    "name, target, outside",
    [
        ("a", "/etc", True),
        ("a/b", "../c", False),
        ("a/b", "../../c", True),
        ("a", "..", True),
        ("a", "b/../../c", True),
        ("a", "b/c", False),
    ],
)
def test_leads_outside_judges_names_only(name, target, outside):
    assert leads_outside(name, target) is outside
