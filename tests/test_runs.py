"""A job run end to end in-process: archive, upload, progress, failures, locks."""

from __future__ import annotations

import hashlib
import json

import pytest
from django.core import mail
from django.urls import reverse
from django.utils import timezone

from jobs import services
from jobs.models import Run, Upload
from tests.conftest import require_binary, restore_with_stock_tools, trees_identical


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_job(job, **kwargs) -> Run:
    run = services.create_run(job, **kwargs)
    return services.execute_run(run.pk)


def test_a_run_archives_uploads_and_records_everything(job, folders, source_tree, tmp_path):
    require_binary("zstd")
    run = run_job(job)
    assert run.state == Run.State.SUCCEEDED, run.error
    assert run.phase == Run.Phase.DONE
    assert run.archive_name.startswith("office-backup-") and run.archive_name.endswith(".tar.zst")
    local = run.local_file
    assert local.is_file() and local.stat().st_size == run.archive_size
    assert sha256(local) == run.archive_sha256
    assert run.file_count == 5
    assert run.bytes_done == run.bytes_total > 3 * 1024 * 1024

    remote_dir = folders["backups"] / "backupsite" / job.slug
    assert sorted(p.name for p in remote_dir.iterdir()) == [run.archive_name, run.archive_name + ".manifest.json"]
    assert sha256(remote_dir / run.archive_name) == run.archive_sha256
    upload = run.uploads.get()
    assert upload.state == Upload.State.SUCCEEDED and upload.attempts == 1

    manifest = json.loads((remote_dir / (run.archive_name + ".manifest.json")).read_text())
    assert manifest["run"] == run.pk
    assert manifest["archive"]["sha256"] == run.archive_sha256
    assert manifest["sources"] == [{"name": "Office files", "slug": "office-files", "kind": "directory"}]

    target = tmp_path / "restore"
    restore_with_stock_tools(local, target)
    assert trees_identical(source_tree, target / "office-files")


def test_the_configuration_is_a_snapshot(job):
    run = services.create_run(job)
    job.sources.clear()
    run = services.execute_run(run.pk)
    assert run.state == Run.State.SUCCEEDED
    assert run.config["sources"][0]["name"] == "Office files"


def test_a_missing_source_fails_with_a_readable_message_and_an_email(job, source_tree):
    source = job.sources.get()
    source.settings = {"path": str(source_tree / "does-not-exist")}
    source.save()
    run = run_job(job)
    assert run.state == Run.State.FAILED
    assert "does not exist" in run.error and str(source_tree) in run.error
    assert not list(services.archive_dir_for(job.slug).glob("*.tar.zst*"))
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert sorted(message.to) == ["boss@example.com", "ops@example.com"]
    assert "Office backup" in message.subject and "failed" in message.subject
    assert run.error in message.body and f"/runs/{run.pk}/" in message.body


def test_a_failing_destination_keeps_the_local_copy_and_alerts(job, folders):
    destination = job.destinations.get()
    destination.settings = {"path": str(folders["backups"] / "unplugged")}
    destination.save()
    run = run_job(job)
    assert run.state == Run.State.FAILED
    assert run.local_file.is_file()
    upload = run.uploads.get()
    assert upload.state == Upload.State.FAILED and "does not exist" in upload.error
    assert len(mail.outbox) == 1


def test_unreadable_items_make_the_run_partial_not_silent(job, source_tree):
    import os

    os.mkfifo(source_tree / "pipe")
    run = run_job(job)
    assert run.state == Run.State.PARTIAL
    assert "office-files/pipe" in run.log
    assert "could not be backed up" in run.error


def test_no_two_active_runs_of_one_job(job):
    services.create_run(job)
    with pytest.raises(services.AlreadyRunning, match="already running"):
        services.create_run(job)
    assert Run.objects.filter(job=job).count() == 1


def test_double_click_on_run_now_makes_one_run(client, alice, job, django_capture_on_commit_callbacks):
    client.force_login(alice)
    url = reverse("jobs:job_run_now", args=[job.pk])
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        first = client.post(url)
        second = client.post(url, follow=True)
    assert len(callbacks) == 1
    assert Run.objects.filter(job=job).count() == 1
    assert first.status_code == 302
    assert "already running" in second.content.decode()


