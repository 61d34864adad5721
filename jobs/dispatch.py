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

import functools
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


@functools.lru_cache(maxsize=4096)
def _next_cached(interval: str, first: datetime | None, tz: str, cron: str, moment: datetime) -> datetime | None:
    try:
        return next_run_after(interval, first, tz, cron, moment)
    except ScheduleError:
        return None


def _next(job: JobInfo, moment: datetime) -> datetime | None:
    """The job's next slot after *moment* (pure; jobs with the same schedule share the
    answer: a tick may plan 10,000 of them)."""
    return _next_cached(job.interval, job.first_run_at, job.timezone, job.cron, moment)


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


#: The columns a due job's :class:`JobInfo` takes besides its pk and name.
DUE_FIELDS = ("enabled", "next_run_at", "interval", "first_run_at", "timezone", "cron")


def due_jobs(now: datetime) -> list[dict]:
    """The due jobs as plain rows (no model instances: a tick may find 10,000)."""
    from django.db.models import BooleanField, ExpressionWrapper, Q

    from jobs.models import Job
    from jobs.services import SNAPSHOT_JOB_FIELDS

    # Whether a job has a ping URL, not the URL: it is encrypted, and a tick needs no secret.
    has_ping = ExpressionWrapper(~Q(ping_url=""), output_field=BooleanField())
    return list(
        Job.objects.filter(next_run_at__lte=now)
        .order_by("next_run_at", "pk")
        .values(*SNAPSHOT_JOB_FIELDS, *DUE_FIELDS, has_ping=has_ping)
    )


def _configs(jobs: list[dict]) -> dict[int, dict]:
    """The configuration snapshot of each job, from a few queries for all of them."""
    from destinations.models import Destination
    from jobs.models import Job, Source
    from jobs.services import snapshot_of

    ids = [job["pk"] for job in jobs]
    links: dict[str, dict[int, list[int]]] = {"sources": {}, "destinations": {}}
    for name, column in (("sources", "source_id"), ("destinations", "destination_id")):
        through = getattr(Job, name).through.objects
        for start in range(0, len(ids), BATCH):
            for job_id, other in through.filter(job_id__in=ids[start : start + BATCH]).values_list("job_id", column):
                links[name].setdefault(job_id, []).append(other)
    wanted = {name: {pk for values in links[name].values() for pk in values} for name in links}
    sources = {
        s["pk"]: s
        for s in Source.objects.filter(pk__in=wanted["sources"]).values("pk", "name", "slug", "kind", "settings")
    }
    destinations = {
        d["pk"]: d
        for d in Destination.objects.filter(pk__in=wanted["destinations"]).values("pk", "name", "kind", "enabled")
    }

    def rows(table: dict, pks: list[int]) -> list[dict]:
        return sorted((table[pk] for pk in pks if pk in table), key=lambda row: row["name"])

    return {
        job["pk"]: snapshot_of(
            job,
            rows(sources, links["sources"].get(job["pk"], [])),
            rows(destinations, links["destinations"].get(job["pk"], [])),
        )
        for job in jobs
    }


def _infos(jobs: list[dict], now: datetime) -> list[JobInfo]:
    from jobs.models import Run

    active = {}
    ids = [job["pk"] for job in jobs]
    for start in range(0, len(ids), BATCH):
        for row in Run.objects.filter(job_id__in=ids[start : start + BATCH], state__in=Run.ACTIVE_STATES).values(
            "job_id", "pk", "state", "created_at", "started_at"
        ):
            active[row["job_id"]] = (row["pk"], row["state"], row["started_at"] or row["created_at"])
    return [
        JobInfo(
            pk=job["pk"], name=job["name"], **{name: job[name] for name in DUE_FIELDS}, active=active.get(job["pk"])
        )
        for job in jobs
    ]


