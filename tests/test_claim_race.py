"""Claiming the heavy slot from many threads at once, with real transactions (issue 12,
item 1): the ``SlotLock`` row lock (``SELECT … FOR UPDATE`` on PostgreSQL; SQLite's
IMMEDIATE transactions) lets exactly one claim take the last slot, and a run delivered
twice is taken once. Each thread has its own database connection, as each worker has.
"""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from django.db import connection

from jobs import services
from jobs.models import Job, Run

THREADS = 6


def claim_all_at_once(run_ids: list[int]) -> list[str]:
    barrier = threading.Barrier(len(run_ids))
    results: list[str] = []
    errors: list[BaseException] = []

    def claim(run_id: int) -> None:
        try:
            barrier.wait(timeout=30)
            results.append(services.claim(run_id))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=claim, args=(run_id,)) for run_id in run_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    return results


@pytest.mark.django_db(transaction=True)
def test_many_workers_claiming_at_once_take_one_slot(settings):
    settings.BACKUPSITE_MAX_CONCURRENT_RUNS = 1
    runs = [services.create_run(Job.objects.create(name=f"Job {n}")) for n in range(THREADS)]

    results = claim_all_at_once([run.pk for run in runs])

    assert Counter(results) == {"claimed": 1, "busy": THREADS - 1}
    assert Counter(Run.objects.values_list("state", flat=True)) == {"running": 1, "waiting": THREADS - 1}


@pytest.mark.django_db(transaction=True)
def test_two_slots_are_two(settings):
    settings.BACKUPSITE_MAX_CONCURRENT_RUNS = 2
    runs = [services.create_run(Job.objects.create(name=f"Job {n}")) for n in range(THREADS)]

    results = claim_all_at_once([run.pk for run in runs])

    assert Counter(results) == {"claimed": 2, "busy": THREADS - 2}
    assert Counter(Run.objects.values_list("state", flat=True)) == {"running": 2, "waiting": THREADS - 2}


@pytest.mark.django_db(transaction=True)
def test_a_run_delivered_many_times_at_once_is_taken_once(settings):
    settings.BACKUPSITE_MAX_CONCURRENT_RUNS = 3
    run = services.create_run(Job.objects.create(name="Delivered twice"))

    results = claim_all_at_once([run.pk] * THREADS)

    assert Counter(results) == {"claimed": 1, "gone": THREADS - 1}
    run.refresh_from_db()
    assert run.state == Run.State.RUNNING and run.started_at is not None
