"""The audit log and the "configuration changed" e-mails to the other administrators
(issue 11, items 1 and 2): the client address behind trusted proxies, events for every
kind of action, append-only, retention, the administrators-only page with its filters,
one e-mail per other administrator and request (after commit, retried with backoff when
the mail server fails), no header injection through names."""

from __future__ import annotations

import smtplib
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, User
from django.core import mail
from django.core.cache import cache
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone

from backupsite import audit, configwrite
from backupsite.clientip import client_ip
from backupsite.models import AdminMail, AppendOnly, AuditEvent
from backupsite.roles import ADMINISTRATORS
from destinations.models import Destination
from jobs import services
from jobs.models import Job, Run
from tests.conftest import grant_sudo
from tests.kinds import pinned

pytestmark = pytest.mark.django_db
OLD_PASSWORD, NEW_PASSWORD = "old-nas-password-7731", "new-nas-password-9912"


@pytest.fixture(autouse=True)
def clean_cache():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def admins(alice):
    """Three administrators (alice, erin, frank) and one operator (bob)."""
    group = Group.objects.get(name=ADMINISTRATORS)
    others = []
    for name in ("erin", "frank"):
        user = User.objects.create_user(name, f"{name}@example.com", f"{name}-password")
        user.groups.add(group)
        others.append(user)
    return [alice, *others]


@pytest.fixture
def pinned_kind(monkeypatch):
    yield pinned.register(monkeypatch)
    pinned.LOGINS.clear()


# --- the client's address ------------------------------------------------------------------
def request_from(remote: str, forwarded: str | None = None):
    headers = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        headers["HTTP_X_FORWARDED_FOR"] = forwarded
    return RequestFactory().get("/", **headers)


def test_without_trusted_proxies_x_forwarded_for_is_ignored(settings):
    settings.BACKUPSITE_TRUSTED_PROXIES = []
    assert client_ip(request_from("203.0.113.7", "198.51.100.1")) == "203.0.113.7"
    assert configwrite.client_ip(request_from("203.0.113.7", "1.2.3.4")) == "203.0.113.7"  # the same function


def test_behind_trusted_proxies_the_first_untrusted_hop_from_the_right_is_the_client(settings):
    settings.BACKUPSITE_TRUSTED_PROXIES = ["127.0.0.1", "10.0.0.0/8"]
    # The client wrote "6.6.6.6" itself; the proxies appended what they saw.
    assert client_ip(request_from("127.0.0.1", "6.6.6.6, 198.51.100.20, 10.1.2.3")) == "198.51.100.20"
    assert client_ip(request_from("127.0.0.1", "198.51.100.20")) == "198.51.100.20"
    assert client_ip(request_from("127.0.0.1")) == "127.0.0.1"  # nothing forwarded: the proxy itself
    assert client_ip(request_from("127.0.0.1", "garbage, 10.0.0.9")) == "10.0.0.9"  # stop at the last trusted hop
    assert client_ip(request_from("127.0.0.1", "[2001:db8::5]:443")) == "2001:db8::5"
    # A peer that is not a trusted proxy is the client, whatever it claims.
    assert client_ip(request_from("192.0.2.9", "198.51.100.20")) == "192.0.2.9"


def test_a_bad_trusted_proxy_setting_refuses_to_start(tmp_path):
    from tests.test_settings import manage

    result = manage(tmp_path, "check", DEBUG="1", BACKUPSITE_TRUSTED_PROXIES="127.0.0.1, not-an-ip")
    assert result.returncode != 0 and "BACKUPSITE_TRUSTED_PROXIES" in result.stderr and "not-an-ip" in result.stderr


# --- events ---------------------------------------------------------------------------------
def test_configuration_changes_are_recorded_with_secrets_masked(alice, folders):
    destination = Destination(
        name="NAS", kind="local", settings={"path": str(folders["backups"])}, secrets={"password": OLD_PASSWORD}
    )
    configwrite.save(destination, actor=alice)
    destination.secrets = {"password": NEW_PASSWORD}
    destination.name = "Big NAS"
    configwrite.save(destination, actor=alice)
    configwrite.delete(Destination.objects.get(pk=destination.pk), actor=alice)
    events = list(AuditEvent.objects.order_by("pk"))
    assert [e.action for e in events] == ["created", "changed", "deleted"]
    changed = events[1]
    assert (
        changed.actor == alice and changed.actor_name == "alice" and changed.object_type == "destinations.destination"
    )
    assert {c["field"]: c["display"] for c in changed.changes} == {
        "name": "NAS → Big NAS",
        "secrets.password": "changed",
    }
    assert changed.summary == "changed destination “Big NAS”"
    raw = str(list(AuditEvent.objects.values()))
    assert OLD_PASSWORD not in raw and NEW_PASSWORD not in raw


