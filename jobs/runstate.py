"""What the records of work share: a backup run (:class:`jobs.models.Run`) and a
planning export run (:class:`jobs.models.ExportRun`) have the same life (queued, waiting,
running, then a final state), the same time-stamped log and the same way of being
created (the database allows one active row per job or export); a run, a restore and an
upload show their progress the same way.

* :class:`RunRecord`, :class:`BytesProgress`: plain model mixins (no fields, so no
  migration): each model keeps its own fields, states and choices, and says which of its
  states are active, live and alerting;
* :class:`RunRowsWork`: such runs as a kind of heavy work (``jobs.slots``): claiming a
  slot, holding it, waiting for it, and the reconcile's decisions about queued rows;
* :func:`create_active`, :func:`one_active_run`, :func:`hand_slot_on`: making a run,
  the lock that allows one active run, giving the slot back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from django.db import IntegrityError, close_old_connections, models, transaction
from django.utils import timezone

from jobs import enqueue, reconcile, slots

log = logging.getLogger(__name__)


def _state_in(group: str, doc: str) -> property:
    """A property: whether the row's state is one of its model's *group* of states."""
    return property(lambda self: self.state in getattr(self, group), doc=doc)


class RunRecord:
    """The state properties and the log of a run row.

    The model defines ``ACTIVE_STATES`` (the one active row per job or export, enforced
    by the database), ``LIVE_STATES`` (not finished: pages keep polling; a *Cancel* is
    still possible) and ``ALERT_STATES`` (final states that e-mail report-to), and has
    ``state``, ``log``, ``started_at`` and ``finished_at`` fields."""

    ACTIVE_STATES: tuple = ()
    LIVE_STATES: tuple = ()
    ALERT_STATES: tuple = ()

    is_active = _state_in("ACTIVE_STATES", "Queued, waiting or running: the job's (or export's) one active run.")
    is_live = _state_in("LIVE_STATES", "Not finished (the page keeps polling).")
    can_cancel = _state_in("LIVE_STATES", "A *Cancel* is possible until the run is finished.")
    is_alert = _state_in("ALERT_STATES", "Ended in a state that e-mails report-to.")

    @property
    def duration(self) -> timedelta | None:
        """From the start to the end (or to now while it runs); None before it started."""
        if self.started_at is None:
            return None
        return (self.finished_at or timezone.now()) - self.started_at

    @property
    def duration_display(self) -> str:
        """'0.2 s', '3 min 12 s', '2 h 05 min'."""
        duration = self.duration
        if duration is None:
            return ""
        seconds = duration.total_seconds()
        if seconds < 60:
            return f"{seconds:.1f} s"
        minutes, secs = divmod(int(seconds), 60)
        if minutes < 60:
            return f"{minutes} min {secs:02d} s"
        hours, minutes = divmod(minutes, 60)
        return f"{hours} h {minutes:02d} min"

    @staticmethod
    def log_line(line: str) -> str:
        """One line of the run log, time-stamped."""
        return f"{timezone.now().strftime('%Y-%m-%d %H:%M:%S')} {line}\n"

    def append_log(self, line: str) -> None:
        self.log = f"{self.log}{self.log_line(line)}"

    @staticmethod
    def log_concat(text: str):
        """An update expression appending *text* (whole log lines) to the log column."""
        from django.db.models import F, Value
        from django.db.models.functions import Concat

        return Concat(F("log"), Value(text), output_field=models.TextField())

    @classmethod
    def log_expression(cls, *lines: str):
        """An update expression appending time-stamped lines to the run log (other
        workers write to the same row: never a read-modify-write of the whole log)."""
        return cls.log_concat("".join(cls.log_line(line) for line in lines))

    @classmethod
    def add_log(cls, run_id: int, *lines: str) -> None:
        """Append lines to a run's log without touching anything else on the row."""
        if lines:
            cls.objects.filter(pk=run_id).update(log=cls.log_expression(*lines))


