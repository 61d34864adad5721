"""What the overview pages (the dashboard, job lists) show about each job, in a number of
queries that does not grow with the number of jobs shown.

:func:`with_latest` annotates a Job queryset with its latest run's primary key and its
last success (two correlated subqueries, each an index seek on ``run_job_recent`` /
``run_job_succeeded``); :func:`attach_latest_runs` then loads those runs in one query,
without their log and configuration snapshot, and sets ``job.latest_run`` on each job.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import OuterRef, Prefetch, QuerySet, Subquery

from jobs.models import Job, Run, Upload

#: Columns of a run an overview never shows (large: the log, the configuration snapshot).
HEAVY_RUN_FIELDS = ("config", "log")


def with_latest(jobs: QuerySet[Job]) -> QuerySet[Job]:
    latest = Run.objects.filter(job=OuterRef("pk")).order_by("-created_at", "-pk").values("pk")[:1]
    success = (
        Run.objects.filter(job=OuterRef("pk"), state=Run.State.SUCCEEDED)
        .order_by("-finished_at")
        .values("finished_at")[:1]
    )
    return jobs.annotate(latest_run_pk=Subquery(latest), last_success_at=Subquery(success))


def attach_latest_runs(jobs: Iterable[Job]) -> list[Job]:
    """Set ``latest_run`` (a Run or None) on every job of *jobs* (annotated by
    :func:`with_latest`), with one query; returns the jobs as a list."""
    jobs = list(jobs)
    ids = [job.latest_run_pk for job in jobs if job.latest_run_pk]
    runs = Run.objects.defer(*HEAVY_RUN_FIELDS).in_bulk(ids) if ids else {}
    for job in jobs:
        job.latest_run = runs.get(job.latest_run_pk)
    return jobs


def active_runs(limit: int = 10) -> list[Run]:
    """The oldest *limit* active runs. Sorted here, not by the database: there are few
    (at most one per job), and with ``ORDER BY created_at`` SQLite's planner walks the
    whole history in date order instead of the state index (it cannot know that active
    states are rare): 0.3 s at 100,000 runs instead of a millisecond."""
    runs = (
        Run.objects.filter(state__in=Run.LIVE_STATES)
        .defer(*HEAVY_RUN_FIELDS)
        .select_related("job")
        .prefetch_related(Prefetch("uploads", queryset=Upload.objects.order_by("pk")))
        .order_by()
    )
    return sorted(runs, key=lambda run: (run.created_at, run.pk))[:limit]
