"""Alerts (issue 9, item 9) through a real SMTP server (aiosmtpd on loopback) and a real
HTTP server for the ping URL: failure e-mails with the job, the run link, the phase, the
error and where the backups are kept; one recovery e-mail; optional success e-mails;
stale alerts once per stale period; the test e-mail button; delivery after commit, and
retried while the mail server is down; pings at start, on success and to /fail with the
error, refused for loopback addresses unless local destinations are allowed."""

from __future__ import annotations

import http.server
import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.db.models import TextField
from django.db.models.functions import Cast
from django.urls import reverse
from django.utils import timezone

from jobs import notifications, services
from jobs.models import Job, Notification, Run

pytest_plugins = ["tests.mailserver"]


def failing(job, folders):
    source = job.sources.get()
    source.settings = {"path": str(folders["root"] / "gone")}
    source.save()


def healthy(job, source_tree):
    source = job.sources.get()
    source.settings = {"path": str(source_tree)}
    source.save()


def run(job) -> Run:
    return services.execute_run(services.create_run(job).pk)


# --- e-mails through a real SMTP server ----------------------------------------------------
def test_a_failed_run_emails_the_report_to_addresses_with_phase_error_link_and_where_backups_are(
    smtp, job, folders, source_tree
):
    good = run(job)
    assert good.state == Run.State.SUCCEEDED
    failing(job, folders)
    bad = run(job)
    assert bad.state == Run.State.FAILED
    [message] = smtp.wait_for(1)
    assert sorted(message.recipients) == ["boss@example.com", "ops@example.com"]
    assert message.subject == "[backupsite] Backup failed: Office backup"
    body = message.body
    assert "Phase: Collecting" in body and "does not exist" in body
    assert f"Details: http://127.0.0.1:8000/runs/{bad.pk}/" in body
    assert f"The last good backup, run #{good.pk}" in body and "destination “Local disk”" in body
    assert "the local copy on test-host" in body


def test_the_first_success_after_a_failure_sends_one_recovery_email(smtp, job, folders, source_tree):
    failing(job, folders)
    run(job)
    healthy(job, source_tree)
    recovered = run(job)
    again = run(job)
    assert recovered.state == again.state == Run.State.SUCCEEDED
    messages = smtp.wait_for(2)
    assert [m.subject for m in messages] == [
        "[backupsite] Backup failed: Office backup",
        "[backupsite] Backup working again: Office backup",
    ]
    assert f"/runs/{recovered.pk}/" in messages[1].body
    assert not Job.objects.get(pk=job.pk).alert_open


def test_success_emails_only_when_the_job_asks(smtp, job):
    run(job)
    Job.objects.filter(pk=job.pk).update(notify_success=True)
    ok = run(job)
    [message] = smtp.wait_for(1)
    assert message.subject == "[backupsite] Backup succeeded: Office backup"
    assert f"#{ok.pk}" in message.body and "Uploaded: Local disk" in message.body


def test_the_stale_alert_goes_once_per_stale_period(smtp, job):
    first = timezone.now() - timedelta(days=10)
    Job.objects.filter(pk=job.pk).update(interval="daily", first_run_at=first, timezone="UTC")
    ok = Run.objects.create(
        job=job, job_name=job.name, state=Run.State.SUCCEEDED, finished_at=timezone.now() - timedelta(days=3)
    )
    assert notifications.check_stale() == 1
    assert notifications.check_stale() == 0  # the same stale period
    assert notifications.check_stale(timezone.now() + timedelta(days=1)) == 0
    assert notifications.check_stale(timezone.now() + timedelta(days=2, hours=1)) == 1  # another two intervals
    messages = smtp.wait_for(2)
    assert [m.subject for m in messages] == ["[backupsite] No backup for a while: Office backup"] * 2
    assert "Without a success: 3 days" in messages[0].body and str(ok.finished_at.year) in messages[0].body
    assert sorted(messages[0].recipients) == ["boss@example.com", "ops@example.com"]


def test_stale_rule_is_twice_the_interval():
    now = datetime(2026, 12, 1, tzinfo=UTC)
    day = timedelta(days=1)
    rows = [
        (1, day, now - 1.9 * day, now - 30 * day, None),  # fine
        (2, day, now - 2.1 * day, now - 30 * day, None),  # stale
        (3, day, None, now - 3 * day, None),  # never succeeded, made 3 days ago
        (4, day, now - 5 * day, now - 30 * day, now - 1 * day),  # alerted within the period
        (5, None, None, now - 30 * day, None),  # manual
    ]
    assert [pk for pk, _ in notifications.stale_plan(rows, now)] == [2, 3]


