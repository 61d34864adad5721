"""Real mounted filesystems for the USB kind's tests: tmpfs and loop-mounted ext4.

Mounting needs root (CAP_SYS_ADMIN): without it the tests that use these are skipped
with the reason locally and fail in CI (like ``tests.conftest.require_binary``). ``mount -o loop``
frees its loop device again on unmount. Mounts are not processes, so nothing dies with
pytest: a killed run can leave a mount under ``/tmp`` (``umount`` it). Unmounting is lazy
(``-l``), so a file still open somewhere does not keep the test from finishing.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REQUIRE_BINARIES, require_binary


def missing(message: str) -> None:
    """Skip (locally) or fail (CI) saying what is missing."""
    if REQUIRE_BINARIES:
        pytest.fail(message)
    pytest.skip(message)


def _mount(args: list[str], what: str) -> None:
    if os.geteuid() != 0:
        missing(f"mounting {what} needs root (run the tests as root, as .ci/run does)")
    proc = subprocess.run([require_binary("mount"), *args], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        missing(f"mounting {what} is not allowed here ({proc.stderr.strip() or proc.returncode})")


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    _mount(["-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], "a tmpfs")
    try:
        yield path
    finally:
        umount(path)


@contextlib.contextmanager
def loop_ext4(path: Path, image: Path, *, label: str, size_mb: int = 16) -> Iterator[str]:
    """Mount a fresh ext4 filesystem labelled *label* at *path*; yields its UUID."""
    mkfs = require_binary("mkfs.ext4")
    require_binary("blkid")
    fs_uuid = str(uuidlib.uuid4())
    with open(image, "wb") as fh:
        fh.truncate(size_mb << 20)
    subprocess.run([mkfs, "-q", "-F", "-L", label, "-U", fs_uuid, str(image)], check=True, timeout=60)
    path.mkdir(parents=True, exist_ok=True)
    _mount(["-o", "loop", str(image), str(path)], "a loop device")
    try:
        yield fs_uuid
    finally:
        umount(path)
        image.unlink(missing_ok=True)