def test_run_now_enqueues_through_celery_and_the_page_shows_the_result(
    client, bob, job, django_capture_on_commit_callbacks
):
    client.force_login(bob)
    with django_capture_on_commit_callbacks(execute=True):  # eager Celery runs the task here
        response = client.post(reverse("jobs:job_run_now", args=[job.pk]))
    run = Run.objects.get(job=job)
    assert response["Location"] == run.get_absolute_url()
    assert run.state == Run.State.SUCCEEDED
    page = client.get(run.get_absolute_url()).content.decode()
    assert "Succeeded" in page and "zstd -dc" in page and reverse("jobs:run_download", args=[run.pk]) in page


def test_a_duplicate_delivery_never_executes_twice(job):
    run = services.create_run(job)
    assert services.claim(run.pk) == "claimed"
    assert services.claim(run.pk) == "gone"


def test_a_run_waits_while_the_heavy_slot_is_taken(job, settings, folders, source_tree):
    from destinations.models import Destination
    from jobs.models import Job

    other = Job.objects.create(name="Other")
    other.sources.set(job.sources.all())
    other.destinations.set(Destination.objects.all())
    busy = services.create_run(other)
    assert services.claim(busy.pk) == "claimed"
    run = services.create_run(job)
    assert services.execute_run(run.pk).state == Run.State.WAITING
    Run.objects.filter(pk=busy.pk).update(state=Run.State.SUCCEEDED)
    assert services.execute_run(run.pk).state == Run.State.SUCCEEDED


def test_progress_is_written_to_the_row_and_cancel_stops_the_run(job, monkeypatch):
    # Every progress call writes here (1 s apart in production): the write after the
    # cancel request sees it and stops the run.
    real_init = services.Progress.__init__
    monkeypatch.setattr(services.Progress, "__init__", lambda self, run, **kw: real_init(self, run, **kw, interval=0))
    seen = []

    def listener(run):
        seen.append((run.phase, run.bytes_done, run.bytes_total))
        if run.phase == Run.Phase.ARCHIVE:
            Run.objects.filter(pk=run.pk).update(cancel_requested=True)

    run = services.create_run(job)
    run = services.execute_run(run.pk, listener=listener)
    assert run.state == Run.State.CANCELLED
    assert ("collect", 0, 0) in seen
    assert any(phase == "archive" and total > 0 for phase, _, total in seen)
    assert not list(services.archive_dir_for(job.slug).glob("*.tar.zst*"))
    assert not mail.outbox  # a cancellation is not an alert


def test_the_progress_fragment_shows_a_bar_while_running(client, charlie, job):
    run = services.create_run(job)
    Run.objects.filter(pk=run.pk).update(state=Run.State.RUNNING, phase="archive", bytes_done=50, bytes_total=200)
    client.force_login(charlie)
    html = client.get(reverse("jobs:run_progress", args=[run.pk])).content.decode()
    assert 'data-poll-active="true"' in html
    assert '<progress max="100" value="25"' in html
    assert "Cancel" not in html  # viewers cannot cancel (and the button is not in the fragment)


def test_stale_running_runs_are_reaped(job, settings):
    run = services.create_run(job)
    services.claim(run.pk)
    old = timezone.now() - timezone.timedelta(seconds=settings.BACKUPSITE_STALE_RUN_SECONDS + 5)
    Run.objects.filter(pk=run.pk).update(heartbeat_at=old)
    assert services.reap_stale_runs() == 1
    run.refresh_from_db()
    assert run.state == Run.State.INTERRUPTED and run.state in Run.FINAL_STATES
    assert run.error.startswith("Interrupted: the worker stopped while preparing the sources (no heartbeat for 6")
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.subject == "[backupsite] Backup interrupted: Office backup"
    assert "What happened: The worker running this backup stopped before the run finished" in message.body
    # The job is free again.
    assert services.create_run(job).state == Run.State.QUEUED


def test_runs_list_is_paginated_newest_first(client, charlie, job):
    for n in range(30):
        Run.objects.create(
            job=job,
            job_name=job.name,
            state=Run.State.SUCCEEDED,
            created_at=timezone.now() - timezone.timedelta(minutes=n),
        )
    client.force_login(charlie)
    page1 = client.get(reverse("jobs:run_list")).context["page"]
    assert page1.paginator.count == 30 and len(page1.object_list) == 25
    assert list(page1.object_list) == sorted(page1.object_list, key=lambda r: r.created_at, reverse=True)
    page2 = client.get(reverse("jobs:run_list") + "?page=2").context["page"]
    assert len(page2.object_list) == 5


