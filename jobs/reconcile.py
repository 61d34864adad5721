"""Reconciling active runs with the workers: which run is still alive, which one waits
legitimately, which one nobody will ever take. Pure: no I/O, no Django.

:func:`plan` looks at every active row of heavy work (backup runs: queued, waiting,
running, uploading; planning export runs: queued, waiting, running) at one moment and
returns one :class:`Decision` with a reason for each; ``services.reconcile_runs`` (through
``jobs.slots``, where each kind applies the decisions about its own rows) applies them
with conditional updates (so two reconciles, or a reconcile racing a worker's
claim, never act twice). The reaper calls it every ``BACKUPSITE_REAPER_SECONDS``, a run
that ends calls it to hand its slot to the next waiting run, and the scheduling
dispatcher can call it from its tick.

The rules, with ``stale`` = ``BACKUPSITE_STALE_RUN_SECONDS`` and ``grace`` =
``BACKUPSITE_QUEUE_GRACE_SECONDS``:

* A **running** run whose last heartbeat is older than ``stale`` has lost its worker
  (killed, OOM-killed, crashed, machine restarted): ``cancel`` it when a user had asked
  to cancel; else ``restart`` it (back to queued, its temporary files removed) while it
  is restartable (a kind of work can say it is not) and was restarted fewer than
  ``restarts`` times (``BACKUPSITE_RUN_RESTARTS``): it goes
  first in the line for the slot it held; else ``interrupt`` it (final, with a message
  that says how often it was tried). Its slot is free from now on. A fresh heartbeat:
  ``keep``.
  Both kinds can be cancelled (backups and planning exports: *Cancel* sets
  ``cancel_requested``), so ``cancel`` is asked of either; ``restart`` only of a
  restartable kind (backups; an export is interrupted instead).
* A **queued/waiting** run whose cancel was requested: ``cancel`` (nobody holds it).
* The other queued/waiting runs form a line, oldest first. While live runs hold every
  slot, the whole line legitimately waits (``keep``): a six-hour backup must not fail the
  runs behind it. With ``free`` slots, the first ``free`` runs of the line are *due*:

  - a **waiting** run has been parked by a worker that found no free slot; no message for
    it is in the broker, so it is handed to the workers now (``wake``; not counted);
  - a **queued** run has a message in the broker (or a foreground ``runbackup`` polls
    it). Its clock starts when it was last handed over or when a slot last freed,
    whichever is later. Within ``grace``: ``keep``; after it, if it was never handed over
    again: ``requeue`` (the message may be lost: a worker killed with it, a broker
    restart); if that happened already: ``fail``, with a message that says no worker
    took the run.

  The rest of the line waits behind the due runs (``keep``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

QUEUED, WAITING, RUNNING, UPLOADING = "queued", "waiting", "running", "uploading"
HELD = (RUNNING, UPLOADING)
PENDING = (QUEUED, WAITING)

KEEP, INTERRUPT, CANCEL, WAKE, REQUEUE, FAIL = "keep", "interrupt", "cancel", "wake", "requeue", "fail"
RESTART = "restart"


#: The columns a :class:`RunInfo` is read from (``.values(*RUN_INFO_FIELDS)``), the same
#: for every kind of heavy work; a kind whose rows are started again adds ``"restarts"``.
RUN_INFO_FIELDS = (
    "pk",
    "state",
    "created_at",
    "heartbeat_at",
    "started_at",
    "enqueued_at",
    "requeues",
    "cancel_requested",
)


@dataclass(frozen=True)
class RunInfo:
    """What the plan needs to know about one active row of heavy work (a run, an export)."""

    pk: int
    state: str
    created_at: datetime
    heartbeat_at: datetime | None = None
    started_at: datetime | None = None
    enqueued_at: datetime | None = None
    requeues: int = 0
    cancel_requested: bool = False
    restarts: int = 0
    kind: str = "backup"  # the jobs.slots registry entry whose row this is
    ref: str = ""  # how reasons name it: "#12" (runs), "export #3"
    #: Whether a row whose worker died is started again (backups) or only interrupted
    #: (planning exports: report-to is told and the next night writes the files anyway).
    restartable: bool = True

    @property
    def label(self) -> str:
        return self.ref or f"#{self.pk}"


@dataclass(frozen=True)
class Limits:
    stale_seconds: float
    grace_seconds: float
    slots: int
    restarts: int = 0  # how often a row whose worker died is started again


@dataclass(frozen=True)
class Decision:
    run: RunInfo
    action: str
    reason: str

    @property
    def pk(self) -> int:
        return self.run.pk


def _seconds(delta: timedelta) -> int:
    return max(0, int(delta.total_seconds()))


def last_sign_of_life(run: RunInfo) -> datetime:
    return run.heartbeat_at or run.started_at or run.created_at


def worker_gone(run: RunInfo, now: datetime, stale_seconds: float) -> bool:
    """Whether a running/uploading run's worker stopped sending heartbeats."""
    return now - last_sign_of_life(run) > timedelta(seconds=stale_seconds)


