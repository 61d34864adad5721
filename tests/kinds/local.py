"""The "server hard drive" kind, in a per-test folder (no server needed)."""

from __future__ import annotations

import pytest

from tests.kinds import KindUnderTest, file_access


@pytest.fixture
def local_kind(tmp_path, settings) -> KindUnderTest:
    base = tmp_path / "local-destination"
    base.mkdir()
    settings.BACKUPSITE_LOCAL_ROOTS = [str(tmp_path)]

    return KindUnderTest(kind="local", settings={"path": str(base)}, **file_access(base))
