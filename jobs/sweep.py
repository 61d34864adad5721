"""The sweep (every ``BACKUPSITE_SWEEP_SECONDS``, 5 minutes by default): no upload is
ever lost, whatever happened to the task that should have made it.

:func:`plan` is pure (no I/O, no Django), like retention's: one :class:`Decision` with a
reason for every open upload, and for every uploading run whose uploads all settled:

* an upload **uploading** whose heartbeat is older than ``BACKUPSITE_STALE_RUN_SECONDS``
  lost its worker (killed, OOM, machine gone): ``retry`` it at once while attempts
  remain, else ``fail`` it;
* an upload **pending** (its hand-over after the archive was lost) or **retrying** and
  overdue by more than ``BACKUPSITE_QUEUE_GRACE_SECONDS`` (its countdown message was
  lost: a broker restart, a worker killed with the message in memory): ``enqueue`` it
  again on its host's queue;
* a run **uploading** with no open upload (the task that should have closed it died
  between the last upload and the close): ``finalize`` it on its host;
* everything else: ``keep`` (a live upload, a retry that is not due yet).

Each applied decision is written to the run's log. When the upload task then finds that
the run's local copy is gone, :func:`substitute` picks what to upload instead: the
latest good local backup of the same job on that host.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

log = logging.getLogger(__name__)

KEEP, RETRY, FAIL, ENQUEUE, FINALIZE = "keep", "retry", "fail", "enqueue", "finalize"
PENDING, UPLOADING, RETRYING = "pending", "uploading", "retrying"


@dataclass(frozen=True)
class UploadInfo:
    pk: int
    run_id: int
    state: str
    attempts: int
    destination: str  # its name, for the log
    host: str
    heartbeat_at: datetime | None = None
    next_attempt_at: datetime | None = None
    since: datetime | None = None  # when it became pending (the run's archive was written)


#: Where each field of an :class:`UploadInfo` comes from in an Upload row (``since`` is
#: annotated by :func:`sweep`).
UPLOAD_INFO_COLUMNS = {
    "pk": "pk",
    "run_id": "run_id",
    "state": "state",
    "attempts": "attempts",
    "destination": "destination_name",
    "host": "run__host",
    "heartbeat_at": "heartbeat_at",
    "next_attempt_at": "next_attempt_at",
    "since": "since",
}


@dataclass(frozen=True)
class Limits:
    stale_seconds: float
    grace_seconds: float
    attempts: int


@dataclass(frozen=True)
class Decision:
    action: str
    reason: str
    upload: UploadInfo | None = None
    run_id: int | None = None
    host: str = ""


def _seconds(delta: timedelta) -> int:
    return max(0, int(delta.total_seconds()))


def plan(
    uploads: Iterable[UploadInfo],
    unclosed: Iterable[tuple[int, str]],
    *,
    now: datetime,
    limits: Limits,
    hosts: dict[str, bool] | None = None,
) -> list[Decision]:
    """Decisions for the open uploads and for the uploading runs in *unclosed*
    (``(run id, host)``: every upload of them settled). *hosts* says which worker hosts
    are alive (from their heartbeat rows): an upload is not handed over again, sweep after
    sweep, to the queue of a host whose workers are known to be down (the message waits
    there already, or the next sweep after a worker is back sends one)."""
    hosts = hosts or {}
    decisions: list[Decision] = []
    grace = timedelta(seconds=limits.grace_seconds)
    for upload in uploads:
        if upload.state == UPLOADING:
            silent = now - (upload.heartbeat_at or upload.since or now)
            if silent <= timedelta(seconds=limits.stale_seconds):
                decisions.append(Decision(KEEP, f"uploading: last heartbeat {_seconds(silent)} s ago", upload))
            elif upload.attempts < limits.attempts:
                decisions.append(
                    Decision(
                        RETRY,
                        f"the worker stopped during attempt {upload.attempts} (no heartbeat for "
                        f"{_seconds(silent)} s): trying again now",
                        upload,
                    )
                )
            else:
                decisions.append(
                    Decision(
                        FAIL,
                        f"the worker stopped during attempt {upload.attempts}, the last one allowed "
                        "(BACKUPSITE_UPLOAD_MAX_ATTEMPTS)",
                        upload,
                    )
                )
            continue
        due = upload.next_attempt_at if upload.state == RETRYING else upload.since
        if due is None or now - due <= grace:
            what = "waiting for its next attempt" if upload.state == RETRYING else "just handed to the workers"
            decisions.append(Decision(KEEP, what, upload))
            continue
        if hosts.get(upload.host) is False:
            decisions.append(Decision(KEEP, f"no worker on {upload.host} is running: it waits for one", upload))
            continue
        late = _seconds(now - due)
        what = (
            f"attempt {upload.attempts + 1} was due {late} s ago"
            if upload.state == RETRYING
            else (f"waiting for a worker for {late} s")
        )
        decisions.append(
            Decision(ENQUEUE, f"{what}: handed to the workers on {upload.host or 'any host'} again", upload)
        )
    for run_id, host in unclosed:
        decisions.append(
            Decision(FINALIZE, "every upload settled but the run was not closed: closing it", None, run_id, host)
        )
    return decisions


# --- the local copy is gone: what to upload instead ----------------------------------------
@dataclass(frozen=True)
class Candidate:
    run_id: int
    created_at: datetime
    local_copy: bool  # its archive is on this host


@dataclass(frozen=True)
class Substitute:
    run_id: int | None
    reason: str


def substitute(missing_run_id: int, candidates: Iterable[Candidate]) -> Substitute:
    """The latest good local backup of the job (another run whose archive is still on
    this host), to upload in place of run *missing_run_id*; or None, with the reason."""
    good = sorted((c for c in candidates if c.local_copy and c.run_id != missing_run_id), key=lambda c: c.created_at)
    if not good:
        return Substitute(None, "No other backup of this job is on this server to upload instead.")
    latest = good[-1]
    return Substitute(
        latest.run_id,
        f"The latest good local backup of this job, run #{latest.run_id} "
        f"({latest.created_at:%Y-%m-%d %H:%M} UTC), is uploaded there instead.",
    )


# --- applying it ------------------------------------------------------------------------------
def limits():
    from django.conf import settings

    return Limits(
        stale_seconds=settings.BACKUPSITE_STALE_RUN_SECONDS,
        grace_seconds=settings.BACKUPSITE_QUEUE_GRACE_SECONDS,
        attempts=settings.BACKUPSITE_UPLOAD_MAX_ATTEMPTS,
    )


def sweep(now: datetime | None = None) -> list[Decision]:
    """Plan and apply (the beat entry ``sweep-uploads``); also re-sends notifications
    whose delivery was lost. Returns the applied decisions."""
    from django.db.models import Q
    from django.db.models.functions import Coalesce
    from django.utils import timezone

    from jobs import enqueue, notifications
    from jobs.models import Run, Upload

    now = now or timezone.now()
    rows = (
        Upload.objects.filter(state__in=Upload.OPEN_STATES)
        .annotate(since=Coalesce("run__released_at", "run__started_at", "run__created_at"))
        .values(*UPLOAD_INFO_COLUMNS.values())
    )
    infos = [UploadInfo(**{name: row[column] for name, column in UPLOAD_INFO_COLUMNS.items()}) for row in rows]
    unclosed = (
        Run.objects.filter(state=Run.State.UPLOADING)
        .filter(~Q(pk__in=Upload.objects.filter(state__in=Upload.OPEN_STATES).values("run_id")))
        .values_list("pk", "host")
    )
    from jobs import heartbeats

    alive: dict[str, bool] = {}
    for worker in heartbeats.status(now).workers:
        alive[worker["host"]] = alive.get(worker["host"], False) or worker["alive"]
    decisions = plan(infos, list(unclosed), now=now, limits=limits(), hosts=alive)
    applied = []
    for decision in decisions:
        if decision.action == KEEP:
            continue
        upload = decision.upload
        if decision.action == FINALIZE:
            Run.add_log(decision.run_id, f"Sweep: {decision.reason}.")
            if decision.host and decision.host != enqueue.this_host():
                enqueue.finalize(decision.run_id, decision.host)
            else:
                from jobs import uploads

                uploads.settle(decision.run_id)
            applied.append(decision)
            continue
        if decision.action == RETRY:
            done = Upload.objects.filter(
                pk=upload.pk, state=Upload.State.UPLOADING, heartbeat_at=upload.heartbeat_at, attempts=upload.attempts
            ).update(state=Upload.State.RETRYING, next_attempt_at=now, heartbeat_at=None, error=f"{decision.reason}.")
        elif decision.action == FAIL:
            done = Upload.objects.filter(
                pk=upload.pk, state=Upload.State.UPLOADING, heartbeat_at=upload.heartbeat_at, attempts=upload.attempts
            ).update(state=Upload.State.FAILED, finished_at=now, heartbeat_at=None, error=f"{decision.reason}.")
        else:  # ENQUEUE
            done = Upload.objects.filter(pk=upload.pk, state=upload.state, attempts=upload.attempts).exists()
        if not done:
            continue
        Run.add_log(upload.run_id, f"Sweep: upload to {upload.destination}: {decision.reason}.")
        if decision.action == FAIL:
            notifications.notify_upload_failed(Upload.objects.select_related("run").get(pk=upload.pk))
            from jobs import uploads

            uploads.settle(upload.run_id)
        else:
            enqueue.upload(upload.pk, upload.host)
        applied.append(decision)
    notifications.sweep(now)
    return applied
