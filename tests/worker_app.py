"""The Celery app the real-worker tests start (``celery -A tests.worker_app worker``).

It is the production app (``backupsite.celery``) plus one test-only source kind,
``sleepy``, whose "dump" is a real ``sleep`` program run through ``run_tool`` like a
database dump. It keeps a run in its archive phase, with its temporary files in the
staging folder and its heartbeat going, for as long as a test needs: no real source can
be made slow on demand without writing gigabytes first. Claiming, heartbeats, the
reaper, uploads and cancellation are the production code. ``chatty`` (a sleepy source
that logs from two threads) feeds the structured-log tests.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "backupsite.settings")
django.setup()

from backupsite.celery import app  # noqa: E402
from jobs.sources import REGISTRY  # noqa: E402
from jobs.sources.dbtools import DumpSource, run_tool  # noqa: E402


class SleepySource(DumpSource):
    kind = "sleepy"
    label = "Sleepy (tests only)"
    title = "Sleepy"
    temp_prefix = "sleepy"

    @property
    def conf(self):
        return None

    def describe(self) -> str:
        return "sleep"

    def dump_name(self) -> str:
        return "sleepy.bin"

    def size(self) -> int:
        return 1

    def write_dump(self, target: Path, staging: Path) -> None:
        run_tool(["sleep", str(int(self.settings.get("seconds", 120)))])
        target.write_bytes(b"z")


REGISTRY[SleepySource.kind] = SleepySource


class ChattySource(SleepySource):
    """Logs from the task's thread and from a thread of its own while it "dumps" (the
    structured-log tests: every line of a run carries the run's id)."""

    kind = "chatty"
    label = "Chatty (tests only)"
    title = "Chatty"
    temp_prefix = "chatty"

    def write_dump(self, target: Path, staging: Path) -> None:
        log = logging.getLogger("tests.chatty")
        log.info("chatty: dumping in the task's thread")
        helper = threading.Thread(target=log.info, args=("chatty: from a helper thread",))
        helper.start()
        helper.join()
        log.warning("chatty: a line with\na newline and “quotes”")
        target.write_bytes(b"z")


REGISTRY[ChattySource.kind] = ChattySource

__all__ = ["app"]
