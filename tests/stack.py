"""A real multi-process installation on Redis for the scheduling acceptance tests.

``stack`` (module scope): Redis from the local binary (``tests.servers.redis_server``, a
database of its own), one SQLite database shared by every process, a receiver for the
``relay`` destination kind (``tests/worker_app.py``) behind a ``tests/tcpproxy.py``
proxy, a real SMTP server (aiosmtpd), and helpers to start ``celery worker`` processes
for named hosts (each with its own data and archive folders, as separate machines
would have) and ``celery beat`` processes. Every interval is lowered through the
environment (:data:`LOWERED`), so a test sees in seconds what takes minutes in
production. Rows are read straight from the shared SQLite file (read only).

Processes get their own process group and a parent-death signal; a test kills what it
started (``Proc.kill``: SIGKILL of the group, as a dead machine), the fixture the rest.
Use it with ``pytest_plugins = ["tests.servers", "tests.mailserver", "tests.stack"]``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import require_binary
from tests.servers import _die_with_parent, _tail
from tests.tcpproxy import TcpProxy

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 60
LOWERED = {
    "BACKUPSITE_HEARTBEAT_SECONDS": "1",
    "BACKUPSITE_STALE_RUN_SECONDS": "4",
    "BACKUPSITE_REAPER_SECONDS": "1",
    "BACKUPSITE_QUEUE_GRACE_SECONDS": "3",
    "BACKUPSITE_DISPATCH_SECONDS": "1",
    "BACKUPSITE_SWEEP_SECONDS": "2",
    "BACKUPSITE_UPLOAD_RETRY_SECONDS": "1",
    "BACKUPSITE_UPLOAD_RETRY_MAX_SECONDS": "8",
    "BACKUPSITE_UPLOAD_MAX_ATTEMPTS": "10",
    "BACKUPSITE_RUN_RESTARTS": "1",
    "BACKUPSITE_DESTINATION_TIMEOUT": "5",
}


class Receiver:
    """The far end of the relay kind: reads what an upload sends (slowly, if asked),
    answers ``OK <bytes>``; with ``refuse`` set it drops every new connection."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.delay = 0.0  # seconds to wait after each 64 KiB read
        self.refuse = False
        self.completed = 0  # uploads confirmed
        self.refused = 0
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            if self.refuse:
                self.refused += 1
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                conn.close()
                continue
            threading.Thread(target=self._take, args=(conn,), daemon=True).start()

    def _take(self, conn: socket.socket) -> None:
        total = 0
        try:
            with conn:
                while data := conn.recv(65536):
                    total += len(data)
                    if self.delay:
                        time.sleep(self.delay)
                conn.sendall(f"OK {total}".encode())
                self.completed += 1
        except OSError:
            pass

    def close(self) -> None:
        self._stop.set()
        self.listener.close()