def test_the_ip_is_the_client_behind_a_trusted_proxy(client, alice, job, settings):
    settings.BACKUPSITE_TRUSTED_PROXIES = ["127.0.0.1"]
    client.force_login(alice)
    client.post(
        reverse("jobs:job_set_enabled", args=[job.pk]),
        {"enabled": "0"},
        REMOTE_ADDR="127.0.0.1",
        HTTP_X_FORWARDED_FOR="6.6.6.6, 198.51.100.44",
    )
    event = AuditEvent.objects.get(object_type="jobs.job")
    assert event.ip == "198.51.100.44" and event.changes[0]["display"] == "yes → no"


def test_logins_failures_and_logouts_are_recorded(client, alice):
    client.post(reverse("login"), {"username": "alice", "password": "wrong"}, REMOTE_ADDR="192.0.2.10")
    client.post(reverse("login"), {"username": "alice", "password": "alice-password"}, REMOTE_ADDR="192.0.2.10")
    client.post(reverse("logout"), REMOTE_ADDR="192.0.2.10")
    events = list(AuditEvent.objects.order_by("pk"))
    assert [(e.action, e.actor_name, e.ip) for e in events] == [
        ("login_failed", "", "192.0.2.10"),
        ("login", "alice", "192.0.2.10"),
        ("logout", "alice", "192.0.2.10"),
    ]
    assert events[0].details == {"username": "alice"} and "wrong" not in str(events[0].details)


def test_password_changes_are_recorded(client, bob):
    client.force_login(bob)
    new = "A-much-longer-one-42"
    client.post(
        reverse("password_change"), {"old_password": "bob-password", "new_password1": new, "new_password2": new}
    )
    event = AuditEvent.objects.get(action=audit.PASSWORD_CHANGED)
    assert event.actor == bob and new not in str(event.details)


def test_manual_runs_downloads_cancels_and_kept_backups_are_recorded(
    client, alice, job, django_capture_on_commit_callbacks
):
    client.force_login(alice)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("jobs:job_run_now", args=[job.pk]))  # eager Celery: the run is done
    run = Run.objects.get(job=job)
    assert run.state == Run.State.SUCCEEDED, run.error
    response = client.get(reverse("jobs:run_download", args=[run.pk]), HTTP_RANGE="bytes=0-99")
    assert response.status_code == 206
    client.post(reverse("jobs:run_keep_forever", args=[run.pk]), {"keep": "1"})
    started, downloaded, kept = AuditEvent.objects.order_by("pk").exclude(action="login")
    assert (started.action, started.object_type, started.object_id) == ("run_manual", "jobs.run", str(run.pk))
    assert downloaded.action == "download" and downloaded.details == {
        "file": "archive",
        "copy": "this server",
        "bytes": 100,
        "range": "bytes 0-99",
    }
    assert kept.action == "keep_forever" and kept.details == {"keep_forever": True}


def test_details_never_hold_a_secret(alice):
    event = audit.record(alice, "test_action", None, token="abc123", backup_password="hunter2", note="plain")
    assert event.details == {"token": "(hidden)", "backup_password": "(hidden)", "note": "plain"}


def test_events_are_append_only_and_pruned_after_the_retention(alice, settings):
    event = audit.record(alice, audit.LOGIN, alice)
    event.action = "logout"
    with pytest.raises(AppendOnly):
        event.save()
    with pytest.raises(AppendOnly):
        event.delete()
    with pytest.raises(AppendOnly):
        AuditEvent.objects.all().delete()
    with pytest.raises(AppendOnly):
        AuditEvent.objects.update(action="x")
    settings.BACKUPSITE_AUDIT_RETENTION_DAYS = 30
    now = timezone.now()
    assert audit.prune(now=now + timedelta(days=29)) == 0
    assert audit.housekeeping(now=now + timedelta(days=31)) == {"pruned": 1, "resent": 0}
    assert not AuditEvent.objects.exists()
    settings.BACKUPSITE_AUDIT_RETENTION_DAYS = 0  # keep forever
    audit.record(alice, audit.LOGIN, alice)
    assert audit.prune(now=now + timedelta(days=10_000)) == 0


def test_the_housekeeping_task_is_on_the_beat_schedule_with_expires():
    from backupsite.celery import app

    entry = app.conf.beat_schedule["audit-housekeeping"]
    assert entry["task"] == "backupsite.tasks.audit_housekeeping" and entry["options"]["expires"] == entry["schedule"]