def test_the_test_email_button(smtp, client, bob, charlie, job):
    client.force_login(charlie)
    assert client.post(reverse("jobs:job_test_email", args=[job.pk])).status_code == 403
    client.force_login(bob)
    page = client.post(reverse("jobs:job_test_email", args=[job.pk]), follow=True).content.decode()
    assert "A test e-mail to ops@example.com, boss@example.com is on its way." in page
    [message] = smtp.wait_for(1)
    assert message.subject == "[backupsite] Test e-mail: Office backup" and "sent by bob" in message.body


def test_emails_leave_after_commit_and_are_retried_while_the_mail_server_is_down(
    smtp, smtp_server, job, settings, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(notifications, "DELIVER_AFTER_COMMIT", True)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert notifications.send_test_email(job)
    row = Notification.objects.get()
    assert row.state == Notification.State.PENDING and smtp.messages == []  # nothing before the commit
    settings.EMAIL_PORT = smtp_server.port + 1 if smtp_server.port < 65535 else 1  # the server is "down"
    for callback in callbacks:
        callback()  # the commit: the (eager) delivery task runs and fails
    row.refresh_from_db()
    assert row.state == Notification.State.PENDING and row.attempts == 1 and row.error
    assert row.next_attempt_at > timezone.now()
    settings.EMAIL_PORT = smtp_server.port  # back
    Notification.objects.filter(pk=row.pk).update(next_attempt_at=timezone.now())
    assert notifications.deliver(row.pk) == Notification.State.SENT
    assert [m.subject for m in smtp.wait_for(1)] == ["[backupsite] Test e-mail: Office backup"]


def test_the_sweep_resends_a_notification_whose_task_was_lost(
    smtp, job, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(notifications, "DELIVER_AFTER_COMMIT", True)
    with django_capture_on_commit_callbacks(execute=False):
        notifications.send_test_email(job)  # its task is lost: the callbacks never run
    Notification.objects.update(created_at=timezone.now() - timedelta(minutes=5))
    with django_capture_on_commit_callbacks(execute=True):
        assert notifications.sweep() == 1
    assert len(smtp.wait_for(1)) == 1
    assert Notification.objects.get().state == Notification.State.SENT


# --- the ping URL ---------------------------------------------------------------------------------
class _Pings(http.server.BaseHTTPRequestHandler):
    seen: list = []

    def _record(self):
        length = int(self.headers.get("Content-Length") or 0)
        _Pings.seen.append((self.command, self.path, self.rfile.read(length).decode()))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"OK")

    do_GET = do_POST = _record

    def log_message(self, *args):
        pass


@pytest.fixture
def ping_server():
    _Pings.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Pings)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Pings.seen
    server.shutdown()


def test_pings_at_start_on_success_and_to_fail_with_the_error(job, folders, settings, ping_server):
    settings.BACKUPSITE_ALLOW_LOCAL_DESTINATIONS = True
    base, seen = ping_server
    Job.objects.filter(pk=job.pk).update(ping_url=f"{base}/ping/abc123")
    assert "abc123" not in Job.objects.filter(pk=job.pk).values_list(Cast("ping_url", TextField()), flat=True)[0]
    job.refresh_from_db()
    services.enqueue_run(job)  # Run now: the start ping (from the decrypted URL)
    ok = services.execute_run(Run.objects.get(job=job).pk)
    assert ok.state == Run.State.SUCCEEDED
    failing(job, folders)
    bad = run(job)
    assert [(method, path) for method, path, _ in seen] == [
        ("GET", "/ping/abc123/start"),
        ("GET", "/ping/abc123"),
        ("POST", "/ping/abc123/fail"),
    ]
    assert f"Run #{bad.pk} failed:" in seen[2][2] and "does not exist" in seen[2][2]
    assert Notification.objects.filter(channel="ping", state="sent").count() == 3


def test_a_ping_to_a_loopback_address_is_refused_unless_local_destinations_are_allowed(job, settings, ping_server):
    settings.BACKUPSITE_ALLOW_LOCAL_DESTINATIONS = False
    base, seen = ping_server
    Job.objects.filter(pk=job.pk).update(ping_url=f"{base}/ping/abc123")
    job.refresh_from_db()
    notifications.ping(job, "start")
    row = Notification.objects.get(channel="ping")
    assert seen == [] and row.attempts == 1
    assert "not allowed" in row.error and "abc123" not in row.error
