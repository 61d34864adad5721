"""The integrity drill: every ``Job.drill_interval_days`` (weekly by default), for each
destination of the job that can read files back, the newest backup there is read back
and compared with its manifest: the stored size and SHA-256 always (no password is
needed: an encrypted archive is checked byte for byte against the manifest), and every
member too when the archive is not encrypted. A missing file or a mismatch marks the
upload invalid (``verify_ok`` False) and e-mails the job's report-to addresses
(``jobs.verification``); the job page shows "last proven at the destination".

:func:`due` is pure; :func:`queue_due` (from the dispatcher tick) claims each due job with
a conditional update of ``last_drill_at`` (so two ticks queue one drill) and queues one
task per destination; :func:`drill` is that task.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.utils import timezone

log = logging.getLogger(__name__)


def due(jobs: Iterable[tuple[int, int, datetime | None, datetime | None]], now: datetime) -> list[int]:
    """Pure: the jobs whose drill is due. *jobs*: (job id, interval in days (0 = never),
    last drill or None, the first successful upload's time or None). A job is first
    drilled one interval after its first successful upload."""
    result = []
    for pk, days, last, first_upload in jobs:
        if not days or first_upload is None:
            continue
        since = last or first_upload
        if now - since >= timedelta(days=days):
            result.append(pk)
    return result


def queue_due(now: datetime | None = None) -> int:
    from django.db.models import Min

    from destinations.backends.base import READ
    from jobs import enqueue
    from jobs.models import Job, Upload

    now = now or timezone.now()
    # The first successful upload of each job, from the uploads (most jobs of a fresh
    # installation have none), then only those jobs.
    first = dict(
        Upload.objects.filter(state=Upload.State.SUCCEEDED, run__job__isnull=False)
        .values("run__job_id")
        .annotate(first=Min("finished_at"))
        .values_list("run__job_id", "first")
    )
    jobs = list(Job.objects.filter(enabled=True, drill_interval_days__gt=0, pk__in=list(first)))
    for job in jobs:
        job.first_upload = first[job.pk]
    rows = [(j.pk, j.drill_interval_days, j.last_drill_at, j.first_upload) for j in jobs]
    by_pk = {j.pk: j for j in jobs}
    queued = 0
    for pk in due(rows, now):
        job = by_pk[pk]
        if not Job.objects.filter(pk=pk, last_drill_at=job.last_drill_at).update(last_drill_at=now):
            continue  # another tick queued it
        for destination in job.destinations.all():
            if not destination.can(READ):
                continue
            if Upload.objects.filter(run__job=job, destination=destination, state=Upload.State.SUCCEEDED).exists():
                enqueue.drill(job.pk, destination.pk)
                queued += 1
    return queued


def newest_upload(job_id: int, destination_id: int):
    from jobs.models import Upload

    return (
        Upload.objects.filter(run__job_id=job_id, destination_id=destination_id, state=Upload.State.SUCCEEDED)
        .select_related("run", "destination")
        .order_by("-run__created_at", "-pk")
        .first()
    )


def drill(job_id: int, destination_id: int) -> str:
    """Read the job's newest backup at the destination back and compare it with its
    manifest; returns a one-line outcome (also on the upload and the run's Activity)."""
    from jobs import verification
    from jobs.models import Activity
    from jobs.progress import RowProgress

    upload = newest_upload(job_id, destination_id)
    if upload is None:
        return "nothing to check: no backup of this job was uploaded there"
    run = upload.run
    activity = Activity.objects.create(
        run=run,
        kind=Activity.Kind.DRILL,
        where=f"destination “{upload.destination_name}”",
        bytes_total=run.archive_size or 0,
    )

    def write(done: int, total: int) -> None:
        Activity.objects.filter(pk=activity.pk).update(bytes_done=done, bytes_total=total, updated_at=timezone.now())

    progress = RowProgress(write)
    try:
        result = verification.verify_run(
            run, upload.destination, checksum_only=True, notify=True, progress=lambda done, total: progress(done, total)
        )
    except verification.VerificationError as exc:
        message = f"Integrity drill could not run: {exc}"
        Activity.objects.filter(pk=activity.pk).update(
            state=Activity.State.FAILED, message=message, finished_at=timezone.now()
        )
        log.warning("Drill of job %s at destination %s: %s", job_id, destination_id, exc)
        return message
    state = Activity.State.SUCCEEDED if result.ok else Activity.State.FAILED
    message = f"Integrity drill: {result.message}"
    Activity.objects.filter(pk=activity.pk).update(
        state=state, message=message, finished_at=timezone.now(), bytes_done=result.bytes
    )
    from jobs.models import Run

    Run.add_log(run.pk, f"{message} ({upload.destination_name})")
    return message
