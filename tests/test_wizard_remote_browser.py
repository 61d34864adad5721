"""The wizard's step 3 against real servers, in a real browser: headless Chromium
(Playwright, ``/usr/bin/chromium``) against the panel as ``make run`` starts it
(``runserver`` and a real Celery worker, :mod:`tests.browser`), allowed to reach the
test suite's loopback servers (``BACKUPSITE_ALLOW_LOCAL_DESTINATIONS=1``): OpenSSH
``sshd`` (:mod:`tests.kinds.sftp`, a password account) and pyftpdlib with FTPS and a
self-signed certificate (:mod:`tests.kinds.ftp`). Nothing is mocked.

* SFTP: step 3 creates the destination, Test connection shows the server's host-key
  fingerprint (in place, nothing typed lost), it is trusted, the test passes, *Keep
  settings and execute backup* runs a backup that lands on the SFTP server; then, with
  the local copy deleted, the run page's Download streams it from the SFTP server, a
  Range request resumes it, and both are byte-identical (issue 7's acceptance);
* FTPS: the same to the certificate's SHA-256 fingerprint;
* without JavaScript: Test, trust and Finish reload the step, the password typed once.

Screenshots land in ``tests/artifacts/wizard-remote/`` (git-ignored).
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.request
from pathlib import Path

import pytest

from tests.browser import ARTIFACTS, User, launch_chromium, run_id, start_panel, wait_for_success

pytest_plugins = ["tests.kinds.sftp", "tests.kinds.ftp"]
pytestmark = pytest.mark.slow

BACKUP_PASSWORD = "plenty of unrelated words"
SHOTS = ARTIFACTS / "wizard-remote"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, sshd_server, ftp_server):
    data = tmp_path_factory.mktemp("wizard-remote-browser") / "var"
    with start_panel(data, BACKUPSITE_ALLOW_LOCAL_DESTINATIONS="1") as panel:
        yield panel


@pytest.fixture(scope="module")
def chromium():
    with launch_chromium() as browser:
        yield browser


def new_user(chromium, stack, name: str, **options) -> User:
    context = chromium.new_context(accept_downloads=True, viewport={"width": 1200, "height": 900}, **options)
    context.set_default_timeout(30_000)
    user = User(context.new_page(), stack, name, artifacts=SHOTS)
    user.login()
    return user


def to_step_three(user: User, name: str) -> None:
    """Steps 1 and 2 as a person fills them: a manual job of the demo files, encrypted."""
    page = user.page
    page.goto(user.stack.base + "/jobs/new/")
    user.fill("#id_general-name", name)
    user.fill("#id_general-report_to", "remote@example.com")
    page.select_option("#id_general-interval", "manual")
    user.click("#wizard-next")
    assert user.step() == "content", page.inner_text("main")
    user.click("text=Demo files")
    user.fill("#id_content-password1", BACKUP_PASSWORD)
    user.fill("#id_content-password2", BACKUP_PASSWORD)
    user.click("#wizard-next")
    assert user.step() == "destination", page.inner_text("main")


def new_destination(user: User, name: str, kind: str, fields: dict[str, str]) -> None:
    """Choose "A new destination" of *kind* and type its settings (its fieldset appears
    without a reload, the others are hidden)."""
    page = user.page
    user.click("input[name='destination-target'][value='new']")
    user.fill("#id_destination-name", name)
    user.click(f"#id_destination-kind-{kind}")
    assert page.is_visible(f"#settings-{kind}") and page.is_hidden("#settings-local")
    for field, value in fields.items():
        user.fill(f"#id_destination-{kind}-{field}", value)


def confirm_fingerprint_in_place(user: User, fingerprint: str, secret_field: str, secret: str) -> None:
    """Test connection shows the fingerprint in place; trusting it tests again and passes."""
    page = user.page
    page.evaluate("window.__same_page = true")
    user.click("button[name=wizard_test]")
    page.wait_for_selector("#test-result .fingerprint.unconfirmed")
    assert fingerprint in page.inner_text("#test-result .fingerprint")
    assert "Nothing was sent to this server yet" in page.inner_text("#test-result")
    assert page.evaluate("window.__same_page === true")  # tested in the background
    assert page.input_value(secret_field) == secret  # nothing typed was lost
    user.shot("1-fingerprint")
    user.click("#test-result button[name=trust]")
    page.wait_for_selector("#test-result .test-result.ok")
    assert "This is the confirmed identity of the server." in page.inner_text("#test-result")
    assert page.evaluate("window.__same_page === true")
    user.shot("2-trusted")


RUN_FACTS = """
import json
from jobs.models import Run
r = Run.objects.get(pk=PK)
uploads = [[u.destination.kind, u.state] for u in r.uploads.select_related("destination")]
print(json.dumps({"state": r.state, "name": r.archive_name, "sha256": r.archive_sha256,
                  "local": str(r.local_file), "slug": r.job_slug, "uploads": uploads}))
