"""``/metrics`` (issue 12, item 3): only with the bearer token, the Prometheus text format,
and figures that match the database (runs in several states with sizes and durations,
uploads with attempts, heartbeats, messages in the filesystem broker's queue folder),
parsed back with ``prometheus_client.parser``."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import timedelta

import pytest
from django.apps import apps
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from backupsite import metrics
from jobs.models import Job, Run, ServiceHeartbeat, Upload

pytest_plugins = ["tests.servers"]

TOKEN = "metrics-token-" + "m" * 24
AUTH = {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}


@pytest.fixture
def token(settings):
    settings.BACKUPSITE_METRICS_TOKEN = TOKEN
    return TOKEN


def scrape(client) -> dict:
    """{(sample name, frozenset(labels)): value} of one scrape."""
    response = client.get("/metrics", **AUTH)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples[(name, frozenset(labels.items()))]


# --- access ------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_not_there_while_the_token_is_unset(client, settings):
    settings.BACKUPSITE_METRICS_TOKEN = ""
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 404


@pytest.mark.django_db
def test_401_without_or_with_a_wrong_token_200_with_it(client, token):
    for headers in ({}, {"HTTP_AUTHORIZATION": "Bearer nope"}, {"HTTP_AUTHORIZATION": f"Basic {token}"}):
        response = client.get("/metrics", **headers)
        assert response.status_code == 401
        assert response["WWW-Authenticate"].startswith("Bearer")
        assert b"backupsite_" not in response.content
    # Not in the URL: query strings end up in access logs.
    assert client.get(f"/metrics?token={token}").status_code == 401
    response = client.get("/metrics", **AUTH)
    assert response.status_code == 200 and b"# TYPE backupsite_runs gauge" in response.content
    assert client.post("/metrics", **AUTH).status_code == 405


# --- figures ------------------------------------------------------------------------------------
def _run(job, state, *, size=None, seconds=None, finished_ago=0.0, **extra):
    now = timezone.now() - timedelta(seconds=finished_ago)
    fields = {"archive_size": size, **extra}
    if seconds is not None:
        fields.update(started_at=now - timedelta(seconds=seconds), finished_at=now)
    return Run.objects.create(job=job, job_name=job.name if job else "one-off", state=state, **fields)


@pytest.fixture
def world(job, token, settings):
    destination = job.destinations.get()
    payroll = Job.objects.create(
        name="Payroll", interval=Job.Interval.DAILY, first_run_at=timezone.now() - timedelta(days=5)
    )
    Job.objects.filter(pk=payroll.pk).update(created_at=timezone.now() - timedelta(days=5))
    runs = [
        _run(job, Run.State.SUCCEEDED, size=1000, seconds=5, finished_ago=7200),
        _run(job, Run.State.SUCCEEDED, size=2500, seconds=100, finished_ago=60),
        _run(job, Run.State.PARTIAL, size=700, seconds=4000, finished_ago=30),
        _run(payroll, Run.State.FAILED, seconds=20, finished_ago=86400 * 4),
        _run(payroll, Run.State.INTERRUPTED, seconds=90000, finished_ago=86400 * 3),
        _run(job, Run.State.QUEUED),
        _run(None, Run.State.RUNNING, started_at=timezone.now()),
    ]
    uploads = [
        (runs[0], Upload.State.SUCCEEDED, 1, 1000),
        (runs[1], Upload.State.SUCCEEDED, 3, 2500),
        (runs[2], Upload.State.FAILED, 5, 700),
        (runs[3], Upload.State.RETRYING, 2, 0),
        (runs[4], Upload.State.PENDING, 0, 0),
    ]
    for run, state, attempts, size in uploads:
        Upload.objects.create(
            run=run,
            destination=destination,
            destination_name=destination.name,
            state=state,
            attempts=attempts,
            bytes_total=size,
            bytes_done=size,
        )
    ServiceHeartbeat.objects.create(
        name="worker:celery@machine-a",
        role=ServiceHeartbeat.Role.WORKER,
        host="machine-a",
        beat_at=timezone.now(),
        details={"queues": ["archives", "celery", "host.machine-a"], "state": "running"},
    )
    ServiceHeartbeat.objects.create(
        name="worker:celery@old", role="worker", host="old", beat_at=timezone.now() - timedelta(days=1)
    )
    tick = timezone.now() - timedelta(seconds=5)
    ServiceHeartbeat.objects.create(name="dispatcher", role=ServiceHeartbeat.Role.DISPATCHER, beat_at=tick)
    from backupsite import brokers

    broker = brokers.broker()
    queued = ("archives", "archives", "celery", "host.machine-a", "some-other-queue")
    if isinstance(broker, brokers.FilesystemBroker):  # the default stack: one file per message
        folder = broker.folder
        for queue in queued:
            (folder / f"{int(timezone.now().timestamp() * 1000)}_{uuid.uuid4()}.{queue}.msg").write_text("{}")
        yield {"job": job, "payroll": payroll, "tick": tick}
        for path in folder.glob("*.msg"):
            path.unlink()
    else:  # the PostgreSQL stack's Redis: kombu's list per queue (priority 0 is the bare name)
        import redis

        client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
        for queue in queued:
            client.lpush(queue, "{}")
        yield {"job": job, "payroll": payroll, "tick": tick}
        client.delete(*set(queued))


@pytest.mark.django_db
def test_run_figures_match_the_database(client, world):
    samples = scrape(client)
    by_state = Counter(Run.objects.values_list("state", flat=True))
    for state in Run.State.values:
        assert value(samples, "backupsite_runs", state=state) == by_state.get(state, 0)
    assert by_state["succeeded"] == 2 and by_state["running"] == 1  # the world is what the test thinks
    good = Run.objects.filter(state__in=["succeeded", "partial"])
    assert value(samples, "backupsite_archive_bytes") == sum(r.archive_size for r in good) == 4200

    finished = [r for r in Run.objects.all() if r.finished_at and r.started_at and r.state in Run.FINAL_STATES]
    for state in {r.state for r in finished}:
        durations = [(r.finished_at - r.started_at).total_seconds() for r in finished if r.state == state]
        assert value(samples, "backupsite_run_duration_seconds_count", state=state) == len(durations)
        assert value(samples, "backupsite_run_duration_seconds_sum", state=state) == pytest.approx(sum(durations))
        for bound in metrics.DURATION_BUCKETS:
            expected = sum(1 for d in durations if d <= bound)
            assert (
                value(samples, "backupsite_run_duration_seconds_bucket", state=state, le=str(float(bound))) == expected
            )
        assert value(samples, "backupsite_run_duration_seconds_bucket", state=state, le="+Inf") == len(durations)
    # 90,000 s is above the largest bucket: only in +Inf.
    assert value(samples, "backupsite_run_duration_seconds_bucket", state="interrupted", le="86400.0") == 0
    assert value(samples, "backupsite_run_duration_seconds_bucket", state="succeeded", le="10.0") == 1


@pytest.mark.django_db
def test_job_figures_match_the_database(client, world):
    samples = scrape(client)
    job, payroll = world["job"], world["payroll"]
    newest = Run.objects.filter(job=job, state="succeeded").order_by("-finished_at").first()
    name = "backupsite_job_last_success_timestamp_seconds"
    assert value(samples, name, job_id=str(job.pk), job=job.name) == pytest.approx(newest.finished_at.timestamp())
    assert (name, frozenset({"job_id": str(payroll.pk), "job": "Payroll"}.items())) not in samples  # never succeeded
    assert value(samples, "backupsite_job_stale", job_id=str(payroll.pk), job="Payroll") == 1
    assert value(samples, "backupsite_job_enabled", job_id=str(job.pk), job=job.name) == 1


@pytest.mark.django_db
def test_upload_figures_match_the_database(client, world):
    samples = scrape(client)
    rows = list(Upload.objects.all())
    for state in Upload.State.values:
        mine = [u for u in rows if u.state == state]
        assert value(samples, "backupsite_uploads", state=state) == len(mine)
        assert value(samples, "backupsite_upload_attempts", state=state) == sum(u.attempts for u in mine)
        assert value(samples, "backupsite_upload_retries", state=state) == sum(max(u.attempts - 1, 0) for u in mine)
    assert value(samples, "backupsite_upload_retries", state="succeeded") == 2
    assert value(samples, "backupsite_upload_retries", state="failed") == 4
    assert value(samples, "backupsite_upload_bytes") == 3500


@pytest.mark.django_db
def test_services_and_queue_lengths(client, world):
    samples = scrape(client)
    assert value(samples, "backupsite_workers_alive") == 1  # the one silent for a day is not
    assert value(samples, "backupsite_scheduler_alive") == 1
    assert value(samples, "backupsite_scheduler_last_tick_timestamp_seconds") == pytest.approx(
        world["tick"].timestamp()
    )
    assert value(samples, "backupsite_queue_length", queue="archives") == 2
    assert value(samples, "backupsite_queue_length", queue="celery") == 1
    assert value(samples, "backupsite_queue_length", queue="host.machine-a") == 1  # from the heartbeat row
    assert value(samples, "backupsite_queue_length", queue="exports") == 0
    assert value(samples, "backupsite_queue_length", queue="host.test-host") == 0  # this host's own
    assert not any(
        name == "backupsite_queue_length" and ("queue", "some-other-queue") in labels for name, labels in samples
    )
    for part in metrics.PARTS:
        assert value(samples, "backupsite_scrape_error", part=part) == 0


@pytest.mark.django_db
def test_redis_queue_lengths(settings, redis_server):
    import redis

    from backupsite import brokers

    db = redis_server.new_db()
    settings.CELERY_BROKER_URL = redis_server.url(db)
    client = redis.Redis(port=redis_server.port, db=db)
    client.lpush("archives", "a", "b")
    client.lpush("archives\x06\x163", "priority 3")  # kombu keeps each priority in a list of its own
    client.lpush("celery", "c")
    try:
        assert brokers.broker().queue_lengths(["archives", "celery", "exports"]) == {
            "archives": 3,
            "celery": 1,
            "exports": 0,
        }
    finally:
        client.flushdb()


@pytest.mark.django_db
def test_a_failing_part_is_reported_and_the_rest_still_served(client, token, monkeypatch):
    def broken():
        raise RuntimeError("redis://:hunter2@redis-host/0 refused")
        yield

    monkeypatch.setitem(metrics.PARTS, "queues", broken)
    response = client.get("/metrics", **AUTH)
    assert response.status_code == 200
    assert b"hunter2" not in response.content
    samples = scrape(client)
    assert value(samples, "backupsite_scrape_error", part="queues") == 1
    assert value(samples, "backupsite_scrape_error", part="runs") == 0
    assert ("backupsite_runs", frozenset({"state": "succeeded"}.items())) in samples


@pytest.mark.django_db
def test_a_scrape_is_a_few_queries_and_no_writes(client, world, django_assert_max_num_queries):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        scrape(client)
    statements = [q["sql"].lstrip().split()[0].upper() for q in queries]
    assert set(statements) <= {"SELECT"}, statements
    assert len(statements) <= 12, [q["sql"] for q in queries]


# --- planning exports ---------------------------------------------------------------------------
@pytest.mark.django_db
def test_export_figures_are_there(client, token):
    samples = scrape(client)
    names = {name for name, _ in samples}
    assert "backupsite_export_runs" in names
    assert value(samples, "backupsite_scrape_error", part="exports") == 0


@pytest.mark.django_db
def test_export_rows_match_the_database(client, token):
    PlanningExport = apps.get_model("jobs", "PlanningExport")
    ExportRun = apps.get_model("jobs", "ExportRun")
    from jobs.models import Source

    source = Source.objects.create(name="Planning DB", kind="sqlite", settings={"path": "/nonexistent.sqlite3"})
    export = PlanningExport.objects.create(name="Shift plan", source=source)
    now = timezone.now()
    ExportRun.objects.create(
        export=export,
        export_name=export.name,
        state="succeeded",
        finished_at=now - timedelta(days=1),
        files=[{"file_name": "old.xlsx", "rows": 999}],
    )
    newest = ExportRun.objects.create(
        export=export,
        export_name=export.name,
        state="succeeded",
        finished_at=now,
        files=[{"file_name": "shifts.xlsx", "rows": 120}, {"file_name": "rooms.xlsx", "rows": 7}],
    )
    ExportRun.objects.create(export=export, export_name=export.name, state="failed", finished_at=now)
    samples = scrape(client)
    labels = {"export_id": str(export.pk), "export": "Shift plan"}
    assert value(samples, "backupsite_export_rows", **labels) == newest.total_rows == 127
    assert value(samples, "backupsite_export_last_success_timestamp_seconds", **labels) == pytest.approx(
        now.timestamp()
    )
    assert value(samples, "backupsite_export_runs", state="succeeded") == 2
    assert value(samples, "backupsite_export_runs", state="failed") == 1