def _claim(batch: list[Decision]) -> list[Decision]:
    """Claim the batch's jobs: the decisions whose job still has the ``next_run_at`` this
    tick planned with. The rows are locked first (``SELECT … FOR UPDATE`` in primary-key
    order on PostgreSQL, which re-reads a row another tick changed meanwhile; SQLite's
    IMMEDIATE transactions let one writer in at a time), then moved on with a
    conditional update per distinct (old, new) pair (``UPDATE … WHERE next_run_at =
    <what was read>``): two ticks never both claim a slot."""
    from jobs.models import Job

    ids = [d.job.pk for d in batch]
    current = dict(Job.objects.select_for_update().filter(pk__in=ids).order_by("pk").values_list("pk", "next_run_at"))
    ours = [d for d in batch if current.get(d.job.pk) == d.job.next_run_at]
    groups: dict[tuple, list[int]] = {}
    for decision in ours:
        groups.setdefault((decision.job.next_run_at, decision.next_run_at), []).append(decision.job.pk)
    moved = 0
    for (old, new), pks in groups.items():
        moved += Job.objects.filter(pk__in=pks, next_run_at=old).update(next_run_at=new)
    if moved != len(ours):  # pragma: no cover - the lock above makes this impossible
        raise RuntimeError("The dispatcher's claim lost a race it should have been protected from.")
    return ours


def tick(now: datetime | None = None, *, housekeeping: bool = True) -> TickResult:
    """Start what is due (see the module docstring). *housekeeping* also reconciles the
    slot, sends stale alerts, queues drills and runs the hooks.

    In batches of :data:`BATCH` jobs, one transaction each: every job is claimed with its
    own conditional update, then the batch's runs are inserted together. Only as many
    runs as there are free heavy slots are handed to the broker; the others are created
    *waiting* (no message for them: whoever frees a slot wakes the next one, oldest
    first), so 10,000 due jobs make a handful of messages, not 10,000."""
    from django.conf import settings
    from django.db import transaction
    from django.utils import timezone

    from jobs import enqueue, heartbeats, notifications, slots
    from jobs.models import Job, Run

    now = now or timezone.now()
    heartbeats.beat_dispatcher(now)
    jobs = due_jobs(now)
    by_pk = {job["pk"]: job for job in jobs}
    result = TickResult()
    result.decisions = plan(_infos(jobs, now), now=now)
    free = max(
        0,
        settings.BACKUPSITE_MAX_CONCURRENT_RUNS - slots.in_use() - Run.objects.filter(state=Run.State.QUEUED).count(),
    )
    handed: list[int] = []
    pinged: list[tuple[int, int]] = []
    for start in range(0, len(result.decisions), BATCH):
        batch = result.decisions[start : start + BATCH]
        with transaction.atomic():
            claimed = _claim(batch)
            result.lost += len(batch) - len(claimed)  # another tick (a second beat) took these slots
            configs = _configs([by_pk[d.job.pk] for d in claimed if d.action == START])
            result.disabled += [d.job.pk for d in claimed if d.action == DISABLED]
            starting = [d for d in claimed if d.action == START]
            pairs = []
            for decision in starting:
                state = Run.State.QUEUED if free > len(handed) + len(pairs) else Run.State.WAITING
                pairs.append((decision, _new_run(configs[decision.job.pk], decision, state, now)))
            created, refused = _insert(pairs, now)
            handed += [pk for pk, _, state in created if state == Run.State.QUEUED]
            result.started += [pk for pk, _, _ in created]
            pinged += [(pk, job_id) for pk, job_id, _ in created if by_pk[job_id]["has_ping"]]
            skipping = [d for d in claimed if d.action == SKIP] + [
                Decision(
                    d.job,
                    SKIP,
                    f"Skipped the {_fmt(d.job.next_run_at)} slot: the job was started by hand a moment before.",
                    d.next_run_at,
                )
                for d in refused
            ]
            skipped = Run.objects.bulk_create(
                [
                    Run(
                        job_id=d.job.pk,
                        job_name=d.job.name,
                        trigger=Run.Trigger.SCHEDULE,
                        state=Run.State.SKIPPED,
                        created_at=now,
                        finished_at=now,
                        error=d.reason,
                        log=Run.log_line(d.reason),
                    )
                    for d in skipping
                ]
            )
            result.skipped += [run.pk for run in skipped]
    # After the commits: the runs that have a slot go to the workers; the jobs' pings.
    enqueue.archive(handed)
    for run_id, job_id in pinged:
        notifications.ping(Job.objects.get(pk=job_id), "start", run=Run.objects.get(pk=run_id))
    if housekeeping:
        _housekeeping(now)
    if result.started or result.skipped:
        log.info(
            "Dispatcher: %s run(s) started (%s handed to the workers, the others wait for a slot), "
            "%s slot(s) skipped, %s lost to another tick",
            len(result.started),
            len(handed),
            len(result.skipped),
            result.lost,
        )
    return result


