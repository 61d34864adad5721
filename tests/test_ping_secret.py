"""The ping URL is a credential of the monitoring service (healthchecks.io puts its token
in the path): encrypted at rest like the other secrets (RELIABILITY 22), re-encrypted by
``rotatekeys``, shown on the job page by its host only, and in the audit log and the
change e-mail only as "set" / "changed" / "removed". The ping itself still reaches the
server: tests/test_notifications.py (a loopback HTTP server)."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest
from cryptography.fernet import Fernet
from django.contrib.auth.models import Group, User
from django.core import mail
from django.core.management import call_command
from django.db import connection
from django.urls import reverse

from backupsite.models import AuditEvent
from backupsite.roles import ADMINISTRATORS
from jobs import notifications
from jobs.models import Job, Notification

pytestmark = pytest.mark.django_db
TOKEN, OTHER_TOKEN = "0f3c7c57-7d1e-4c0a-secret-uuid", "b2d81e44-9a4f-other-secret"
SECRET_URL, OTHER_URL = f"https://hc-ping.com/{TOKEN}", f"https://hc-ping.com/{OTHER_TOKEN}"
migration = importlib.import_module("jobs.migrations.0019_job_ping_url_encrypted")


def raw(table: str, column: str, pk: int) -> str:
    qn = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {qn(column)} FROM {qn(table)} WHERE id = %s", [pk])  # noqa: S608
        return cursor.fetchone()[0]


def test_the_database_holds_only_ciphertext_and_the_model_the_url(job):
    job.ping_url = SECRET_URL
    job.save()
    stored = raw("jobs_job", "ping_url", job.pk)
    assert TOKEN not in stored and "hc-ping" not in stored
    assert Job.objects.get(pk=job.pk).ping_url == SECRET_URL
    assert Job.objects.values_list("ping_url", flat=True).get(pk=job.pk) == SECRET_URL  # the dispatcher's read
    Job.objects.filter(pk=job.pk).update(ping_url=OTHER_URL)  # a queryset update encrypts too
    assert OTHER_TOKEN not in raw("jobs_job", "ping_url", job.pk)
    Job.objects.filter(pk=job.pk).update(ping_url="")
    assert raw("jobs_job", "ping_url", job.pk) == "" and Job.objects.filter(ping_url="").filter(pk=job.pk).exists()


def test_dumpdata_keeps_the_ciphertext(job):
    job.ping_url = SECRET_URL
    job.save()
    from io import StringIO

    out = StringIO()
    call_command("dumpdata", "jobs.job", stdout=out)
    assert TOKEN not in out.getvalue()
    field = Job._meta.get_field("ping_url")
    assert field.to_python(field.value_to_string(job)) == SECRET_URL  # what loaddata does with it


def test_rotatekeys_reencrypts_the_ping_url_the_trigger_token_and_queued_pings(job, settings):
    job.ping_url = SECRET_URL
    token = job.new_trigger_token()
    job.save()
    notifications.ping(job, "start")
    queued = Notification.objects.get(channel=Notification.Channel.PING)
    columns = [("jobs_job", "ping_url", job.pk), ("jobs_job", "trigger_token_encrypted", job.pk)]
    columns.append(("jobs_notification", "url_encrypted", queued.pk))
    before = [raw(*column) for column in columns]
    new_key = Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [new_key, *settings.FIELD_ENCRYPTION_KEYS]
    call_command("rotatekeys", stdout=open("/dev/null", "w"))  # noqa: SIM115
    after = [raw(*column) for column in columns]
    for old, new in zip(before, after, strict=True):
        assert new != old
        Fernet(new_key.encode()).decrypt(new.encode())  # readable with the new key alone
    settings.FIELD_ENCRYPTION_KEYS = [new_key]
    job = Job.objects.get(pk=job.pk)
    assert job.ping_url == SECRET_URL and job.trigger_token == token


def test_the_migration_encrypts_existing_urls_and_its_reverse_decrypts_them(job):
    qn = connection.ops.quote_name
    with connection.cursor() as cursor:  # a row as the URLField stored it
        cursor.execute(f"UPDATE {qn('jobs_job')} SET {qn('ping_url')} = %s WHERE id = %s", [SECRET_URL, job.pk])  # noqa: S608
    editor = SimpleNamespace(connection=connection)
    migration.encrypt_ping_urls(None, editor)
    encrypted = raw("jobs_job", "ping_url", job.pk)
    assert TOKEN not in encrypted and Job.objects.get(pk=job.pk).ping_url == SECRET_URL
    migration.encrypt_ping_urls(None, editor)  # run twice: not encrypted twice
    assert Job.objects.get(pk=job.pk).ping_url == SECRET_URL
    migration.decrypt_ping_urls(None, editor)
    assert raw("jobs_job", "ping_url", job.pk) == SECRET_URL


@pytest.fixture
def erin(alice):
    user = User.objects.create_user("erin", "erin@example.com", "erin-password")
    user.groups.add(Group.objects.get(name=ADMINISTRATORS))
    return user


def test_the_page_the_audit_log_and_the_change_email_never_show_the_token(
    client, alice, erin, job, django_capture_on_commit_callbacks
):
    url = reverse("jobs:job_alert_settings", args=[job.pk])
    client.force_login(alice)
    for value in (SECRET_URL, OTHER_URL):
        with django_capture_on_commit_callbacks(execute=True):
            client.post(url, {"drill_interval_days": "7", "ping_url": value})
    assert Job.objects.get(pk=job.pk).ping_url == OTHER_URL
    page = client.get(job.get_absolute_url()).content.decode()
    assert "hc-ping.com" in page  # the host only
    assert OTHER_TOKEN not in page and TOKEN not in page
    events = AuditEvent.objects.filter(object_type="jobs.job").order_by("pk")
    assert [[(c["field"], c["display"]) for c in e.changes] for e in events] == [
        [("ping_url", "set")],
        [("ping_url", "changed")],
    ]
    assert [m.to for m in mail.outbox] == [["erin@example.com"], ["erin@example.com"]]
    for message in mail.outbox:
        texts = [message.subject, message.body, *(body for body, _ in message.alternatives)]
        assert "ping URL" in message.body
        assert not any(secret in text for text in texts for secret in (TOKEN, OTHER_TOKEN, "hc-ping.com"))
    assert not any(TOKEN in str(e.changes) + str(e.details) for e in AuditEvent.objects.all())
