"""Celery tasks: thin wrappers that take primary keys and call services."""

from __future__ import annotations

from backupsite.celery import app
from jobs import services


@app.task(bind=True, acks_late=True, max_retries=None)
def execute_run(self, run_id: int) -> str:
    run = services.execute_run(run_id)
    if run.state == run.State.WAITING:
        # Every heavy slot is taken: try again shortly (the row says "waiting").
        raise self.retry(countdown=15)
    return run.state


@app.task(acks_late=True, ignore_result=True)
def verify_ticket(ticket_id: int) -> None:
    from jobs import verification

    verification.run_ticket(ticket_id)


@app.task(ignore_result=True)
def reap_stale_runs() -> int:
    return services.reap_stale_runs()