"""
DESTINATION_FACTS = """
import json
from destinations.models import Destination
d = Destination.objects.get(name=NAME)
print(json.dumps({"settings": d.settings, "secret_names": sorted(d.secrets), "tested": d.last_test_ok,
                  "jobs": [j.name for j in d.jobs.all()]}))
"""


def run_facts(stack, pk: int) -> dict:
    return json.loads(stack.python(RUN_FACTS.replace("PK", str(int(pk)))))


def destination_facts(stack, name: str) -> dict:
    return json.loads(stack.python(DESTINATION_FACTS.replace("NAME", json.dumps(name))))


def keep_and_execute(user: User) -> dict:
    page = user.page
    user.click("#wizard-next")
    assert user.step() == "summary", page.inner_text("main")
    assert BACKUP_PASSWORD not in page.content()
    user.click("#action-save-run")
    page.wait_for_url(re.compile(r"/runs/\d+/$"))
    wait_for_success(user)
    user.shot("3-run")
    facts = run_facts(user.stack, run_id(page))
    assert facts["state"] == "succeeded" and len(facts["uploads"]) == 1 and facts["uploads"][0][1] == "succeeded"
    return facts


def get(user: User, url: str, range_: str):
    """The same session as the browser's (its cookies), with a Range header."""
    cookies = "; ".join(f"{c['name']}={c['value']}" for c in user.page.context.cookies())
    request = urllib.request.Request(url, headers={"Cookie": cookies, "Range": range_})
    return urllib.request.urlopen(request, timeout=60)


# --- SFTP: fingerprint, run, download from the destination with Range ------------------------------------
def test_sftp_fingerprint_in_the_wizard_then_a_download_streams_from_sftp_and_resumes(
    stack, chromium, sshd_server, tmp_path
):
    account = sshd_server.users["password"]
    user = new_user(chromium, stack, "sftp")
    to_step_three(user, "Remote SFTP")
    fields = {"server": sshd_server.host, "port": str(sshd_server.port), "user": account.name}
    new_destination(user, "Office SFTP", "sftp", {**fields, "password": account.password})
    confirm_fingerprint_in_place(user, sshd_server.fingerprint, "#id_destination-sftp-password", account.password)
    facts = keep_and_execute(user)
    assert facts["uploads"] == [["sftp", "succeeded"]]

    local = Path(facts["local"])
    original = local.read_bytes()
    assert hashlib.sha256(original).hexdigest() == facts["sha256"]
    uploaded = account.home / "backupsite" / facts["slug"] / facts["name"]
    assert uploaded.read_bytes() == original  # on the SFTP server, as the run made it
    saved = destination_facts(stack, "Office SFTP")
    assert saved["settings"]["host_key_fingerprint"] == sshd_server.fingerprint
    assert saved["secret_names"] == ["password"] and saved["tested"] is True and saved["jobs"] == ["Remote SFTP"]
    assert account.password not in json.dumps(saved)

    # The local copy is gone (retention, a cleanup): the run page still offers the
    # download, now streamed from the SFTP server.
    local.unlink()
    local.with_name(facts["name"] + ".manifest.json").unlink()
    page = user.page
    page.reload()
    page.wait_for_selector("a.btn.primary[href$='/download/']")
    with page.expect_download() as download_info:
        user.click("a.btn.primary[href$='/download/']")
    downloaded = tmp_path / download_info.value.suggested_filename
    download_info.value.save_as(downloaded)
    assert downloaded.name == facts["name"] and downloaded.read_bytes() == original
    assert not local.exists()  # not fetched back to this server: streamed through

    # Interrupted after the first part, resumed with Range: byte-identical again.
    url = stack.base + f"/runs/{run_id(page)}/download/"
    cut = len(original) // 3
    with get(user, url, f"bytes=0-{cut - 1}") as first:
        assert first.status == 206 and first.headers["Content-Range"] == f"bytes 0-{cut - 1}/{len(original)}"
        head = first.read()
    with get(user, url, f"bytes={cut}-") as rest:
        size = len(original)
        assert rest.status == 206 and rest.headers["Content-Range"] == f"bytes {cut}-{size - 1}/{size}"
        assert int(rest.headers["Content-Length"]) == len(original) - cut
        tail = rest.read()
    assert head + tail == original
    assert hashlib.sha256(head + tail).hexdigest() == facts["sha256"]
    assert user.errors == []


