"""The "server hard drive" kind, in a per-test folder (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.kinds import KindUnderTest


@pytest.fixture
def local_kind(tmp_path, settings) -> KindUnderTest:
    base = tmp_path / "local-destination"
    base.mkdir()
    settings.BACKUPSITE_LOCAL_ROOTS = [str(tmp_path)]

    def where(folder: str) -> Path:
        return base / folder if folder else base

    def raw_names(folder: str) -> list[str]:
        path = where(folder)
        return sorted(p.name for p in path.iterdir()) if path.is_dir() else []

    def raw_read(folder: str, name: str) -> bytes:
        return (where(folder) / name).read_bytes()

    def raw_write(folder: str, name: str, data: bytes) -> None:
        where(folder).mkdir(parents=True, exist_ok=True)
        (where(folder) / name).write_bytes(data)

    return KindUnderTest(
        kind="local",
        settings={"path": str(base)},
        raw_names=raw_names,
        raw_read=raw_read,
        raw_write=raw_write,
    )