def plan(
    runs: Iterable[RunInfo], *, now: datetime, limits: Limits, last_release: datetime | None = None
) -> list[Decision]:
    """One decision per run (held runs first, then the line in order).

    *last_release* is when a run last gave a slot back (finished, failed, was
    interrupted); a slot released by this plan itself counts as released *now*.
    """
    runs = list(runs)
    decisions: list[Decision] = []
    live: list[RunInfo] = []
    ahead: list[RunInfo] = []  # the due runs, in front of the rest of the line
    for run in (r for r in runs if r.state in HELD):
        age = _seconds(now - last_sign_of_life(run))
        if worker_gone(run, now, limits.stale_seconds):
            silent = f"no heartbeat for {age} s (limit {int(limits.stale_seconds)} s)"
            if run.cancel_requested:
                decisions.append(Decision(run, CANCEL, silent))
            elif run.restartable and run.restarts < limits.restarts:
                tries = f"restart {run.restarts + 1} of {limits.restarts}"
                decisions.append(Decision(run, RESTART, f"{silent}: starting it again ({tries})"))
                ahead.append(run)  # first in line for the slot it held
            else:
                tried = f"; it was started again {run.restarts} time(s) already" if run.restarts else ""
                decisions.append(Decision(run, INTERRUPT, silent + tried))
            last_release = now
        else:
            live.append(run)
            decisions.append(Decision(run, KEEP, f"alive: last heartbeat {age} s ago"))

    line = sorted((r for r in runs if r.state in PENDING), key=lambda r: (r.created_at, r.pk))
    free = max(0, limits.slots - len(live))
    grace = timedelta(seconds=limits.grace_seconds)
    for run in line:
        if run.cancel_requested:
            decisions.append(Decision(run, CANCEL, "cancel requested before it started"))
            continue
        if len(ahead) >= free:
            if not free:
                holders = ", ".join(r.label for r in live)
                reason = f"waiting: every slot is held by a live run ({holders})"
            else:
                reason = f"waiting behind run {ahead[-1].label}, which is next"
            decisions.append(Decision(run, KEEP, reason))
            continue
        ahead.append(run)
        if run.state == WAITING:
            decisions.append(Decision(run, WAKE, "a slot is free: handing it to the workers"))
            continue
        since = max(t for t in (run.enqueued_at or run.created_at, last_release) if t is not None)
        waited = _seconds(now - since)
        if now - since <= grace:
            decisions.append(Decision(run, KEEP, f"a slot is free; a worker should take it ({waited} s so far)"))
        elif run.requeues < 1:
            decisions.append(
                Decision(run, REQUEUE, f"no worker took it within {waited} s with a free slot: handing it over again")
            )
        else:
            decisions.append(
                Decision(run, FAIL, f"no worker took it within {waited} s, even after it was handed over again")
            )
    return decisions
