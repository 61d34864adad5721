"""Celery tasks: thin wrappers that take primary keys and call services."""

from __future__ import annotations

from backupsite.celery import app
from jobs import services


@app.task(acks_late=True)
def execute_run(run_id: int) -> str:
    # A run that finds every heavy slot taken is parked as "waiting" and this task ends:
    # the run that frees a slot (or the reaper's reconcile) hands it to a worker again,
    # so no task sits in the broker retrying while a long backup runs.
    return services.execute_run(run_id).state


@app.task(acks_late=True, ignore_result=True)
def verify_ticket(ticket_id: int) -> None:
    from jobs import verification

    verification.run_ticket(ticket_id)


@app.task(ignore_result=True)
def reap_stale_runs() -> int:
    return services.reap_stale_runs()


@app.task(ignore_result=True)
def purge_abandoned_wizards() -> int:
    from jobs.wizard.storage import purge_abandoned

    return purge_abandoned()


@app.task(acks_late=True)
def run_export(export_run_id: int) -> str:
    # Routed to the "exports" queue (backupsite/celery.py). Like execute_run: a run that
    # finds the heavy slot taken is parked as waiting and woken when the slot frees.
    from jobs.exports import service

    return service.execute(export_run_id).state


@app.task(ignore_result=True)
def export_tick() -> dict:
    from jobs.exports import service

    return service.tick()