def cut(proxy: TcpProxy) -> None:
    """``proxy.cut()``, made sure to reach a pump thread blocked in ``recv()`` (main's
    TcpProxy only closes the sockets, which does not wake such a thread on Linux; the
    destination-kind branches fix that in tcpproxy.py itself)."""
    import contextlib

    with proxy._lock:
        sockets = list(proxy._sockets)
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    proxy.cut()


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> float:
        """SIGKILL the whole process group at once (pool, children): a dead machine."""
        moment = time.monotonic()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=20)
        return moment

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Stack:
    root: Path
    env: dict
    receiver: Receiver
    proxy: TcpProxy
    mailbox: object
    procs: list[Proc] = field(default_factory=list)
    jobs: dict[str, int] = field(default_factory=dict)

    # --- processes -------------------------------------------------------------------
    def host_env(self, host: str) -> dict:
        data = self.root / host
        return {
            **self.env,
            "BACKUPSITE_HOST": host,
            "BACKUPSITE_DATA_DIR": str(data),
            "BACKUPSITE_ARCHIVE_DIR": str(data / "archives"),
        }

    def _spawn(self, name: str, args: list[str], env: dict) -> Proc:
        log = self.root / "logs" / f"{name}.log"
        proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=open(log, "ab"),  # noqa: SIM115 - the child owns it
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        started = Proc(name, proc, log)
        self.procs.append(started)
        return started

    def worker(self, host: str, *, queues: str | None = None, concurrency: int = 1, name: str = "") -> Proc:
        """``celery worker`` for *host* (it also consumes ``host.<host>``); waits until ready."""
        name = name or f"worker-{host}-{len(self.procs)}"
        args = [sys.executable, "-m", "celery", "-A", "tests.worker_app", "worker", "--loglevel", "INFO"]
        args += ["--concurrency", str(concurrency), "--without-gossip", "--without-mingle", "--without-heartbeat"]
        args += ["--hostname", f"{name}@{host}"]
        if queues:
            args += ["-Q", queues]
        proc = self._spawn(name, args, self.host_env(host))
        self._wait(proc, b" ready.")
        return proc

    def beat(self, number: int) -> Proc:
        """A ``celery beat`` process with its own schedule file (two of them: two beats)."""
        env = {**self.host_env(f"beat{number}")}
        args = [sys.executable, "-m", "celery", "-A", "tests.worker_app", "beat", "--loglevel", "INFO"]
        args += ["--schedule", str(self.root / f"beat{number}.schedule")]
        proc = self._spawn(f"beat-{number}", args, env)
        self._wait(proc, b"beat: Starting")
        return proc

    def _wait(self, proc: Proc, marker: bytes) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while marker not in (proc.log.read_bytes() if proc.log.exists() else b""):
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited with {proc.proc.returncode}:\n{_tail(proc.log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{proc.name} was not ready within {START_TIMEOUT} s:\n{_tail(proc.log)}")
            time.sleep(0.1)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.alive():
                proc.kill()
        self.procs.clear()

    def cut(self) -> None:
        """Cut every connection through the relay's proxy at once."""
        cut(self.proxy)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{_tail(p.log, 40)}" for p in self.procs)

    # --- the database ------------------------------------------------------------------
    def shell(self, code: str) -> object:
        """Run *code* in a Django process of host "ctl" (the test kinds registered); it
        sets ``result``, which comes back as JSON."""
        script = "import json, tests.worker_app\nresult = None\n" + code + "\nprint(json.dumps(result, default=str))"
        done = subprocess.run(
            [sys.executable, "-c", script],
            cwd=ROOT,
            env=self.host_env("ctl"),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    def rows(self, sql: str, *params) -> list[dict]:
        with sqlite3.connect(f"file:{self.root / 'db.sqlite3'}?mode=ro", uri=True, timeout=30) as db:
            db.row_factory = sqlite3.Row
            return [dict(row) for row in db.execute(sql, params)]

    def run(self, pk: int) -> dict:
        return self.rows("SELECT * FROM jobs_run WHERE id = ?", pk)[0]

    def uploads(self, run_id: int) -> list[dict]:
        return self.rows("SELECT * FROM jobs_upload WHERE run_id = ? ORDER BY id", run_id)

    def wait_for(self, pk: int, states: set[str], timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            row = self.run(pk)
            if row["state"] in states:
                return row
            if time.monotonic() > deadline:
                pytest.fail(f"run {pk} is {row['state']!r}, not {sorted(states)}, after {timeout} s; "
                            f"log:\n{row['log']}\n{self.logs()}")  # fmt: skip
            time.sleep(0.1)

    def wait_until(self, what: str, check, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: not within {timeout} s\n{self.logs()}")
            time.sleep(0.1)

    def start(self, job: str) -> int:
        """Run now (as the panel's button does): a run handed to the workers."""
        return self.shell(
            "from jobs.models import Job; from jobs.services import enqueue_run\n"
            f"result = enqueue_run(Job.objects.get(name={job!r})).pk"
        )

    def archive_of(self, run: dict, host: str) -> Path:
        return self.root / host / "archives" / run["local_path"]


SETUP = """
import json, os
import tests.worker_app
from django.conf import settings
from django.core.management import call_command
call_command("migrate", "--noinput", verbosity=0)
from destinations.models import Destination
from jobs.models import Job, Source
root = settings.DATA_DIR.parent
files = root / "files"
files.mkdir()
(files / "random.bin").write_bytes(os.urandom(4 * 1024 * 1024))
(files / "notes.txt").write_text("hello\\n" * 1000)
backups = root / "backups"
backups.mkdir()
relay = Destination.objects.create(
    name="Relay NAS", kind="relay",
    settings={"path": str(backups), "relay_host": "127.0.0.1", "relay_port": int(os.environ["RELAY_PORT"])},
)
jobs = {}
for name in ("Alpha files", "Beta files"):
    job = Job.objects.create(name=name, report_to="ops@example.com, boss@example.com")
    job.sources.set([Source.objects.create(name=name + " source", kind="directory", settings={"path": str(files)})])
    job.destinations.set([relay])
    jobs[name] = job.pk
slow = Job.objects.create(name="Slow", report_to="ops@example.com")
slow.sources.set([Source.objects.create(name="Sleepy", kind="sleepy", settings={"seconds": 120})])
slow.destinations.set([relay])
jobs["Slow"] = slow.pk
print(json.dumps(jobs))
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_server, smtp_server):
    require_binary("zstd")
    require_binary("sleep")
    root = tmp_path_factory.mktemp("stack")
    (root / "logs").mkdir()
    receiver = Receiver()
    proxy = TcpProxy(("127.0.0.1", receiver.port))
    from cryptography.fernet import Fernet

    env = {
        "PATH": os.environ["PATH"],
        "DJANGO_SETTINGS_MODULE": "backupsite.settings",
        "BACKUPSITE_ENV_FILE": "",
        "DEBUG": "1",
        "PYTHONUNBUFFERED": "1",
        # One database and one broker for every "machine"; the secrets are the same on all.
        "DATABASE_URL": f"sqlite:///{root / 'db.sqlite3'}",
        "CELERY_BROKER_URL": redis_server.url(redis_server.new_db()),
        "SECRET_KEY": "stack-test-secret-key-" + "x" * 40,
        "FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "EMAIL_URL": smtp_server.url,
        "BACKUPSITE_LOCAL_ROOTS": str(root / "backups"),
        "BACKUPSITE_STAGING_MARGIN_MB": "0",
        "RELAY_PORT": str(proxy.port),
        **LOWERED,
    }
    setup = subprocess.run(
        [sys.executable, "-c", SETUP], cwd=ROOT, env={**env, "BACKUPSITE_DATA_DIR": str(root / "ctl"),
                                                     "BACKUPSITE_HOST": "ctl"},
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert setup.returncode == 0, setup.stderr
    installation = Stack(root=root, env=env, receiver=receiver, proxy=proxy, mailbox=smtp_server.mailbox)
    installation.jobs = json.loads(setup.stdout.strip().splitlines()[-1])
    try:
        yield installation
    finally:
        installation.stop_all()
        proxy.close()
        receiver.close()
