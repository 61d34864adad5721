"""Celery tasks: thin wrappers that take primary keys and call services.

Nothing imports this module except Celery (``app.autodiscover_tasks``): the code that
sends tasks goes through ``jobs.enqueue``, which looks them up by name.
"""

from __future__ import annotations

from backupsite.celery import app
from jobs import dispatch, drills, notifications, services, sweep, uploads, verification


@app.task(acks_late=True)
def archive_run(run_id: int) -> str:
    # A run that finds every heavy slot taken is parked as "waiting" and this task ends:
    # whoever frees a slot (a finishing stage, the reaper, the dispatcher tick) hands it
    # to a worker again, so no task sits in the broker retrying while a long backup runs.
    return services.archive_stage(run_id).state


# The name messages queued before the stages existed carry (an upgrade with a full queue).
@app.task(acks_late=True, name="jobs.tasks.execute_run")
def execute_run(run_id: int) -> str:
    return services.archive_stage(run_id).state


@app.task(acks_late=True, ignore_result=True)
def upload_archive(upload_id: int) -> str | None:
    from backupsite.logs import run_context
    from jobs.models import Upload

    # Its lines belong to the run it uploads (LOG_FORMAT=json tags them with run_id).
    run_id = Upload.objects.filter(pk=upload_id).values_list("run_id", flat=True).first()
    with run_context(run_id):
        return uploads.upload_stage(upload_id)


@app.task(acks_late=True, ignore_result=True)
def finalize_run(run_id: int) -> bool:
    return uploads.settle(run_id)


@app.task(ignore_result=True)
def clean_staging(job_slug: str) -> list[str]:
    return services.clean_staging(job_slug)


@app.task(acks_late=True, ignore_result=True)
def verify_ticket(ticket_id: int) -> None:
    verification.run_ticket(ticket_id)


@app.task(acks_late=True, ignore_result=True)
def drill_destination(job_id: int, destination_id: int) -> str:
    return drills.drill(job_id, destination_id)


@app.task(ignore_result=True)
def deliver_notification(notification_id: int) -> str | None:
    return notifications.deliver(notification_id)


@app.task(ignore_result=True)
def dispatch_tick() -> int:
    return len(dispatch.tick().started)


@app.task(ignore_result=True)
def sweep_uploads() -> int:
    return len(sweep.sweep())


@app.task(acks_late=True, ignore_result=True)
def restore_ticket(restore_id: int) -> None:
    from jobs import restores

    restores.run_restore_ticket(restore_id)


@app.task(ignore_result=True)
def reap_stale_runs() -> int:
    return services.reap_stale_runs()


@app.task(ignore_result=True)
def purge_abandoned_wizards() -> int:
    from jobs.wizard.storage import purge_abandoned

    return purge_abandoned()


@app.task(acks_late=True)
def run_export(export_run_id: int) -> str:
    # Sent to the "exports" queue by jobs.enqueue.export. Like archive_run: a run that
    # finds every heavy slot taken is parked as waiting and woken when a slot frees.
    from jobs.exports import service

    return service.execute(export_run_id).state


@app.task(ignore_result=True)
def clean_export_staging(export_run_id: int) -> bool:
    # Sent to the run's host queue (jobs.enqueue.clean_export_staging): the staging
    # folder of an export run whose worker died is on that machine.
    from jobs.exports import service

    return service.clean_staging(export_run_id)