def hand_slot_on() -> None:
    """A run gave its heavy slot back: the reconcile hands it to the next waiting row of
    any kind (a backup, a planning export). Never raises, so a failure here never changes
    the outcome already stored: the reaper and the dispatcher tick reconcile again."""
    try:
        slots.reconcile()
    except Exception:
        log.exception("Could not hand the free slot to waiting work; the reaper will")


class RunRowsWork(slots.HeavyKind):
    """A kind of heavy work whose rows are runs of *model* (a :class:`RunRecord`): a row
    holds a slot while it is running. The kind says how its rows start, how a queued one
    that was cancelled ends, how a holder reads on a waiting row's page, and how the
    reconcile's decisions are applied."""

    model: type[models.Model]
    #: The columns :meth:`active` reads (``reconcile.RunInfo`` fields).
    info_fields = reconcile.RUN_INFO_FIELDS
    #: The phase a row is in when it starts running.
    first_phase: str = ""
    #: The columns :meth:`describe_holder` reads.
    holder_fields: tuple[str, ...] = ("pk", "phase", "started_at")

    def info(self, row: dict) -> reconcile.RunInfo:
        """An active row (:attr:`info_fields`) as the reconcile sees it."""
        raise NotImplementedError

    def describe_holder(self, run, since: str) -> str:
        """A running row in words; *since* is its start, "14:05" ("?" before it started)."""
        raise NotImplementedError

    def cancel_before_start(self, pk: int, now) -> None:
        """End a queued or waiting row whose cancel was asked (nobody holds it)."""
        raise NotImplementedError

    def hand_over(self, run_ids: list[int]) -> None:
        """Send rows to the workers once the transaction commits."""
        raise NotImplementedError

    def unclaimed_message(self) -> str:
        """The error of a row no worker took, even after it was handed over again."""
        raise NotImplementedError

    def notify_failed(self, run) -> None:
        """Tell report-to that *run* failed."""
        raise NotImplementedError

    def claim_and_work(self, run_id: int, work_on: Callable[[models.Model], bool]):
        """Claim a heavy slot for the row (``jobs.slots.claim``: a duplicate delivery never
        runs twice) and, when claimed, *work_on(run)*, which says whether the run ended
        here; the slot is handed on afterwards, whatever happened. Returns the row and
        what *work_on* said (None when the row was not claimed: every slot busy, or gone)."""
        close_old_connections()
        outcome = slots.claim(self.name, run_id)
        run = self.model.objects.get(pk=run_id)
        if outcome != slots.CLAIMED:
            return run, None
        try:
            return run, work_on(run)
        finally:
            hand_slot_on()

    def held_count(self) -> int:
        return self.model.objects.filter(state=self.model.State.RUNNING).count()

    def holders(self) -> list[str]:
        texts = []
        for run in self.model.objects.filter(state=self.model.State.RUNNING).only(*self.holder_fields):
            since = timezone.localtime(run.started_at).strftime("%H:%M") if run.started_at else "?"
            texts.append(self.describe_holder(run, since))
        return texts

    def active(self) -> list[reconcile.RunInfo]:
        rows = self.model.objects.filter(state__in=self.model.ACTIVE_STATES).values(*self.info_fields)
        return [self.info(row) for row in rows]

    def prepare(self, pk: int, now) -> bool:
        row = self.model.objects.filter(pk=pk).values("state", "cancel_requested").first()
        if row is None or row["state"] not in reconcile.PENDING:
            return False
        if row["cancel_requested"]:
            self.cancel_before_start(pk, now)
            return False
        return True

    def cancel_pending(self, run_id: int, now, who: str = "") -> bool:
        """Cancel a queued/waiting row (*who*: " by alice", or empty): nobody holds it, so
        it ends here. Conditional on the state, like the claim: whichever comes first wins,
        and a later delivery of its task finds the row gone."""
        return bool(
            self.model.objects.filter(pk=run_id, state__in=reconcile.PENDING).update(
                state=self.model.State.CANCELLED,
                cancel_requested=True,
                finished_at=now,
                error="Cancelled before it started.",
                log=self.model.log_expression(f"Cancelled{who} before it started."),
            )
        )

    def start(self, pk: int, now) -> None:
        """Under the slot lock, with a slot free: the row runs from now on, on this host."""
        self.model.objects.filter(pk=pk).update(**self.start_values(now))

    def start_values(self, now) -> dict:
        return {
            "state": self.model.State.RUNNING,
            "phase": self.first_phase,
            "started_at": now,
            "heartbeat_at": now,
            "host": enqueue.this_host(),
        }

    def park(self, pk: int) -> None:
        self.model.objects.filter(pk=pk, state=self.model.State.QUEUED).update(state=self.model.State.WAITING)

    # --- the reconcile's decisions about queued and waiting rows (conditional updates) ---
    def wake(self, decision: reconcile.Decision, now) -> bool:
        """A waiting row, and a slot is free: queued again and handed to the workers."""
        states = self.model.State
        woken = self.model.objects.filter(pk=decision.pk, state=states.WAITING).update(
            state=states.QUEUED, enqueued_at=now
        )
        if woken:
            self.hand_over([decision.pk])
        return bool(woken)

    def requeue(self, decision: reconcile.Decision, now) -> bool:
        """A queued row nobody took within the grace time: handed to the workers once more."""
        info = decision.run
        requeued = self.model.objects.filter(pk=info.pk, state=self.model.State.QUEUED, requeues=info.requeues).update(
            requeues=info.requeues + 1,
            enqueued_at=now,
            log=self.model.log_expression(f"Handed to the workers again: {decision.reason}."),
        )
        if requeued:
            self.hand_over([info.pk])
        return bool(requeued)

    def fail_unclaimed(self, decision: reconcile.Decision, now) -> bool:
        """A queued row nobody took even after it was handed over again: failed, report-to told."""
        info = decision.run
        states, message = self.model.State, self.unclaimed_message()
        failed = self.model.objects.filter(
            pk=info.pk, state=states.QUEUED, requeues=info.requeues, enqueued_at=info.enqueued_at
        ).update(state=states.FAILED, finished_at=now, error=message, log=self.model.log_expression(message))
        if failed:
            self.notify_failed(self.model.objects.get(pk=info.pk))
        return bool(failed)


