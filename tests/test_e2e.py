"""The acceptance path, for real: the web server and a Celery worker (embedded beat) as
`make run` starts them, on the suite's stack (tests/teststack.py: SQLite and the
filesystem broker, or PostgreSQL and Redis), an administrator logging in with the
printed password, "Run now", the progress fragment until done, the download, and the
archive restored with stock zstd and tar.

And the escalation of issue 6 replayed against the same processes: an operator runs a
job with the panel's own database and tries to download it, to pull a session key out
of it and to log in with it as an administrator."""

from __future__ import annotations

import hashlib
import http.cookiejar
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests import teststack
from tests.conftest import require_binary, restore_with_stock_tools, trees_identical

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Browser:
    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def get(self, path: str):
        return self.opener.open(self.base + path, timeout=30)

    def post(self, path: str, data: dict):
        token = next(c.value for c in self.jar if c.name == "csrftoken")
        body = urllib.parse.urlencode({**data, "csrfmiddlewaretoken": token}).encode()
        request = urllib.request.Request(self.base + path, data=body, headers={"Referer": self.base + path})
        return self.opener.open(request, timeout=30)

    def login(self, username: str, password: str) -> str:
        self.get("/accounts/login/")
        page = self.post("/accounts/login/", {"username": username, "password": password}).read().decode()
        assert self.cookie("sessionid"), page
        return page

    def cookie(self, name: str) -> str | None:
        return next((c.value for c in self.jar if c.name == name), None)

    def status(self, path: str, data: dict | None = None) -> tuple[int, str]:
        """(status, body) of a GET, or of a POST with *data*, errors included."""
        try:
            response = self.get(path) if data is None else self.post(path, data)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        return response.status, response.read().decode(errors="replace")

    def wait_for_run(self, run_url: str, logs: Path) -> str:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            fragment = self.get(run_url + "progress/").read().decode()
            if 'data-poll-active="false"' in fragment:
                return fragment
            time.sleep(0.5)
        pytest.fail("run did not finish; worker log:\n" + (logs / "worker.log").read_text()[-3000:])


