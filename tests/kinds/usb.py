"""The "USB storage" kind against real mounted filesystems made by the tests.

Mounting needs root (CAP_SYS_ADMIN): without it the USB tests are skipped with the
reason locally and fail in CI. The filesystems:

* ``usb_disk`` (session): a 256 MiB tmpfs mounted at ``<tmp>/media/usb-disk``, the
  disk the contract runs against (tmpfs has no label: no label is configured).
* ``tests.mounts.tmpfs`` (per test): a small tmpfs, for a full disk.
* ``tests.mounts.loop_ext4`` (per test): an ext4 image with a label, loop-mounted, for
  label and UUID matching.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kinds import KindUnderTest, file_access
from tests.mounts import tmpfs


@pytest.fixture(scope="session")
def usb_disk() -> Iterator[Path]:
    """A mounted filesystem standing in for a USB disk, shared by the whole session."""
    root = Path(tempfile.mkdtemp(prefix="backupsite-usb-"))
    mount_point = root / "media" / "usb-disk"
    try:
        with tmpfs(mount_point, "256m"):
            yield mount_point
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def usb_kind(usb_disk, settings) -> KindUnderTest:
    settings.BACKUPSITE_LOCAL_ROOTS = [str(usb_disk.parent)]

    return KindUnderTest(kind="usb", settings={"path": str(usb_disk)}, **file_access(usb_disk))
