"""Prometheus metrics for ``/metrics`` (README, "Health and monitoring").

The web process and the workers are different processes (and machines), so nothing is
counted in memory: :class:`DatabaseCollector` reads the database (and the broker's queue
lengths) at scrape time, in a few aggregate queries whose cost does not grow with the
number of runs beyond one indexed scan. Each part is collected on its own; a part that
fails is logged and reported as ``backupsite_scrape_error{part="…"} 1``, the other parts
are still served.

Gauges rather than counters: rows can be deleted (a deleted job's runs stay, pruned
exports may not), so a figure may go down.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import timedelta

from django.apps import apps
from django.db.models import Count, DurationField, ExpressionWrapper, F, JSONField, Max, OuterRef, Q, Subquery, Sum
from django.utils import timezone
from prometheus_client.core import CollectorRegistry, GaugeMetricFamily, HistogramMetricFamily, Metric

log = logging.getLogger(__name__)

#: Upper bounds (seconds) of the run duration histogram: 10 s … 1 day.
DURATION_BUCKETS = (10, 30, 60, 300, 900, 1800, 3600, 7200, 21600, 43200, 86400)


def _ts(moment) -> float:
    return moment.timestamp()


def runs_by_state() -> Iterator[Metric]:
    from jobs.models import Run

    counts = dict(Run.objects.order_by().values_list("state").annotate(n=Count("pk")))
    family = GaugeMetricFamily("backupsite_runs", "Backup runs recorded, by state.", labels=["state"])
    for state in Run.State.values:
        family.add_metric([state], counts.get(state, 0))
    yield family

    written = Run.objects.filter(state__in=[Run.State.SUCCEEDED, Run.State.PARTIAL]).aggregate(
        total=Sum("archive_size")
    )["total"]
    yield GaugeMetricFamily(
        "backupsite_archive_bytes",
        "Bytes of archives written by successful and partially successful runs.",
        value=written or 0,
    )


def run_durations() -> Iterator[Metric]:
    """A histogram per final state, from start to finish (uploads included), computed
    in one grouped query over the finished runs."""
    from jobs.models import Run

    duration = ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField())
    buckets = {
        f"le_{seconds}": Count("pk", filter=Q(finished_at__lte=F("started_at") + timedelta(seconds=seconds)))
        for seconds in DURATION_BUCKETS
    }
    rows = (
        Run.objects.filter(state__in=Run.FINAL_STATES, started_at__isnull=False, finished_at__isnull=False)
        .order_by()
        .values("state")
        .annotate(n=Count("pk"), total=Sum(duration), **buckets)
    )
    family = HistogramMetricFamily(
        "backupsite_run_duration_seconds", "Duration of finished runs, from start to finish.", labels=["state"]
    )
    for row in rows:
        points = [(str(float(seconds)), row[f"le_{seconds}"]) for seconds in DURATION_BUCKETS]
        points.append(("+Inf", row["n"]))
        total = row["total"]
        family.add_metric([row["state"]], points, sum_value=total.total_seconds() if total else 0.0)
    yield family


def jobs() -> Iterator[Metric]:
    from jobs.models import Job, Run
    from jobs.notifications import is_stale, scheduled_jobs

    now = timezone.now()
    last = GaugeMetricFamily(
        "backupsite_job_last_success_timestamp_seconds",
        "When the job's newest successful run finished (Unix time); absent: never.",
        labels=["job_id", "job"],
    )
    enabled = GaugeMetricFamily("backupsite_job_enabled", "1 when the job is enabled.", labels=["job_id", "job"])
    rows = Job.objects.annotate(
        last_success_at=Max("runs__finished_at", filter=Q(runs__state=Run.State.SUCCEEDED))
    ).values_list("pk", "name", "enabled", "last_success_at")
    for pk, name, is_enabled, last_success_at in rows:
        enabled.add_metric([str(pk), name], 1 if is_enabled else 0)
        if last_success_at is not None:
            last.add_metric([str(pk), name], _ts(last_success_at))
    yield last
    yield enabled
    stale = GaugeMetricFamily(
        "backupsite_job_stale",
        "1 when an enabled scheduled job had no successful run for twice its interval.",
        labels=["job_id", "job"],
    )
    for job in scheduled_jobs(now):
        flag = is_stale(job.typical_interval, job.last_success_at, job.created_at, now)
        stale.add_metric([str(job.pk), job.name], 1 if flag else 0)
    yield stale


def uploads() -> Iterator[Metric]:
    from jobs.models import Upload

    rows = {
        row["state"]: row
        for row in Upload.objects.order_by()
        .values("state")
        .annotate(
            n=Count("pk"),
            n_attempts=Sum("attempts"),
            n_retried_attempts=Sum("attempts", filter=Q(attempts__gt=1)),
            n_retried=Count("pk", filter=Q(attempts__gt=1)),
            n_bytes=Sum("bytes_total"),
        )
    }
    count = GaugeMetricFamily("backupsite_uploads", "Uploads (run × destination), by state.", labels=["state"])
    attempts = GaugeMetricFamily(
        "backupsite_upload_attempts", "Upload attempts made, by the upload's state.", labels=["state"]
    )
    retries = GaugeMetricFamily(
        "backupsite_upload_retries", "Upload attempts after the first, by the upload's state.", labels=["state"]
    )
    for state in Upload.State.values:
        row = rows.get(state, {})
        count.add_metric([state], row.get("n") or 0)
        attempts.add_metric([state], row.get("n_attempts") or 0)
        retries.add_metric([state], (row.get("n_retried_attempts") or 0) - (row.get("n_retried") or 0))
    yield count
    yield attempts
    yield retries
    yield GaugeMetricFamily(
        "backupsite_upload_bytes",
        "Bytes uploaded to destinations by succeeded uploads.",
        value=rows.get(Upload.State.SUCCEEDED, {}).get("n_bytes") or 0,
    )


def services() -> Iterator[Metric]:
    from jobs import heartbeats

    status = heartbeats.status()
    yield GaugeMetricFamily(
        "backupsite_workers_alive", "Workers whose heartbeat is recent.", value=status.workers_alive
    )
    yield GaugeMetricFamily(
        "backupsite_scheduler_alive",
        "1 when the dispatcher tick's heartbeat is recent.",
        value=int(status.dispatcher_alive),
    )
    if status.dispatcher_beat_at is not None:
        yield GaugeMetricFamily(
            "backupsite_scheduler_last_tick_timestamp_seconds",
            "When the dispatcher last ticked (Unix time).",
            value=_ts(status.dispatcher_beat_at),
        )


def queues() -> Iterator[Metric]:
    from backupsite import brokers

    names = brokers.known_queues()
    lengths = brokers.broker().queue_lengths(names)
    if lengths is None:  # a transport that cannot say cheaply: no figure rather than a wrong one
        return
    family = GaugeMetricFamily("backupsite_queue_length", "Messages waiting in the broker, by queue.", labels=["queue"])
    for name in names:
        family.add_metric([name], lengths[name])
    yield family


def _export_models():
    """The planning-export models, when this installation has them."""
    try:
        return apps.get_model("jobs", "PlanningExport"), apps.get_model("jobs", "ExportRun")
    except LookupError:
        return None


def exports() -> Iterator[Metric]:
    models = _export_models()
    if models is None:
        return
    PlanningExport, ExportRun = models
    counts = dict(ExportRun.objects.order_by().values_list("state").annotate(n=Count("pk")))
    runs = GaugeMetricFamily("backupsite_export_runs", "Planning export runs, by state.", labels=["state"])
    for state in ExportRun.State.values:
        runs.add_metric([state], counts.get(state, 0))
    yield runs

    newest = ExportRun.objects.filter(export=OuterRef("pk"), state=ExportRun.State.SUCCEEDED).order_by(
        "-finished_at", "-pk"
    )
    rows = PlanningExport.objects.annotate(
        last_files=Subquery(newest.values("files")[:1], output_field=JSONField()),
        last_success_at=Subquery(newest.values("finished_at")[:1]),
    ).values_list("pk", "name", "last_files", "last_success_at")
    written = GaugeMetricFamily(
        "backupsite_export_rows",
        "Rows in the files of the export's newest successful run.",
        labels=["export_id", "export"],
    )
    last = GaugeMetricFamily(
        "backupsite_export_last_success_timestamp_seconds",
        "When the export's newest successful run finished (Unix time).",
        labels=["export_id", "export"],
    )
    for pk, name, files, last_success_at in rows:
        if last_success_at is None:
            continue
        written.add_metric([str(pk), name], sum(int(f.get("rows") or 0) for f in files or []))
        last.add_metric([str(pk), name], _ts(last_success_at))
    yield written
    yield last


#: The parts of a scrape, each collected on its own.
PARTS: dict[str, Callable[[], Iterator[Metric]]] = {
    "runs": runs_by_state,
    "durations": run_durations,
    "jobs": jobs,
    "uploads": uploads,
    "services": services,
    "queues": queues,
    "exports": exports,
}


class DatabaseCollector:
    """Reads every figure at scrape time (registered without ``describe``: the registry
    never collects at registration, so no query runs at import)."""

    def collect(self) -> Iterator[Metric]:
        errors = GaugeMetricFamily(
            "backupsite_scrape_error", "1 when a part of this scrape could not be read.", labels=["part"]
        )
        for part, collect in PARTS.items():
            try:
                families = list(collect())
            except Exception:
                log.warning("Metrics: could not collect %r", part, exc_info=True)
                errors.add_metric([part], 1)
                continue
            errors.add_metric([part], 0)
            yield from families
        yield errors


def registry() -> CollectorRegistry:
    """A registry with the backupsite figures only (no figures of the web process itself,
    which is one of several)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector())
    return registry
