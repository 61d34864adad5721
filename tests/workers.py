"""A real installation with a real Celery worker that the crash-recovery tests SIGKILL.

``install`` (module-scoped fixture): a fresh data dir with a database and broker of its
own on the suite's stack (``tests/teststack.py``: a SQLite file and the filesystem broker
in the data dir by default; a PostgreSQL database and a Redis database on the PostgreSQL
stack), two jobs writing to a local destination ("Slow": a ``sleepy`` source,
see ``tests/worker_app.py``; "Quick": a small directory), the panel on a free port
(``runserver``) with an administrator logged in over real HTTP, and :class:`Worker`
processes (``celery worker --beat``, concurrency 2 as ``make run`` starts it) to start
and kill. The crash-recovery settings are lowered through the environment
(:data:`LOWERED`): a heartbeat every second, stale after 4 s, the reaper every second.

Every process gets its own process group (a SIGKILL of the group takes the pool
processes, the embedded beat and their ``sleep`` with them, as a dead machine would) and
a parent-death signal, so a killed pytest leaves nothing running. The test reads run
rows straight from the installation's database (read only; on SQLite, WAL allows it
beside the writers).

Use it with ``pytest_plugins = ["tests.workers"]``.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import teststack
from tests.conftest import require_binary
from tests.servers import _die_with_parent, _tail, free_port

ROOT = Path(__file__).resolve().parents[1]

LOWERED = {
    "BACKUPSITE_HEARTBEAT_SECONDS": "1",
    "BACKUPSITE_STALE_RUN_SECONDS": "4",
    "BACKUPSITE_REAPER_SECONDS": "1",
    "BACKUPSITE_QUEUE_GRACE_SECONDS": "3",
    # These tests are about a run ending interrupted; restarts are tested in test_scheduling_e2e.py.
    "BACKUPSITE_RUN_RESTARTS": "0",
}
START_TIMEOUT = 60  # seconds for the panel or a worker to come up on a busy 2-core machine

SETUP = """
import json, sys
from io import StringIO
import django
django.setup()
from django.conf import settings
from django.core.management import call_command
call_command("migrate", "--noinput", verbosity=0)
from destinations.models import Destination
from jobs.models import Job, Source
files = settings.DATA_DIR / "quick-files"
(files / "docs").mkdir(parents=True)
(files / "docs" / "a.txt").write_text("hello\\n" * 100)
(files / "b.bin").write_bytes(bytes(range(256)) * 64)
settings.BACKUPSITE_LOCAL_BACKUP_DIR.mkdir(parents=True, exist_ok=True)
disk = Destination.objects.create(
    name="Server hard drive", kind="local", settings={"path": str(settings.BACKUPSITE_LOCAL_BACKUP_DIR)}
)
slow = Job.objects.create(name="Slow", report_to="ops@example.com")
slow.sources.set([Source.objects.create(name="Sleepy", kind="sleepy", settings={"seconds": 120})])
slow.destinations.set([disk])
quick = Job.objects.create(name="Quick", report_to="ops@example.com")
quick.sources.set([Source.objects.create(name="Quick files", kind="directory", settings={"path": str(files)})])
quick.destinations.set([disk])
out = StringIO()
call_command("bootstrapadmin", stdout=out)
password = [line.split()[-1] for line in out.getvalue().splitlines() if "password:" in line][0]
print(json.dumps({"jobs": {"Slow": slow.pk, "Quick": quick.pk}, "password": password}))
"""


class Browser:
    """A user agent with a cookie jar; posts with the CSRF token like a form does."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def get(self, path: str):
        return self.opener.open(self.base + path, timeout=30)

    def post(self, path: str, data: dict | None = None):
        token = next(c.value for c in self.jar if c.name == "csrftoken")
        body = urllib.parse.urlencode({**(data or {}), "csrfmiddlewaretoken": token}).encode()
        request = urllib.request.Request(self.base + path, data=body, headers={"Referer": self.base + path})
        return self.opener.open(request, timeout=30)


def _spawn(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        args,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )


def _killpg(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


@dataclass
class Worker:
    """One ``celery worker --beat`` process (with its pool and beat) of an installation."""

    install: Install
    number: int
    proc: subprocess.Popen | None = None

    @property
    def log(self) -> Path:
        return self.install.data / "logs" / f"worker-{self.number}.log"

    def start(self, *, quiet: bool = False) -> float:
        """Start and wait until the worker says it is ready; returns that moment.
        *quiet*: without Celery's start-up banner (``celery -q``)."""
        args = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.worker_app",
            *(["-q"] if quiet else []),
            "worker",
            "--beat",
        ]
        args += ["--concurrency", "2", "--loglevel", "INFO", "--without-gossip", "--without-mingle"]
        args += ["--hostname", f"worker{self.number}@%h"]
        self.proc = _spawn(args, self.install.env, self.log)
        deadline = time.monotonic() + START_TIMEOUT
        while b" ready." not in self.log.read_bytes():
            if self.proc.poll() is not None:
                raise RuntimeError(f"the worker exited with {self.proc.returncode}:\n{_tail(self.log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker was not ready within {START_TIMEOUT} s:\n{_tail(self.log)}")
            time.sleep(0.1)
        return time.monotonic()

    def kill(self) -> float:
        """SIGKILL the worker, its pool processes, its beat and their children at once,
        as a crash or a power cut would; returns the moment of the kill."""
        assert self.proc is not None and self.proc.poll() is None, "the worker is not running"
        moment = time.monotonic()
        _killpg(self.proc, signal.SIGKILL)
        self.proc.wait(timeout=20)
        return moment

    def stop(self) -> None:
        """SIGKILL whatever of the worker's group is left (a warm shutdown would wait for
        a sleepy run to finish; what a test leaves behind, the next worker reaps)."""
        if self.proc is None:
            return
        _killpg(self.proc, signal.SIGKILL)
        self.proc.wait()


