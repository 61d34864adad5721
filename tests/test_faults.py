"""Faults survived for real: a worker SIGKILLed mid-archive or mid-upload to the local
destination leaves nothing under a final name. Killed mid-archive: the reaper marks the
run interrupted (restarts switched off here; tests/test_scheduling_e2e.py has them) and
removes the leftovers in the staging folder and at the destination. Killed mid-upload:
the archive is made, so the sweep takes the upload back and it is made again (the
temporary file at the destination is replaced). The next run succeeds either way."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import teststack
from tests.conftest import require_binary

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def install(tmp_path_factory):
    require_binary("zstd")
    base = tmp_path_factory.mktemp("faults")
    data = base / "var"
    big = base / "big"
    big.mkdir()
    with open(big / "random.bin", "wb") as fh:  # incompressible, so archiving takes a moment
        for _ in range(32):
            fh.write(os.urandom(8 << 20))
    env = {
        "PATH": os.environ["PATH"],
        "DJANGO_SETTINGS_MODULE": "backupsite.settings",
        "BACKUPSITE_ENV_FILE": "",
        "BACKUPSITE_DATA_DIR": str(data),
        "DEBUG": "1",
        "BACKUPSITE_STALE_RUN_SECONDS": "60",
        "BACKUPSITE_RUN_RESTARTS": "0",
    }
    env.update(teststack.installation(data).env)  # its database and broker on the suite's stack

    def manage(*args, check=True):
        result = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        if check:
            assert result.returncode == 0, result.stderr
        return result

    manage("migrate", "--noinput")
    manage("loaddemo")
    script = (
        "from jobs.models import Job, Source; s = Source.objects.create(name='Big', kind='directory', "
        f"settings={{'path': {str(big)!r}}}); j = Job.objects.get(name='Demo backup'); j.sources.set([s])"
    )
    manage("shell", "-c", script)
    return {"data": data, "env": env, "manage": manage}


def kill_when(install, pattern: str, folder: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "runbackup", "Demo backup", "--quiet"],
        cwd=ROOT,
        env=install["env"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if folder.is_dir() and any(folder.glob(pattern)):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    assert proc.wait(timeout=30) == -signal.SIGKILL, "the run ended before it could be killed"


def run_states(install) -> list[dict]:
    out = install["manage"](
        "shell",
        "-c",
        "import json; from jobs.models import Run; "
        "print(json.dumps(list(Run.objects.order_by('pk').values('pk', 'state', 'error', 'log'))))",
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["archive", "upload"])
def test_sigkill_leaves_nothing_under_a_final_name_and_recovers(install, phase):
    data = install["data"]
    staging = data / "archives" / "demo-backup"
    remote = data / "backups" / "backupsite" / "demo-backup"
    before_local = set(staging.glob("*.tar.zst")) if staging.is_dir() else set()
    before_remote = set(remote.glob("*.tar.zst")) if remote.is_dir() else set()
    folder = staging if phase == "archive" else remote
    kill_when(install, ".*.partial", folder)

    # Nothing new looks complete at the destination (nor in staging, if killed while archiving).
    assert set(remote.glob("*.tar.zst")) == before_remote
    if phase == "archive":
        assert set(staging.glob("*.tar.zst")) == before_local
    assert list(folder.glob(".*.partial")), "the killed run left its temporary file (the reaper removes it)"

    if phase == "archive":
        # The reaper marks the run interrupted once its heartbeat is stale, and removes
        # what the killed worker left in the staging folder and at the destination.
        install["manage"](
            "shell",
            "-c",
            "from django.utils import timezone; from jobs.models import Run; "
            "from jobs.services import reap_stale_runs; Run.objects.filter(state='running').update("
            "heartbeat_at=timezone.now() - timezone.timedelta(hours=1)); print(reap_stale_runs())",
        )
        killed = run_states(install)[-1]
        assert killed["state"] == "interrupted"
        assert killed["error"].startswith("Interrupted: the worker stopped while writing the archive")
        assert "temporary file(s) the stopped worker left on this server" in killed["log"]
    else:
        # The archive was made: the run is "uploading" and holds nothing. The sweep finds
        # the upload's heartbeat stale and takes it back; a worker (here: the same code
        # in a shell) makes the upload again, over the temporary file the kill left.
        out = install["manage"](
            "shell",
            "-c",
            "from django.utils import timezone; from jobs.models import Upload; from jobs import sweep, uploads; "
            "Upload.objects.filter(state='uploading').update("
            "heartbeat_at=timezone.now() - timezone.timedelta(hours=1)); "
            "print([d.action for d in sweep.sweep()]); "
            "print([str(uploads.upload_stage(u.pk)) for u in Upload.objects.filter(state='retrying')])",
        ).stdout
        assert "['retry']" in out and "['succeeded']" in out, out
        killed = run_states(install)[-1]
        assert killed["state"] == "succeeded", killed
        assert "Sweep: upload to Server hard drive: the worker stopped during attempt 1" in killed["log"]
        assert "Uploaded to Server hard drive (attempt 2)." in killed["log"]
    assert not list(staging.glob(".*.partial")) and not list(remote.glob(".*.partial"))

    # The next run succeeds.
    assert install["manage"]("runbackup", "Demo backup", "--quiet").returncode == 0
    latest = run_states(install)[-1]
    assert latest["state"] == "succeeded"
    assert not list(staging.glob(".*.partial")) and not list(remote.glob(".*.partial"))
