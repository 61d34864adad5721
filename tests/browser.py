"""What the browser tests of the wizard share: the panel as ``make run`` starts it
(``runserver`` and a real Celery worker with its filesystem broker, a fresh data dir,
the demo data, an administrator), headless Chromium (Playwright with the system
``/usr/bin/chromium``: ``playwright install`` cannot download here) and a
:class:`User` that counts what a person does on a page.

A plain module (no fixtures): each test module makes its own module-scoped fixtures
from :func:`start_panel` and :func:`launch_chromium`, with the environment it needs
(``tests/test_wizard_remote_browser.py`` lets the panel reach the test suite's loopback
servers).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_binary

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
RUN_TIMEOUT_MS = 120_000


class Stack:
    """The running panel: its data dir, environment, base URL and admin password."""

    def __init__(self, data: Path, env: dict, base: str, password: str) -> None:
        self.data, self.env, self.base, self.password = data, env, base, password

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=300
        )
        if result.returncode != 0:
            pytest.fail(f"manage.py {args[0]} failed:\n{result.stderr}")
        return result.stdout

    def python(self, code: str) -> str:
        """Django code against the stack's database (``manage.py shell -c``); returns the
        last line it printed."""
        return self.manage("shell", "--no-imports", "-c", code).strip().splitlines()[-1]

    def log(self, name: str) -> str:
        path = self.data / "logs" / name
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


@contextlib.contextmanager
def start_panel(data: Path, **extra_env: str) -> Iterator[Stack]:
    """Migrate, load the demo, make an administrator, then run the web server and one
    worker (with beat) until the block ends; their output goes to ``<data>/logs/``."""
    # Imported here: importing the tests.servers plugin before pytest registers it (this
    # module is imported while collecting) would keep pytest from rewriting its asserts.
    from tests.servers import _die_with_parent, free_port

    require_binary("zstd")
    require_binary("tar")
    if not Path(CHROMIUM).exists():
        require_binary("chromium")
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "DJANGO_SETTINGS_MODULE": "backupsite.settings",
        "BACKUPSITE_ENV_FILE": "",
        "BACKUPSITE_DATA_DIR": str(data),
        "DEBUG": "1",
        "PYTHONUNBUFFERED": "1",
        "TIME_ZONE": "Europe/Berlin",
    }
    from tests import teststack

    env.update(teststack.installation(data).env)  # its database and broker on the suite's stack
    env.update(extra_env)
    stack = Stack(data, env, f"http://127.0.0.1:{port}", "")
    stack.manage("migrate", "--noinput")
    stack.manage("loaddemo")
    stack.password = re.search(r"password: (\S+)", stack.manage("bootstrapadmin")).group(1)
    logs = data / "logs"
    logs.mkdir()

    def spawn(args, log):
        return subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=open(logs / log, "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    procs = [
        spawn(["manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"], "web.log"),
        spawn(["-m", "celery", "-A", "backupsite.celery", "worker", "--beat", "--concurrency", "1"], "worker.log"),
    ]
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(stack.base + "/accounts/login/", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("the panel did not start:\n" + stack.log("web.log"))
                time.sleep(0.3)
        yield stack
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def launch_chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def live_server_chromium() -> Iterator:
    """Headless Chromium for the tests of pytest-django's ``live_server`` in this process
    (skipped without Playwright; ``require_binary`` for chromium). Playwright's sync API
    runs an event loop in this thread; the ORM calls of the test itself are still
    synchronous and safe, so Django is told to allow them meanwhile."""
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = require_binary("chromium")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_api.sync_playwright() as playwright:
            instance = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            yield instance
            instance.close()
    finally:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


def logged_in(browser, live_server, client, user, **options):
    """A new page of *browser* logged in as *user* (the test client's session cookie)."""
    client.force_login(user)
    context = browser.new_context(**options)
    context.add_cookies([{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": live_server.url}])
    return context.new_page()


class User:
    """A page plus what a person does on it, counted: clicks (and key presses that
    press a button) and fields typed into. Script errors and failed responses are
    collected in :attr:`errors` (the browser's own favicon.ico aside)."""

    def __init__(self, page, stack: Stack, name: str, *, artifacts: Path = ARTIFACTS / "wizard") -> None:
        self.page, self.stack, self.name, self.artifacts = page, stack, name, artifacts
        self.clicks = 0
        self.typed = 0
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on(
            "response",
            lambda r: (
                r.status >= 400 and not r.url.endswith("/favicon.ico") and self.errors.append(f"{r.status} {r.url}")
            ),
        )

    def click(self, selector: str) -> None:
        self.clicks += 1
        self.page.click(selector)

    def fill(self, selector: str, value: str) -> None:
        self.typed += 1
        self.page.fill(selector, value)

    def shot(self, name: str) -> None:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(self.artifacts / f"{self.name}-{name}.png"), full_page=True)

    def login(self) -> None:
        self.page.goto(self.stack.base + "/accounts/login/")
        self.fill("#id_username", "admin")
        self.fill("#id_password", self.stack.password)
        self.click("button[type=submit]")
        self.page.wait_for_url(self.stack.base + "/")

    def step(self) -> str:
        return self.page.get_attribute("input[name$='-current_step']", "value")

    # --- the keyboard alone -----------------------------------------------------------------
    def tab_to(self, selector: str, limit: int = 80) -> None:
        """Press Tab until *selector* has the focus (fail if it never gets it)."""
        for _ in range(limit):
            if self.page.evaluate("(s) => document.activeElement && document.activeElement.matches(s)", selector):
                return
            self.page.keyboard.press("Tab")
        pytest.fail(f"{selector} cannot be reached with Tab")

    def key_type(self, selector: str, text: str) -> None:
        self.tab_to(selector)
        self.page.keyboard.press("Control+A")
        self.page.keyboard.type(text)


def wait_for_success(user: User) -> None:
    """Wait until the run page shows a succeeded run with its download button."""
    page = user.page
    try:
        page.wait_for_selector("#run-progress .state-succeeded", timeout=RUN_TIMEOUT_MS)
        page.wait_for_selector("a[href$='/download/']", timeout=RUN_TIMEOUT_MS)
    except Exception:  # noqa: BLE001 - Playwright's timeout: say why
        pytest.fail("the run did not succeed:\n" + page.inner_text("main") + "\n" + user.stack.log("worker.log"))


def run_id(page) -> int:
    return int(re.search(r"/runs/(\d+)/", page.url).group(1))
