"""Query counts of the overview pages are locked: they do not grow with the rows shown
(bench/pages.py measures the same pages with 1,000 jobs and 100,000 runs). A change that
adds a query per row fails here first."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from destinations.models import Destination
from jobs.models import Job, Run, Source, Upload

# Every request of a signed-in administrator: the session, the user, the user's and the
# groups' permissions, the user's groups (the role shown in the header).
PER_REQUEST = 5


def make_jobs(count: int, runs_per_job: int = 4) -> list[Job]:
    start = Job.objects.count()
    destination = Destination.objects.create(name=f"Disk {start}", kind="local", settings={"path": "/srv/b"})
    jobs = []
    now = timezone.now()
    for n in range(start, start + count):
        source = Source.objects.create(name=f"Files {n}", kind="directory", settings={"path": f"/srv/f{n}"})
        job = Job.objects.create(name=f"Job {n:03d}")
        job.sources.set([source])
        job.destinations.set([destination])
        for k in range(runs_per_job):
            state = Run.State.FAILED if k == 1 else Run.State.SUCCEEDED
            run = Run.objects.create(
                job=job,
                job_name=job.name,
                state=state,
                created_at=now - timezone.timedelta(hours=k),
                finished_at=now - timezone.timedelta(hours=k, minutes=-1),
                archive_name=f"{job.slug}-{k}.tar.zst",
                archive_size=100,
            )
            Upload.objects.create(run=run, destination=destination, destination_name=destination.name)
        jobs.append(job)
    Run.objects.create(job=jobs[0], job_name=jobs[0].name, state=Run.State.RUNNING)  # "running now"
    return jobs


def queries_of(client, url: str, django_assert_max_num_queries) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client.get(url)  # warm (the session's first save, content types)
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    return len(captured.captured_queries)


@pytest.fixture
def admin(client, alice):
    client.force_login(alice)
    return client


@pytest.mark.parametrize(
    "page, expected",
    [
        # count, the page of jobs, their latest runs, runs in progress and their uploads, the
        # dispatcher's and the workers' heartbeat rows (the services box)
        ("dashboard", PER_REQUEST + 7),
        ("jobs:run_list", PER_REQUEST + 2),  # count, the page
        ("jobs:run_list?state=failed", PER_REQUEST + 2),
        ("jobs:source_list", PER_REQUEST + 3),  # count, the page with job counts, the first jobs of each
    ],
)
def test_overview_pages_do_not_grow_with_the_rows_shown(
    admin, page, expected, django_assert_num_queries, django_assert_max_num_queries
):
    name, _, query = page.partition("?")
    url = reverse(name) + (f"?{query}" if query else "")
    make_jobs(2)
    small = queries_of(admin, url, django_assert_max_num_queries)
    make_jobs(12)
    with django_assert_num_queries(expected):
        response = admin.get(url)
    assert response.status_code == 200
    assert small == expected
    text = response.content.decode()
    if name == "dashboard":
        assert "Job 013" in text and "Running now" in text
    if name == "jobs:source_list":
        assert "Files 13" in text


def test_the_dashboard_shows_each_jobs_latest_run_and_last_success(admin):
    (job,) = make_jobs(1)
    latest = Run.objects.filter(job=job).order_by("-created_at").first()
    text = admin.get(reverse("dashboard")).content.decode()
    row = text.split(f'<th scope="row"><a href="{job.get_absolute_url()}">', 1)[1].split("</tr>")[0]
    assert latest.get_absolute_url() in row and "Running" in row  # the run in progress is the latest
    assert "no successful backup yet" not in row


def test_the_dashboard_pages_through_many_jobs(admin):
    make_jobs(30, runs_per_job=1)
    first = admin.get(reverse("dashboard")).content.decode()
    second = admin.get(reverse("dashboard") + "?page=2").content.decode()
    assert "Job 000" in first and "Job 029" not in first and "Page 1 of 2 (30 jobs)" in first
    table = second.split("<table", 1)[1]
    assert "Job 029" in table and "Job 000" not in table


def test_the_restore_page_counts_newer_backups_in_two_queries(admin, job, folders, django_assert_num_queries):
    from jobs import restores, services

    run = services.execute_run(services.create_run(job).pk)
    for _ in range(2):
        services.execute_run(services.create_run(job).pk)
    with django_assert_num_queries(2):
        newer = restores.newer_backups(run)
    assert newer.count == 2
    for _ in range(3):
        Run.objects.create(job=job, job_name=job.name, state=Run.State.SUCCEEDED, archive_size=1)
    with django_assert_num_queries(2):
        assert restores.newer_backups(run).count == 5


def test_the_source_list_names_three_jobs_and_counts_the_rest(admin, tmp_path):
    source = Source.objects.create(name="Shared", kind="directory", settings={"path": str(tmp_path)})
    for n in range(5):
        Job.objects.create(name=f"Uses {n}").sources.set([source])
    text = admin.get(reverse("jobs:source_list")).content.decode()
    row = text.split("Shared", 1)[1].split("</tr>")[0]
    assert "Uses 0" in row and "Uses 2" in row and "Uses 3" not in row and "and 2 more" in row


def test_the_end_aware_paginator_gives_the_pages_a_plain_one_gives(db):
    from django.core.paginator import Paginator

    from backupsite.pagination import EndAwarePaginator

    now = timezone.now()
    for n in range(23):  # equal times too: the ordering ends with the primary key
        Run.objects.create(job_name="x", state=Run.State.SUCCEEDED, created_at=now - timezone.timedelta(hours=n // 2))
    runs = Run.objects.order_by("-created_at", "-pk")
    plain, aware = Paginator(runs, 5), EndAwarePaginator(runs, 5)
    for number in plain.page_range:
        assert [r.pk for r in aware.page(number)] == [r.pk for r in plain.page(number)], number
    assert aware.get_page("last").number == 1  # as Paginator: not a number → the first page
    assert len(aware.page(5)) == 3 and aware.page(5).has_previous()


def test_the_runs_list_last_page(admin):
    make_jobs(8, runs_per_job=4)  # 33 runs: 2 pages of 25
    text = admin.get(reverse("jobs:run_list") + "?page=2").content.decode()
    oldest = Run.objects.order_by("created_at", "pk").first()
    assert f'href="{oldest.get_absolute_url()}"' in text and "Page 2 of 2" in text


def test_the_job_page_does_not_grow_with_the_jobs_destinations(admin):
    """The "last proven at the destination" card: read-back results of every destination
    in a fixed number of queries (it was two per destination)."""
    job = make_jobs(1)[0]
    run = job.runs.filter(state=Run.State.SUCCEEDED).first()
    now = timezone.now()

    def add_destination(n: int, ok: bool) -> Destination:
        destination = Destination.objects.create(name=f"Proven {n}", kind="local", settings={"path": f"/srv/p{n}"})
        job.destinations.add(destination)
        Upload.objects.create(
            run=run, destination=destination, destination_name=destination.name, verified_at=now, verify_ok=ok
        )
        return destination

    add_destination(0, True)
    url = reverse("jobs:job_detail", args=[job.pk])
    one = queries_of(admin, url, None)
    for n in range(1, 4):
        add_destination(n, n % 2 == 0)
    assert queries_of(admin, url, None) == one
    page = admin.get(url).content.decode()
    proven = page[page.index('id="proven"') :]
    assert proven.count(">proven</span>") == 2  # Proven 0 and Proven 2 (1 and 3 failed)
    assert proven.count("damaged or missing") == 2
    assert reverse("jobs:run_detail", args=[run.pk]) in proven


def test_the_job_pages_destinations_show_the_newest_upload_and_the_newest_verification(admin):
    """Last upload: the newest upload of this job (whatever its state); last verification:
    the newest read-back, failed or not, not the newest upload's (never verified)."""
    job = make_jobs(1)[0]
    oldest, older, newer = job.runs.order_by("created_at", "pk")[:3]
    destination = Destination.objects.create(name="Columns", kind="local", settings={"path": "/srv/columns"})
    job.destinations.add(destination)
    now = timezone.now()
    kw = {"destination": destination, "destination_name": destination.name}
    Upload.objects.create(run=oldest, verified_at=now - timezone.timedelta(days=2), verify_ok=True, **kw)
    Upload.objects.create(run=older, verified_at=now - timezone.timedelta(days=1), verify_ok=False, **kw)
    Upload.objects.create(run=newer, state=Upload.State.SUCCEEDED, finished_at=now, **kw)
    page = admin.get(reverse("jobs:job_detail", args=[job.pk])).content.decode()
    table = page[page.index('id="job-destinations"') : page.index('id="proven"')]
    row = table[table.index(">Columns</a>") :].split("</tr>")[0]
    assert reverse("jobs:run_detail", args=[newer.pk]) in row and ">Succeeded</span>" in row  # the upload
    assert '<span class="state state-failed">Failed</span>' in row and ">OK</span>" not in row  # the verification
    assert "never verified" not in row and "nothing uploaded yet" not in row
