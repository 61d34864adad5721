"""The checks behind ``/healthz`` (README, "Health and monitoring").

Each check is a function in :data:`CHECKS` (name → function of a :class:`Probe`) that
returns a :class:`Result`: ``ok`` for everyone, ``detail`` only for callers with the
health token (counts, ages, the stale jobs' ids and names; never a secret, never an
exception's text, which may name a host or hold a URL). A check that raises is a failed
check, so the page never answers 500.

* ``database``: ``SELECT 1`` on the default database;
* ``broker``: the Celery broker answers (``backupsite/brokers.py``: the queue folder of
  the filesystem broker, a ``PING`` to Redis within two seconds);
* ``workers``: at least one worker wrote its heartbeat row within
  ``BACKUPSITE_STALE_RUN_SECONDS`` (``jobs/heartbeats.py``; no broadcast to the workers);
* ``scheduler``: the dispatcher tick's heartbeat is younger than two ticks plus that;
* ``jobs``: no enabled scheduled job is stale (no successful run for twice its interval,
  the rule of the stale e-mail).

Cheap: a handful of reads, never a write, and the report is kept in this process for
:data:`CACHE_SECONDS`, so a load balancer asking every second costs little.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property

from django.db import connection
from django.utils import timezone

log = logging.getLogger(__name__)

#: How long one report is reused (seconds).
CACHE_SECONDS = 2.0


@dataclass(frozen=True)
class Result:
    ok: bool
    #: Shown only with the health token.
    detail: dict = field(default_factory=dict)


class Probe:
    """What several checks read, read once per report."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    @cached_property
    def heartbeats(self):
        from jobs import heartbeats

        return heartbeats.status(self.now)

    @cached_property
    def stale_jobs(self) -> list[tuple]:
        from jobs.notifications import stale_jobs

        return stale_jobs(self.now)


def _age(now: datetime, then: datetime | None) -> int | None:
    return None if then is None else max(0, int((now - then).total_seconds()))


def check_database(probe: Probe) -> Result:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        ok = cursor.fetchone() == (1,)
    return Result(ok, {"vendor": connection.vendor})


def check_broker(probe: Probe) -> Result:
    from backupsite import brokers

    broker = brokers.broker()
    broker.ping()
    return Result(True, {"transport": type(broker).__name__.removesuffix("Broker").lower()})


def check_workers(probe: Probe) -> Result:
    status = probe.heartbeats
    alive = [w for w in status.workers if w["alive"]]
    newest = max((w["beat_at"] for w in alive), default=None)
    return Result(
        bool(alive),
        {
            "alive": len(alive),
            "known": len(status.workers),
            "hosts": sorted({w["host"] for w in alive}),
            "last_beat_age_seconds": _age(probe.now, newest),
        },
    )


def check_scheduler(probe: Probe) -> Result:
    status = probe.heartbeats
    return Result(status.dispatcher_alive, {"last_tick_age_seconds": _age(probe.now, status.dispatcher_beat_at)})


def check_jobs(probe: Probe) -> Result:
    stale = probe.stale_jobs
    return Result(
        not stale,
        {
            "stale": [
                {"id": job.pk, "name": job.name, "since_success_seconds": int(age.total_seconds())}
                for job, age in stale
            ]
        },
    )


#: Every check, in the order of the report. ``/healthz?check=a,b`` asks for some only.
CHECKS: dict[str, Callable[[Probe], Result]] = {
    "database": check_database,
    "broker": check_broker,
    "workers": check_workers,
    "scheduler": check_scheduler,
    "jobs": check_jobs,
}


@dataclass(frozen=True)
class Report:
    results: dict[str, Result]
    stale_jobs: int | None  # None: the jobs check was not asked for, or failed

    @property
    def ok(self) -> bool:
        return all(result.ok for result in self.results.values())

    def as_dict(self, *, detailed: bool) -> dict:
        checks = {}
        for name, result in self.results.items():
            checks[name] = {"ok": result.ok, **(result.detail if detailed else {})}
        body: dict = {"status": "ok" if self.ok else "fail", "checks": checks}
        if self.stale_jobs is not None:
            body["stale_jobs"] = self.stale_jobs
        return body


def run_checks(names: Iterable[str], now: datetime | None = None) -> Report:
    """Run the named checks (each on its own: one failing never hides another)."""
    probe = Probe(now or timezone.now())
    results = {}
    for name in names:
        try:
            results[name] = CHECKS[name](probe)
        except Exception as exc:  # a failing check is a failed check, never a 500
            log.warning("Health check %r failed", name, exc_info=True)
            results[name] = Result(False, {"error": type(exc).__name__})
    stale = None
    if "jobs" in results and "error" not in results["jobs"].detail:
        stale = len(results["jobs"].detail["stale"])
    return Report(results, stale)


_cache: dict[tuple[str, ...], tuple[float, Report]] = {}
_lock = threading.Lock()


def report(names: Iterable[str] | None = None) -> Report:
    """The report for *names* (every check by default), at most :data:`CACHE_SECONDS` old."""
    wanted = set(CHECKS if names is None else names)
    key = tuple(name for name in CHECKS if name in wanted)
    with _lock:
        cached = _cache.get(key)
        if cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
            return cached[1]
    fresh = run_checks(key)
    with _lock:
        _cache[key] = (time.monotonic(), fresh)
    return fresh


def clear_cache() -> None:
    with _lock:
        _cache.clear()
