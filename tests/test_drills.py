"""The integrity drill (issue 9, item 8): the newest backup at each readable destination
is read back and compared with its manifest without a password (encrypted archives byte
for byte); a damaged or missing file marks the upload invalid and e-mails report-to; the
job page shows "last proven at the destination"; due weekly by default, queued once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.core import mail
from django.utils import timezone

from jobs import drills, enqueue, services
from jobs.models import Activity, Job, Run

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def made(job) -> Run:
    run = services.execute_run(services.create_run(job).pk)
    assert run.state == Run.State.SUCCEEDED, run.error
    return run


def remote(folders, job, run):
    return folders["backups"] / "backupsite" / job.slug / run.archive_name


def test_the_drill_is_due_one_interval_after_the_first_upload_and_then_after_each_drill():
    week = 7
    rows = [
        (1, week, None, NOW - timedelta(days=8)),  # first drill due
        (2, week, None, NOW - timedelta(days=2)),  # too early
        (3, week, NOW - timedelta(days=7, minutes=1), NOW - timedelta(days=30)),  # a week since the last
        (4, 0, None, NOW - timedelta(days=30)),  # switched off
        (5, week, None, None),  # nothing uploaded yet
    ]
    assert drills.due(rows, NOW) == [1, 3]


def test_an_intact_backup_is_proven_and_the_job_page_says_when(client, charlie, job, folders):
    run = made(job)
    dest = job.destinations.get()
    message = drills.drill(job.pk, dest.pk)
    assert message.startswith("Integrity drill: ") and "OK" in message.upper()
    upload = run.uploads.get()
    assert upload.verify_ok is True and upload.verified_at is not None
    activity = Activity.objects.get(run=run, kind=Activity.Kind.DRILL)
    assert activity.state == Activity.State.SUCCEEDED and activity.bytes_done == run.archive_size
    client.force_login(charlie)
    page = client.get(job.get_absolute_url()).content.decode()
    assert "Last proven at the destination" in page and ">proven</span>" in page
    assert not mail.outbox


def test_a_damaged_backup_is_marked_invalid_and_emailed(client, charlie, job, folders):
    run = made(job)
    path = remote(folders, job, run)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    drills.drill(job.pk, job.destinations.get().pk)
    upload = run.uploads.get()
    assert upload.verify_ok is False and upload.is_invalid and "checksum" in upload.verify_message
    [message] = mail.outbox
    assert message.subject == f"[backupsite] Backup damaged: Office backup (run #{run.pk})"
    assert sorted(message.to) == ["boss@example.com", "ops@example.com"]
    client.force_login(charlie)
    page = client.get(job.get_absolute_url()).content.decode()
    assert "damaged or missing" in page
    assert ">invalid</span>" in client.get(f"/runs/{run.pk}/progress/").content.decode()


def test_a_missing_backup_is_marked_invalid_too(job, folders):
    run = made(job)
    remote(folders, job, run).unlink()
    drills.drill(job.pk, job.destinations.get().pk)
    upload = run.uploads.get()
    assert upload.verify_ok is False and "missing" in upload.verify_message
    assert len(mail.outbox) == 1


def test_an_encrypted_backup_is_checked_without_the_password(job, folders):
    job.set_backup_password("correct horse battery staple")
    job.save()
    run = made(job)
    drills.drill(job.pk, job.destinations.get().pk)  # no password given
    assert run.uploads.get().verify_ok is True
    path = remote(folders, job, run)
    path.write_bytes(path.read_bytes()[:-1])  # truncated
    drills.drill(job.pk, job.destinations.get().pk)
    assert run.uploads.get().verify_ok is False


def test_the_tick_queues_one_drill_per_readable_destination_once(job, monkeypatch):
    made(job)
    sent = []
    monkeypatch.setattr(enqueue, "_send", lambda name, args, *, queue, countdown=None: sent.append((name, args)))
    later = timezone.now() + timedelta(days=8)
    assert drills.queue_due(later) == 1
    assert drills.queue_due(later) == 0  # claimed: a second tick queues nothing
    assert Job.objects.get(pk=job.pk).last_drill_at == later