def test_runs_list_page_links_say_newer_older_and_keep_the_state_filter(client, charlie, job):
    for _ in range(30):
        Run.objects.create(job=job, job_name=job.name, state=Run.State.FAILED)
    client.force_login(charlie)
    first = client.get(reverse("jobs:run_list"), {"state": "failed"}).content.decode()
    assert "Page 1 of 2" in first and "Older →" in first and "Newer" not in first
    assert 'href="?page=2&amp;state=failed" rel="next"' in first
    second = client.get(reverse("jobs:run_list"), {"state": "failed", "page": "2"}).content.decode()
    assert 'href="?page=1&amp;state=failed" rel="prev"' in second and "← Newer" in second
    unknown = client.get(reverse("jobs:run_list"), {"state": "<b>"}).content.decode()
    assert 'href="?page=2" rel="next"' in unknown  # an unknown state is not carried along


def test_dashboard_lists_jobs_with_last_run_and_last_success(client, charlie, job):
    run_job(job)
    client.force_login(charlie)
    html = client.get(reverse("dashboard")).content.decode()
    assert "Office backup" in html and "Succeeded" in html and "manual only" in html


def test_job_name_with_header_injection_is_rejected(db):
    from django.core.exceptions import ValidationError

    from jobs.models import Job

    with pytest.raises(ValidationError):
        Job(name="x\r\nBcc: x@evil.example", report_to="a@example.com").full_clean()


def test_duration_is_human_readable(job):
    run = Run(started_at=timezone.now() - timezone.timedelta(seconds=192), finished_at=timezone.now())
    assert run.duration_display == "3 min 12 s"
    run.started_at = run.finished_at - timezone.timedelta(hours=2, minutes=5, seconds=3)
    assert run.duration_display == "2 h 05 min"


def test_an_export_runs_duration_reads_like_a_backups():
    """Export runs said "125 min 00 s" where backups said "2 h 05 min"."""
    from jobs.exports.models import ExportRun

    now = timezone.now()
    export_run = ExportRun(started_at=now - timezone.timedelta(hours=2, minutes=5, seconds=3), finished_at=now)
    assert export_run.duration_display == "2 h 05 min"


@pytest.mark.django_db(transaction=True)
def test_the_heartbeat_keeps_a_long_quiet_run_alive(job):
    import time

    run = services.create_run(job)
    services.claim(run.pk)
    old = timezone.now() - timezone.timedelta(hours=1)
    Run.objects.filter(pk=run.pk).update(heartbeat_at=old)
    beat = services.Heartbeat(run.pk, interval=0.05)
    beat.start()
    time.sleep(0.3)
    beat.stop()
    assert not beat.is_alive()
    run.refresh_from_db()
    assert run.heartbeat_at > old + timezone.timedelta(minutes=59)
    assert services.reap_stale_runs() == 0


def test_the_time_limit_marks_the_run_timed_out_cleans_up_and_alerts(job, monkeypatch):
    from celery.exceptions import SoftTimeLimitExceeded

    from jobs.engine import archive

    real = archive._header

    def slow_then_limit(entry, *args):
        if entry.arcname.endswith("blob.bin"):
            raise SoftTimeLimitExceeded()  # what Celery raises inside the task
        return real(entry, *args)

    monkeypatch.setattr(archive, "_header", slow_then_limit)
    run = services.execute_run(services.create_run(job).pk)
    assert run.state == Run.State.TIMED_OUT and run.state in Run.FINAL_STATES
    assert run.error.startswith("Timed out: the run took longer than the time limit (6")
    assert not list(services.archive_dir_for(job.slug).glob("*.tar.zst*"))
    assert not list(services.archive_dir_for(job.slug).glob(".*.partial"))
    assert len(mail.outbox) == 1
    assert mail.outbox[0].subject == "[backupsite] Backup timed out: Office backup"
    assert "What happened: The run took longer than the time limit (6 hours, CELERY_SOFT_TIME_LIMIT)" in (
        mail.outbox[0].body
    )
    monkeypatch.undo()
    assert services.execute_run(services.create_run(job).pk).state == Run.State.SUCCEEDED  # lock freed
