"""Heartbeat rows of the scheduler and of every worker (``ServiceHeartbeat``), for
``/healthz`` and the dashboard: is a worker alive on each host, does the dispatcher tick?

* the dispatcher writes the row ``dispatcher`` on every tick (:func:`beat_dispatcher`);
* every worker process (``celery worker``) writes ``worker:<node name>`` every
  ``BACKUPSITE_HEARTBEAT_SECONDS`` from a thread started with the worker
  (``backupsite.celery`` registers :class:`WorkerHeartbeat` as a bootstep), with its host
  and the queues it consumes; a clean shutdown marks it stopped.

:func:`status` says who is alive: a worker whose row is older than
``BACKUPSITE_STALE_RUN_SECONDS``, or a dispatcher silent for more than two ticks plus
that, is not.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

log = logging.getLogger(__name__)
DISPATCHER = "dispatcher"


def _write(name: str, role: str, now: datetime, *, details: dict | None = None, started_at=None) -> None:
    from jobs.models import ServiceHeartbeat

    values = {"role": role, "host": settings.BACKUPSITE_HOST, "pid": os.getpid(), "beat_at": now}
    if details is not None:
        values["details"] = details
    if started_at is not None:
        values["started_at"] = started_at
    if not ServiceHeartbeat.objects.filter(name=name).update(**values):
        ServiceHeartbeat.objects.update_or_create(name=name, defaults={**values, "started_at": started_at or now})


def beat_dispatcher(now: datetime | None = None) -> None:
    from jobs.models import ServiceHeartbeat

    try:
        _write(DISPATCHER, ServiceHeartbeat.Role.DISPATCHER, now or timezone.now())
    except Exception:  # the tick's real work goes on
        log.exception("Could not write the dispatcher's heartbeat")


class WorkerHeartbeatThread(threading.Thread):
    def __init__(self, nodename: str, queues: list[str], interval: float | None = None) -> None:
        super().__init__(name="backupsite-worker-heartbeat", daemon=True)
        self.row = f"worker:{nodename}"
        self.queues = queues
        self.interval = float(interval if interval is not None else settings.BACKUPSITE_HEARTBEAT_SECONDS)
        self.started_at = timezone.now()
        self._stopped = threading.Event()

    def beat(self, state: str = "running") -> None:
        from jobs.models import ServiceHeartbeat

        _write(
            self.row,
            ServiceHeartbeat.Role.WORKER,
            timezone.now(),
            details={"queues": self.queues, "state": state},
            started_at=self.started_at,
        )

    def run(self) -> None:
        try:
            while True:
                try:
                    self.beat()
                except Exception:  # a database blip must not kill the thread
                    log.warning("Worker heartbeat failed; retrying", exc_info=True)
                    close_old_connections()
                if self._stopped.wait(self.interval):
                    break
            try:
                self.beat("stopped")
            except Exception:
                log.warning("Could not mark the worker stopped", exc_info=True)
        finally:
            connection.close()

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=10)


@dataclass(frozen=True)
class Status:
    dispatcher_alive: bool
    dispatcher_beat_at: datetime | None
    workers: list[dict]  # name, host, queues, beat_at, alive

    @property
    def workers_alive(self) -> int:
        return sum(1 for worker in self.workers if worker["alive"])

    def worker_alive_on(self, host: str) -> bool:
        return any(worker["alive"] and worker["host"] == host for worker in self.workers)


def status(now: datetime | None = None) -> Status:
    """Who is alive now, from the heartbeat rows."""
    from jobs.models import ServiceHeartbeat

    now = now or timezone.now()
    stale = timedelta(seconds=settings.BACKUPSITE_STALE_RUN_SECONDS)
    tick = timedelta(seconds=settings.BACKUPSITE_DISPATCH_SECONDS)
    dispatcher = ServiceHeartbeat.objects.filter(name=DISPATCHER).first()
    workers = []
    for row in ServiceHeartbeat.objects.filter(role=ServiceHeartbeat.Role.WORKER).order_by("host", "name"):
        stopped = (row.details or {}).get("state") == "stopped"
        workers.append(
            {
                "name": row.name.removeprefix("worker:"),
                "host": row.host,
                "queues": (row.details or {}).get("queues", []),
                "beat_at": row.beat_at,
                "alive": not stopped and now - row.beat_at <= stale,
            }
        )
    return Status(
        dispatcher_alive=dispatcher is not None and now - dispatcher.beat_at <= 2 * tick + stale,
        dispatcher_beat_at=dispatcher.beat_at if dispatcher else None,
        workers=workers,
    )
