"""The event trigger URL (issue 9, item 2): POST with the token in the path or a header
starts a run whose trigger says "event"; a wrong token, an unknown job or a job without
a trigger answer the same 404; GET is refused; calls are rate-limited through
backupsite.ratelimit; the token is stored encrypted, shown again to administrators only,
regenerated (the old one stops working) and removed through configwrite; a double
trigger makes one run."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from django.urls import reverse

from jobs.models import Job, Run
from tests.conftest import grant_sudo


@pytest.fixture(autouse=True)
def _fresh_limits(db):
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def triggered(job):
    token = job.new_trigger_token()
    job.save()
    return job, token


def test_a_post_with_the_token_in_the_path_starts_an_event_run(client, triggered, django_capture_on_commit_callbacks):
    job, token = triggered
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/hooks/jobs/{job.pk}/{token}/")
    assert response.status_code == 202, response.content
    data = response.json()
    run = Run.objects.get(pk=data["run"])
    assert run.trigger == Run.Trigger.EVENT and run.get_trigger_display() == "Event (trigger URL)"
    assert data["url"].endswith(f"/runs/{run.pk}/")
    assert "Started through the trigger URL from 127.0.0.1." in run.log
    run.refresh_from_db()
    assert run.state == Run.State.SUCCEEDED  # eager Celery ran it


def test_the_token_may_come_in_a_header_instead(client, triggered):
    job, token = triggered
    assert client.post(f"/hooks/jobs/{job.pk}/", headers={"X-Backupsite-Token": token}).status_code == 202
    Run.objects.update(state=Run.State.SUCCEEDED)
    assert client.post(f"/hooks/jobs/{job.pk}/", headers={"Authorization": f"Bearer {token}"}).status_code == 202


def test_wrong_token_unknown_job_and_no_trigger_all_answer_404_and_start_nothing(client, triggered, db):
    job, token = triggered
    plain = Job.objects.create(name="No trigger")
    for path in (
        f"/hooks/jobs/{job.pk}/{token[:-1]}x/",
        f"/hooks/jobs/{job.pk}/",
        f"/hooks/jobs/99999/{token}/",
        f"/hooks/jobs/{plain.pk}/{token}/",
    ):
        response = client.post(path)
        assert response.status_code == 404 and response.json() == {"error": "Not found."}, path
    assert not Run.objects.exists()
    assert client.get(f"/hooks/jobs/{job.pk}/{token}/").status_code == 405


def test_a_double_trigger_makes_one_run(client, triggered):
    job, token = triggered
    assert client.post(f"/hooks/jobs/{job.pk}/{token}/").status_code == 202
    second = client.post(f"/hooks/jobs/{job.pk}/{token}/")
    assert second.status_code == 409 and "already running" in second.json()["error"]
    assert Run.objects.filter(job=job).count() == 1


def test_calls_are_rate_limited_per_client_address(client, triggered, settings):
    job, token = triggered
    settings.BACKUPSITE_RATE_LIMITS = {"job-trigger-ip": (3, 60), "job-trigger": (100, 60)}
    codes = [client.post(f"/hooks/jobs/{job.pk}/wrong-{n}/").status_code for n in range(4)]
    assert codes == [404, 404, 404, 429]
    limited = client.post(f"/hooks/jobs/{job.pk}/{token}/")  # even the right token, for now
    assert limited.status_code == 429 and int(limited["Retry-After"]) >= 1


def test_the_token_is_stored_encrypted_and_shown_to_administrators_only(client, alice, bob, triggered):
    job, token = triggered
    stored = Job.objects.filter(pk=job.pk).values_list("trigger_token_encrypted", flat=True).get()
    assert token not in stored and Job.objects.get(pk=job.pk).trigger_token == token
    client.force_login(alice)
    # Without a fresh password confirmation (sudo mode) the secret is not on the page...
    page = client.get(job.get_absolute_url()).content.decode()
    assert token not in page and 'id="trigger"' in page and "Show the trigger URL" in page
    shown = client.get(reverse("jobs:job_trigger_show", args=[job.pk]))
    assert shown.status_code == 302 and reverse("sudo") in shown["Location"]
    # ...after it, it is, and revealing it is audited.
    grant_sudo(client)
    assert client.get(reverse("jobs:job_trigger_show", args=[job.pk])).status_code == 302
    page = client.get(job.get_absolute_url()).content.decode()
    assert f"/hooks/jobs/{job.pk}/{token}/" in page
    from backupsite.models import AuditEvent

    assert AuditEvent.objects.filter(action="trigger_revealed", actor=alice).count() == 1
    client.force_login(bob)
    page = client.get(job.get_absolute_url()).content.decode()
    assert token not in page and 'id="trigger"' not in page
    assert client.post(reverse("jobs:job_trigger_regenerate", args=[job.pk])).status_code == 403


def test_regenerate_replaces_the_token_and_remove_refuses_every_call(client, alice, triggered, db):
    from backupsite import configwrite

    changes = []
    configwrite.config_changed.connect(lambda sender, change, **kw: changes.append(change), weak=False)
    job, old = triggered
    client.force_login(alice)
    grant_sudo(client)
    client.post(reverse("jobs:job_trigger_regenerate", args=[job.pk]))
    new = Job.objects.get(pk=job.pk).trigger_token
    assert new and new != old
    client.logout()
    assert client.post(f"/hooks/jobs/{job.pk}/{old}/").status_code == 404
    assert client.post(f"/hooks/jobs/{job.pk}/{new}/").status_code == 202
    from backupsite.models import AuditEvent

    assert AuditEvent.objects.filter(action="run_triggered").count() == 1
    client.force_login(alice)
    client.post(reverse("jobs:job_trigger_remove", args=[job.pk]))
    assert not Job.objects.get(pk=job.pk).has_trigger
    assert client.post(f"/hooks/jobs/{job.pk}/{new}/").status_code == 404
    [regenerated, removed] = [c for c in changes if c.model == "jobs.job"][-2:]
    field = next(f for f in regenerated.changes if f.field == "trigger_token_encrypted")
    assert field.secret and field.display == "changed" and new not in str(regenerated.changes)
    assert next(f for f in removed.changes if f.field == "trigger_token_encrypted").display == "removed"


def test_a_disabled_job_cannot_be_triggered(client, triggered):
    job, token = triggered
    Job.objects.filter(pk=job.pk).update(enabled=False)
    response = client.post(f"/hooks/jobs/{job.pk}/{token}/")
    assert response.status_code == 409 and "disabled" in response.json()["error"]


def test_administrators_set_the_alert_settings_and_the_ping_url_is_never_shown_again(client, alice, bob, job):
    url = reverse("jobs:job_alert_settings", args=[job.pk])
    secret = "https://hc-ping.com/0f3c7c57-secret-uuid"
    client.force_login(bob)
    assert client.post(url, {"ping_url": secret}).status_code == 403
    client.force_login(alice)
    client.post(url, {"notify_success": "on", "drill_interval_days": "3", "ping_url": secret})
    job.refresh_from_db()
    assert job.notify_success and job.drill_interval_days == 3 and job.ping_url == secret
    page = client.get(job.get_absolute_url()).content.decode()
    assert 'id="alert-settings"' in page and "0f3c7c57" not in page
    client.post(url, {"notify_success": "on", "drill_interval_days": "3", "ping_url": ""})  # blank keeps it
    job.refresh_from_db()
    assert job.ping_url == secret
    page = client.post(url, {"drill_interval_days": "3", "ping_url": "ftp://x"}, follow=True).content.decode()
    assert "The alert settings were not saved" in page
    client.post(url, {"drill_interval_days": "7", "remove_ping_url": "on"})
    job.refresh_from_db()
    assert job.ping_url == "" and not job.notify_success and job.drill_interval_days == 7
