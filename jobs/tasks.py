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


@app.task(acks_late=True, ignore_result=True)
def restore_ticket(restore_id: int) -> None:
    from jobs import restores

    restores.run_restore_ticket(restore_id)


@app.task(ignore_result=True)
def reap_stale_runs() -> int:
    return services.reap_stale_runs()
