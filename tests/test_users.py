"""The Users page (issue 11, item 3): invite or create, roles, deactivate, password reset
by e-mail (rate-limited), every change audited and e-mailed to the other administrators,
and never without an active administrator."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Group, User
from django.core import mail
from django.core.cache import cache
from django.db import transaction
from django.urls import reverse

from backupsite import users as services
from backupsite.models import AuditEvent
from backupsite.roles import ADMINISTRATORS, OPERATORS, role_of

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def clean_cache():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def erin(db):
    user = User.objects.create_user("erin", "erin@example.com", "erin-password")
    user.groups.add(Group.objects.get(name=ADMINISTRATORS))
    return user


def link_in(body: str) -> str:
    match = re.search(r"http://127\.0\.0\.1:8000(/accounts/reset/[^/\s]+/[^/\s]+/)", body)
    assert match, body
    return match.group(1)


def test_only_administrators_reach_the_users_page(client, alice, bob, charlie, dave):
    client.force_login(alice)
    page = client.get(reverse("users:list"))
    assert page.status_code == 200 and "alice" in page.content.decode()
    for user in (bob, charlie, dave):
        client.force_login(user)
        for url in (reverse("users:list"), reverse("users:create"), reverse("users:edit", args=[alice.pk])):
            assert client.get(url).status_code == 403
        assert client.post(reverse("users:set_active", args=[alice.pk]), {"active": "0"}).status_code == 403
    alice.refresh_from_db()
    assert alice.is_active


def test_giving_the_administrator_role_is_audited_and_mailed_to_the_other_administrators(
    client, alice, erin, bob, django_capture_on_commit_callbacks
):
    """Acceptance: alice makes bob an administrator → erin is e-mailed (not alice, who did
    it, and not bob, who was no administrator when it was decided... nor after: the change
    mail goes to the *other* administrators of the moment); the audit log has it."""
    client.force_login(alice)
    data = {"email": bob.email, "first_name": "Bob", "last_name": "", "role": ADMINISTRATORS}
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("users:edit", args=[bob.pk]), data, REMOTE_ADDR="192.0.2.8")
    assert response.status_code == 302
    bob.refresh_from_db()
    assert role_of(bob) == ADMINISTRATORS
    event = AuditEvent.objects.get(object_type="auth.user", action="changed")
    assert event.actor == alice and event.ip == "192.0.2.8" and event.object_repr == "bob"
    shown = {c["label"]: c["display"] for c in event.changes}
    assert shown["role"] == "operators → administrators" and shown["first name"] == "(empty) → Bob"
    recipients = sorted(m.to[0] for m in mail.outbox)
    assert "erin@example.com" in recipients and "alice@example.com" not in recipients
    message = next(m for m in mail.outbox if m.to == ["erin@example.com"])
    assert "alice changed user “bob”" in message.subject and "role: operators → administrators" in message.body
    assert f"/users/{bob.pk}/" in message.body


def test_inviting_a_user_sends_a_link_that_sets_the_password(client, alice, django_capture_on_commit_callbacks):
    client.force_login(alice)
    data = {"username": "gina", "email": "gina@example.com", "first_name": "Gina", "last_name": "", "role": OPERATORS}
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("users:create"), {**data, "how": "invite"}, follow=True)
    assert "an invitation went to gina@example.com" in response.content.decode()
    gina = User.objects.get(username="gina")
    assert role_of(gina) == OPERATORS and not gina.has_usable_password()
    [invitation] = [m for m in mail.outbox if m.to == ["gina@example.com"]]
    assert "invited" in invitation.subject and "alice invited you" in invitation.body
    client.logout()
    url = link_in(invitation.body)
    page = client.get(url, follow=True)
    assert page.status_code == 200 and "Choose a new password" in page.content.decode()
    new = "gina's-own-long-password-7"
    response = client.post(page.redirect_chain[-1][0], {"new_password1": new, "new_password2": new}, follow=True)
    assert "Your new password is set" in response.content.decode()
    gina.refresh_from_db()
    assert gina.check_password(new)
    assert client.get(url, follow=True).context["validlink"] is False  # used once
    actions = list(AuditEvent.objects.filter(object_type="auth.user").values_list("action", flat=True))
    assert {"created", "invited", "password_reset"} <= set(actions)


def test_creating_a_user_with_a_first_password(client, alice):
    client.force_login(alice)
    data = {"username": "hal", "email": "hal@example.com", "role": "viewers", "how": "password"}
    page = client.post(reverse("users:create"), {**data, "password1": "short", "password2": "short"})
    assert page.status_code == 200 and "too short" in page.content.decode()
    first = "a-good-first-password-51"
    client.post(reverse("users:create"), {**data, "password1": first, "password2": first})
    hal = User.objects.get(username="hal")
    assert hal.check_password(first) and role_of(hal) == "viewers"
    assert first not in str(list(AuditEvent.objects.values()))


def test_the_last_active_administrator_cannot_be_demoted_or_deactivated(client, alice, erin):
    client.force_login(alice)
    data = {"email": erin.email, "first_name": "", "last_name": "", "role": OPERATORS}
    assert client.post(reverse("users:edit", args=[erin.pk]), data).status_code == 302  # alice remains
    # alice is now the only one: she cannot demote herself...
    own = {"email": alice.email, "first_name": "", "last_name": "", "role": OPERATORS}
    response = client.post(reverse("users:edit", args=[alice.pk]), own)
    assert response.status_code == 409 and "last active administrator" in response.content.decode()
    assert role_of(User.objects.get(pk=alice.pk)) == ADMINISTRATORS
    # ...nor deactivate herself; and nobody deactivates the last one through the service.
    response = client.post(reverse("users:set_active", args=[alice.pk]), {"active": "0"}, follow=True)
    assert "cannot deactivate yourself" in response.content.decode()
    other = User.objects.create_user("ivan", "ivan@example.com", "x")
    request = type("R", (), {"user": other, "META": {}, "method": "POST"})()
    with pytest.raises(services.LastAdministrator):
        services.set_active(User.objects.get(pk=alice.pk), False, request=request)
    assert User.objects.get(pk=alice.pk).is_active


def test_demoting_each_other_leaves_one_administrator(alice, erin):
    """Two administrators demote each other: the second write sees the first."""
    request_a = type("R", (), {"user": alice, "META": {}, "method": "POST"})()
    request_e = type("R", (), {"user": erin, "META": {}, "method": "POST"})()
    with transaction.atomic():
        services.save_user(User.objects.get(pk=erin.pk), role=OPERATORS, request=request_a)
    with pytest.raises(services.LastAdministrator):
        services.save_user(User.objects.get(pk=alice.pk), role=OPERATORS, request=request_e)
    assert role_of(User.objects.get(pk=alice.pk)) == ADMINISTRATORS


def test_deactivating_and_activating_is_audited(client, alice, bob):
    client.force_login(alice)
    client.post(reverse("users:set_active", args=[bob.pk]), {"active": "0"})
    bob.refresh_from_db()
    assert not bob.is_active
    event = AuditEvent.objects.get(object_type="auth.user", action="changed")
    assert [c["display"] for c in event.changes] == ["yes → no"]
    client.logout()
    response = client.post(reverse("login"), {"username": "bob", "password": "bob-password"})
    assert response.status_code == 200  # a deactivated user cannot log in


def test_password_reset_by_email_works_and_is_rate_limited(client, bob, settings):
    page = client.get(reverse("password_reset"))
    assert page.status_code == 200
    response = client.post(reverse("password_reset"), {"email": "BOB@example.com"})
    assert response.status_code == 302 and response["Location"] == reverse("password_reset_done")
    [message] = mail.outbox
    assert message.to == ["bob@example.com"] and "new password" in message.subject
    # An unknown address gets the same answer and no e-mail.
    assert client.post(reverse("password_reset"), {"email": "nobody@example.com"}).status_code == 302
    assert len(mail.outbox) == 1
    url = link_in(message.body)
    page = client.get(url, follow=True)
    new = "bob-has-a-new-password-88"
    client.post(page.redirect_chain[-1][0], {"new_password1": new, "new_password2": new})
    bob.refresh_from_db()
    assert bob.check_password(new)
    # The limits: 3 per address and 5 per client address per hour (the shared limiter).
    client.post(reverse("password_reset"), {"email": "bob@example.com"})
    client.post(reverse("password_reset"), {"email": "bob@example.com"})
    limited = client.post(reverse("password_reset"), {"email": "bob@example.com"})
    assert limited.status_code == 429 and "Too many requests" in limited.content.decode()
    assert int(limited["Retry-After"]) > 0
    assert len(mail.outbox) == 3  # the first and two more; the fourth was refused
    other = client.post(reverse("password_reset"), {"email": "someone@example.com"})
    assert other.status_code == 429  # the same client address: its sixth request this hour


def test_the_users_page_reset_button_sends_a_link(client, alice, bob):
    client.force_login(alice)
    response = client.post(reverse("users:send_reset", args=[bob.pk]), follow=True)
    assert "A password-reset link went to bob@example.com" in response.content.decode()
    assert [m.to for m in mail.outbox] == [["bob@example.com"]]
    assert AuditEvent.objects.filter(action="password_link_sent", object_id=str(bob.pk)).exists()


def test_reset_links_use_the_configured_site_address_not_the_host_header(client, bob, settings):
    settings.ALLOWED_HOSTS = ["*"]
    settings.BACKUPSITE_SITE_URL = "https://backup.example.com"
    client.post(reverse("password_reset"), {"email": "bob@example.com"}, HTTP_HOST="evil.example")
    assert "https://backup.example.com/accounts/reset/" in mail.outbox[0].body
    assert "evil.example" not in mail.outbox[0].body