# --- the page ---------------------------------------------------------------------------------
def test_the_audit_page_shows_events_to_administrators_and_refuses_the_others(client, alice, bob, charlie, job):
    client.force_login(alice)
    job.name = "Renamed job"
    configwrite.save(job, actor=alice)
    page = client.get(reverse("audit"))
    assert page.status_code == 200
    html = page.content.decode()
    assert "Renamed job" in html and "Office backup → Renamed job" in html and "alice" in html
    for user in (bob, charlie):
        client.force_login(user)
        assert client.get(reverse("audit")).status_code == 403
        assert reverse("audit") not in client.get(reverse("dashboard")).content.decode()  # no menu entry
    client.force_login(alice)
    assert client.post(reverse("audit")).status_code == 405  # read only


def test_the_audit_page_filters_and_pages(client, alice, bob, job):
    now = timezone.now()
    for i in range(60):
        audit.record(bob, audit.DOWNLOAD, job, n=i)
    audit.record(alice, audit.LOGIN, alice)
    old = AuditEvent(actor=alice, actor_name="alice", action=audit.LOGOUT, at=now - timedelta(days=40))
    old.save()
    client.force_login(alice)
    page = client.get(reverse("audit"))
    # 60 downloads, alice's two logins (one recorded above, one by force_login), the old logout
    assert page.context["page"].paginator.count == 63 and len(page.context["events"]) == 50
    second = client.get(reverse("audit"), {"actor": "bob", "page": "2"})
    assert len(second.context["events"]) == 10 and {e.actor_name for e in second.context["events"]} == {"bob"}
    assert "actor=bob" in second.content.decode()  # the page links keep the filter
    assert client.get(reverse("audit"), {"action": "login"}).context["page"].paginator.count == 2
    by_object = client.get(reverse("audit"), {"type": "jobs.job", "object": str(job.pk)})
    assert by_object.context["page"].paginator.count == 60
    since = (now - timedelta(days=1)).date().isoformat()
    assert client.get(reverse("audit"), {"since": since}).context["page"].paginator.count == 62
    until = (now - timedelta(days=39)).date().isoformat()
    assert [e.action for e in client.get(reverse("audit"), {"until": until}).context["events"]] == ["logout"]


# --- e-mails to the other administrators ---------------------------------------------------------
def edit_post(folders, **extra) -> dict:
    data = {
        "name": "Office server",
        "enabled": "on",
        "pinned-path": str(folders["backups"] / "server"),
        "pinned-user": "backup",
        "pinned-host": "",
        "pinned-password": "",
        "action": "save",
    }
    data.update(extra)
    return data


def test_a_destination_edit_mails_each_other_administrator_once(
    client, admins, bob, folders, pinned_kind, django_capture_on_commit_callbacks
):
    """Acceptance: alice edits a destination's password and server (its user and folder
    here: the pinned kind has no host field that resolves) → erin and frank get one
    e-mail each naming the server change old → new and the password only as "changed";
    alice (who made it) and bob (an operator) get nothing."""
    alice = admins[0]
    destination = Destination.objects.create(
        name="Office server",
        kind="pinned",
        settings={"path": str(folders["backups"] / "server"), "user": "backup", "host_key": pinned.SERVER_KEY},
        secrets={"password": OLD_PASSWORD},
    )
    client.force_login(alice)
    grant_sudo(client)
    new_path = str(folders["backups"] / "other-server")
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("destinations:edit", args=[destination.pk]),
            edit_post(folders, **{"pinned-path": new_path, "pinned-user": "backup2", "pinned-password": NEW_PASSWORD}),
            REMOTE_ADDR="192.0.2.33",
        )
    assert response.status_code == 302
    destination.refresh_from_db()
    assert destination.secrets == {"password": NEW_PASSWORD}
    assert sorted(m.to[0] for m in mail.outbox) == ["erin@example.com", "frank@example.com"]
    for message in mail.outbox:
        assert message.subject == "[backupsite] alice changed destination “Office server”"
        body = message.body
        assert "user: backup → backup2" in body
        assert f"path: {folders['backups'] / 'server'} → {new_path}" in body
        assert "password: changed" in body
        assert "192.0.2.33" in body and "alice" in body
        assert f"http://127.0.0.1:8000{destination.get_absolute_url()}" in body
        html = message.alternatives[0][0]
        assert "backup → backup2" in html and message.alternatives[0][1] == "text/html"
        for secret in (OLD_PASSWORD, NEW_PASSWORD):
            assert secret not in body and secret not in html and secret not in message.subject
    assert AdminMail.objects.filter(state=AdminMail.State.SENT).count() == 2
    event = AuditEvent.objects.get(action="changed", object_type="destinations.destination")
    assert event.ip == "192.0.2.33"


