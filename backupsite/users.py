"""Users and their roles: create or invite, change the role, deactivate, and send a
password link, for the Users page.

Every change goes through :mod:`backupsite.configwrite` (the user model is registered in
``backupsite/apps.py``, its group membership shown as "role"), so it is audited and
e-mailed to the other administrators like a change of a job. The last active
administrator can never be demoted or deactivated: the check runs inside the write's
transaction with the administrators' rows locked, so two administrators demoting each
other at the same moment cannot both succeed.

Password links (an invitation, or a reset) are Django's password-reset tokens (an HMAC of
the user's password hash and last login: nothing is stored, a used or outdated link
stops working), sent to the user's address with the panel's public address
(``BACKUPSITE_SITE_URL``, never the request's Host header), rate-limited per address
and per client address through the shared limiter.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.auth.tokens import default_token_generator
from django.core.mail import EmailMultiAlternatives
from django.db import transaction
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from backupsite import audit, configwrite
from backupsite.clientip import client_ip
from backupsite.languages import for_user
from backupsite.ratelimit import hit
from backupsite.roles import ADMINISTRATORS, OPERATORS, VIEWERS, administrators

ROLE_CHOICES = [
    (ADMINISTRATORS, gettext_lazy("Administrator: configures everything, manages users, sees the audit log")),
    (OPERATORS, gettext_lazy("Operator: runs backups, downloads, verifies; changes no settings")),
    (VIEWERS, gettext_lazy("Viewer: sees jobs, runs and destinations; changes nothing")),
]

INVITATION, RESET = "invitation", "password_reset"


class LastAdministrator(Exception):
    """The change would leave no active administrator."""

    def __init__(self) -> None:
        super().__init__(_("This is the last active administrator: make another user an administrator first."))


class CannotChangeSelf(Exception):
    pass


def _lock_administrators() -> list:
    User = get_user_model()
    return list(User.objects.select_for_update().filter(pk__in=administrators().values("pk")).order_by("pk"))


def save_user(user, *, role: str, request, password: str | None = None) -> configwrite.ConfigChange:
    """Create or change *user* (its fields already set) with *role*; *password* sets a
    password (a new user without one gets an unusable password: it is invited)."""
    if role not in dict(ROLE_CHOICES):
        raise ValueError(f"Unknown role {role!r}.")
    with transaction.atomic():
        _lock_administrators()
        was_admin = user.pk is not None and administrators().filter(pk=user.pk).exists()
        if role != ADMINISTRATORS:
            user.is_superuser = False
        will_be_admin = user.is_active and (role == ADMINISTRATORS or user.is_superuser)
        if was_admin and not will_be_admin and not administrators().exclude(pk=user.pk).exists():
            raise LastAdministrator()
        if password:
            user.set_password(password)
        elif user.pk is None:
            user.set_unusable_password()
        return configwrite.save(user, request=request, m2m={"groups": [Group.objects.get(name=role)]})


def set_active(user, active: bool, *, request) -> configwrite.ConfigChange | None:
    """Deactivate (or activate again) *user*; never yourself, never the last administrator."""
    from backupsite.roles import role_of

    if user.pk == request.user.pk and not active:
        raise CannotChangeSelf(_("You cannot deactivate yourself; ask another administrator."))
    if user.is_active == active:
        return None
    user.is_active = active
    return save_user(user, role=role_of(user) or VIEWERS, request=request)


# --- password links ---------------------------------------------------------------------------
def password_link(user) -> str:
    uid = urlsafe_base64_encode(force_bytes(user.pk))
    token = default_token_generator.make_token(user)
    path = reverse("password_reset_confirm", kwargs={"uidb64": uid, "token": token})
    return settings.BACKUPSITE_SITE_URL.rstrip("/") + path


def throttle_reset(request, address: str) -> None:
    """Raise :class:`backupsite.ratelimit.RateLimited` past the password-reset limits."""
    hit("password-reset-ip", f"ip:{client_ip(request) or 'unknown'}")
    hit("password-reset-address", f"address:{address.strip().lower()}")


def _mail_link(user, kind: str, **extra) -> None:
    with for_user(user):  # in the user's own language (LANGUAGE_CODE if they chose none)
        _send_link(user, kind, **extra)


def _send_link(user, kind: str, **extra) -> None:
    context = {
        "user": user,
        "link": password_link(user),
        "site_url": settings.BACKUPSITE_SITE_URL.rstrip("/"),
        "valid_days": max(1, settings.PASSWORD_RESET_TIMEOUT // 86400),
        **extra,
    }
    # One line whatever the template renders: no header injection through a name.
    subject = " ".join(render_to_string(f"emails/{kind}_subject.txt", context).split())
    message = EmailMultiAlternatives(subject, render_to_string(f"emails/{kind}.txt", context), None, [user.email])
    message.attach_alternative(render_to_string(f"emails/{kind}.html", context), "text/html")
    message.send()


def send_password_link(user, *, request, kind: str = RESET) -> None:
    """E-mail *user* a link that sets a password (``kind`` INVITATION or RESET), from the
    Users page. Raises RateLimited past the limits, and the mail backend's error if
    sending failed."""
    throttle_reset(request, user.email)
    _mail_link(user, kind, sent_by=request.user.get_username())
    audit.record(request, audit.INVITED if kind == INVITATION else audit.PASSWORD_LINK_SENT, user, to=user.email)


def reset_requested(request, address: str) -> int:
    """ "Forgot your password?": e-mail a link to every active user with *address*; the
    page never tells whether there was one. Raises RateLimited past the limits. Returns
    how many links went out."""
    throttle_reset(request, address)
    User = get_user_model()
    sent = 0
    for user in User.objects.filter(email__iexact=address.strip(), is_active=True).exclude(email=""):
        _mail_link(user, RESET)
        audit.record(None, audit.PASSWORD_RESET_REQUESTED, user, to=user.email)
        sent += 1
    return sent
