"""The archive engine imports no Django (ARCHITECTURE: it is tested and benchmarked on
its own), now that verify is split into one module per concern."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(f"jobs.engine.{p.stem}" for p in (ROOT / "jobs" / "engine").glob("*.py") if p.stem != "__init__")


def test_every_engine_module_imports_without_django():
    code = (
        "import sys\n"
        f"for name in {MODULES!r}:\n"
        "    __import__(name)\n"
        "print(sorted(m for m in sys.modules if m == 'django' or m.startswith('django.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    assert {"jobs.engine.members", "jobs.engine.reader", "jobs.engine.verify", "jobs.engine.restore"} <= set(MODULES)