def test_the_same_through_the_wizards_edit_steps(client, admins, job, django_capture_on_commit_callbacks):
    """The wizard's edit of a job: its report-to address and its backup password → one
    e-mail to each other administrator, the address old → new, the password "changed"."""
    from tests.wizard_helpers import GOOD_PASSWORD, Wizard, content, general

    job.set_backup_password("old backup password 1")
    job.save()
    client.force_login(admins[0])
    wizard = Wizard(client, reverse("jobs:job_edit", args=[job.pk]))
    wizard.post("general", general(name=job.name, report_to="new-ops@example.com"))
    wizard.post("content", content(job.sources.all(), old_password="old backup password 1"))
    wizard.post("destination", {"target": "keep"})
    with django_capture_on_commit_callbacks(execute=True):
        wizard.post("summary", {"action": "save"})
    assert sorted(m.to[0] for m in mail.outbox) == ["erin@example.com", "frank@example.com"]
    body = mail.outbox[0].body
    assert "report to: ops@example.com, boss@example.com → new-ops@example.com" in body
    assert "backup password (wrapped key): changed" in body
    assert GOOD_PASSWORD not in body and "old backup password 1" not in body


def test_one_request_with_several_changes_sends_one_mail_per_recipient(
    client, admins, job, folders, django_capture_on_commit_callbacks
):
    """The wizard's Finish creating a destination and a job in one request."""
    from tests.wizard_helpers import Wizard, content, general

    client.force_login(admins[1])  # erin this time
    wizard = Wizard(client)
    wizard.post("general", general(name="Two things at once"))
    wizard.post("content", content(job.sources.all(), encryption="none"))
    new_folder = folders["backups"] / "wizard-made"
    new_folder.mkdir()
    wizard.post(
        "destination", {"target": "new", "name": "Made in the wizard", "kind": "local", "local-path": str(new_folder)}
    )
    with django_capture_on_commit_callbacks(execute=True):
        wizard.post("summary", {"action": "save"})
    assert Job.objects.filter(name="Two things at once").exists()
    assert sorted(m.to[0] for m in mail.outbox) == ["alice@example.com", "frank@example.com"]
    message = mail.outbox[0]
    assert message.subject == "[backupsite] erin made 2 configuration changes"
    assert (
        "Created destination “Made in the wizard”" in message.body
        and "Created job “Two things at once”" in message.body
    )


def test_a_failing_mail_server_keeps_the_change_and_retries_with_backoff(
    client, admins, job, settings, django_capture_on_commit_callbacks
):
    from tests.servers import free_port

    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", free_port(), 2  # nobody listens
    client.force_login(admins[0])
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("jobs:job_set_enabled", args=[job.pk]), {"enabled": "0"})
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.enabled is False  # the change stays
    assert AuditEvent.objects.filter(object_type="jobs.job", action="changed").count() == 1
    pending = list(AdminMail.objects.order_by("address"))
    assert [(m.address, m.state, m.attempts) for m in pending] == [
        ("erin@example.com", "pending", 1),
        ("frank@example.com", "pending", 1),
    ]
    first_delay = (pending[0].next_attempt_at - timezone.now()).total_seconds()
    assert audit.MAIL_RETRY_BASE / 2 - 5 <= first_delay <= audit.MAIL_RETRY_BASE
    assert "ConnectionRefusedError" in pending[0].error or "Errno" in pending[0].error

    # Not due yet: housekeeping leaves them; the second failure waits about twice as long.
    assert audit.resend_due() == 0
    later = timezone.now() + timedelta(seconds=audit.MAIL_RETRY_BASE + 1)
    assert audit.resend_due(now=later) == 0
    again = AdminMail.objects.get(pk=pending[0].pk)
    assert again.attempts == 2
    assert (again.next_attempt_at - later).total_seconds() >= audit.MAIL_RETRY_BASE  # 2 × base, with jitter
    # The server is back: the next round delivers.
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    assert audit.resend_due(now=later + timedelta(hours=1)) == 2
    assert sorted(m.to[0] for m in mail.outbox) == ["erin@example.com", "frank@example.com"]
    assert set(AdminMail.objects.values_list("state", flat=True)) == {"sent"}