# --- FTPS with a self-signed certificate -----------------------------------------------------------------------
def test_ftps_certificate_fingerprint_in_the_wizard_then_the_run_uploads_there(stack, chromium, ftp_server):
    user = new_user(chromium, stack, "ftps")
    to_step_three(user, "Remote FTPS")
    password = ftp_server.passwords["backup"]
    fields = {"server": ftp_server.host, "port": str(ftp_server.ports["ftps"]), "user": "backup"}
    new_destination(user, "Office FTPS", "ftp", {**fields, "password": password})
    assert not user.page.is_checked("#id_destination-ftp-plain_ftp")  # encrypted unless ticked
    confirm_fingerprint_in_place(user, ftp_server.fingerprint, "#id_destination-ftp-password", password)
    facts = keep_and_execute(user)
    assert facts["uploads"] == [["ftp", "succeeded"]]
    uploaded = ftp_server.home / "backupsite" / facts["slug"] / facts["name"]
    assert hashlib.sha256(uploaded.read_bytes()).hexdigest() == facts["sha256"]
    saved = destination_facts(stack, "Office FTPS")
    assert saved["settings"]["tls_fingerprint"] == ftp_server.fingerprint and saved["tested"] is True
    assert saved["settings"]["plain_ftp"] is False
    assert user.errors == []


# --- without JavaScript -------------------------------------------------------------------------------------------
def test_without_javascript_test_trust_and_finish_reload_the_step(stack, chromium, sshd_server):
    account = sshd_server.users["password"]
    user = new_user(chromium, stack, "no-js", java_script_enabled=False)
    page = user.page
    to_step_three(user, "Remote without JS")
    assert page.is_visible("#settings-local") and page.is_visible("#settings-sftp")  # every kind, under its heading
    assert page.is_visible("#new-destination [data-no-js-hint]")
    user.click("input[name='destination-target'][value='new']")
    user.fill("#id_destination-name", "SFTP without JS")
    user.click("#id_destination-kind-sftp")
    for field, value in {
        "server": sshd_server.host,
        "port": str(sshd_server.port),
        "user": account.name,
        "password": account.password,
    }.items():
        user.fill(f"#id_destination-sftp-{field}", value)

    with page.expect_navigation():
        user.click("button[name=wizard_test]")
    assert user.step() == "destination"
    assert sshd_server.fingerprint in page.inner_text("#test-result .fingerprint")
    assert page.is_checked("#id_destination-kind-sftp")
    assert page.input_value("#id_destination-name") == "SFTP without JS"
    assert page.input_value("#id_destination-sftp-password") == ""  # never rendered back …
    assert "A value was typed; leave blank to keep it." in page.inner_text("#settings-sftp")  # … but kept
    assert account.password not in page.content()
    user.shot("1-fingerprint")

    with page.expect_navigation():
        user.click("#test-result button[name=trust]")
    assert "Test passed" in page.inner_text("#test-result"), page.inner_text("main")
    user.shot("2-trusted")
    with page.expect_navigation():
        user.click("#wizard-next")
    assert user.step() == "summary", page.inner_text("main")
    assert "SFTP without JS (new, tested)" in page.inner_text("#summary")
    with page.expect_navigation():
        user.click("#action-save")
    assert re.search(r"/jobs/\d+/$", page.url) and "Job “Remote without JS” created." in page.inner_text(".messages")
    saved = destination_facts(stack, "SFTP without JS")
    assert saved["settings"]["host_key_fingerprint"] == sshd_server.fingerprint
    assert saved["secret_names"] == ["password"] and saved["tested"] is True
    assert saved["jobs"] == ["Remote without JS"]
    assert user.errors == []
