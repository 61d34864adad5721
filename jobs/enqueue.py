"""Handing work to the workers: the one module that sends tasks (views, services, the
dispatcher, the sweep call it; services never import ``jobs.tasks``).

Every function sends *after the current transaction commits* (a worker must find the
rows it is given), and a broker that cannot be reached is logged, never raised: the row
is the truth, and the reconcile, the dispatcher tick and the sweep hand work over again.

Queues (README, "Several worker machines"):

* ``archives``: the archive stage (any worker with a data dir; it becomes the run's host);
* ``exports``: planning exports;
* ``host.<name>``: everything that reads a host's local copies (uploads, local verify,
  local retention, cleaning up a dead worker's temporary files and a dead export run's
  staging folder). Every worker consumes the queue of its own host (``BACKUPSITE_HOST``)
  besides the ones it is started with;
* ``celery``: the light work (the dispatcher tick, the sweep, the reaper, e-mails and
  pings, drills and verifications that read from a destination).

Tasks are looked up by name in the Celery app, so importing this module imports no task
module (and no service).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from django.conf import settings
from django.db import transaction

log = logging.getLogger(__name__)

ARCHIVES, EXPORTS, DEFAULT = "archives", "exports", "celery"
HOST_PREFIX = "host."


def this_host() -> str:
    """The name of this machine among the workers (``BACKUPSITE_HOST``)."""
    return settings.BACKUPSITE_HOST


def host_queue(host: str | None) -> str:
    """The queue of tasks that read *host*'s local copies; the default queue for rows
    without a host (made before hosts were recorded)."""
    return f"{HOST_PREFIX}{host}" if host else DEFAULT


def _task(name: str):
    from backupsite.celery import app

    full = f"jobs.tasks.{name}"
    if full not in app.tasks:
        # Autodiscovery is lazy: a web process (no worker started) imports the task
        # modules the first time it sends one.
        app.loader.import_default_modules()
    return app.tasks[full]


def _send(name: str, args: list, *, queue: str, countdown: float | None = None) -> None:
    try:
        _task(name).apply_async(args=args, queue=queue, countdown=countdown)
    except Exception:
        log.exception("Could not hand %s%s to the workers (queue %s); it is handed over again later", name, args, queue)


def _after_commit(name: str, args: list, *, queue: str, countdown: float | None = None) -> None:
    transaction.on_commit(lambda: _send(name, args, queue=queue, countdown=countdown))


def _each_after_commit(name: str, run_ids: Iterable[int], *, queue: str) -> None:
    """One task per run, each sent after commit."""
    for run_id in run_ids:
        _after_commit(name, [run_id], queue=queue)


def archive(run_ids: Iterable[int]) -> None:
    """The archive stage of each run."""
    _each_after_commit("archive_run", run_ids, queue=ARCHIVES)


def export(run_ids: Iterable[int]) -> None:
    """Each planning export run (``jobs.exports.service.execute``), on the exports queue."""
    _each_after_commit("run_export", run_ids, queue=EXPORTS)


def upload(upload_id: int, host: str, *, countdown: float | None = None) -> None:
    """One upload, on the host that has the file (after *countdown* seconds)."""
    _after_commit("upload_archive", [upload_id], queue=host_queue(host), countdown=countdown)


def finalize(run_id: int, host: str) -> None:
    """Close a run whose uploads settled (retention reads the host's local copies)."""
    _after_commit("finalize_run", [run_id], queue=host_queue(host))


def clean_staging(host: str, job_slug: str) -> None:
    """Remove a stopped worker's temporary files from *host*'s staging folder."""
    _after_commit("clean_staging", [job_slug], queue=host_queue(host))


def clean_export_staging(host: str, export_run_id: int) -> None:
    """Remove an ended export run's staging folder on *host*, the machine that ran it."""
    _after_commit("clean_export_staging", [export_run_id], queue=host_queue(host))


def verification(ticket_id: int, host: str | None) -> None:
    """A verification: on the run's host for the local copy (*host*), else anywhere."""
    _after_commit("verify_ticket", [ticket_id], queue=host_queue(host) if host else DEFAULT)


def restore(restore_id: int, host: str | None) -> None:
    """A restore from the panel: on the run's host when it reads the local copy (*host*),
    else on this machine's host queue (the target folder is named on the panel's page, so
    it is a folder of the machine the panel runs on)."""
    _after_commit("restore_ticket", [restore_id], queue=host_queue(host or this_host()))


def drill(job_id: int, destination_id: int) -> None:
    _after_commit("drill_destination", [job_id, destination_id], queue=DEFAULT)


def notification(notification_id: int, *, countdown: float | None = None) -> None:
    _after_commit("deliver_notification", [notification_id], queue=DEFAULT, countdown=countdown)