class BytesProgress:
    """``progress_percent`` of a row that counts ``bytes_done`` of ``bytes_total`` and
    has a ``SUCCEEDED`` state (a run, a restore, an upload)."""

    @property
    def progress_percent(self) -> int | None:
        if self.state == self.State.SUCCEEDED:
            return 100
        if not self.bytes_total:
            return None
        return max(0, min(100, int(self.bytes_done * 100 / self.bytes_total)))


def one_active_run(owner: str, name: str) -> models.UniqueConstraint:
    """The per-job (or per-export) lock, enforced by the database: at most one active
    (queued, waiting, running) row per *owner*, whoever asks (a double click, the tick)."""
    return models.UniqueConstraint(
        fields=[owner], condition=models.Q(state__in=["queued", "waiting", "running"]), name=name
    )


def requester(user):
    """The user a new row records as ``created_by``: None for no user or an anonymous one."""
    return user if user is not None and user.is_authenticated else None


def by_whom(user) -> str:
    """ " by alice" for the run log, or empty when no one is signed in."""
    return f" by {user.get_username()}" if user is not None and user.is_authenticated else ""


def create_active(model, trigger: str, user, **values):
    """Create a queued row of *model* (*trigger* says who started it, *user* is recorded
    as ``created_by`` when signed in), or None when the database refuses it because the
    job (or export) already has an active run (its partial unique index), whoever asks:
    a double click, two ticks, a retry."""
    try:
        with transaction.atomic():
            return model.objects.create(trigger=trigger, created_by=requester(user), **values)
    except IntegrityError:
        return None
