"""The source form in a real browser (headless Chromium through Playwright, the system
browser): the kind's fieldset swaps without a reload, the Test button shows only for
kinds that can be tested, the test runs in the background and keeps what was typed;
without JavaScript every kind's fieldset is shown."""

from __future__ import annotations

import sqlite3

import pytest

from tests.browser import live_server_chromium, logged_in

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def browser():
    with live_server_chromium() as instance:
        yield instance


def test_kinds_swap_and_the_test_runs_in_place(browser, live_server, client, alice, tmp_path):
    from jobs.models import Source

    database = tmp_path / "app.sqlite3"
    conn = sqlite3.connect(database)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    page = logged_in(browser, live_server, client, alice)
    page.goto(f"{live_server.url}/sources/new/")
    assert page.locator("#settings-directory").is_visible()
    assert not page.locator("#settings-mysql").is_visible()
    assert not page.locator("[data-no-js-hint]").is_visible()
    assert not page.locator("[data-test-button]").is_visible()  # a directory has no connection test
    page.evaluate("window.__sameDocument = true")

    page.check("#kind-mysql")
    assert page.locator("#settings-mysql").is_visible() and not page.locator("#settings-directory").is_visible()
    assert page.locator("[data-test-button]").is_visible()

    page.fill("#id_name", "App database")
    page.check("#kind-sqlite")
    page.fill("#id_sqlite-path", str(database))
    page.click("[data-test-button]")
    page.wait_for_selector("#test-result .test-result.ok")
    assert "SQLite" in page.inner_text("#test-result")
    assert page.evaluate("window.__sameDocument") is True  # no reload
    assert page.input_value("#id_name") == "App database" and page.input_value("#id_sqlite-path") == str(database)

    page.fill("#id_sqlite-path", "relative.db")
    page.click("[data-test-button]")  # settings with an error: the form is sent, the error by its field
    page.wait_for_selector("#settings-sqlite .error")
    assert "must be absolute" in page.inner_text("#settings-sqlite")

    page.fill("#id_sqlite-path", str(database))
    page.click("button[value=save]")
    page.wait_for_url(f"{live_server.url}/sources/*/")
    assert Source.objects.get(name="App database").settings == {"path": str(database)}


def test_without_javascript_every_fieldset_is_shown(browser, live_server, client, alice):
    page = logged_in(browser, live_server, client, alice, java_script_enabled=False)
    page.goto(f"{live_server.url}/sources/new/")
    for kind in ("directory", "postgresql", "mysql", "sqlite"):
        assert page.locator(f"#settings-{kind}").is_visible(), kind
    assert page.locator("[data-no-js-hint]").is_visible()