OPERATOR_PASSWORD = "olga-operator-pass-42"
# An operator, and a job with the panel's own database, unencrypted: the setup of issue 6.
SETUP = f"""
from django.contrib.auth.models import Group, User
from destinations.models import Destination
from jobs.models import Job, Source
User.objects.create_user("olga", password="{OPERATOR_PASSWORD}").groups.add(Group.objects.get(name="operators"))
job = Job.objects.create(name="Panel backup")
job.sources.set([Source.objects.get(kind="panel_database")])
job.destinations.set([Destination.objects.get(name="Server hard drive")])
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    require_binary("zstd")
    require_binary("tar")
    data = tmp_path_factory.mktemp("e2e") / "var"
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "DJANGO_SETTINGS_MODULE": "backupsite.settings",
        "BACKUPSITE_ENV_FILE": "",
        "BACKUPSITE_DATA_DIR": str(data),
        "DEBUG": "1",
        "PYTHONUNBUFFERED": "1",
    }
    installation = teststack.installation(data)
    env.update(installation.env)

    def manage(*args):
        result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stdout

    manage("migrate", "--noinput")
    manage("loaddemo")
    password = re.search(r"password: (\S+)", manage("bootstrapadmin")).group(1)
    manage("shell", "-c", SETUP)
    logs = data / "logs"
    logs.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
            cwd=ROOT,
            env=env,
            stdout=open(logs / "web.log", "w"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT,
            start_new_session=True,
        ),
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "backupsite.celery",
                "worker",
                "--beat",
                "--concurrency",
                "1",
                "--loglevel",
                "INFO",
            ],
            cwd=ROOT,
            env=env,
            stdout=open(logs / "worker.log", "w"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT,
            start_new_session=True,
        ),
    ]
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(base + "/accounts/login/", timeout=2)
            break
        except OSError:
            time.sleep(0.3)
    try:
        yield {"base": base, "password": password, "data": data, "logs": logs, "installation": installation}
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_login_run_now_progress_download_restore(stack, tmp_path):
    browser = Browser(stack["base"])
    browser.get("/accounts/login/")
    dashboard = browser.post("/accounts/login/", {"username": "admin", "password": stack["password"]})
    html = dashboard.read().decode()
    assert dashboard.geturl().endswith("/") and "Demo backup" in html

    job_url = re.search(r'href="(/jobs/\d+/)">Demo backup', html).group(1)
    run_page = browser.post(job_url + "run/", {})
    run_url = urllib.parse.urlparse(run_page.geturl()).path
    assert re.fullmatch(r"/runs/\d+/", run_url), run_url

    deadline = time.monotonic() + 120
    fragment = ""
    while time.monotonic() < deadline:
        fragment = browser.get(run_url + "progress/").read().decode()
        if 'data-poll-active="false"' in fragment:
            break
        time.sleep(0.5)
    else:
        pytest.fail("run did not finish; worker log:\n" + (stack["logs"] / "worker.log").read_text()[-3000:])
    assert "Succeeded" in fragment, fragment

    response = browser.get(run_url + "download/")
    body = response.read()
    assert response.headers["Content-Type"] == "application/zstd"
    assert int(response.headers["Content-Length"]) == len(body)
    name = re.search(r'filename="([^"]+)"', response.headers["Content-Disposition"]).group(1)
    stored = stack["data"] / "backups" / "backupsite" / "demo-backup" / name
    assert body == stored.read_bytes()
    assert body == (stack["data"] / "archives" / "demo-backup" / name).read_bytes()

    archive = tmp_path / name
    archive.write_bytes(body)
    target = tmp_path / "restore"
    restore_with_stock_tools(archive, target)
    assert trees_identical(stack["data"] / "demo" / "files", target / "demo-files")
    manifest = json.loads(stored.with_name(name + ".manifest.json").read_text())
    assert manifest["archive"]["sha256"] == hashlib.sha256(body).hexdigest()
    for member in manifest["members"]:
        if member["type"] == "file":
            assert hashlib.sha256((target / member["path"]).read_bytes()).hexdigest() == member["sha256"]
    # The demo job leaves the panel's database out (it holds every password hash).
    assert sorted(p.name for p in target.iterdir()) == ["demo-files"]


@pytest.mark.slow
def test_an_operator_cannot_become_administrator_through_the_panel_database(stack, tmp_path):
    """Issue 6: operator runs the panel-database job, downloads it, extracts a session key,
    replays it. Each step that matters fails: the download is refused, and the archive
    (fetched by the administrator) holds no session at all."""
    admin = Browser(stack["base"])
    admin.login("admin", stack["password"])  # a live administrator session exists
    operator = Browser(stack["base"])
    html = operator.login("olga", OPERATOR_PASSWORD)
    assert "Operator" in html

    job_url = re.search(r'href="(/jobs/\d+/)">Panel backup', operator.get("/jobs/").read().decode()).group(1)
    assert "password hashes would leave this server in clear" in operator.get(job_url).read().decode()
    run_url = urllib.parse.urlparse(operator.post(job_url + "run/", {}).geturl()).path  # operators still run it
    fragment = operator.wait_for_run(run_url, stack["logs"])
    assert "Succeeded" in fragment, fragment
    assert "only administrators can download, verify or restore it" in fragment
    assert run_url + "download/" not in fragment

    for path, data in [
        (run_url + "download/", None),
        (run_url + "manifest/", None),
        (run_url + "verify/", None),
        (run_url + "verify/", {"location": "local"}),
        (run_url + "restore/", None),  # administrators only anyway
    ]:
        code, body = operator.status(path, data)
        assert code == 403, (path, code)
        assert "/restore/" in path or "only administrators can download, verify or restore it" in body

    response = admin.get(run_url + "download/")
    archive = tmp_path / "panel.tar.zst"
    archive.write_bytes(response.read())
    zstd = subprocess.Popen(["zstd", "-dc", str(archive)], stdout=subprocess.PIPE)
    tar = subprocess.run(["tar", "-x", "-C", str(tmp_path)], stdin=zstd.stdout, capture_output=True)
    zstd.stdout.close()
    assert zstd.wait() == 0 and tar.returncode == 0, tar.stderr
    installation = stack["installation"]
    if installation.database:  # PostgreSQL: pg_dump -Fc, restored with stock pg_restore
        dump = tmp_path / "panel-database" / "backupsite.pgdump"
        server = teststack.POSTGRES
        restored = server.create_database(owner=server.superuser)
        args = [server.tool("pg_restore"), "--no-owner", "-h", server.host, "-p", str(server.port)]
        args += ["-U", server.superuser, "-d", restored, str(dump)]
        subprocess.run(args, env=server.env(), capture_output=True, check=True)
        with server.connect(restored) as conn:
            assert conn.execute("SELECT COUNT(*) FROM django_session").fetchone() == (0,)
            assert conn.execute("SELECT COUNT(*) FROM jobs_verifyticket").fetchone() == (0,)
            assert {row[0] for row in conn.execute("SELECT username FROM auth_user")} == {"admin", "olga"}
        # The dump is compressed: look for keys in its SQL text.
        as_sql = [server.tool("pg_restore"), "-f", "-", str(dump)]
        raw = subprocess.run(as_sql, capture_output=True, check=True).stdout
    else:
        dump = tmp_path / "panel-database" / "backupsite.sqlite3"
        conn = sqlite3.connect(dump)
        try:
            assert conn.execute("SELECT COUNT(*) FROM django_session").fetchone() == (0,)
            assert conn.execute("SELECT COUNT(*) FROM jobs_verifyticket").fetchone() == (0,)
            assert {row[0] for row in conn.execute("SELECT username FROM auth_user")} == {"admin", "olga"}
        finally:
            conn.close()
        raw = dump.read_bytes()

    live_keys = {row["session_key"] for row in installation.rows("SELECT session_key FROM django_session")}
    assert {admin.cookie("sessionid"), operator.cookie("sessionid")} <= live_keys
    assert [key for key in live_keys if key.encode() in raw] == []

    # Replay: every session-key-shaped token in the dump, as the sessionid cookie, on the
    # administrators-only Restore page. (The administrator's real key opens it: the
    # replay itself works, the archive just has nothing to replay.)
    restore = run_url + "restore/"
    candidates = set(re.findall(rb"(?<![a-z0-9])[a-z0-9]{32}(?![a-z0-9])", raw))
    assert len(candidates) < 500
    for key in [admin.cookie("sessionid").encode(), *sorted(candidates)]:
        request = urllib.request.Request(stack["base"] + restore, headers={"Cookie": f"sessionid={key.decode()}"})
        opener = urllib.request.build_opener(NoRedirect)
        try:
            status = opener.open(request, timeout=30).status
        except urllib.error.HTTPError as exc:
            status = exc.code
        assert (status == 200) == (key == admin.cookie("sessionid").encode()), key


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None
