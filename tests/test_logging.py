"""Structured logs (issue 12, item 3): ``LOG_FORMAT=json`` writes one JSON object per line
(time, level, logger, message), with ``run_id`` on every line logged while a run executes;
plain text stays the default.

The formatter and the run context are tested in this process; the settings in processes
started with ``LOG_FORMAT`` set (Django's logging configuration as a real start-up makes
it); and a real Celery worker whose every output line is parsed while it executes a run
that logs from its own thread and from a helper thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime
from io import StringIO
from pathlib import Path

import pytest
from django.core import mail

from backupsite import logs
from jobs import services, tasks
from jobs.models import Run
from jobs.sources import REGISTRY

pytest_plugins = ["tests.workers"]

ROOT = Path(__file__).resolve().parents[1]
FINAL = {"succeeded", "partial", "failed", "cancelled", "interrupted", "timed_out"}


class Capture:
    """A handler as settings.LOGGING makes it (the run-id filter, the JSON formatter) on
    the root logger, collecting lines."""

    def __init__(self) -> None:
        self.stream = StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.addFilter(logs.RunIdFilter())
        self.handler.setFormatter(logs.JsonFormatter())

    def __enter__(self) -> Capture:
        root = logging.getLogger()
        self.level = root.level
        root.addHandler(self.handler)
        root.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc) -> None:
        root = logging.getLogger()
        root.removeHandler(self.handler)
        root.setLevel(self.level)

    def entries(self) -> list[dict]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]


# --- the formatter and the run context ------------------------------------------------------


@pytest.mark.stack_independent
def test_one_json_object_per_line_with_the_run_id_inside_a_run_only():
    log = logging.getLogger("jobs.services")
    with Capture() as capture:
        log.info("before the run")
        with logs.run_context(42):
            log.warning("inside: %s and\na second line", "“quoted”")
            try:
                raise ValueError("boom")
            except ValueError:
                log.exception("it failed")
        log.info("after the run")
    text = capture.stream.getvalue()
    assert len(text.splitlines()) == 4, text  # the newline and the traceback stay inside their lines
    before, inside, failed, after = capture.entries()
    assert set(before) == {"time", "level", "logger", "message"}
    assert before["level"] == "INFO" and before["logger"] == "jobs.services"
    assert before["message"] == "before the run" and "run_id" not in after
    assert inside == {
        "time": inside["time"],
        "level": "WARNING",
        "logger": "jobs.services",
        "message": "inside: “quoted” and\na second line",
        "run_id": 42,
    }
    assert failed["run_id"] == 42 and failed["message"] == "it failed"
    assert failed["exception"].startswith("Traceback") and "ValueError: boom" in failed["exception"]
    stamp = datetime.fromisoformat(inside["time"].replace("Z", "+00:00"))
    assert stamp.utcoffset().total_seconds() == 0 and inside["time"].endswith("Z")
    assert abs(stamp.timestamp() - time.time()) < 60


@pytest.mark.stack_independent
def test_an_extra_never_reaches_the_line():
    """``django.request`` logs with ``extra={"request": …}``; nothing but the fixed fields
    (and what the message itself says) is written."""
    with Capture() as capture:
        logging.getLogger("django.request").error("Internal Server Error: /x", extra={"secret_thing": "hunter2"})
    (entry,) = capture.entries()
    assert "hunter2" not in capture.stream.getvalue()
    assert set(entry) == {"time", "level", "logger", "message"}


@pytest.mark.stack_independent
def test_the_run_id_of_a_task_comes_from_its_run_id_parameter():
    class Task:
        def __init__(self, name, run):
            self.name, self.run = name, run

    def execute_run(run_id: int) -> None: ...
    def reap_stale_runs() -> None: ...
    def verify_ticket(ticket_id: int) -> None: ...

    assert logs.run_id_of_task(Task("t.execute_run", execute_run), (7,), {}) == 7
    assert logs.run_id_of_task(Task("t.execute_run", execute_run), (), {"run_id": 8}) == 8
    assert logs.run_id_of_task(Task("t.reap", reap_stale_runs), (), {}) is None
    assert logs.run_id_of_task(Task("t.verify", verify_ticket), (9,), {}) is None


@pytest.mark.stack_independent
def test_a_worker_task_tags_the_threads_of_its_run_too():
    """Threads do not inherit context variables in Python 3.11: in a worker process (one
    task at a time, in its main thread) the run is also remembered for the process, so a
    heartbeat or an upload thread logs with the run's id; eager tasks in a web process
    never leak it to other threads."""

    class Request:
        def __init__(self, eager):
            self.is_eager = eager

    class Task:
        name = "jobs.tasks.execute_run"

        def __init__(self, eager):
            self.request = Request(eager)

        def run(self, run_id): ...

    def from_a_thread(log) -> None:
        thread = threading.Thread(target=log.info, args=("from a thread",))
        thread.start()
        thread.join()

    log = logging.getLogger("jobs.test")
    with Capture() as capture:
        for eager, task_id in ((False, "worker-task"), (True, "eager-task")):
            logs._task_started(task_id=task_id, task=Task(eager), args=(5,), kwargs={})
            try:
                log.info("in the task")
                from_a_thread(log)
            finally:
                logs._task_ended(task_id=task_id)
        log.info("after both")
    worker_task, worker_thread, eager_task, eager_thread, after = capture.entries()
    assert worker_task["run_id"] == 5 and worker_thread["run_id"] == 5
    assert eager_task["run_id"] == 5 and "run_id" not in eager_thread
    assert "run_id" not in after and logs.current_run_id() is None


# --- a run in this process (an eager task, as the test settings run them) -------------------


@pytest.fixture
def chatty_kind(monkeypatch):
    """A directory source that logs while it is collected."""
    from jobs.sources.directory import DirectorySource

    class ChattyDirectory(DirectorySource):
        kind = "chatty-directory"

        @contextlib.contextmanager
        def entries(self, staging, on_error):
            logging.getLogger("jobs.sources.chatty").info("collecting %s", self.name)
            with super().entries(staging, on_error) as items:
                yield items

    monkeypatch.setitem(REGISTRY, ChattyDirectory.kind, ChattyDirectory)
    return ChattyDirectory.kind


def test_every_line_of_an_eager_run_carries_its_id(job, chatty_kind, django_capture_on_commit_callbacks):
    job.sources.update(kind=chatty_kind)
    run = services.create_run(job)
    with Capture() as capture:
        # The archive stage, then (after commit) the upload and the closing stage.
        with django_capture_on_commit_callbacks(execute=True):
            tasks.archive_run.delay(run.pk)
        logging.getLogger("jobs.test").info("after the run")
    run.refresh_from_db()
    assert run.state == Run.State.SUCCEEDED, run.error
    entries = capture.entries()
    collecting = [e for e in entries if e["message"] == "collecting Office files"]
    assert collecting and all(e["run_id"] == run.pk for e in collecting)
    assert "run_id" not in entries[-1] and entries[-1]["message"] == "after the run"


def test_an_unexpected_error_is_logged_with_the_run_id_and_its_traceback(
    job, monkeypatch, django_capture_on_commit_callbacks
):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(services, "_archive", broken)
    run = services.create_run(job)
    with Capture() as capture, django_capture_on_commit_callbacks(execute=True):  # the alert's outbox
        tasks.archive_run.delay(run.pk)
    run.refresh_from_db()
    assert run.state == Run.State.FAILED
    (entry,) = [e for e in capture.entries() if e["level"] == "ERROR"]
    assert entry["run_id"] == run.pk and entry["logger"] == "jobs.services"
    assert "RuntimeError: a bug" in entry["exception"]
    assert len(mail.outbox) == 1


# --- processes started with LOG_FORMAT --------------------------------------------------------

PROBE = """
import logging, warnings
import django
django.setup()
from backupsite.logs import run_context
log = logging.getLogger("jobs.probe")
log.info("outside")
with run_context(3):
    log.warning("inside\\nof run 3")
