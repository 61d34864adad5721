"""RELIABILITY 15: Redis down in the middle of a run, and back (issue 12).

A real installation (tests/workers.py: the panel, a ``celery worker --beat``, the
database of the suite's stack) whose broker is a Redis of this module's own, durable
like production's (append-only, here fsynced on every write), so the test can kill it
(SIGKILL: a crash) and start it again on the same port. Expected:

* no silent loss: the run that was executing finishes and is recorded (the database row
  is the truth, not the broker), exactly once; a run started while Redis is down is kept
  queued, never dropped;
* a clear error: the worker says it lost the broker, the panel logs that it could not
  hand the run to the workers;
* the schedule resumes: once Redis is back (and the worker with it, see below) the
  reaper ticks again and hands the queued run over, and it runs.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.servers import _start_redis, _stop
from tests.workers import START_TIMEOUT, running_install

FINAL = {"succeeded", "partial", "failed", "cancelled", "interrupted", "timed_out"}
ROOT = Path(__file__).resolve().parents[1]

NAP_JOB = """
import django
django.setup()
from destinations.models import Destination
from jobs.models import Job, Source
job = Job.objects.create(name="Nap", report_to="ops@example.com")
job.sources.set([Source.objects.create(name="Nap", kind="sleepy", settings={"seconds": 8})])
job.destinations.set([Destination.objects.get(name="Server hard drive")])
print(job.pk)
"""


class Broker:
    """A Redis that can crash and come back on the same port with its data."""

    def __init__(self) -> None:
        self.server, self.proc = _start_redis(durable=True)

    def url(self) -> str:
        return self.server.url(0)

    def crash(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=20)
        assert not self.server.ping()

    def restart(self) -> None:
        self.server, self.proc = _start_redis(port=self.server.port, directory=self.server.directory, durable=True)

    def stop(self) -> None:
        _stop(self.proc, signal.SIGTERM)


@pytest.fixture(scope="module")
def broker():
    broker = Broker()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def install(tmp_path_factory, broker):
    # A queued run is handed over again after the grace period: long enough here for the
    # worker's consumer to reconnect after its beat (their retries are timed apart).
    # The sweep hands an upload whose task could not be sent over again: every 5 s here.
    extra = {
        "CELERY_BROKER_URL": broker.url(),
        "BACKUPSITE_QUEUE_GRACE_SECONDS": "20",
        "BACKUPSITE_SWEEP_SECONDS": "5",
    }
    with running_install(tmp_path_factory.mktemp("redis-outage"), extra) as install:
        made = subprocess.run(
            [sys.executable, "-c", NAP_JOB], cwd=ROOT, env=install.env, capture_output=True, text=True, timeout=120
        )
        assert made.returncode == 0, made.stderr
        install.jobs["Nap"] = int(made.stdout.split()[-1])
        yield install


def wait_for_text(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in (path.read_text(errors="replace") if path.exists() else ""):
        if time.monotonic() > deadline:
            pytest.fail(f"{path.name} never said {text!r}:\n{path.read_text(errors='replace')[-4000:]}")
        time.sleep(0.2)


@pytest.mark.slow
def test_redis_down_mid_run_loses_nothing_says_so_and_the_schedule_resumes(install, broker):
    worker = install.worker()
    worker.start()
    nap = install.run_now("Nap")
    install.wait_for(nap, {"running"}, timeout=START_TIMEOUT)

    broker.crash()
    # A user presses "Run now" while the broker is gone: the run is kept, queued.
    quick = install.run_now("Quick")
    assert install.run(quick)["state"] == "queued"
    wait_for_text(install.data / "logs" / "web.log", f"Could not hand archive_run[{quick}] to the workers", timeout=30)
    wait_for_text(worker.log, "Connection to broker lost", timeout=30)  # the worker says so

    # The archive in progress does not need the broker: it is written and recorded. Its
    # upload task cannot be sent while the broker is gone (it succeeds if the worker's
    # own connection still sent it); the sweep hands it over once the broker is back.
    row = install.wait_for(nap, FINAL | {"uploading"}, timeout=60)
    assert row["state"] in ("succeeded", "uploading"), row["error"]
    assert "Archive written" in row["log"], row["log"]
    assert install.run(quick)["state"] == "queued"  # nothing ran it, nothing dropped it

    # Celery 5.7.0 then ends the worker ("Unrecoverable error": closing the lost
    # connection, kombu's Redis transport fails to hand back the unacknowledged message
    # of the task that was running), with exit status 1 once that task is done. Compose
    # (restart: unless-stopped) and systemd (Restart=on-failure) start it again; so does
    # this test. A Celery that keeps the worker and reconnects passes as well.
    deadline = time.monotonic() + 30
    while worker.proc.poll() is None and "Unrecoverable error" in worker.log.read_text():
        assert time.monotonic() < deadline, "the worker neither recovers nor exits"
        time.sleep(0.2)
    broker.restart()
    if worker.proc.poll() is not None:
        assert worker.proc.returncode != 0, "a supervisor restarting on failure would not start it again"
        install.worker().start()

    # The worker and its beat are connected again; the reaper hands the queued run over
    # again, the sweep the upload of the first.
    row = install.wait_for(nap, FINAL, timeout=90)
    assert row["state"] == "succeeded", f"{row['error']}\n{install.worker_logs()}"
    row = install.wait_for(quick, FINAL, timeout=90)
    assert row["state"] == "succeeded", f"{row['error']}\n{install.worker_logs()}"
    assert "Handed to the workers again" in row["log"], row["log"]
    # Exactly once each: one archive per run at the destination.
    assert len(list(install.destination("Nap").glob("*.tar.zst"))) == 1
    assert len(list(install.destination("Quick").glob("*.tar.zst"))) == 1
    assert install.run(nap)["state"] == "succeeded"
