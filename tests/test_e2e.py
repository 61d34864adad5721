"""The acceptance path, for real: the web server and a Celery worker (filesystem
broker, embedded beat) as `make run` starts them, an administrator logging in with the
printed password, "Run now", the progress fragment until done, the download, and the
archive restored with stock zstd and tar."""

from __future__ import annotations

import hashlib
import http.cookiejar
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

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

    def manage(*args):
        result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stdout

    manage("migrate", "--noinput")
    manage("loaddemo")
    password = re.search(r"password: (\S+)", manage("bootstrapadmin")).group(1)
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
        yield {"base": base, "password": password, "data": data, "logs": logs}
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
    assert (target / "panel-database" / "backupsite.sqlite3").stat().st_size > 0
