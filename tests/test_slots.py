"""The generic heavy-work slot (issue 9, item 3): any kind registered with jobs.slots
takes the same slots as backups (planning exports will register theirs); a waiting run
says on its page what it waits for; a finishing holder of another kind hands the slot to
a waiting backup through the same reconcile."""

from __future__ import annotations

import pytest
from django.utils import timezone

from jobs import reconcile, services, slots
from jobs.models import Run


class FakeExports(slots.HeavyKind):
    """A stand-in for the planning exports' kind: its rows live in a dict here."""

    name = "fake-export"

    def __init__(self):
        self.rows: dict[int, dict] = {}

    def held_count(self):
        return sum(1 for row in self.rows.values() if row["state"] == "running")

    def holders(self):
        return [
            f"the planning export “Topics” (export #{pk})" for pk, r in self.rows.items() if r["state"] == "running"
        ]

    def active(self):
        return [
            reconcile.RunInfo(
                pk,
                row["state"],
                created_at=row["created"],
                heartbeat_at=timezone.now(),
                kind=self.name,
                ref=f"export #{pk}",
            )
            for pk, row in self.rows.items()
            if row["state"] in ("queued", "waiting", "running")
        ]

    def last_release(self):
        return None

    def prepare(self, pk, now):
        return self.rows[pk]["state"] in ("queued", "waiting")

    def start(self, pk, now):
        self.rows[pk]["state"] = "running"

    def park(self, pk):
        self.rows[pk]["state"] = "waiting"

    def apply(self, decision, now):
        return False


@pytest.fixture
def exports(monkeypatch):
    kind = FakeExports()
    monkeypatch.setitem(slots.REGISTRY, kind.name, kind)
    return kind


def test_an_export_holding_the_slot_makes_a_backup_wait_and_the_page_says_for_what(exports, job, client, charlie):
    exports.rows[1] = {"state": "queued", "created": timezone.now()}
    assert slots.claim("fake-export", 1) == slots.CLAIMED
    run = services.create_run(job)
    assert services.claim(run.pk) == slots.BUSY
    client.force_login(charlie)
    html = client.get(f"/runs/{run.pk}/progress/").content.decode()
    assert "Waiting: the only slot for heavy work (BACKUPSITE_MAX_CONCURRENT_RUNS) taken by the planning export" in html
    assert services.reconcile_runs() == []  # kept waiting: the export is alive
    plan = reconcile.plan(
        [i for kind in slots.REGISTRY.values() for i in kind.active()], now=timezone.now(), limits=slots.limits()
    )
    reasons = {(d.run.kind, d.pk): d.reason for d in plan}
    assert reasons[("backup", run.pk)] == "waiting: every slot is held by a live run (export #1)"


def test_a_waiting_backup_starts_when_the_export_gives_the_slot_back(exports, job, django_capture_on_commit_callbacks):
    exports.rows[1] = {"state": "running", "created": timezone.now()}
    run = services.create_run(job)
    assert services.claim(run.pk) == slots.BUSY
    exports.rows[1]["state"] = "succeeded"
    with django_capture_on_commit_callbacks(execute=True):
        applied = services.reconcile_runs()
    assert [(d.run.kind, d.action) for d in applied] == [("backup", reconcile.WAKE)]
    run.refresh_from_db()
    assert run.state == Run.State.SUCCEEDED


def test_a_backup_holding_the_slot_makes_an_export_wait(exports, job):
    run = services.create_run(job)
    assert services.claim(run.pk) == slots.CLAIMED
    exports.rows[2] = {"state": "queued", "created": timezone.now()}
    assert slots.claim("fake-export", 2) == slots.BUSY and exports.rows[2]["state"] == "waiting"
    assert "the backup of “Office backup” (run #" in slots.waiting_for()
