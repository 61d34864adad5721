"""The Restore page with a real Celery worker (the filesystem broker, as ``make run``):
the web request only queues, the worker restores and its progress reaches the page's
fragment; the key ticket is gone afterwards (RELIABILITY 16 from the Restore page, on a
worker). The installation is tests/workers.py's: a panel on a free port and a worker."""

from __future__ import annotations

import time
import urllib.parse

import pytest

from tests.conftest import trees_identical

pytest_plugins = ["tests.workers"]


@pytest.mark.slow
def test_a_restore_from_the_page_runs_on_the_real_worker(install):
    install.worker().start()
    pk = install.run_now("Quick")
    install.wait_for(pk, {"succeeded"}, timeout=120)
    target = install.data / "restores" / f"run-{pk}"
    page = install.browser.get(f"/runs/{pk}/restore/").read().decode()
    assert str(target) in page
    response = install.browser.post(f"/runs/{pk}/restore/", {"location": "local", "target": str(target)})
    path = urllib.parse.urlparse(response.geturl()).path
    assert path.startswith("/restores/"), path
    restore_id = int(path.strip("/").split("/")[-1])
    deadline = time.monotonic() + 60
    while True:
        fragment = install.browser.get(f"/restores/{restore_id}/progress/").read().decode()
        if 'data-poll-active="false"' in fragment:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"the restore did not finish:\n{fragment}\n{install.worker_logs()}")
        time.sleep(0.2)
    assert "Restored 2 files" in fragment, fragment
    assert trees_identical(install.data / "quick-files", target / "quick-files")
    assert install.stack.rows("SELECT id FROM jobs_restoreticket") == []  # on either stack's database
    (restore,) = install.stack.rows("SELECT state, bytes_done, bytes_total FROM jobs_restore")
    assert restore["state"] == "succeeded" and restore["bytes_done"] == restore["bytes_total"] > 0
    # The worker logged the task, not the web process: the request only queued it.
    assert "jobs.tasks.restore_ticket" in install.worker_logs()
