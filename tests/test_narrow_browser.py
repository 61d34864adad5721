"""The list pages on a phone (380 px wide, headless Chromium): nothing makes the page
wider than the screen. The audit log's filter row used to stay on one line (941 px) and
a source's long path pushed the sources list to 431 px."""

from __future__ import annotations

import pytest

from tests.test_destination_browser import browser, logged_in  # noqa: F401  (the module-scoped browser)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

NARROW = {"width": 380, "height": 800}


def test_list_pages_do_not_scroll_sideways_at_380_px(browser, live_server, client, alice, job, folders):  # noqa: F811
    from backupsite import audit
    from jobs.models import Run, Source

    deep = folders["backups"] / ("a-rather-long-folder-name-without-breaks" * 2)
    deep.mkdir(parents=True)
    Source.objects.create(name="Deep folder", kind="directory", settings={"path": str(deep)})
    Run.objects.create(job=job, job_name=job.name, state=Run.State.FAILED)
    audit.record(alice, audit.LOGIN, alice)
    page = logged_in(browser, live_server, client, alice, viewport=NARROW)
    widths = {}
    for url in ("/audit/", "/audit/?actor=alice", "/runs/", "/sources/", "/exports/runs/", "/exports/new/", "/"):
        page.goto(live_server.url + url)
        widths[url] = page.evaluate("document.documentElement.scrollWidth")
    wide = {url: width for url, width in widths.items() if width > NARROW["width"]}
    assert not wide, wide
