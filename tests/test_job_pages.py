"""Job pages (list, details, the enabled switch, destinations, delete), one run's backup
(keep forever, delete), one-off runs and retention, and configuration written through
``backupsite.configwrite`` by the pages and the management commands."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from destinations.backends import REGISTRY
from destinations.backends.base import DELETE
from destinations.backends.local import LocalBackend
from destinations.models import Destination
from jobs import services
from jobs.models import Job, Run, Source, Upload
from tests.conftest import grant_sudo

pytestmark = pytest.mark.django_db


def run_job(job) -> Run:
    return services.execute_run(services.create_run(job).pk)


@pytest.fixture
def admin(client, alice):
    client.force_login(alice)
    grant_sudo(client)  # deleting a job asks for the password again (tests/test_sudo.py)
    return client


def make_jobs(count: int, destination: Destination, source: Source) -> None:
    start = Job.objects.count()
    for n in range(start, start + count):
        soon = timezone.now() + timedelta(hours=1)
        job = Job.objects.create(name=f"Bulk {n:03d}", interval="daily", first_run_at=soon)
        job.sources.set([source])
        job.destinations.set([destination])
        Run.objects.create(job=job, job_name=job.name, state=Run.State.SUCCEEDED, finished_at=timezone.now())


# --- the list ------------------------------------------------------------------------------
def test_the_list_shows_schedule_next_run_last_state_destinations_and_a_switch(admin, job):
    job.interval, job.first_run_at, job.timezone = "daily", timezone.now() + timedelta(days=1), "Europe/Berlin"
    job.save()
    run = run_job(job)
    html = admin.get(reverse("jobs:job_list")).content.decode()
    assert job.schedule_description in html
    assert "Europe/Berlin" in html and f'href="/runs/{run.pk}/"' in html and ">Succeeded<" in html
    assert "Local disk" in html
    assert 'aria-pressed="true"' in html and reverse("jobs:job_set_enabled", args=[job.pk]) in html
    assert reverse("jobs:job_create") in html


def test_the_list_is_paginated_with_a_constant_number_of_queries(admin, job, django_assert_max_num_queries):
    source, destination = job.sources.get(), job.destinations.get()
    make_jobs(3, destination, source)
    with django_assert_max_num_queries(20) as few:
        admin.get(reverse("jobs:job_list"))
    make_jobs(40, destination, source)
    with django_assert_max_num_queries(len(few)) as many:
        page = admin.get(reverse("jobs:job_list"))
    assert len(many) == len(few)
    assert page.content.decode().count('<th scope="row">') == 25 and "Page 1 of 2" in page.content.decode()
    assert "Page 2 of 2" in admin.get(reverse("jobs:job_list") + "?page=2").content.decode()


def test_the_switch_disables_and_enables_through_configwrite(admin, job, config_changes):
    url = reverse("jobs:job_set_enabled", args=[job.pk])
    assert admin.post(url, {"enabled": "0", "next": reverse("jobs:job_list")})["Location"] == reverse("jobs:job_list")
    job.refresh_from_db()
    assert job.enabled is False
    assert [(c.action, [f.field for f in c.changes]) for c in config_changes] == [("changed", ["enabled"])]
    admin.post(url, {"enabled": "1"})
    job.refresh_from_db()
    assert job.enabled is True
    assert admin.post(url, {"enabled": "maybe"}).status_code == 400


def test_operators_cannot_switch_edit_or_delete(client, bob, job):
    client.force_login(bob)
    assert client.post(reverse("jobs:job_set_enabled", args=[job.pk]), {"enabled": "0"}).status_code == 403
    assert client.post(reverse("jobs:job_delete", args=[job.pk])).status_code == 403
    assert client.post(reverse("jobs:job_destinations", args=[job.pk]), {"remove": "1"}).status_code == 403
    html = client.get(job.get_absolute_url()).content.decode()
    assert "Run now" in html and "Edit" not in html and "Delete…" not in html


# --- the details -----------------------------------------------------------------------------
def test_the_job_page_shows_settings_upcoming_runs_and_each_destinations_last_upload(admin, job):
    from jobs.verification import verify_run

    job.interval, job.first_run_at, job.timezone = "daily", timezone.now() + timedelta(days=1), "Europe/Berlin"
    job.save()
    run = run_job(job)
    verify_run(run, destination=job.destinations.get(), notify=False)
    html = admin.get(job.get_absolute_url()).content.decode()
    assert "backupsite/office-backup/" in html
    assert html.count("(Europe/Berlin)</li>") == 3  # the next three runs, in the job's zone
    table = html[html.index('id="job-destinations"') :]
    assert "Local disk" in table and ">Succeeded<" in table and ">OK<" in table
    assert reverse("jobs:job_edit", args=[job.pk]) in html and reverse("jobs:job_duplicate", args=[job.pk]) in html


def test_destinations_are_added_and_removed_through_configwrite(admin, job, folders, config_changes):
    other = Destination.objects.create(name="Second disk", kind="local", settings={"path": str(folders["backups"])})
    url = reverse("jobs:job_destinations", args=[job.pk])
    assert f'value="{other.pk}">Second disk' in admin.get(job.get_absolute_url()).content.decode()
    admin.post(url, {"add": other.pk})
    assert sorted(d.name for d in job.destinations.all()) == ["Local disk", "Second disk"]
    response = admin.post(url, {"remove": job.destinations.get(name="Local disk").pk}, follow=True)
    assert [d.name for d in job.destinations.all()] == ["Second disk"]
    assert "The backups already there were left in place" in response.content.decode()
    assert [c.changes[0].field for c in config_changes] == ["destinations", "destinations"]
    assert admin.post(url, {}).status_code == 400


def test_delete_says_the_backups_are_kept_and_keeps_them(admin, job, folders, config_changes):
    run = run_job(job)
    page = admin.get(reverse("jobs:job_delete", args=[job.pk])).content.decode()
    assert "Its backups are kept" in page and "backupsite/office-backup/" in page
    response = admin.post(reverse("jobs:job_delete", args=[job.pk]), follow=True)
    assert "Its backups at the destinations and its runs in the history were kept" in response.content.decode()
    assert not Job.objects.filter(pk=job.pk).exists() and config_changes[-1].action == "deleted"
    run.refresh_from_db()
    assert run.job is None and run.local_file.is_file()
    assert (folders["backups"] / "backupsite" / "office-backup" / run.archive_name).is_file()
    # a new job of the same name never gets that folder (its retention would see them)
    assert Job.objects.create(name="Office backup").slug == "office-backup-2"


def test_delete_is_refused_while_a_run_is_active(admin, job):
    services.create_run(job)
    response = admin.post(reverse("jobs:job_delete", args=[job.pk]), follow=True)
    assert "cancel the run or let it finish first" in response.content.decode()
    assert Job.objects.filter(pk=job.pk).exists()


# --- one run's backup ------------------------------------------------------------------------
def test_keep_forever_protects_an_archive_from_retention(admin, job, folders):
    job.keep_last, job.archive_name_template = 1, "{job}-{run}"  # runs within one second
    job.save()
    first = run_job(job)
    admin.post(reverse("jobs:run_keep_forever", args=[first.pk]), {"keep": "1"})
    first.refresh_from_db()
    assert first.keep_forever and "Marked “keep forever” by alice" in first.log
    second, third = run_job(job), run_job(job)
    remote = folders["backups"] / "backupsite" / "office-backup"
    assert (remote / first.archive_name).is_file() and first.local_file.is_file()
    assert not (remote / second.archive_name).exists()
    assert (remote / third.archive_name).is_file()
    admin.post(reverse("jobs:run_keep_forever", args=[first.pk]), {"keep": "0"})
    run_job(job)
    assert not (remote / first.archive_name).exists()


def test_delete_this_backup_removes_it_here_and_at_the_destinations(admin, job, folders):
    run = run_job(job)
    remote = folders["backups"] / "backupsite" / "office-backup"
    page = admin.get(reverse("jobs:run_delete_backup", args=[run.pk])).content.decode()
    assert "This server (local copy)" in page and "Local disk" in page
    local = run.local_file
    response = admin.post(reverse("jobs:run_delete_backup", args=[run.pk]), follow=True)
    assert "Backup deleted." in response.content.decode()
    assert not local.exists() and not local.with_name(local.name + ".manifest.json").exists()
    assert not (remote / run.archive_name).exists() and not (remote / (run.archive_name + ".manifest.json")).exists()
    run.refresh_from_db()
    assert run.deleted_at is not None and run.state == "succeeded" and "Backup deleted by alice" in run.log
    assert run.uploads.get().state == Upload.State.DELETED
    assert 'id="backup-deleted"' in admin.get(run.get_absolute_url()).content.decode()


def test_a_kept_forever_backup_cannot_be_deleted(admin, job):
    run = run_job(job)
    admin.post(reverse("jobs:run_keep_forever", args=[run.pk]), {"keep": "1"})
    response = admin.post(reverse("jobs:run_delete_backup", args=[run.pk]), follow=True)
    assert "remove the mark first" in response.content.decode()
    assert run.local_file.is_file()


def test_a_kind_that_cannot_delete_keeps_its_copy_and_says_so(admin, job, monkeypatch):
    class WriteOnly(LocalBackend):
        capabilities = LocalBackend.capabilities - {DELETE}

    monkeypatch.setitem(REGISTRY, "local", WriteOnly)
    run = run_job(job)
    page = admin.get(reverse("jobs:run_delete_backup", args=[run.pk])).content.decode()
    assert "cannot delete files" in page
    admin.post(reverse("jobs:run_delete_backup", args=[run.pk]))
    assert run.uploads.get().state == Upload.State.SUCCEEDED


def test_operators_may_neither_delete_backups_nor_keep_them_forever(client, bob, job):
    run = run_job(job)
    client.force_login(bob)
    assert client.post(reverse("jobs:run_delete_backup", args=[run.pk])).status_code == 403
    assert client.post(reverse("jobs:run_keep_forever", args=[run.pk]), {"keep": "1"}).status_code == 403
    assert run.local_file.is_file()


# --- one-off runs ------------------------------------------------------------------------------
def test_a_one_off_run_has_its_own_folder_that_no_jobs_retention_touches(job, folders):
    job.keep_last = 1
    job.save()
    settings_of = Job(name="Office backup", report_to="x@example.com")
    oneoff = services.enqueue_oneoff(settings_of, sources=job.sources.all(), destinations=job.destinations.all())
    oneoff = services.execute_run(oneoff.pk)
    assert oneoff.state == "succeeded" and oneoff.job is None and oneoff.is_oneoff, oneoff.log
    for _ in range(2):
        run_job(job)
    folder = folders["backups"] / "backupsite" / f"oneoff-{oneoff.pk}"
    assert (folder / oneoff.archive_name).is_file() and oneoff.local_file.is_file()
    assert oneoff.archive_name.startswith(f"oneoff-{oneoff.pk}-")
    assert sorted(os.listdir(folders["backups"] / "backupsite")) == ["office-backup", f"oneoff-{oneoff.pk}"]
    # a job named like a one-off folder is kept out of that name space
    assert Job.objects.create(name=f"Oneoff {oneoff.pk}").slug == f"job-oneoff-{oneoff.pk}"


def test_one_off_runs_need_unsaved_settings(job):
    with pytest.raises(ValueError):
        services.enqueue_oneoff(job, sources=[], destinations=[])


# --- management commands ---------------------------------------------------------------------
def test_loaddemo_writes_its_job_through_configwrite(folders, settings, tmp_path, config_changes, monkeypatch):
    monkeypatch.setattr(Source, "measure", lambda self: None)  # the test database is in memory
    settings.DATA_DIR = tmp_path / "data"
    settings.BACKUPSITE_LOCAL_BACKUP_DIR = folders["backups"]
    call_command("loaddemo", stdout=open(os.devnull, "w"))  # noqa: SIM115
    created = [c for c in config_changes if c.model == "jobs.job"]
    assert [(c.action, c.object_repr) for c in created] == [("created", "Demo backup")]
    assert {"sources", "destinations"} <= {f.field for f in created[0].changes}
    call_command("loaddemo", stdout=open(os.devnull, "w"))  # noqa: SIM115 - idempotent
    assert len([c for c in config_changes if c.model == "jobs.job"]) == 1