@dataclass
class Install:
    data: Path
    env: dict
    browser: Browser
    jobs: dict[str, int]
    stack: teststack.Installation
    workers: list[Worker] = field(default_factory=list)

    # --- processes ---------------------------------------------------------------
    def worker(self) -> Worker:
        worker = Worker(self, len(self.workers) + 1)
        self.workers.append(worker)
        return worker

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()

    def worker_logs(self) -> str:
        return "\n".join(f"--- {w.log.name}\n{_tail(w.log, 40)}" for w in self.workers)

    # --- the panel, as a user ----------------------------------------------------
    def run_now(self, job: str) -> int:
        """Click "Run now" on the job's page; returns the new run's id."""
        response = self.browser.post(f"/jobs/{self.jobs[job]}/run/")
        path = urllib.parse.urlparse(response.geturl()).path
        assert path.startswith("/runs/"), f"Run now did not lead to a run page: {path}"
        return int(path.strip("/").split("/")[-1])

    # --- the database, read only -------------------------------------------------
    def run(self, pk: int) -> dict:
        row = self.stack.row("jobs_run", pk)
        assert row is not None, f"run {pk} does not exist"
        return row

    def wait_for(self, pk: int, states: set[str], timeout: float) -> dict:
        """Poll the run until its state is one of *states*; fail after *timeout* seconds."""
        deadline = time.monotonic() + timeout
        while True:
            row = self.run(pk)
            if row["state"] in states:
                return row
            if time.monotonic() > deadline:
                pytest.fail(
                    f"run {pk} is {row['state']!r}, not {sorted(states)}, after {timeout} s; "
                    f"log:\n{row['log']}\n{self.worker_logs()}"
                )
            time.sleep(0.1)

    def staging(self, job: str) -> Path:
        return self.data / "archives" / job.lower()

    def destination(self, job: str) -> Path:
        return self.data / "backups" / "backupsite" / job.lower()


@contextlib.contextmanager
def running_install(base: Path, extra_env: dict[str, str] | None = None) -> Iterator[Install]:
    """An installation under *base* (see the module doc); *extra_env* goes to every one
    of its processes (the web server, the setup, the workers): e.g. a broker of the test's own."""
    require_binary("zstd")
    require_binary("sleep")
    data = base / "var"
    data.mkdir()
    (data / "logs").mkdir()
    stack = teststack.installation(data)
    env = {
        "PATH": os.environ["PATH"],
        "DJANGO_SETTINGS_MODULE": "backupsite.settings",
        "BACKUPSITE_ENV_FILE": "",
        "BACKUPSITE_DATA_DIR": str(data),
        "DEBUG": "1",
        "PYTHONUNBUFFERED": "1",
        "EMAIL_URL": f"file://{data / 'mail'}",
        **LOWERED,
        **stack.env,
        **(extra_env or {}),
    }
    setup = subprocess.run(
        [sys.executable, "-c", SETUP], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    assert setup.returncode == 0, setup.stderr
    facts = json.loads(setup.stdout.strip().splitlines()[-1])

    port = free_port()
    web_log = data / "logs" / "web.log"
    web = _spawn([sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"], env, web_log)
    try:
        browser = Browser(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                browser.get("/accounts/login/")
                break
            except OSError:
                if web.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the panel did not start:\n{_tail(web_log)}") from None
                time.sleep(0.2)
        page = browser.post("/accounts/login/", {"username": "admin", "password": facts["password"]})
        assert "Log out" in page.read().decode() or "logout" in page.geturl(), "could not log in"
        installation = Install(data=data, env=env, browser=browser, jobs=facts["jobs"], stack=stack)
        try:
            yield installation
        finally:
            installation.stop_workers()
    finally:
        _killpg(web, signal.SIGTERM)
        try:
            web.wait(timeout=20)
        except subprocess.TimeoutExpired:
            _killpg(web, signal.SIGKILL)


@pytest.fixture(scope="module")
def install(tmp_path_factory):
    with running_install(tmp_path_factory.mktemp("workers")) as installation:
        yield installation