def _new_run(config: dict, decision: Decision, state: str, now: datetime) -> dict:
    """What differs between the runs a tick inserts (the rest is the same for all)."""
    from jobs.models import Run

    lines = [decision.reason]
    if state == Run.State.WAITING:
        lines.append("Waiting for a free slot for heavy work (BACKUPSITE_MAX_CONCURRENT_RUNS).")
    return {
        "job_id": decision.job.pk,
        "job_name": decision.job.name,
        "config": config,
        "state": state,
        "log": "".join(Run.log_line(line) for line in lines),
    }


def _insert(pairs: list, now: datetime) -> tuple[list[tuple[int, int, str]], list[Decision]]:
    """Insert the runs of (decision, values) *pairs*; returns (run id, job id, state) of
    each created run and the decisions whose run the one-active-run index refused (a
    "Run now" of that job came between the plan and here).

    One ``executemany`` of prepared rows for the batch (the ORM's ``bulk_create`` spends
    most of a 10,000-job tick preparing 40 fields per row that are the same for every
    run): the values are prepared by the model's own fields, once for the columns all
    runs share and per run for the five that differ. If the index refuses the batch, the
    runs are created one by one through the ORM."""
    from django.db import IntegrityError, connection, transaction

    from jobs.models import Run

    if not pairs:
        return [], []
    fields = [f for f in Run._meta.concrete_fields if not f.primary_key]
    prototype = Run(trigger=Run.Trigger.SCHEDULE, created_at=now, enqueued_at=now, job_name="", config={})
    shared = [f.get_db_prep_save(f.pre_save(prototype, True), connection) for f in fields]
    position = {f.attname: i for i, f in enumerate(fields)}
    rows = []
    for _, values in pairs:
        row = list(shared)
        for name, value in values.items():
            field = fields[position[name]]
            row[position[name]] = field.get_db_prep_save(value, connection)
        rows.append(row)
    quote = connection.ops.quote_name
    # Table and column names come from the model, quoted; the values are parameters.
    head = f"INSERT INTO {quote(Run._meta.db_table)} ({', '.join(quote(f.column) for f in fields)}) "
    job_ids = [values["job_id"] for _, values in pairs]
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                # One statement: the shared values once, the varying ones as five arrays
                # (a 10,000-row VALUES list costs the driver seconds to parse).
                varying = list(pairs[0][1])
                types = {f.attname: f.db_type(connection) for f in fields}
                select = ", ".join(f"v.{quote(f.attname)}" if f.attname in varying else "%s" for f in fields)
                arrays = ", ".join(f"%s::{types[name]}[]" for name in varying)
                names = ", ".join(quote(name) for name in varying)
                params = [value for f, value in zip(fields, shared, strict=True) if f.attname not in varying]
                params += [[row[position[name]] for row in rows] for name in varying]
                cursor.execute(f"{head}SELECT {select} FROM unnest({arrays}) AS v({names})", params)  # noqa: S608
            else:  # SQLite: the driver's executemany loop (in C)
                cursor.executemany(head + "VALUES (" + ", ".join(["%s"] * len(fields)) + ")", rows)
    except IntegrityError:
        pass
    else:
        created = Run.objects.filter(
            job_id__in=job_ids, created_at=now, state__in=[Run.State.QUEUED, Run.State.WAITING]
        )
        return list(created.values_list("pk", "job_id", "state")), []
    made, refused = [], []
    for decision, values in pairs:
        try:
            with transaction.atomic():
                run = Run.objects.create(trigger=Run.Trigger.SCHEDULE, created_at=now, enqueued_at=now, **values)
            made.append((run.pk, run.job_id, run.state))
        except IntegrityError:
            refused.append(decision)
    return made, refused


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
