"""``/healthz`` (issue 12, item 3): each check against the database (and a real Redis),
the token rules, never a write, never a 500; and with real processes (the scheduling
stack: Redis, a ``celery worker``, ``celery beat``, the panel under ``runserver``) the
page turns 503 when the worker or the scheduler stops and 200 again when it is back."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from backupsite import health
from jobs.models import Job, Run, ServiceHeartbeat

pytest_plugins = ["tests.servers", "tests.mailserver", "tests.stack"]

TOKEN = "health-token-" + "h" * 24


@pytest.fixture(autouse=True)
def _fresh_report():
    health.clear_cache()
    yield
    health.clear_cache()


def beat_worker(name="celery@machine-a", host="machine-a", age=0.0, state="running"):
    ServiceHeartbeat.objects.update_or_create(
        name=f"worker:{name}",
        defaults={
            "role": ServiceHeartbeat.Role.WORKER,
            "host": host,
            "beat_at": timezone.now() - timedelta(seconds=age),
            "details": {"queues": ["celery", f"host.{host}"], "state": state},
        },
    )


def beat_dispatcher(age=0.0):
    ServiceHeartbeat.objects.update_or_create(
        name="dispatcher",
        defaults={
            "role": ServiceHeartbeat.Role.DISPATCHER,
            "host": "beat-host",
            "beat_at": timezone.now() - timedelta(seconds=age),
        },
    )


def stale_job(name="Nightly payroll", days_since=3):
    """A daily job made *days_since* days ago that never succeeded: stale after two days."""
    job = Job.objects.create(
        name=name, interval=Job.Interval.DAILY, first_run_at=timezone.now() - timedelta(days=days_since)
    )
    Job.objects.filter(pk=job.pk).update(created_at=timezone.now() - timedelta(days=days_since))
    return job


def get(client, url="/healthz", **headers):
    health.clear_cache()
    response = client.get(url, **headers)
    assert response["Content-Type"] == "application/json"
    return response, json.loads(response.content)


# --- the whole page ------------------------------------------------------------------------
@pytest.mark.django_db
def test_all_alive_is_200_with_the_small_body(client):
    beat_worker()
    beat_dispatcher()
    response, body = get(client)
    assert response.status_code == 200
    assert body == {
        "status": "ok",
        "checks": {name: {"ok": True} for name in ("database", "broker", "workers", "scheduler", "jobs")},
        "stale_jobs": 0,
    }
    assert "no-cache" in response["Cache-Control"] or "no-store" in response["Cache-Control"]


@pytest.mark.django_db
def test_no_login_no_csrf_head_works_post_refused(client):
    beat_worker()
    beat_dispatcher()
    assert client.head("/healthz").status_code == 200
    assert client.post("/healthz").status_code == 405


@pytest.mark.django_db
def test_nothing_alive_is_503_naming_the_failed_checks(client):
    response, body = get(client)
    assert response.status_code == 503
    assert body["status"] == "fail"
    assert body["checks"]["workers"] == {"ok": False}
    assert body["checks"]["scheduler"] == {"ok": False}
    assert body["checks"]["database"] == {"ok": True}


@pytest.mark.django_db
def test_reads_only_a_few_queries_and_never_writes(client):
    beat_worker()
    beat_dispatcher()
    stale_job()
    health.clear_cache()
    with CaptureQueriesContext(connection) as queries:
        client.get("/healthz")
    statements = [q["sql"].lstrip().split()[0].upper() for q in queries]
    assert set(statements) <= {"SELECT"}, statements
    assert len(statements) <= 6, [q["sql"] for q in queries]


@pytest.mark.django_db
def test_the_report_is_cached_for_a_moment(client, monkeypatch):
    beat_worker()
    beat_dispatcher()
    assert client.get("/healthz").status_code == 200
    ServiceHeartbeat.objects.all().delete()
    assert client.get("/healthz").status_code == 200  # the same report, within CACHE_SECONDS
    monkeypatch.setattr(health, "CACHE_SECONDS", 0.0)
    assert client.get("/healthz").status_code == 503


@pytest.mark.django_db
def test_a_check_that_raises_is_a_failed_check_not_a_500(client, settings, monkeypatch):
    settings.BACKUPSITE_HEALTH_TOKEN = TOKEN
    beat_worker()
    beat_dispatcher()

    def broken(probe):
        raise RuntimeError("postgres://backupsite:hunter2@db-host/x is down")

    monkeypatch.setitem(health.CHECKS, "database", broken)
    response, body = get(client, HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 503
    assert body["checks"]["database"] == {"ok": False, "error": "RuntimeError"}
    assert body["checks"]["workers"]["ok"] is True
    assert b"hunter2" not in response.content and b"db-host" not in response.content

    def report_breaks(names=None):
        raise RuntimeError("boom")

    monkeypatch.setattr(health, "report", report_breaks)
    response, body = get(client)
    assert response.status_code == 503 and body == {"status": "fail", "checks": {}}


@pytest.mark.django_db
def test_check_parameter_limits_the_status(client):
    stale_job()  # no worker, no scheduler, a stale job: only the database and broker are asked
    response, body = get(client, "/healthz?check=database,broker")
    assert response.status_code == 200
    assert set(body["checks"]) == {"database", "broker"} and "stale_jobs" not in body
    response, body = get(client, "/healthz?check=database,nonsense")
    assert response.status_code == 400 and "workers" in body["checks"]


# --- each check --------------------------------------------------------------------------
@pytest.mark.django_db
def test_database_check():
    report = health.run_checks(["database"])
    assert report.ok and report.results["database"].detail == {"vendor": connection.vendor}


@pytest.mark.only_stack("default")  # the filesystem broker is the default stack's
@pytest.mark.django_db
def test_filesystem_broker_check_fails_without_its_queue_folder(settings):
    from backupsite import brokers

    folder = brokers.broker().folder
    assert health.run_checks(["broker"]).ok
    moved = folder.with_name("queue-moved")
    folder.rename(moved)
    try:
        report = health.run_checks(["broker"])
        assert not report.ok and report.results["broker"].detail == {"error": "OSError"}
    finally:
        moved.rename(folder)


@pytest.mark.django_db
def test_redis_broker_check_against_a_real_redis_and_a_dead_port(settings, redis_server):
    from tests.servers import free_port

    settings.CELERY_BROKER_URL = redis_server.url(redis_server.new_db())
    report = health.run_checks(["broker"])
    assert report.ok, report.results
    assert report.results["broker"].detail == {"transport": "redis"}

    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    report = health.run_checks(["broker"])
    assert not report.ok
    assert time.monotonic() - started < 5  # one attempt, not kombu's retry-forever


@pytest.mark.django_db
def test_redis_broker_that_accepts_but_never_answers_times_out(settings):
    import socket

    from kombu.exceptions import OperationalError

    from backupsite import brokers

    mute = socket.create_server(("127.0.0.1", 0))
    try:
        settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{mute.getsockname()[1]}/0"
        started = time.monotonic()
        with pytest.raises(OperationalError):  # redis' timeout, as kombu raises it
            brokers.broker(timeout=1.0).ping()
        assert time.monotonic() - started < 4
    finally:
        mute.close()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("rows", "ok"),
    [
        ([], False),
        ([{"age": 0}], True),
        ([{"age": 3600}], False),  # silent longer than BACKUPSITE_STALE_RUN_SECONDS
        ([{"age": 0, "state": "stopped"}], False),  # shut down cleanly
        ([{"age": 3600}, {"name": "celery@b", "host": "b", "age": 1}], True),  # one of two is enough
    ],
)
def test_workers_check(rows, ok):
    for row in rows:
        beat_worker(**row)
    result = health.run_checks(["workers"]).results["workers"]
    assert result.ok is ok
    assert result.detail["alive"] == (1 if ok else 0) and result.detail["known"] == len(rows)


@pytest.mark.django_db
def test_scheduler_check(settings):
    assert not health.run_checks(["scheduler"]).ok  # never ticked
    beat_dispatcher(age=1)
    result = health.run_checks(["scheduler"]).results["scheduler"]
    assert result.ok and result.detail["last_tick_age_seconds"] in (1, 2)
    limit = 2 * settings.BACKUPSITE_DISPATCH_SECONDS + settings.BACKUPSITE_STALE_RUN_SECONDS
    beat_dispatcher(age=limit + 5)
    assert not health.run_checks(["scheduler"]).ok


@pytest.mark.django_db
def test_jobs_check_counts_enabled_scheduled_jobs_without_a_recent_success(job):
    stale = stale_job("Nightly payroll", days_since=3)
    stale_job("Still young", days_since=1)  # within twice its interval
    switched_off = stale_job("Switched off", days_since=9)
    Job.objects.filter(pk=switched_off.pk).update(enabled=False)
    Job.objects.filter(pk=job.pk).update(created_at=timezone.now() - timedelta(days=30))  # manual: never stale
    report = health.run_checks(["jobs"])
    assert not report.ok and report.stale_jobs == 1
    [entry] = report.results["jobs"].detail["stale"]
    assert entry["id"] == stale.pk and entry["name"] == "Nightly payroll"
    assert 3 * 86400 - 60 <= entry["since_success_seconds"] <= 3 * 86400 + 60

    Run.objects.create(job=stale, job_name=stale.name, state=Run.State.SUCCEEDED, finished_at=timezone.now())
    report = health.run_checks(["jobs"])
    assert report.ok and report.stale_jobs == 0


# --- the token ---------------------------------------------------------------------------
@pytest.mark.django_db
def test_without_the_token_no_job_or_host_names(client, settings):
    settings.BACKUPSITE_HEALTH_TOKEN = TOKEN
    beat_worker(host="secret-machine-name")
    beat_dispatcher()
    stale_job("Payroll of ACME Corp")
    for headers in ({}, {"HTTP_AUTHORIZATION": "Bearer wrong"}, {"HTTP_AUTHORIZATION": f"Basic {TOKEN}"}):
        response, body = get(client, **headers)
        assert response.status_code == 503 and body["stale_jobs"] == 1
        assert b"ACME" not in response.content and b"secret-machine-name" not in response.content
        assert body["checks"]["jobs"] == {"ok": False}
    response, _ = get(client, "/healthz?token=wrong")
    assert b"ACME" not in response.content


@pytest.mark.django_db
def test_with_the_token_the_stale_jobs_and_ages_appear(client, settings):
    settings.BACKUPSITE_HEALTH_TOKEN = TOKEN
    beat_worker(host="machine-a")
    beat_dispatcher()
    job = stale_job("Payroll of ACME Corp")
    for url, headers in (("/healthz", {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}), (f"/healthz?token={TOKEN}", {})):
        response, body = get(client, url, **headers)
        assert response.status_code == 503
        [entry] = body["checks"]["jobs"]["stale"]
        assert entry["id"] == job.pk and entry["name"] == "Payroll of ACME Corp" and entry["since_success_seconds"] > 0
        assert body["checks"]["workers"]["hosts"] == ["machine-a"] and body["checks"]["workers"]["alive"] == 1
        assert body["checks"]["scheduler"]["last_tick_age_seconds"] is not None


@pytest.mark.django_db
def test_an_unset_token_never_matches(client, settings):
    settings.BACKUPSITE_HEALTH_TOKEN = ""
    stale_job("Payroll of ACME Corp")
    for url in ("/healthz?token=", "/healthz"):
        response, _ = get(client, url, HTTP_AUTHORIZATION="Bearer ")
        assert b"ACME" not in response.content


def test_a_placeholder_token_is_refused_in_production(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "BACKUPSITE_ENV_FILE": "",
        "BACKUPSITE_DATA_DIR": str(tmp_path),
        "DEBUG": "0",
        "SECRET_KEY": "s" * 60,
        "FIELD_ENCRYPTION_KEYS": "x" * 43 + "=",
        "ALLOWED_HOSTS": "backup.example.com",
        "BACKUPSITE_METRICS_TOKEN": "change-me",
    }
    done = subprocess.run(
        [sys.executable, "-c", "import backupsite.settings"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]),
    )
    assert done.returncode != 0
    assert "BACKUPSITE_METRICS_TOKEN must be a random value" in done.stderr
    assert "change-me" not in done.stderr.split("ImproperlyConfigured")[-1]


# --- with real processes -----------------------------------------------------------------------
def _healthz(base: str) -> tuple[int, dict]:
    request = urllib.request.Request(base + "/healthz", headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.slow
def test_healthz_follows_the_real_worker_and_scheduler(stack):
    """Redis, one ``celery worker``, one ``celery beat`` (dispatcher tick every second),
    the panel under ``runserver``; each of worker and beat is SIGKILLed and started again."""
    from tests.servers import free_port

    port = free_port()
    web_env = {**stack.host_env("web"), "BACKUPSITE_HEALTH_TOKEN": TOKEN}
    stack._spawn("web", [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"], web_env)
    base = f"http://127.0.0.1:{port}"

    def answer():
        try:
            return _healthz(base)
        except OSError:
            return None

    def until(what, predicate, timeout=60.0):
        seen = []

        def check():
            found = answer()
            if found is not None and predicate(*found):
                seen.append(found)
                return True
            return False

        stack.wait_until(what, check, timeout)
        return seen[-1]

    status, body = until("the panel answers", lambda s, b: True)
    assert status == 503 and body["checks"]["workers"]["ok"] is False  # nothing started yet
    assert body["checks"]["broker"]["ok"] is True  # the real Redis

    worker = stack.worker("health-a")
    beat = stack.beat(1)
    status, body = until("200 with a worker and beat", lambda s, b: s == 200)
    assert body["checks"]["workers"]["hosts"] == ["health-a"]

    # The worker dies (SIGKILL: no "stopped" row): 503 once its heartbeat is older than
    # BACKUPSITE_STALE_RUN_SECONDS (4 s here).
    killed = worker.kill()
    status, body = until("503 without a worker", lambda s, b: s == 503 and not b["checks"]["workers"]["ok"], 30)
    assert time.monotonic() - killed < 4 + 10
    worker = stack.worker("health-a")
    until("200 with the worker back", lambda s, b: s == 200)

    # The scheduler dies: the worker is still alive, the dispatcher's tick stops.
    killed = beat.kill()
    status, body = until("503 without the scheduler", lambda s, b: s == 503, 40)
    assert body["checks"]["scheduler"]["ok"] is False and body["checks"]["workers"]["ok"] is True
    assert time.monotonic() - killed < 2 * 1 + 4 + 10  # two ticks plus the stale limit, plus slack
    stack.beat(2)
    status, body = until("200 with the scheduler back", lambda s, b: s == 200)
    assert body["stale_jobs"] == 0
