"""The destination form in a real browser (headless Chromium through Playwright): the
kind's fieldset swaps without a reload, the test runs in the background and keeps what
was typed (the password too), a fingerprint is confirmed and saved; without JavaScript
every fieldset is shown."""

from __future__ import annotations

import pytest

from tests.browser import live_server_chromium, logged_in
from tests.kinds import pinned

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def browser():
    with live_server_chromium() as instance:
        yield instance


def test_kinds_swap_and_the_test_runs_in_place(browser, live_server, client, alice, folders, monkeypatch):
    from destinations.models import Destination

    pinned.register(monkeypatch)
    page = logged_in(browser, live_server, client, alice)
    page.goto(f"{live_server.url}/destinations/new/")
    assert page.locator("#settings-local").is_visible()
    assert not page.locator("#settings-usb").is_visible()
    assert not page.locator("[data-no-js-hint]").is_visible()
    page.evaluate("window.__sameDocument = true")

    page.check("#kind-usb")
    assert page.locator("#settings-usb").is_visible() and not page.locator("#settings-local").is_visible()
    page.check("#kind-pinned")
    assert page.locator("#settings-pinned").is_visible() and not page.locator("#settings-usb").is_visible()

    page.fill("#id_name", "Office server")
    page.fill("#id_pinned-path", str(folders["backups"] / "server"))
    page.fill("#id_pinned-user", "backup")
    page.fill("#id_pinned-password", pinned.PASSWORD)
    page.click("button[value='test']")
    page.wait_for_selector("#test-result .fingerprint")
    assert pinned.SERVER_KEY in page.inner_text("#test-result")
    assert pinned.LOGINS == []  # nothing sent to an unconfirmed server
    assert page.evaluate("window.__sameDocument") is True  # no reload
    assert page.input_value("#id_pinned-password") == pinned.PASSWORD  # nothing typed was lost

    page.click("text=I have checked this fingerprint: trust it")
    page.wait_for_selector("#test-result .test-result.ok")
    assert page.evaluate("window.__sameDocument") is True
    assert pinned.LOGINS == [pinned.PASSWORD]

    with page.expect_navigation():
        page.click("button[value='save']")
    destination = Destination.objects.get(name="Office server")
    assert page.url.endswith(destination.get_absolute_url())
    assert destination.settings["host_key"] == pinned.SERVER_KEY
    assert destination.secrets == {"password": pinned.PASSWORD}
    assert destination.last_test_ok is True
    assert pinned.PASSWORD not in page.content()


def test_invalid_settings_fall_back_to_a_page_with_the_errors(browser, live_server, client, alice, folders):
    page = logged_in(browser, live_server, client, alice)
    page.goto(f"{live_server.url}/destinations/new/")
    page.fill("#id_local-path", "/etc")
    with page.expect_navigation():
        page.click("button[value='test']")
    assert "must be inside one of the allowed folders" in page.inner_text("#settings-local")
    assert page.input_value("#id_local-path") == "/etc"


def test_without_javascript_every_kind_is_shown(browser, live_server, client, alice, folders):
    page = logged_in(browser, live_server, client, alice, java_script_enabled=False)
    page.goto(f"{live_server.url}/destinations/new/")
    assert page.locator("#settings-local").is_visible() and page.locator("#settings-usb").is_visible()
    assert page.locator("[data-no-js-hint]").is_visible()
    page.fill("#id_name", "Plain disk")
    page.fill("#id_local-path", str(folders["backups"]))
    with page.expect_navigation():
        page.click("button[value='test']")
    assert "Test passed" in page.inner_text("#test-result")
    with page.expect_navigation():
        page.click("button[value='save']")
    assert "Destination “Plain disk” created." in page.content()
