"""Security hardening (issue 11, item 4; RELIABILITY 23): login throttling that a spoofed
X-Forwarded-For cannot bypass, sudo mode, the Content-Security-Policy, CSRF, and a clean
``check --deploy``."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.core.cache import cache
from django.test import Client
from django.urls import reverse

from backupsite import sudo
from backupsite.models import AuditEvent
from destinations.models import Destination
from tests.test_settings import PROD, manage

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_cache():
    cache.clear()
    yield
    cache.clear()


# --- login throttling ---------------------------------------------------------------------------
def wrong_logins(client, count: int, *, username="alice", forwarded=lambda i: f"203.0.113.{i}"):
    for i in range(count):
        client.post(
            reverse("login"),
            {"username": username(i) if callable(username) else username, "password": f"guess-{i}"},
            REMOTE_ADDR="192.0.2.50",
            HTTP_X_FORWARDED_FOR=forwarded(i),
        )


def test_ten_wrong_passwords_with_a_rotating_x_forwarded_for_still_lock_out(client, alice):
    wrong_logins(client, 10)
    response = client.post(
        reverse("login"), {"username": "alice", "password": "alice-password"}, HTTP_X_FORWARDED_FOR="198.51.100.99"
    )
    assert response.status_code == 429 and "Too many failed logins" in response.content.decode()
    assert "Try again in 15 minutes." in response.content.decode()
    assert "_auth_user_id" not in client.session
    assert AuditEvent.objects.filter(action="login_failed").count() >= 10
    assert AuditEvent.objects.filter(action="locked_out").exists()


def test_the_client_address_is_locked_out_whatever_user_names_it_tries(client, alice, bob):
    wrong_logins(client, 10, username=lambda i: f"nobody{i}")
    # bob's name has no failure, but the address (REMOTE_ADDR, the header ignored) has ten.
    response = client.post(reverse("login"), {"username": "bob", "password": "bob-password"}, REMOTE_ADDR="192.0.2.50")
    assert response.status_code == 429
    # Another client address may still log in as bob.
    other = Client()
    ok = other.post(reverse("login"), {"username": "bob", "password": "bob-password"}, REMOTE_ADDR="192.0.2.51")
    assert ok.status_code == 302


def test_behind_a_trusted_proxy_the_user_name_still_locks_out(client, alice, settings):
    """Each request really from another address (the proxy says so): the per-user limit
    still holds."""
    settings.BACKUPSITE_TRUSTED_PROXIES = ["192.0.2.50"]
    wrong_logins(client, 10)
    response = client.post(
        reverse("login"),
        {"username": "alice", "password": "alice-password"},
        REMOTE_ADDR="192.0.2.50",
        HTTP_X_FORWARDED_FOR="198.51.100.200",
    )
    assert response.status_code == 429


def test_nine_wrong_passwords_do_not_lock_and_a_success_resets(client, alice):
    wrong_logins(client, 9)
    ok = client.post(reverse("login"), {"username": "alice", "password": "alice-password"}, REMOTE_ADDR="192.0.2.50")
    assert ok.status_code == 302


# --- CSRF ------------------------------------------------------------------------------------------
def test_posts_without_a_csrf_token_are_refused(alice, job):
    strict = Client(enforce_csrf_checks=True)
    assert strict.post(reverse("login"), {"username": "alice", "password": "alice-password"}).status_code == 403
    strict.force_login(alice)
    for url in (
        reverse("users:create"),
        reverse("users:set_active", args=[alice.pk]),
        reverse("sudo"),
        reverse("destinations:create"),
        reverse("jobs:job_run_now", args=[job.pk]),
    ):
        assert strict.post(url, {}).status_code == 403, url


# --- sudo mode --------------------------------------------------------------------------------------
def test_deleting_a_destination_asks_for_the_password_first(client, alice, folders):
    destination = Destination.objects.create(name="Old disk", kind="local", settings={"path": str(folders["backups"])})
    client.force_login(alice)
    url = reverse("destinations:delete", args=[destination.pk])
    response = client.get(url)
    assert response.status_code == 302 and response["Location"].startswith(reverse("sudo"))
    assert client.post(url).status_code == 302 and Destination.objects.filter(pk=destination.pk).exists()
    page = client.get(response["Location"])
    assert page.status_code == 200 and "Confirm your password" in page.content.decode()
    wrong = client.post(reverse("sudo"), {"password": "not-it", "next": url})
    assert wrong.status_code == 403 and "That is not your password" in wrong.content.decode()
    right = client.post(reverse("sudo"), {"password": "alice-password", "next": url})
    assert right.status_code == 302 and right["Location"] == url
    assert client.get(url).status_code == 200
    assert client.post(url).status_code == 302 and not Destination.objects.filter(pk=destination.pk).exists()
    assert AuditEvent.objects.filter(action="sudo", actor=alice).count() == 1


def test_sudo_mode_expires(client, alice, job, settings):
    client.force_login(alice)
    session = client.session
    session[sudo.SESSION_KEY] = time.time() - 1
    session.save()
    assert client.get(reverse("jobs:job_delete", args=[job.pk])).status_code == 302
    assert (
        client.get(reverse("jobs:job_delete", args=[job.pk]), HTTP_X_REQUESTED_WITH="fetch")["X-Sudo-Required"] == "1"
    )


def test_a_password_login_opens_sudo_mode(client, alice, job):
    client.post(reverse("login"), {"username": "alice", "password": "alice-password"})
    assert client.get(reverse("jobs:job_delete", args=[job.pk])).status_code == 200


def test_the_confirmation_page_sends_back_only_to_this_site(client, alice):
    client.force_login(alice)
    response = client.post(reverse("sudo"), {"password": "alice-password", "next": "https://evil.example/"})
    assert response["Location"] == reverse("dashboard")


def test_replacing_a_stored_secret_asks_for_the_password_and_keeps_what_was_typed(client, alice, folders, monkeypatch):
    from tests.kinds import pinned

    pinned.register(monkeypatch)
    destination = Destination.objects.create(
        name="Server",
        kind="pinned",
        settings={"path": str(folders["backups"]), "user": "u", "host_key": pinned.SERVER_KEY},
        secrets={"password": "the-stored-one"},
    )
    client.force_login(alice)
    url = reverse("destinations:edit", args=[destination.pk])
    base = {"name": "Server", "pinned-path": str(folders["backups"]), "pinned-user": "u", "action": "save"}
    # Other settings change without sudo.
    assert client.post(url, {**base, "pinned-user": "v", "pinned-password": ""}).status_code == 302
    response = client.post(url, {**base, "pinned-user": "v", "pinned-password": "a-new-secret"})
    page = response.content.decode()
    assert response.status_code == 403 and "Confirm your password to replace a stored secret" in page
    assert "a-new-secret" not in page
    destination.refresh_from_db()
    assert destination.secrets == {"password": "the-stored-one"}
    [pending] = re.findall(r'<input type="hidden" name="pending_secrets" value="([^"]*)"', page)
    again = {**base, "pinned-user": "v", "pinned-password": "", "pending_secrets": pending}
    wrong = client.post(url, {**again, "sudo_password": "nope"})
    assert wrong.status_code == 403 and "That is not your password" in wrong.content.decode()
    assert client.post(url, {**again, "sudo_password": "alice-password"}).status_code == 302
    destination.refresh_from_db()
    assert destination.secrets == {"password": "a-new-secret"}


# --- Content-Security-Policy ------------------------------------------------------------------------
def test_every_page_has_a_strict_content_security_policy(client, alice):
    client.force_login(alice)
    for url in (reverse("dashboard"), reverse("login"), reverse("destinations:create"), reverse("jobs:job_create")):
        policy = client.get(url)["Content-Security-Policy"]
        directives = dict(part.strip().split(" ", 1) for part in policy.split(";") if part.strip())
        assert directives["default-src"] == "'self'" and directives["script-src"] == "'self'"
        assert directives["style-src"] == "'self'" and directives["frame-ancestors"] == "'none'"
        assert directives["object-src"] == "'none'" and directives["form-action"] == "'self'"
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy


INLINE = [
    (re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I), "an inline <script>"),
    (re.compile(r"<style\b", re.I), "a <style> element"),
    (re.compile(r"\sstyle\s*=", re.I), "a style= attribute"),
    (re.compile(r"\son[a-z]+\s*=", re.I), "an on…= event handler"),
    (re.compile(r"javascript:", re.I), "a javascript: URL"),
]


def test_no_template_has_inline_scripts_or_styles():
    """The policy has no 'unsafe-inline': nothing inline may remain (e-mails aside)."""
    found = []
    for path in sorted((ROOT / "templates").rglob("*.html")):
        if "emails" in path.parts:
            continue
        text = path.read_text()
        for pattern, what in INLINE:
            if pattern.search(text):
                found.append(f"{path.relative_to(ROOT)}: {what}")
    assert found == []


def test_the_scripts_set_no_inline_styles():
    for path in sorted((ROOT / "static" / "js").glob("*.js")):
        text = path.read_text()
        assert "setAttribute('style'" not in text and 'setAttribute("style"' not in text, path
        assert "eval(" not in text and "new Function" not in text, path


# --- check --deploy -----------------------------------------------------------------------------------
def test_check_deploy_is_clean_in_production(tmp_path):
    env = {
        **PROD,
        "FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "STATIC_ROOT": str(tmp_path / "static"),
        "BACKUPSITE_SITE_URL": "https://backup.example.com",
        "BACKUPSITE_TRUSTED_PROXIES": "127.0.0.1",
        "USE_X_FORWARDED_PROTO": "1",
    }
    assert manage(tmp_path, "collectstatic", "--noinput", **env).returncode == 0
    result = manage(tmp_path, "check", "--deploy", "--fail-level", "WARNING", **env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout, result.stdout + result.stderr