def test_a_queued_task_retries_itself_with_the_backoff(admins, job, monkeypatch):
    from backupsite import tasks

    configwrite.save(job, actor=admins[0], m2m={"destinations": []})
    [event] = AuditEvent.objects.filter(object_type="jobs.job")
    mails = audit.flush([event.pk])  # outside a request: what on_commit does
    scheduled = []
    # Only the broker is replaced: the task as a worker runs it (not eager) re-queues itself.
    monkeypatch.setattr(tasks.deliver_admin_mail, "apply_async", lambda args, countdown: scheduled.append(countdown))
    monkeypatch.setattr(audit, "EmailMultiAlternatives", BrokenMessage)
    tasks.deliver_admin_mail.run(mails[0].pk)
    assert len(scheduled) == 1 and audit.MAIL_RETRY_BASE / 2 <= scheduled[0] <= audit.MAIL_RETRY_BASE
    assert AdminMail.objects.get(pk=mails[0].pk).attempts == 1


class BrokenMessage:
    def __init__(self, *args, **kwargs):
        pass

    def attach_alternative(self, *args):
        pass

    def send(self):
        raise smtplib.SMTPServerDisconnected("the server hung up")


def test_a_mail_fails_for_good_after_the_last_attempt(admins, job, monkeypatch):
    configwrite.save(job, actor=admins[0], m2m={"destinations": []})
    [mail_one, _] = audit.flush(list(AuditEvent.objects.values_list("pk", flat=True)))
    monkeypatch.setattr(audit, "EmailMultiAlternatives", BrokenMessage)
    now = timezone.now()
    for _attempt in range(audit.MAIL_ATTEMPTS):
        now += timedelta(hours=7)
        audit.deliver(mail_one.pk, now=now)
    mail_one.refresh_from_db()
    assert mail_one.state == "failed" and mail_one.attempts == audit.MAIL_ATTEMPTS
    assert "SMTPServerDisconnected" in mail_one.error


def test_a_change_without_a_request_mails_everyone_after_commit(admins, job, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        configwrite.save(job, m2m={"destinations": []})  # a management command: no actor
    assert sorted(m.to[0] for m in mail.outbox) == ["alice@example.com", "erin@example.com", "frank@example.com"]
    assert "the system" in mail.outbox[0].subject


def test_a_rolled_back_change_is_neither_audited_nor_mailed(client, admins, job, django_capture_on_commit_callbacks):
    from django.db import transaction

    with django_capture_on_commit_callbacks(execute=True):
        try:
            with transaction.atomic():
                configwrite.save(job, actor=admins[0], m2m={"destinations": []})
                raise RuntimeError("something failed later in the same transaction")
        except RuntimeError:
            pass
    assert not AuditEvent.objects.exists() and mail.outbox == []


# --- header injection (RELIABILITY 20) -------------------------------------------------------------
EVIL = "Office\r\nBcc: x@evil.example"


def all_recipients(message) -> set[str]:
    return set(message.recipients())


def test_a_job_name_with_a_header_never_adds_a_recipient(client, admins, job, django_capture_on_commit_callbacks):
    """The models refuse the name (their validators); written anyway (a shell, a
    fixture), it reaches the subject of the admin e-mail and of the failure e-mail as one
    line, and no Bcc header or recipient appears."""
    from django.core.exceptions import ValidationError

    job.name = EVIL
    with pytest.raises(ValidationError):
        job.full_clean()
    with django_capture_on_commit_callbacks(execute=True):
        configwrite.save(job, actor=admins[0])
    run = services.create_run(job)
    Run.objects.filter(pk=run.pk).update(state=Run.State.FAILED, error="disk full")
    run.refresh_from_db()
    from jobs.notifications import notify_run_failed

    assert notify_run_failed(run) is True
    assert len(mail.outbox) == 3  # erin, frank, and the job's report-to message
    for message in mail.outbox:
        assert "\n" not in message.subject and "\r" not in message.subject
        assert "x@evil.example" not in all_recipients(message)
        headers = message.message()
        assert headers.get_all("Bcc") is None and headers.get_all("bcc") is None
        assert {name.lower() for name in headers} <= {
            "content-type",
            "mime-version",
            "content-transfer-encoding",
            "subject",
            "from",
            "to",
            "date",
            "message-id",
        }
        for name in ("To", "Cc", "Reply-To"):
            assert "evil" not in str(headers.get(name, ""))
        assert "Bcc: x@evil.example" in message.subject  # it stayed text inside the one-line subject
    assert all_recipients(mail.outbox[-1]) == {"ops@example.com", "boss@example.com"}