warnings.warn("a deprecation", DeprecationWarning, stacklevel=1)
"""


def probe(tmp_path: Path, log_format: str | None) -> subprocess.CompletedProcess:
    env = {
        "PATH": "/usr/bin:/bin",
        "DJANGO_SETTINGS_MODULE": "backupsite.settings",
        "BACKUPSITE_ENV_FILE": "",
        "BACKUPSITE_DATA_DIR": str(tmp_path / "data"),
        "DEBUG": "1",
        "PYTHONWARNINGS": "always",
    }
    if log_format is not None:
        env["LOG_FORMAT"] = log_format
    return subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.stack_independent
def test_log_format_json_in_a_real_start_up(tmp_path):
    result = probe(tmp_path, "json")
    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in result.stderr.splitlines()]  # every line is JSON
    outside, inside, warned = entries
    assert outside["message"] == "outside" and "run_id" not in outside
    assert inside["message"] == "inside\nof run 3" and inside["run_id"] == 3
    assert warned["logger"] == "py.warnings" and "a deprecation" in warned["message"]


@pytest.mark.stack_independent
def test_plain_text_stays_the_default_and_a_typo_is_refused(tmp_path):
    result = probe(tmp_path, None)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert " INFO jobs.probe: outside" in lines[0] and not lines[0].startswith("{")
    assert any(" WARNING jobs.probe: inside" in line for line in lines)
    wrong = probe(tmp_path, "JSONL")
    assert wrong.returncode != 0
    assert "LOG_FORMAT must be one of plain, json, not 'jsonl'" in wrong.stderr


# --- a real worker ----------------------------------------------------------------------------

CHATTY_JOB = """
import django
django.setup()
from destinations.models import Destination
from jobs.models import Job, Source
job = Job.objects.create(name="Chatty", report_to="ops@example.com")
job.sources.set([Source.objects.create(name="Chatty", kind="chatty", settings={})])
job.destinations.set([Destination.objects.get(name="Server hard drive")])
print(job.pk)
"""


@pytest.mark.slow
def test_a_real_worker_writes_only_json_lines_and_tags_the_run(install):
    install.env["LOG_FORMAT"] = "json"
    made = subprocess.run(
        [sys.executable, "-c", CHATTY_JOB], cwd=ROOT, env=install.env, capture_output=True, text=True, timeout=120
    )
    assert made.returncode == 0, made.stderr
    install.jobs["Chatty"] = int(made.stdout.split()[-1])
    worker = install.worker()
    try:
        worker.start(quiet=True)  # no start-up banner (text printed, not logged)
        run = install.run_now("Chatty")
        row = install.wait_for(run, FINAL, timeout=60)
        assert row["state"] == "succeeded", row["error"]
        deadline = time.monotonic() + 20
        # The run's last line, and a reaper tick (every second) outside the run.
        while not all(part in worker.log.read_text() for part in (" succeeded in ", "reap_stale_runs[")):
            assert time.monotonic() < deadline, worker.log.read_text()
            time.sleep(0.2)
        text = worker.log.read_text()
    finally:
        worker.stop()
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            entries.append(json.loads(line))
        except ValueError:
            pytest.fail(f"line {number} of the worker's output is not JSON: {line!r}\n{text}")
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= set(entry), entry
    mine = {entry["message"] for entry in entries if entry.get("run_id") == run}
    assert "chatty: dumping in the task's thread" in mine
    assert "chatty: from a helper thread" in mine
    assert "chatty: a line with\na newline and “quotes”" in mine
    assert any(m.startswith("Task jobs.tasks.archive_run[") and " succeeded in " in m for m in mine), mine
    # Outside the run (the worker starting, the reaper's ticks in the same pool): no id.
    assert {entry["run_id"] for entry in entries if "run_id" in entry} == {run}
    ready = [entry for entry in entries if entry["message"].endswith(" ready.")]
    assert ready and "run_id" not in ready[0]
    assert any(entry["message"].startswith("Task jobs.tasks.reap_stale_runs[") for entry in entries), text


@pytest.mark.stack_independent
def test_gunicorn_writes_json_lines_too(tmp_path):
    """gunicorn.conf.py: gunicorn's start-up and access lines are JSON with LOG_FORMAT=json."""
    from tests.servers import free_port

    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "DJANGO_SETTINGS_MODULE": "backupsite.settings",
        "BACKUPSITE_ENV_FILE": "",
        "BACKUPSITE_DATA_DIR": str(tmp_path / "data"),
        "DEBUG": "1",
        "LOG_FORMAT": "json",
        "HOME": str(tmp_path),  # gunicorn's control socket
    }
    log = tmp_path / "gunicorn.log"
    args = [sys.executable, "-m", "gunicorn", "backupsite.wsgi:application", f"--bind=127.0.0.1:{port}"]
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [*args, "--workers=1", "--access-logfile=-"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/accounts/login/", timeout=5) as response:
                    assert response.status == 200
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.3)
        deadline = time.monotonic() + 20
        while "/accounts/login/" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    finally:
        server.terminate()
        server.wait(timeout=30)
    entries = [json.loads(line) for line in log.read_text().splitlines()]  # every line is JSON
    assert any(e["logger"] == "gunicorn.error" and e["message"].startswith("Listening at:") for e in entries)
    (access,) = [e for e in entries if e["logger"] == "gunicorn.access"]
    assert '"GET /accounts/login/ HTTP/1.1" 200' in access["message"] and access["level"] == "INFO"
