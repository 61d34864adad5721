"""Cancelling a run while a long client program (a database dump) runs stops it within
seconds, kills the program and removes its temporary file."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from jobs import services
from jobs.engine import Cancelled
from jobs.models import Job, Run, Source
from jobs.sources import REGISTRY
from jobs.sources.base import cancel_check
from jobs.sources.dbtools import DumpSource, run_tool
from tests.conftest import require_binary


def test_run_tool_stops_a_program_when_cancelled():
    require_binary("sleep")
    token = cancel_check.set(lambda: True)
    started = time.monotonic()
    try:
        with pytest.raises(Cancelled):
            run_tool(["sleep", "30"])
    finally:
        cancel_check.reset(token)
    assert time.monotonic() - started < 5


def test_run_tool_without_a_cancel_check_runs_to_the_end():
    code, _ = run_tool(["true"])
    assert code == 0


class SlowDump(DumpSource):
    """A stand-in for a long database dump: a real program that takes 60 seconds."""

    kind = "slow_dump_for_tests"
    label = "Slow dump"
    title = "Slow"
    temp_prefix = "slow"
    seen: list[Path] = []

    @property
    def conf(self):
        return None

    def describe(self) -> str:
        return "slow"

    def dump_name(self) -> str:
        return "slow.bin"

    def size(self) -> int:
        return 1

    def write_dump(self, target: Path, staging: Path) -> None:
        self.seen.append(target)
        run_tool(["sleep", "60"])


@pytest.mark.django_db(transaction=True)
def test_cancel_during_a_dump_stops_the_run_promptly(folders, monkeypatch):
    require_binary("sleep")
    monkeypatch.setitem(REGISTRY, SlowDump.kind, SlowDump)
    monkeypatch.setattr(services.Heartbeat, "CANCEL_POLL", 0.2)
    source = Source.objects.create(name="Slow", kind=SlowDump.kind)
    job = Job.objects.create(name="Slow job")
    job.sources.set([source])
    run = services.create_run(job)

    def cancel_soon():
        time.sleep(1.0)
        Run.objects.filter(pk=run.pk).update(cancel_requested=True)

    threading.Thread(target=cancel_soon).start()
    started = time.monotonic()
    run = services.execute_run(run.pk)
    assert run.state == Run.State.CANCELLED
    assert time.monotonic() - started < 10
    assert SlowDump.seen and not SlowDump.seen[-1].exists()  # the temporary dump file is gone
