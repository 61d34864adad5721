"""Every benchmark runs as a script (``python bench/X.py``), so Python puts ``bench/`` first
on ``sys.path``, where ``bench/destinations.py`` would shadow the ``destinations``
package: each script's module code must put the repository first. (bench/pages.py failed
with "'destinations' is not a package" before it did.)"""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.stack_independent

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.name for p in (REPO / "bench").glob("*.py") if not p.name.startswith("_"))

PROBE = """
import runpy, sys
sys.path.insert(0, {bench!r})  # as "python bench/X.py" has it
runpy.run_path({script!r}, run_name="bench_probe")  # module code only, not main()
import destinations.backends.base  # the package, not bench/destinations.py
print("ok")
"""


def test_there_are_scripts():
    assert "pages.py" in SCRIPTS and "destinations.py" in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_imports_the_packages_not_its_neighbours(script):
    bench = str(REPO / "bench")
    code = PROBE.format(bench=bench, script=str(REPO / "bench" / script))
    proc = subprocess.run([sys.executable, "-I", "-c", code], cwd="/", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
