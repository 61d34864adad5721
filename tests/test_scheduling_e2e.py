"""Acceptance of issue 9 with real processes: Redis from the local binary, real
``celery worker`` and ``celery beat`` processes, one shared SQLite database, a relay
destination whose bytes cross a real TCP connection the test slows, cuts and refuses
(tests/stack.py), and a real SMTP server. Intervals are lowered (tests/stack.py, LOWERED):
heartbeat 1 s, stale after 4 s, reaper 1 s, dispatcher tick 1 s, sweep 2 s, upload
retries from 1 s up to 8 s, one restart.

* a pool process killed mid-archive (as the OOM killer does) → the run starts again
  once, then ends interrupted with a message and an alert; nothing partial is left; the
  next scheduled run works;
* the whole worker killed mid-upload → the sweep takes the upload back, it is made again
  over the temporary file, the run succeeds;
* a connection cut mid-upload, then refused → retries with growing delays, then success;
* two beat processes ticking every second and two due jobs with a week of missed daily
  slots and the slot limit 1 → one catch-up run per job, one after the other, both fine;
* two workers with different data dirs and one Redis → every upload runs on the machine
  that has the file (the other one could not read it).
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import time
from datetime import datetime

import pytest

pytest_plugins = ["tests.servers", "tests.mailserver", "tests.stack"]

FINAL = {"succeeded", "partial", "failed", "cancelled", "interrupted", "timed_out", "skipped"}
SLACK = 10.0  # a busy 2-core machine


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def oom_kill_the_task(worker) -> None:
    """SIGKILL the pool process that runs the sleepy archive (and its ``sleep``), as the
    kernel's OOM killer takes the biggest process; the worker's main process lives on."""
    for child in children(worker.proc.pid):
        grandchildren = children(child)
        if grandchildren:  # the one running `sleep`
            for pid in [child, *grandchildren]:
                os.kill(pid, signal.SIGKILL)
            return
    pytest.fail("no pool process is running the archive")


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_an_oom_killed_archive_is_restarted_once_then_interrupted_and_the_next_scheduled_run_works(stack):
    try:
        worker = stack.worker("alpha", concurrency=1)
        stack.beat(1)
        run_id = stack.start("Slow")
        stack.wait_for(run_id, {"running"}, timeout=30)
        stack.wait_until("the dump runs", lambda: any(children(c) for c in children(worker.proc.pid)))
        oom_kill_the_task(worker)
        killed = time.monotonic()
        # Restarted once (BACKUPSITE_RUN_RESTARTS=1), taken by a new pool process.
        row = stack.wait_until(
            "restarted", lambda: (r := stack.run(run_id))["restarts"] == 1 and r["state"] == "running" and r
        )
        assert time.monotonic() - killed <= 4 + 1 + SLACK
        assert "starting this backup again (restart 1 of 1, BACKUPSITE_RUN_RESTARTS)" in row["log"]
        stack.wait_until("the dump runs again", lambda: any(children(c) for c in children(worker.proc.pid)))
        oom_kill_the_task(worker)
        row = stack.wait_for(run_id, FINAL, timeout=4 + 1 + SLACK + 10)
        assert row["state"] == "interrupted", row
        assert "It was started again 1 time(s) after its worker stopped before" in row["error"]
        [alert] = stack.wait_until(
            "the alert", lambda: [m for m in stack.mailbox.messages if "Backup interrupted: Slow" in m.subject]
        )
        assert alert.recipients == ["ops@example.com"] and f"/runs/{run_id}/" in alert.body
        staging = stack.root / "alpha" / "archives" / "slow"
        assert not list(staging.glob(".*.partial")) and not list(staging.glob("*.tar.zst"))

        # The next scheduled run of the job works (the dump takes a second now).
        next_id = stack.shell(
            "from datetime import timedelta; from django.utils import timezone\n"
            "from jobs.models import Job, Run, Source\n"
            "Source.objects.filter(kind='sleepy').update(settings={'seconds': 1})\n"
            "now = timezone.now()\n"
            "Job.objects.filter(name='Slow').update(interval='daily', first_run_at=now - timedelta(seconds=1), "
            "timezone='UTC', next_run_at=now - timedelta(seconds=1))\n"
            "import time\n"
            "for _ in range(300):\n"
            "    run = Run.objects.filter(job__name='Slow', trigger='schedule').first()\n"
            "    if run: break\n"
            "    time.sleep(0.1)\n"
            "result = run.pk"
        )
        row = stack.wait_for(next_id, FINAL, timeout=60)
        assert row["state"] == "succeeded", row
    finally:
        stack.stop_all()


@pytest.mark.slow
def test_a_worker_killed_mid_upload_has_its_upload_swept_and_made_again(stack):
    try:
        stack.receiver.delay = 0.1  # 4 MiB in 64 KiB pieces: several seconds
        worker = stack.worker("alpha", concurrency=1)
        stack.beat(1)
        run_id = stack.start("Alpha files")
        stack.wait_until("the upload is under way", lambda: stack.proxy.bytes_up > 512 * 1024, timeout=60)
        run = stack.run(run_id)
        assert run["state"] == "uploading" and run["host"] == "alpha"
        worker.kill()
        killed = time.monotonic()
        folder = stack.root / "backups" / "backupsite" / "alpha-files"
        assert list(folder.glob(".*.partial")) and not (folder / run["archive_name"]).exists()
        stack.receiver.delay = 0
        stack.worker("alpha", concurrency=1)
        row = stack.wait_for(run_id, FINAL, timeout=4 + 2 + SLACK + 30)
        noticed = time.monotonic() - killed
        assert row["state"] == "succeeded", row
        assert noticed <= 4 + 2 + SLACK + 30
        assert "Sweep: upload to Relay NAS: the worker stopped during attempt 1" in row["log"]
        [upload] = stack.uploads(run_id)
        assert upload["state"] == "succeeded" and upload["attempts"] == 2
        assert sha256(folder / row["archive_name"]) == row["archive_sha256"]
        assert not list(folder.glob(".*.partial"))
    finally:
        stack.receiver.delay = 0
        stack.stop_all()


@pytest.mark.slow
def test_a_cut_connection_is_retried_with_growing_delays_then_succeeds(stack):
    try:
        # 4 MiB in 64 KiB pieces: over ten seconds, longer than the shell that starts the run
        # takes on a loaded machine (the worker may be uploading before start() returns).
        stack.receiver.delay = 0.2
        stack.worker("alpha", concurrency=1)
        before = stack.proxy.bytes_up  # before the start: the upload may begin before it returns
        run_id = stack.start("Beta files")
        stack.wait_until("the upload is under way", lambda: stack.proxy.bytes_up - before > 256 * 1024, timeout=60)
        stack.receiver.refuse = True  # the server is gone: new connections are refused...
        stack.cut()  # ...and the one under way is cut
        stack.wait_until(
            "three failed attempts",
            lambda: (u := stack.uploads(run_id)[0])["attempts"] >= 3 and u["state"] == "retrying",
            timeout=60,
        )
        stack.receiver.refuse = False  # back
        stack.receiver.delay = 0
        row = stack.wait_for(run_id, FINAL, timeout=60)
        assert row["state"] == "succeeded", row
        [upload] = stack.uploads(run_id)
        assert upload["state"] == "succeeded" and upload["attempts"] >= 4
        lines = [line for line in row["log"].splitlines() if "Retrying: attempt" in line]
        assert len(lines) == upload["attempts"] - 1
        assert "cut" in lines[0]
        assert all(("relay" in line and "cut" in line) or "Could not connect" in line for line in lines), lines
        delays = [float(re.search(r" in (\d+) s\.$", line).group(1)) for line in lines]
        assert delays == sorted(delays) and delays[-1] > delays[0], delays  # growing (1-8 s, equal jitter)
        stamps = [datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S") for line in lines]
        for (earlier, delay), later in zip(zip(stamps, delays, strict=False), stamps[1:], strict=False):
            assert (later - earlier).total_seconds() >= delay - 1  # each retry waited its delay
        assert not [m for m in stack.mailbox.messages if "Beta files" in m.subject]  # made: no alert
    finally:
        stack.receiver.refuse = False
        stack.receiver.delay = 0
        stack.stop_all()


@pytest.mark.slow
def test_two_beats_and_a_week_of_missed_slots_give_one_catch_up_run_per_job_one_after_the_other(stack):
    try:
        stack.shell(
            "from datetime import timedelta; from django.utils import timezone\n"
            "from jobs.models import Job\n"
            "week = timezone.now() - timedelta(days=7, minutes=1)\n"
            "jobs = Job.objects.filter(name__in=['Alpha files', 'Beta files'])\n"
            "jobs.update(interval='daily', first_run_at=week, timezone='UTC', next_run_at=week)"
        )
        stack.worker("alpha", concurrency=2)  # two pool processes: the second run waits for the slot
        stack.beat(1)
        stack.beat(2)
        stack.wait_until(
            "two runs",
            lambda: (
                (
                    r := stack.rows(
                        "SELECT r.* FROM jobs_run r JOIN jobs_job j ON r.job_id = j.id "
                        "WHERE j.name IN ('Alpha files', 'Beta files') AND r.trigger = 'schedule' ORDER BY r.id"
                    )
                )
                and len(r) >= 2
                and all(x["state"] in FINAL for x in r)
                and r
            ),
            timeout=90,
        )
        time.sleep(3)  # a few more ticks of both beats
        runs = stack.rows(
            "SELECT r.* FROM jobs_run r JOIN jobs_job j ON r.job_id = j.id "
            "WHERE j.name IN ('Alpha files', 'Beta files') AND r.trigger = 'schedule' ORDER BY r.started_at"
        )
        assert len(runs) == 2, runs  # one per job, whatever two beats ticking every second did
        assert {r["state"] for r in runs} == {"succeeded"}
        assert all("Catch-up: 8 scheduled slots passed" in r["log"] for r in runs)
        first, second = runs
        assert second["started_at"] >= first["released_at"]  # one after the other (limit 1)
        ticks = sum(p.text().count("dispatch-tick") for p in stack.procs if p.name.startswith("beat"))
        assert ticks >= 4  # both beats really sent ticks
        due = stack.rows("SELECT next_run_at FROM jobs_job WHERE name IN ('Alpha files', 'Beta files')")
        assert all(row["next_run_at"] > first["created_at"] for row in due)
    finally:
        stack.stop_all()


@pytest.mark.slow
def test_with_two_worker_machines_every_upload_runs_where_the_file_is(stack):
    try:
        # alpha takes the archives, beta only the light queue: an upload sent anywhere
        # but host.alpha would reach beta, which does not have the file.
        alpha = stack.worker("alpha", queues="archives", name="alpha1")
        beta = stack.worker("beta", queues="celery", name="beta1")
        first = stack.start("Alpha files")
        row = stack.wait_for(first, FINAL, timeout=60)
        assert row["state"] == "succeeded" and row["host"] == "alpha", row
        assert stack.archive_of(row, "alpha").is_file() and not stack.archive_of(row, "beta").exists()
        [upload] = stack.uploads(first)
        assert "upload_archive[" in alpha.text() and "upload_archive[" not in beta.text()
        workers = stack.rows("SELECT * FROM jobs_serviceheartbeat WHERE role = 'worker' ORDER BY name")
        assert {w["host"] for w in workers} >= {"alpha", "beta"}
        assert any("host.alpha" in w["details"] for w in workers if w["host"] == "alpha")

        # The other way round: beta takes the archives now.
        stack.stop_all()
        alpha = stack.worker("alpha", queues="celery", name="alpha2")
        beta = stack.worker("beta", queues="archives", name="beta2")
        second = stack.start("Beta files")
        row = stack.wait_for(second, FINAL, timeout=60)
        assert row["state"] == "succeeded" and row["host"] == "beta", row
        assert stack.archive_of(row, "beta").is_file() and not stack.archive_of(row, "alpha").exists()
        assert "upload_archive[" in beta.text() and "upload_archive[" not in alpha.text()
        assert upload["state"] == "succeeded" and stack.uploads(second)[0]["state"] == "succeeded"
    finally:
        stack.stop_all()
