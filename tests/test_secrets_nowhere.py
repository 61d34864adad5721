"""No page, log record, e-mail or database value ever holds a stored secret in clear
(issue 11 acceptance; RELIABILITY 22 for pages, logs and e-mails): the plain secrets are
searched for in every rendered page, the captured logs, the outgoing mail and every
column of every table after a day's worth of administration."""

from __future__ import annotations

import logging

import pytest
from django.contrib.auth.models import Group, User
from django.core import mail
from django.core.cache import cache
from django.db import connection
from django.urls import reverse

from backupsite.roles import ADMINISTRATORS
from destinations import backends  # noqa: F401  (before netguard: importing it first is circular)
from destinations.models import Destination
from tests.conftest import grant_sudo

pytestmark = pytest.mark.django_db

DESTINATION_SECRET = "dest-Secret-4417-plain"
NEW_DESTINATION_SECRET = "dest-Secret-9021-new"
BACKUP_PASSWORD = "backup-Secret-7788 horse staple"
USER_PASSWORD = "erin-Login-Secret-5533"
PING_TOKEN = "ping-Secret-6120-uuid"  # a ping URL's token (refused: a loopback address, no network)
SECRETS = [DESTINATION_SECRET, NEW_DESTINATION_SECRET, BACKUP_PASSWORD, USER_PASSWORD, PING_TOKEN]


def raw_database_text() -> str:
    """Every value of every table, as the database holds it."""
    parts = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f'SELECT * FROM "{table}"')  # noqa: S608 - names from the database itself
            parts.extend(repr(row) for row in cursor.fetchall())
    return "\n".join(parts)


def test_no_stored_secret_is_ever_shown_logged_mailed_or_stored_in_clear(
    client, alice, job, folders, monkeypatch, caplog, django_capture_on_commit_callbacks
):
    from tests.kinds import pinned

    pinned.register(monkeypatch)
    cache.clear()
    caplog.set_level(logging.DEBUG)
    erin = User.objects.create_user("erin", "erin@example.com", USER_PASSWORD)
    erin.groups.add(Group.objects.get(name=ADMINISTRATORS))
    job.set_backup_password(BACKUP_PASSWORD)
    job.save()
    client.force_login(alice)
    grant_sudo(client)
    pages = []
    with django_capture_on_commit_callbacks(execute=True):
        data = {
            "name": "Office server",
            "enabled": "on",
            "kind": "pinned",
            "pinned-path": str(folders["backups"] / "server"),
            "pinned-user": "backup",
            "pinned-password": DESTINATION_SECRET,
            "action": "test",
        }
        pages.append(client.post(reverse("destinations:create"), data))  # the test result page
        data["action"] = "save"
        pages.append(client.post(reverse("destinations:create"), data, follow=True))
        destination = Destination.objects.get(name="Office server")
        edit = {**data, "pinned-password": NEW_DESTINATION_SECRET, "pinned-user": "backup2"}
        edit.pop("kind")
        pages.append(client.post(reverse("destinations:edit", args=[destination.pk]), edit, follow=True))
        pages.append(client.post(reverse("destinations:test", args=[destination.pk]), follow=True))
        alerts = {"drill_interval_days": "7", "ping_url": f"http://127.0.0.1:9/ping/{PING_TOKEN}"}
        pages.append(client.post(reverse("jobs:job_alert_settings", args=[job.pk]), alerts, follow=True))
        pages.append(client.post(reverse("jobs:job_run_now", args=[job.pk]), follow=True))  # and the start ping
    for url in (
        reverse("dashboard"),
        reverse("destinations:list"),
        destination.get_absolute_url(),
        reverse("destinations:edit", args=[destination.pk]),
        job.get_absolute_url(),
        reverse("jobs:job_edit", args=[job.pk]),
        reverse("jobs:run_list"),
        reverse("audit"),
        reverse("users:list"),
        reverse("users:edit", args=[erin.pk]),
    ):
        pages.append(client.get(url))
    run = job.runs.get()
    pages.append(client.get(run.get_absolute_url()))
    pages.append(client.post(reverse("jobs:run_verify", args=[run.pk]), {"location": "local", "password": "wrong"}))
    # The wrong password in a sudo form and at the login.
    pages.append(client.post(reverse("sudo"), {"password": USER_PASSWORD}))
    client.logout()
    pages.append(client.post(reverse("login"), {"username": "erin", "password": USER_PASSWORD + "x"}))
    pages.append(client.post(reverse("login"), {"username": "erin", "password": USER_PASSWORD}, follow=True))

    assert len(mail.outbox) >= 2  # the other administrators were told about both writes
    texts = {
        "pages": "\n".join(page.content.decode(errors="replace") for page in pages),
        "logs": caplog.text + "\n".join(str(record.__dict__) for record in caplog.records),
        "mail": "\n".join(
            m.subject + m.body + "".join(a[0] for a in getattr(m, "alternatives", [])) for m in mail.outbox
        ),
        "database": raw_database_text(),
    }
    for where, text in texts.items():
        for secret in SECRETS:
            assert secret not in text, f"a stored secret appears in the {where}"
    assert "backup2" in texts["mail"] and "password: changed" in texts["mail"]  # the mail did say what changed
    assert "ping URL: set" in texts["mail"]
    job.refresh_from_db()
    assert PING_TOKEN in job.ping_url  # stored, encrypted
    assert "backup2" in texts["database"]  # the search reads the stored values (settings are not secret)
    destination.refresh_from_db()
    assert destination.secrets == {"password": NEW_DESTINATION_SECRET}  # stored, encrypted
