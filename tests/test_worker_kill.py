"""A real Celery worker on the filesystem broker, SIGKILLed (issue 6, item 2).

With the crash-recovery settings lowered (heartbeat 1 s, stale after 4 s, reaper every
second; see tests/workers.py): a run whose worker is killed is marked interrupted within
the stale threshold plus one reaper interval, its temporary files are gone and other
jobs run; a run that waited for the slot runs once a worker is back instead of waiting
forever; Cancel of a run whose worker is dead takes effect at once.
"""

from __future__ import annotations

import sys
import time

import pytest

pytest_plugins = ["tests.workers"]

STALE = 4.0  # the lowered settings of tests/workers.py (checked by the first test)
REAPER = 1.0
SLACK = 5.0  # scheduling noise on a busy 2-core machine (a reaper tick, a slow SQLite write)
FINAL = {"succeeded", "partial", "failed", "cancelled", "interrupted", "timed_out"}


def wait_for_partials(install, job: str, count: int, timeout: float = 30) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(install.staging(job).glob(".*.partial"))
        if len(found) >= count:
            return found
        time.sleep(0.05)
    pytest.fail(f"no temporary files in {install.staging(job)}:\n{install.worker_logs()}")


def plant_cut_off_upload(install, job: str):
    """A temporary file at the destination as an upload cut off by the kill leaves it
    (the local destination copies the tiny test archive too fast to be killed mid-way;
    tests/test_faults.py does that with a big file)."""
    folder = install.destination(job)
    folder.mkdir(parents=True, exist_ok=True)
    planted = folder / f".{job.lower()}-cut-off.tar.zst.partial"
    planted.write_bytes(b"half an archive")
    return planted


def mails(install) -> str:
    folder = install.data / "mail"
    return "\n".join(path.read_text() for path in sorted(folder.glob("*"))) if folder.is_dir() else ""


def wait_for_mail(install, text: str, timeout: float = 10) -> str:
    """The reaper sends the alert just after it has ended the run and cleaned up."""
    deadline = time.monotonic() + timeout
    while text not in (sent := mails(install)):
        if time.monotonic() > deadline:
            pytest.fail(f"no e-mail with {text!r}:\n{sent}\n{install.worker_logs()}")
        time.sleep(0.1)
    return sent


@pytest.mark.slow
def test_a_killed_run_is_interrupted_within_the_interval_cleaned_up_and_others_proceed(install):
    assert float(install.env["BACKUPSITE_STALE_RUN_SECONDS"]) == STALE
    assert float(install.env["BACKUPSITE_REAPER_SECONDS"]) == REAPER
    try:
        worker = install.worker()
        worker.start()
        slow = install.run_now("Slow")
        install.wait_for(slow, {"running"}, timeout=30)
        # The archive being written and the source's dump file, both temporary.
        partials = wait_for_partials(install, "Slow", 2)
        planted = plant_cut_off_upload(install, "Slow")

        killed = worker.kill()
        assert install.run(slow)["state"] == "running"  # nobody can know yet
        ready = install.worker().start()
        row = install.wait_for(slow, FINAL, timeout=STALE + REAPER + 30)
        noticed = time.monotonic()

        assert row["state"] == "interrupted", row["error"]
        bound = max(killed + STALE, ready) + REAPER + SLACK
        print(
            f"\nkilled → interrupted: {noticed - killed:.1f} s (worker back after {ready - killed:.1f} s; "
            f"stale {STALE:.0f} s, reaper {REAPER:.0f} s)",
            file=sys.stderr,
        )
        assert noticed <= bound, f"interrupted {noticed - killed:.1f} s after the kill"
        assert row["error"].startswith("Interrupted: the worker stopped while writing the archive (no heartbeat for")
        assert "This run made no backup." in row["error"]
        sent = wait_for_mail(install, "Subject: [backupsite] Backup interrupted: Slow")
        assert "What happened: The worker running this backup stopped before the run finished" in sent
        row = install.run(slow)  # the alert goes out after the clean-up was logged
        assert not [p for p in partials if p.exists()] and not list(install.staging("Slow").glob(".*.partial"))
        assert not planted.exists()
        assert "temporary file(s) the stopped worker left on this server" in row["log"]
        assert "Server hard drive: removed 1 temporary file(s)" in row["log"]

        # The slot and the job are free: another job runs, and the killed one can run again.
        quick = install.run_now("Quick")
        assert install.wait_for(quick, FINAL, timeout=30)["state"] == "succeeded"
        again = install.run_now("Slow")
        assert again != slow
        install.wait_for(again, {"running"}, timeout=30)
        install.browser.post(f"/runs/{again}/cancel/")  # a live worker: cooperative cancel
        assert install.wait_for(again, FINAL, timeout=15)["state"] == "cancelled"
    finally:
        install.stop_workers()


@pytest.mark.slow
def test_a_run_waiting_for_the_slot_when_the_worker_dies_runs_after_a_restart(install):
    try:
        worker = install.worker()
        worker.start()
        slow = install.run_now("Slow")
        install.wait_for(slow, {"running"}, timeout=30)
        quick = install.run_now("Quick")
        # The second pool process took it, found the slot taken and parked it: no
        # message for it is left in the broker.
        install.wait_for(quick, {"waiting"}, timeout=30)

        worker.kill()
        install.worker().start()
        row = install.wait_for(quick, FINAL, timeout=STALE + REAPER + 30)

        assert row["state"] == "succeeded", row["error"]
        assert row["requeues"] == 0  # handed on when the slot freed, not rescued by the grace
        assert install.run(slow)["state"] == "interrupted"
    finally:
        install.stop_workers()


@pytest.mark.slow
def test_cancel_of_a_run_whose_worker_is_dead_takes_effect_at_once(install):
    try:
        worker = install.worker()
        worker.start()
        slow = install.run_now("Slow")
        install.wait_for(slow, {"running"}, timeout=30)
        wait_for_partials(install, "Slow", 2)
        killed = worker.kill()
        # No worker, so no reaper either: only the Cancel can end the run. Wait until its
        # heartbeat is stale (the last one was written before the kill).
        time.sleep(max(0.0, killed + STALE + 0.5 - time.monotonic()))
        assert install.run(slow)["state"] == "running"

        page = install.browser.post(f"/runs/{slow}/cancel/").read().decode()

        row = install.run(slow)
        assert row["state"] == "cancelled"
        assert row["error"].startswith("Cancelled: the worker running this backup had stopped while writing")
        assert "the cancellation was completed at once" in page and "Cancelled" in page
        assert not list(install.staging("Slow").glob(".*.partial"))
        assert "Subject: [backupsite] Backup cancelled" not in mails(install)  # a cancel is no alert

        # The job is free again; a queued run nobody has taken is cancelled at once too.
        queued = install.run_now("Slow")
        page = install.browser.post(f"/runs/{queued}/cancel/").read().decode()
        assert install.run(queued)["state"] == "cancelled" and "Cancelled before it started." in page
    finally:
        install.stop_workers()
