"""The backup wizard in a real browser: headless Chromium (Playwright with the system
``/usr/bin/chromium``) against the panel as ``make run`` starts it (``runserver`` and a
real Celery worker with its filesystem broker, a fresh data dir, the demo data).

* a newcomer's path, timed: login → New backup job → four steps → *Keep settings and
  execute backup* → live progress → download → restored with stock ``age``, ``zstd``
  and ``tar``;
* by keyboard alone: *Only execute backup* (encrypted to an age public key), with an
  error shown at its field and Back from step 3 to 1 and forward again;
* *Only keep settings* with a destination created in step 3 (fields swapping without a
  reload, the connection tested inline), in two tabs with two wizards at once;
* an abandoned wizard (a tab closed at step 3) leaves no secret in the session table,
  and nothing at all once its time is up.

Screenshots of every step land in ``tests/artifacts/wizard/`` (git-ignored). The
newcomer's clicks and seconds are printed and written to
``tests/artifacts/wizard/newcomer.json``.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from tests.browser import ARTIFACTS as ARTIFACT_ROOT
from tests.browser import User, launch_chromium, run_id, start_panel, wait_for_success
from tests.conftest import require_binary, restore_with_stock_tools, trees_identical
from tests.test_encryption import age_decrypt_with_password

pytestmark = pytest.mark.slow

ARTIFACTS = ARTIFACT_ROOT / "wizard"
BACKUP_PASSWORD = "plenty of unrelated words"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with start_panel(tmp_path_factory.mktemp("wizard-browser") / "var") as panel:
        yield panel


@pytest.fixture(scope="module")
def chromium():
    with launch_chromium() as browser:
        yield browser


@pytest.fixture
def context(chromium):
    context = chromium.new_context(accept_downloads=True, viewport={"width": 1200, "height": 900})
    context.set_default_timeout(30_000)
    yield context
    context.close()


# --- 1: the newcomer's path ----------------------------------------------------------------------
def test_a_newcomer_keeps_settings_executes_downloads_and_restores(stack, context, tmp_path):
    page = context.new_page()
    user = User(page, stack, "keep-and-execute")
    started = time.monotonic()
    user.login()
    user.click("nav >> text=Jobs")
    user.click("#new-job")
    assert user.step() == "general"
    user.fill("#id_general-name", "Office files")
    user.fill("#id_general-report_to", "office@example.com")
    page.wait_for_selector("#folder-preview:has-text('office-files')")  # no string eval: the CSP forbids it
    assert page.locator("#next-runs li").count() == 3
    assert page.is_hidden("#id_general-cron")  # cron only for “Cron expression”
    user.shot("1-general")
    user.click("#wizard-next")
    assert user.step() == "content"
    user.click("text=Demo files")
    assert "KB" in page.inner_text("[data-total]")
    user.fill("#id_content-password1", BACKUP_PASSWORD)
    assert "Strong" in page.inner_text("#password-strength") or "Good" in page.inner_text("#password-strength")
    user.fill("#id_content-password2", BACKUP_PASSWORD)
    user.shot("2-content")
    user.click("#wizard-next")
    assert user.step() == "destination"
    assert "backupsite/office-files" in page.inner_text("#remote-folder")
    saved = page.get_attribute("input[name='destination-target']:checked", "value")
    page.check("input[name='destination-target'][value='new']")  # the folder follows the choice
    assert "in the new destination" in page.inner_text("#remote-folder")
    page.check(f"input[name='destination-target'][value='{saved}']")
    assert "backupsite/office-files" in page.inner_text("#remote-folder")
    user.shot("3-destination")
    user.click("#wizard-next")
    assert user.step() == "summary"
    assert "••••••••" in page.inner_text("#summary-encryption")
    assert BACKUP_PASSWORD not in page.content()
    user.shot("4-summary")
    user.click("#action-save-run")
    page.wait_for_url(re.compile(r"/runs/\d+/$"))
    user.shot("5-run-progress")
    wait_for_success(user)
    user.shot("6-run-succeeded")
    with page.expect_download() as download_info:
        user.click("a.btn.primary[href$='/download/']")
    download = download_info.value
    archive = tmp_path / download.suggested_filename
    download.save_as(archive)
    seconds = time.monotonic() - started
    figures = {"clicks": user.clicks, "fields_typed": user.typed, "seconds": round(seconds, 1)}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "newcomer.json").write_text(json.dumps(figures))
    print(f"\nnewcomer, login page to downloaded backup: {figures}")

    assert archive.name.endswith(".tar.zst.age") and archive.name.startswith("office-files-")
    key_file = stack.data / "backups" / "backupsite" / "office-files" / "backupsite-key.age"
    decrypted = tmp_path / "archive.tar.zst"
    age_decrypt_with_password(key_file, archive, decrypted, BACKUP_PASSWORD)
    restore_with_stock_tools(decrypted, tmp_path / "restore")
    assert trees_identical(stack.data / "demo" / "files", tmp_path / "restore" / "demo-files")
    assert user.errors == []


# --- 2: by keyboard alone ----------------------------------------------------------------------------
def test_only_execute_backup_by_keyboard_alone_with_errors_and_back(stack, context, tmp_path):
    age_keygen = require_binary("age-keygen")
    identity = tmp_path / "identity.txt"
    subprocess.run([age_keygen, "-o", str(identity)], check=True, capture_output=True)
    recipient = re.search(r"public key: (age1\w+)", identity.read_text()).group(1)
    page = context.new_page()
    user = User(page, stack, "keyboard")
    user.login()
    page.goto(stack.base + "/jobs/new/")
    keys = page.keyboard

    # Step 1, sent with Enter while the name is empty: the error is at the name.
    user.key_type("#id_general-report_to", "keys@example.com")
    keys.press("Enter")
    page.wait_for_selector("#id_general-name_error")
    assert "This field is required" in page.inner_text("#id_general-name_error")
    assert page.get_attribute("#id_general-name", "aria-invalid") == "true"
    assert page.input_value("#id_general-report_to") == "keys@example.com"
    user.shot("1-general-error")
    user.key_type("#id_general-name", "Keyboard once")
    keys.press("Enter")
    page.wait_for_selector("#id_content-encryption_group")
    assert user.step() == "content"

    # Step 2: the demo files (Space ticks), an age public key (arrow keys choose).
    demo = "#" + page.get_attribute("label:text-is('Demo files')", "for")
    user.tab_to(demo)
    keys.press("Space")
    assert page.is_checked(demo)
    user.tab_to("input[name='content-encryption']:checked")
    keys.press("ArrowDown")  # password → age public key
    assert page.is_checked("#id_content-encryption_1")
    user.key_type("#id_content-age_recipient", recipient)
    user.shot("2-content")
    keys.press("Enter")
    page.wait_for_selector("#remote-folder")
    assert user.step() == "destination"

    # Back twice (3 → 2 → 1) and forward again: everything is still there.
    user.tab_to("#wizard-back")
    keys.press("Enter")
    page.wait_for_selector("#id_content-encryption_group")
    assert page.is_checked("#id_content-encryption_1") and page.input_value("#id_content-age_recipient") == recipient
    user.tab_to("#wizard-back")
    keys.press("Enter")
    page.wait_for_selector("#id_general-name")
    assert page.input_value("#id_general-name") == "Keyboard once"
    assert page.input_value("#id_general-report_to") == "keys@example.com"
    user.tab_to("#wizard-next")
    keys.press("Enter")
    page.wait_for_selector("#id_content-encryption_group")
    assert page.is_checked(demo)
    user.tab_to("#wizard-next")
    keys.press("Enter")
    page.wait_for_selector("#remote-folder")
    user.shot("3-destination")
    user.tab_to("#wizard-next")
    keys.press("Enter")
    page.wait_for_selector("#action-run-only")
    assert recipient in page.inner_text("#summary-encryption")
    user.shot("4-summary")
    user.tab_to("#action-run-only")
    keys.press("Enter")
    page.wait_for_url(re.compile(r"/runs/\d+/$"))
    wait_for_success(user)
    pk = run_id(page)
    assert f"backupsite/oneoff-{pk}/" in page.inner_text("#oneoff-note")
    user.tab_to("a.btn.primary[href$='/download/']")
    with page.expect_download() as download_info:
        keys.press("Enter")
    archive = tmp_path / download_info.value.suggested_filename
    download_info.value.save_as(archive)
    assert archive.name.startswith(f"oneoff-{pk}-") and archive.name.endswith(".tar.zst.age")
    assert (stack.data / "backups" / "backupsite" / f"oneoff-{pk}" / archive.name).is_file()
    assert "Keyboard once" not in stack.python(
        "from jobs.models import Job; print(list(Job.objects.values_list('name')))"
    )
    decrypted = tmp_path / "archive.tar.zst"
    subprocess.run(["age", "-d", "-i", str(identity), "-o", str(decrypted), str(archive)], check=True)
    restore_with_stock_tools(decrypted, tmp_path / "restore")
    assert trees_identical(stack.data / "demo" / "files", tmp_path / "restore" / "demo-files")
    assert user.errors == []


# --- 3: two tabs, a new destination, only keep settings ----------------------------------------------------
def fill_general(user: User, name: str, *, manual: bool = False) -> None:
    user.fill("#id_general-name", name)
    user.fill("#id_general-report_to", "tabs@example.com")
    if manual:
        user.page.select_option("#id_general-interval", "manual")
        assert user.page.is_hidden("#id_general-first_date")
    user.click("#wizard-next")
    assert user.step() == "content", user.page.inner_text("main")


def test_two_tabs_only_keep_settings_one_with_a_new_destination(stack, context):
    first, second = User(context.new_page(), stack, "tab-1"), User(context.new_page(), stack, "tab-2")
    first.login()
    for user in (first, second):
        user.page.goto(stack.base + "/jobs/new/")
    ids = {user.page.get_attribute("input[name=wizard_id]", "value") for user in (first, second)}
    assert len(ids) == 2
    fill_general(first, "Tab one")
    fill_general(second, "Tab two", manual=True)
    for user, encrypt in ((first, True), (second, False)):
        user.click("text=Demo files")
        if encrypt:
            user.fill("#id_content-password1", BACKUP_PASSWORD)
            user.fill("#id_content-password2", BACKUP_PASSWORD)
        else:
            # Measure now, in the background: the ticked box and the choices stay.
            page = user.page
            page.evaluate("window.__same_page = true")
            demo = page.get_attribute("label:text-is('Demo files')", "for")
            pk = page.get_attribute(f"#{demo}", "value")
            user.click(f"button[name=wizard_measure][value='{pk}']")
            page.wait_for_selector("text=Measured “Demo files”")
            assert page.is_checked(f"#{demo}") and page.evaluate("window.__same_page === true")
            assert "measured now" in page.inner_text("[data-source-row]:has(#" + demo + ")")
            user.click("#id_content-encryption_2")
            assert user.page.is_visible("#no-encryption-note")
        user.click("#wizard-next")
        assert user.step() == "destination", user.page.inner_text("main")

    # Tab one creates a destination; its fields appear without a page reload.
    page = first.page
    page.evaluate("window.__same_page = true")
    assert page.is_hidden("#new-destination")
    first.click("input[name='destination-target'][value='new']")
    assert page.is_visible("#new-destination") and page.is_visible("#settings-local")
    first.fill("#id_destination-name", "NAS folder")
    first.fill("#id_destination-local-path", str(stack.data / "backups" / "nas"))
    first.click("#id_destination-local-create")
    first.click("button[name=wizard_test]")
    page.wait_for_selector("#test-result .test-result.ok")
    assert page.evaluate("window.__same_page === true")  # tested in the background
    first.shot("3-destination-tested")
    first.click("#wizard-next")
    assert first.step() == "summary"
    assert "NAS folder (new, tested)" in page.inner_text("#summary")

    second.click("#wizard-next")
    assert second.step() == "summary"
    assert "Not encrypted" in second.page.inner_text("#summary-encryption")
    second.click("#action-save")
    second.page.wait_for_url(re.compile(r"/jobs/\d+/$"))
    first.click("#action-save")
    page.wait_for_url(re.compile(r"/jobs/\d+/$"))
    assert "Job “Tab one” created." in page.inner_text(".messages")
    assert "NAS folder" in page.inner_text("#job-destinations")
    facts = json.loads(
        stack.python(
            "import json; from jobs.models import Job; print(json.dumps({j.name: [j.interval, j.encryption, "
            "[d.name for d in j.destinations.all()], j.runs.count()] "
            "for j in Job.objects.filter(name__startswith='Tab')}))"
        )
    )
    assert facts == {
        "Tab one": ["daily", "password", ["NAS folder"], 0],
        "Tab two": ["manual", "none", ["Server hard drive"], 0],
    }
    assert first.errors == [] and second.errors == []


# --- 4: an abandoned wizard ------------------------------------------------------------------------
SESSIONS = """
import json
from django.contrib.sessions.models import Session
print(json.dumps([{"data": s.get_decoded(), "raw": s.session_data} for s in Session.objects.all()]))
"""


def test_an_abandoned_wizard_leaves_no_secret_in_the_session_table(stack, context):
    user = User(context.new_page(), stack, "abandoned")
    user.login()
    user.page.goto(stack.base + "/jobs/new/")
    wizard = user.page.get_attribute("input[name=wizard_id]", "value")
    fill_general(user, "Abandoned")
    user.click("text=Demo files")
    secret = "a secret nobody may read 42"
    user.fill("#id_content-password1", secret)
    user.fill("#id_content-password2", secret)
    user.click("#wizard-next")
    assert user.step() == "destination"
    user.page.close()  # the tab is closed; the wizard is never finished

    table = stack.python(SESSIONS)
    assert f"wizard_job_wizard_{wizard}" in table  # the wizard is there, its secret is not
    assert secret not in table
    # An hour later (the clock moved on, as the beat task sees it) nothing of it is left.
    removed = stack.python(
        "import time; from jobs.wizard.storage import purge_abandoned;print(purge_abandoned(now=time.time() + 3601))"
    )
    assert int(removed) >= 1
    table = stack.python(SESSIONS)
    assert f"wizard_job_wizard_{wizard}" not in table and "step_secrets" not in table
    assert "_auth_user_id" in table  # the session itself (the login) stays
