"""The Content-Security-Policy in a real browser (headless Chromium through Playwright):
the destination pages and the whole wizard work under it, and Chromium reports no CSP
violation (no ``securitypolicyviolation`` event, no "Content Security Policy" console
message) on any page visited."""

from __future__ import annotations

import pytest

from destinations import backends  # noqa: F401  (before tests.kinds: netguard first is a circular import)
from tests.test_destination_browser import browser, logged_in  # noqa: F401  (the module-scoped browser)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

COLLECT_VIOLATIONS = """
window.__csp = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__csp.push(e.violatedDirective + ' ' + (e.blockedURI || 'inline') + ' ' + (e.sourceFile || ''));
});
"""


def watched(page) -> list[str]:
    """Console messages about the policy, collected for the page's whole life."""
    messages: list[str] = []
    page.on("console", lambda msg: messages.append(msg.text) if "Content Security Policy" in msg.text else None)
    page.add_init_script(COLLECT_VIOLATIONS)
    return messages


def violations(page) -> list[str]:
    return page.evaluate("window.__csp || []")


def test_the_destination_pages_and_the_wizard_work_under_the_policy(browser, live_server, client, alice, job, folders):  # noqa: F811
    from jobs.models import Job

    page = logged_in(browser, live_server, client, alice)
    console = watched(page)
    seen = []

    response = page.goto(f"{live_server.url}/destinations/new/")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    page.check("#kind-usb")  # the kind fieldsets swap by script
    assert page.locator("#settings-usb").is_visible() and not page.locator("#settings-local").is_visible()
    page.check("#kind-local")
    page.fill("#id_name", "Under the policy")
    page.fill("#id_local-path", str(folders["backups"]))
    page.click("button[value='test']")  # a fetch in the background, its fragment inserted
    page.wait_for_selector("#test-result .test-result")
    assert "Test passed" in page.inner_text("#test-result"), page.inner_text("#test-result") + str(violations(page))
    seen += violations(page)
    with page.expect_navigation():
        page.click("button[value='save']")
    assert "Destination “Under the policy” created." in page.content()
    seen += violations(page)

    page.goto(f"{live_server.url}/jobs/new/")
    page.fill("#id_general-name", "Made under the policy")
    page.fill("#id_general-report_to", "ops@example.com")
    page.wait_for_selector("#folder-preview:has-text('made-under-the-policy')")  # the preview fetched by script
    seen += violations(page)
    page.click("#wizard-next")
    page.check(f"input[name='content-sources'][value='{job.sources.get().pk}']")
    page.check("input[name='content-encryption'][value='none']")
    assert page.locator("#no-encryption-note").is_visible()  # shown by script
    seen += violations(page)
    page.click("#wizard-next")
    page.wait_for_selector("#remote-folder")
    seen += violations(page)
    page.click("#wizard-next")
    page.wait_for_selector("#action-save")
    seen += violations(page)
    with page.expect_navigation():
        page.click("#action-save")
    assert Job.objects.filter(name="Made under the policy").exists()
    seen += violations(page)

    for path in ("/", "/jobs/", "/runs/", "/destinations/", "/sources/", "/audit/", "/users/"):
        page.goto(live_server.url + path)
        seen += violations(page)
    assert seen == [] and console == []
