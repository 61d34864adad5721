"""What the records of work share: a backup run (:class:`jobs.models.Run`) and a
planning export run (:class:`jobs.models.ExportRun`) have the same life (queued, waiting,
running, then a final state), the same time-stamped log and the same way of being
created (the database allows one active row per job or export); a run, a restore and an
upload show their progress the same way.

Plain mixins (no fields, so no migration): each model keeps its own fields, states and
choices, and says which of its states are active, live and alerting.
"""

from __future__ import annotations

from datetime import timedelta

from django.db import IntegrityError, models, transaction
from django.utils import timezone


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

    #: Whether an hour or more reads "2 h 05 min" (backup runs) or in minutes,
    #: "125 min 00 s" (export runs: their pages have always shown it so).
    DURATION_IN_HOURS = True

    @property
    def duration_display(self) -> str:
        """'0.2 s', '3 min 12 s', '2 h 05 min' (see :attr:`DURATION_IN_HOURS`)."""
        duration = self.duration
        if duration is None:
            return ""
        seconds = duration.total_seconds()
        if seconds < 60:
            return f"{seconds:.1f} s"
        minutes, secs = divmod(int(seconds), 60)
        if minutes < 60 or not self.DURATION_IN_HOURS:
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
