"""The heavy-work slot: at most ``BACKUPSITE_MAX_CONCURRENT_RUNS`` pieces of heavy work at
once on the whole installation, whatever their kind (like a PBX that never archives and
backs up at the same time).

A kind of heavy work registers a :class:`HeavyKind` (backups do in ``jobs.services``;
planning exports register theirs the same way)::

    slots.register(ExportWork())

Each kind keeps its own rows (Run, ExportRun) with the states queued → waiting → running;
the slot counts the running rows of every kind together. :func:`claim` takes the slot for
one row or parks it as waiting, under one row lock (``SlotLock``), so two workers never
both take the last free slot. :func:`reconcile` plans every kind's active rows with the
pure :func:`jobs.reconcile.plan` (stale holders, the waiting line, lost hand-overs) and
lets each kind apply the decisions about its own rows. Nothing polls the broker while a
row waits: whoever frees a slot (a finishing stage, the reaper, the dispatcher tick)
calls :func:`reconcile`, which wakes the next row in line, oldest first.
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from jobs import reconcile as rules

log = logging.getLogger(__name__)

LOCK_NAME = "heavy-runs"
CLAIMED, BUSY, GONE = "claimed", "busy", "gone"


class HeavyKind:
    """One kind of heavy work. Subclasses implement the row operations; each works with
    conditional updates so that a decision that lost a race does nothing."""

    name: str = ""  # "backup", "export"

    def held_count(self) -> int:
        """Rows of this kind holding a slot now."""
        raise NotImplementedError

    def holders(self) -> list[str]:
        """The holders in words, for a waiting row's page ("backup of “Quick” (run #12)")."""
        raise NotImplementedError

    def active(self) -> list[rules.RunInfo]:
        """Queued, waiting and running rows as :class:`~jobs.reconcile.RunInfo` (``kind`` set)."""
        raise NotImplementedError

    def last_release(self) -> datetime | None:
        """When a row of this kind last gave a slot back."""
        raise NotImplementedError

    def prepare(self, pk: int, now: datetime) -> bool:
        """Under the slot lock: whether the row can take a slot (it is queued or waiting
        and nobody cancelled it; a cancelled one is ended here and False returned)."""
        raise NotImplementedError

    def start(self, pk: int, now: datetime) -> None:
        """Under the slot lock, with a slot free: the row is running from now on."""
        raise NotImplementedError

    def park(self, pk: int) -> None:
        """Under the slot lock, every slot taken: the row waits (nothing for it is left
        in the broker; :func:`reconcile` hands it to the workers when a slot frees)."""
        raise NotImplementedError

    def apply(self, decision: rules.Decision, now: datetime) -> bool:
        """Apply a reconcile decision about one of this kind's rows; whether it did."""
        raise NotImplementedError


REGISTRY: dict[str, HeavyKind] = {}


def register(kind: HeavyKind) -> HeavyKind:
    REGISTRY[kind.name] = kind
    return kind


def _lock() -> None:
    """Take the slot's row lock (``SELECT … FOR UPDATE`` on PostgreSQL; SQLite serialises
    writers with its IMMEDIATE transactions anyway). Inside a transaction."""
    from jobs.models import SlotLock

    SlotLock.objects.get_or_create(name=LOCK_NAME)
    SlotLock.objects.select_for_update().get(name=LOCK_NAME)


def in_use() -> int:
    return sum(kind.held_count() for kind in REGISTRY.values())


def claim(kind: str, pk: int) -> str:
    """Take a heavy slot for row *pk* of *kind*. Returns :data:`CLAIMED`, :data:`BUSY`
    (parked as waiting) or :data:`GONE` (someone else took it, it ended, or it was
    cancelled): so a duplicate delivery never runs twice."""
    work = REGISTRY[kind]
    now = timezone.now()
    with transaction.atomic():
        _lock()
        if not work.prepare(pk, now):
            return GONE
        if in_use() >= settings.BACKUPSITE_MAX_CONCURRENT_RUNS:
            work.park(pk)
            return BUSY
        work.start(pk, now)
        return CLAIMED


def limits() -> rules.Limits:
    return rules.Limits(
        stale_seconds=settings.BACKUPSITE_STALE_RUN_SECONDS,
        grace_seconds=settings.BACKUPSITE_QUEUE_GRACE_SECONDS,
        slots=settings.BACKUPSITE_MAX_CONCURRENT_RUNS,
        restarts=settings.BACKUPSITE_RUN_RESTARTS,
    )


def reconcile(now: datetime | None = None) -> list[rules.Decision]:
    """Bring every kind's active rows in line with the workers that are really there:
    plan with :func:`jobs.reconcile.plan`, then let each kind apply its decisions.
    Returns the decisions that were applied."""
    now = now or timezone.now()
    with transaction.atomic():
        # Under the slot lock, like claim(): a row being parked right now is either seen
        # parked here (and woken) or saw this slot free (and took it).
        _lock()
        infos = [info for kind in REGISTRY.values() for info in kind.active()]
        last_release = None
        if any(info.state in rules.PENDING for info in infos):
            releases = [at for at in (kind.last_release() for kind in REGISTRY.values()) if at is not None]
            last_release = max(releases) if releases else None
    decisions = rules.plan(infos, now=now, limits=limits(), last_release=last_release)
    applied = []
    for decision in decisions:
        if decision.action == rules.KEEP:
            log.debug("%s %s: %s", decision.run.kind, decision.pk, decision.reason)
            continue
        try:
            done = REGISTRY[decision.run.kind].apply(decision, now)
        except Exception:
            log.exception(
                "%s %s: could not %s it: %s", decision.run.kind, decision.pk, decision.action, decision.reason
            )
            continue
        if done:
            log.info("%s %s: %s: %s", decision.run.kind, decision.pk, decision.action, decision.reason)
            applied.append(decision)
    return applied


def waiting_for() -> str:
    """What a waiting row waits for, in words: the holders of every slot."""
    holders = [text for kind in REGISTRY.values() for text in kind.holders()]
    total = settings.BACKUPSITE_MAX_CONCURRENT_RUNS
    if not holders:
        return "a slot is free; a worker takes this run within moments."
    slots = "the only slot" if total == 1 else f"all {total} slots"
    return f"{slots} for heavy work (BACKUPSITE_MAX_CONCURRENT_RUNS) taken by " + "; ".join(holders) + "."
