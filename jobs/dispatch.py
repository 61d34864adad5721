"""The dispatcher: one periodic tick (every ``BACKUPSITE_DISPATCH_SECONDS``, a minute by
default, with ``expires`` so ticks never pile up while the workers were down) that starts
the jobs whose time has come.

:func:`plan` is pure (no I/O, no Django), like retention's: for every job whose
``next_run_at`` has passed it returns a :class:`Decision` with a reason and the job's
next run time (always strictly after *now*, from ``jobs.schedule``):

* **disabled**: the slot passes without a run (``next_run_at`` moves on, nothing is
  recorded, and enabling the job again does not replay it);
* **skip**: the job's previous run is still archiving (queued, waiting or running):
  the slot is recorded as a *skipped* run with the reason, never silently lost;
* **start**: a run is created and handed to the workers. If more than one slot passed
  since ``next_run_at`` (the workers or the scheduler were down for a week), the run says
  how many were missed and runs **once**: the next run is the next slot after now.

:func:`tick` applies it. Every job is *claimed* with a conditional update of
``next_run_at`` (``UPDATE … WHERE next_run_at = <what this tick read>``), so two ticks,
two beat processes or a tick racing an edit never start a job twice; a run that loses
against a "Run now" of the same job (the one-active-run index) is recorded as skipped.
The same tick then reconciles the heavy slot (starting runs that wait for it), sends
stale alerts, queues the integrity drills that are due, runs the other due-work hooks
(planning exports register one), and writes the dispatcher's heartbeat row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from jobs.schedule import ScheduleError, next_run_after

log = logging.getLogger(__name__)

START, SKIP, DISABLED = "start", "skip", "disabled"
MISSED_COUNT_LIMIT = 1000  # slots counted for the "missed" message, at most


@dataclass(frozen=True)
class JobInfo:
    pk: int
    name: str
    enabled: bool
    next_run_at: datetime
    interval: str
    first_run_at: datetime | None
    timezone: str
    cron: str = ""
    #: The job's active run (queued, waiting or running), if any: (pk, state, since).
    active: tuple[int, str, datetime] | None = None


@dataclass(frozen=True)
class Decision:
    job: JobInfo
    action: str
    reason: str
    next_run_at: datetime | None
    missed: int = 0  # slots that passed without a run, besides the one started now


def _next(job: JobInfo, moment: datetime) -> datetime | None:
    try:
        return next_run_after(job.interval, job.first_run_at, job.timezone, job.cron, moment)
    except ScheduleError:
        return None


def _fmt(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def missed_slots(job: JobInfo, now: datetime) -> int:
    """Slots after ``next_run_at`` that also passed by *now* (0 when the tick is on time)."""
    count, moment = 0, job.next_run_at
    while count < MISSED_COUNT_LIMIT:
        moment = _next(job, moment)
        if moment is None or moment > now:
            break
        count += 1
    return count


def plan(jobs: Iterable[JobInfo], *, now: datetime) -> list[Decision]:
    """One decision per due job (``next_run_at <= now``), in the order given."""
    decisions = []
    for job in jobs:
        if job.next_run_at > now:
            continue
        upcoming = _next(job, now)
        slot = _fmt(job.next_run_at)
        if not job.enabled:
            decisions.append(Decision(job, DISABLED, f"the job is disabled: the {slot} slot passes", upcoming))
            continue
        if job.active is not None:
            pk, state, since = job.active
            doing = {"running": "archiving", "waiting": "waiting for a slot", "queued": "queued"}.get(state, state)
            decisions.append(
                Decision(
                    job,
                    SKIP,
                    f"Skipped the {slot} slot: the previous run #{pk} is still {doing} (since {_fmt(since)}).",
                    upcoming,
                )
            )
            continue
        missed = missed_slots(job, now)
        if missed:
            reason = (
                f"Catch-up: {missed + 1 if missed < MISSED_COUNT_LIMIT else 'more than 1000'} scheduled slots "
                f"passed since {slot} while nothing was running; the backup runs once now."
            )
        else:
            reason = f"Scheduled for {slot}."
        decisions.append(Decision(job, START, reason, upcoming, missed))
    return decisions


# --- applying it ------------------------------------------------------------------------
@dataclass
class TickResult:
    started: list[int] = field(default_factory=list)  # run ids
    skipped: list[int] = field(default_factory=list)  # skipped-run ids
    disabled: list[int] = field(default_factory=list)  # job ids
    lost: int = 0  # claims another tick won
    decisions: list[Decision] = field(default_factory=list)


#: Other due work the tick starts (``hook(now) -> count``): planning exports register theirs.
DUE_HOOKS: list[Callable[[datetime], int]] = []
BATCH = 500  # jobs per transaction


def due_jobs(now: datetime) -> list:
    from jobs.models import Job

    return list(
        Job.objects.filter(next_run_at__lte=now)
        .order_by("next_run_at", "pk")
        .prefetch_related("sources", "destinations")
    )


def _infos(jobs: list, now: datetime) -> list[JobInfo]:
    from jobs.models import Run

    active = {}
    ids = [job.pk for job in jobs]
    for start in range(0, len(ids), BATCH):
        for row in Run.objects.filter(job_id__in=ids[start : start + BATCH], state__in=Run.ACTIVE_STATES).values(
            "job_id", "pk", "state", "created_at", "started_at"
        ):
            active[row["job_id"]] = (row["pk"], row["state"], row["started_at"] or row["created_at"])
    return [
        JobInfo(
            pk=job.pk,
            name=job.name,
            enabled=job.enabled,
            next_run_at=job.next_run_at,
            interval=job.interval,
            first_run_at=job.first_run_at,
            timezone=job.timezone,
            cron=job.cron,
            active=active.get(job.pk),
        )
        for job in jobs
    ]


def tick(now: datetime | None = None, *, housekeeping: bool = True) -> TickResult:
    """Start what is due (see the module docstring). *housekeeping* also reconciles the
    slot, sends stale alerts, queues drills and runs the hooks (the bench leaves it out)."""
    from django.db import IntegrityError, transaction
    from django.utils import timezone

    from jobs import enqueue, heartbeats, notifications, services
    from jobs.models import Job, Run

    now = now or timezone.now()
    heartbeats.beat_dispatcher(now)
    jobs = due_jobs(now)
    by_pk = {job.pk: job for job in jobs}
    result = TickResult()
    pinged: list[tuple[int, int]] = []
    result.decisions = plan(_infos(jobs, now), now=now)
    for start in range(0, len(result.decisions), BATCH):
        with transaction.atomic():
            for decision in result.decisions[start : start + BATCH]:
                info = decision.job
                claimed = Job.objects.filter(pk=info.pk, next_run_at=info.next_run_at).update(
                    next_run_at=decision.next_run_at
                )
                if not claimed:  # another tick (a second beat) took this slot
                    result.lost += 1
                    continue
                if decision.action == DISABLED:
                    result.disabled.append(info.pk)
                    continue
                job = by_pk[info.pk]
                if decision.action == START:
                    try:
                        run = services.create_run(job, trigger=Run.Trigger.SCHEDULE, log_lines=[decision.reason])
                    except services.AlreadyRunning:  # a "Run now" came between the plan and here
                        decision = Decision(
                            info,
                            SKIP,
                            f"Skipped the {_fmt(info.next_run_at)} slot: the job was started by hand a moment before.",
                            decision.next_run_at,
                        )
                    else:
                        result.started.append(run.pk)
                        if job.ping_url:
                            pinged.append((run.pk, job.pk))
                        continue
                try:
                    with transaction.atomic():
                        skipped = Run.objects.create(
                            job=job,
                            job_name=job.name,
                            trigger=Run.Trigger.SCHEDULE,
                            state=Run.State.SKIPPED,
                            created_at=now,
                            finished_at=now,
                            error=decision.reason,
                            log=Run.log_line(decision.reason),
                        )
                except IntegrityError:  # pragma: no cover - skipped runs are not active
                    continue
                result.skipped.append(skipped.pk)
    # After the commits: the created runs go to the workers, and the jobs' pings.
    enqueue.archive(result.started)
    for run_id, job_id in pinged:
        notifications.ping(by_pk[job_id], "start", run=Run.objects.get(pk=run_id))
    if housekeeping:
        _housekeeping(now)
    if result.started or result.skipped:
        log.info(
            "Dispatcher: %s run(s) started, %s slot(s) skipped, %s lost to another tick",
            len(result.started),
            len(result.skipped),
            result.lost,
        )
    return result


def _housekeeping(now: datetime) -> None:
    from jobs import drills, notifications, services

    for step, call in (
        ("reconcile the heavy slot", lambda: services.reconcile_runs(now)),
        ("send stale alerts", lambda: notifications.check_stale(now)),
        ("queue integrity drills", lambda: drills.queue_due(now)),
        *((f"run {hook.__name__}", lambda hook=hook: hook(now)) for hook in DUE_HOOKS),
    ):
        try:
            call()
        except Exception:  # one failing step must not stop the others
            log.exception("Dispatcher tick: could not %s", step)
