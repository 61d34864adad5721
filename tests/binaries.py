"""Missing programs: a skip locally, a failure in CI.

Kept free of Django imports so that ``tests/settings.py`` (through ``tests/teststack.py``)
can start the servers of the PostgreSQL stack before Django is set up.
"""

from __future__ import annotations

import os
import shutil

import pytest

# In CI (`.ci/run` sets this) a missing binary is a failure, never a skip.
REQUIRE_BINARIES = os.environ.get("BACKUPSITE_REQUIRE_BINARIES") == "1" or os.environ.get("CI") == "true"


def require_binary(name: str) -> str:
    """Return the path of *name*, or skip (locally) / fail (CI) saying it is missing."""
    path = shutil.which(name)
    if path is None:
        message = f"{name!r} is not installed (apt-get install it, or run .ci/run as root)"
        if REQUIRE_BINARIES:
            pytest.fail(message)
        pytest.skip(message)
    return path
