"""The audit log: who did what, to which object, when and from where.

One line records an event, from a view or a service::

    from backupsite import audit
    audit.record(request, audit.RUN_TRIGGERED, run, token="path")   # request, user or None
    audit.record(user, audit.DOWNLOAD, run, where="this server", bytes=1234)

*who* is the request (its user and the client's address, see :mod:`backupsite.clientip`),
a user, or None (the system). Inside a request the address is taken from the request
even when only a user is passed. Keyword details are stored as text; keys that name a
secret (password, token, secret, key) are stored as "(hidden)", so a detail can never
leak one.

What is recorded where:

* every create, change and delete of configuration, with the fields old → new (secrets
  only as "set" / "changed" / "removed"): one receiver of
  :data:`backupsite.configwrite.config_changed`, so a model that registers with
  configwrite is audited and e-mailed without anything more (users and their roles
  are registered in ``backupsite/apps.py``);
* logins, failed logins, lockouts, logouts (Django's and django-axes' signals, below);
  password changes, resets and invitations (the account views); sudo confirmations;
* downloads (``jobs.downloads``), verifies and restores, manual runs, cancels, deleted
  and kept-forever backups (the run views and services);
* trigger URLs: regenerated or removed through configwrite (the token is a secret field
  of Job); :data:`RUN_TRIGGERED` and :data:`TRIGGER_REVEALED` for the scheduling views.

**E-mails to the other administrators.** Events with ``notify`` (configuration and role
changes) are collected per request by :class:`AuditMiddleware`; when the request ends
(its transactions committed) every *other* active administrator gets one
:class:`~backupsite.models.AdminMail` for all of them, delivered by a task and retried
with backoff; a mail server that fails never blocks or undoes the change. Outside a
request (a management command, a task) the events of each transaction are mailed after
it commits.

Events are append-only (:class:`~backupsite.models.AuditEvent` refuses updates and
deletes); :func:`prune` removes those older than ``BACKUPSITE_AUDIT_RETENTION_DAYS``,
from the ``audit-housekeeping`` beat task (every 5 minutes, with the mail re-sends).
"""

from __future__ import annotations

import contextvars
import logging
import random
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import user_logged_in, user_logged_out, user_login_failed
from django.core.mail import EmailMultiAlternatives
from django.db import models, transaction
from django.dispatch import receiver
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from backupsite import configwrite
from backupsite.clientip import client_ip
from backupsite.languages import for_user, in_site_language

log = logging.getLogger(__name__)

# --- actions ------------------------------------------------------------------------------
CREATED, CHANGED, DELETED = configwrite.CREATED, configwrite.CHANGED, configwrite.DELETED
LOGIN, LOGIN_FAILED, LOCKED_OUT, LOGOUT = "login", "login_failed", "locked_out", "logout"
PASSWORD_CHANGED, PASSWORD_RESET_REQUESTED, PASSWORD_RESET = (
    "password_changed",
    "password_reset_asked",
    "password_reset",
)
PASSWORD_LINK_SENT, INVITED = "password_link_sent", "invited"
SUDO, SUDO_FAILED = "sudo", "sudo_failed"
DOWNLOAD, VERIFY, RESTORE = "download", "verify", "restore"
RUN_MANUAL, RUN_TRIGGERED, RUN_CANCELLED = "run_manual", "run_triggered", "run_cancelled"
BACKUP_DELETED, KEEP_FOREVER = "backup_deleted", "keep_forever"
TRIGGER_REGENERATED, TRIGGER_REVEALED = "trigger_regenerated", "trigger_revealed"

ACTIONS: dict[str, str] = {
    CREATED: _("created"),
    CHANGED: _("changed"),
    DELETED: _("deleted"),
    LOGIN: _("logged in"),
    LOGIN_FAILED: _("login failed"),
    LOCKED_OUT: _("locked out"),
    LOGOUT: _("logged out"),
    PASSWORD_CHANGED: _("changed the password"),
    PASSWORD_RESET_REQUESTED: _("asked for a password reset"),
    PASSWORD_RESET: _("set a new password by e-mail link"),
    PASSWORD_LINK_SENT: _("sent a password reset e-mail to"),
    INVITED: _("invited"),
    SUDO: _("confirmed the password"),
    SUDO_FAILED: _("password confirmation failed"),
    DOWNLOAD: _("downloaded"),
    VERIFY: _("verified"),
    RESTORE: _("restored"),
    RUN_MANUAL: _("started"),
    RUN_TRIGGERED: _("triggered"),
    RUN_CANCELLED: _("cancelled"),
    BACKUP_DELETED: _("deleted the backup of"),
    KEEP_FOREVER: _("changed “keep forever” of"),
    TRIGGER_REGENERATED: _("regenerated the trigger URL of"),
    TRIGGER_REVEALED: _("showed the trigger URL of"),
}


def register_action(code: str, label) -> None:
    """A new kind of event (idempotent); *label* reads after the actor's name."""
    if len(code) > 40:
        raise ValueError("An audit action code has at most 40 characters.")
    ACTIONS.setdefault(code, label)


def action_label(code: str) -> str:
    return str(ACTIONS.get(code, code.replace("_", " ")))


# --- the current request ------------------------------------------------------------------
@dataclass
class _Context:
    request: object | None
    batch: str = field(default_factory=lambda: uuid.uuid4().hex)
    notify: list[int] = field(default_factory=list)


_current: contextvars.ContextVar[_Context | None] = contextvars.ContextVar("backupsite_audit", default=None)


class AuditMiddleware:
    """Gives every request a batch id and, when the request has ended, e-mails the other
    administrators once about the configuration changes it made (:func:`flush`)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        context = _Context(request)
        token = _current.set(context)
        try:
            return self.get_response(request)
        finally:
            _current.reset(token)
            if context.notify:
                try:
                    flush(context.notify)
                except Exception:
                    log.exception("Could not queue the configuration-change e-mails of batch %s", context.batch)


# --- recording ----------------------------------------------------------------------------
_SECRET_WORDS = ("password", "secret", "token", "key", "credential")
DETAIL_LIMIT = 500


def _is_request(who) -> bool:
    return hasattr(who, "META") and hasattr(who, "method")


def _user(value):
    if value is None or not getattr(value, "is_authenticated", False):
        return None
    return value


def _detail(key: str, value):
    if any(word in key.lower() for word in _SECRET_WORDS) and value not in (None, "", False):
        return "(hidden)"
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)[:DETAIL_LIMIT]


def _describe(obj) -> tuple[str, str, str, str, str]:
    """object_type, object_label, object_id, object_repr, url of a model instance."""
    if obj is None:
        return "", "", "", "", ""
    opts = obj._meta
    url = ""
    if hasattr(obj, "get_absolute_url"):
        try:
            url = obj.get_absolute_url()
        except Exception:  # noqa: BLE001 - an object without a page still gets its event
            url = ""
    return opts.label_lower, str(opts.verbose_name), str(obj.pk or ""), str(obj)[:200], url[:300]


@in_site_language
def record(
    who,
    action: str,
    obj: models.Model | None = None,
    *,
    changes=(),
    notify: bool = False,
    ip: str | None = None,
    object_type: str | None = None,
    object_label: str | None = None,
    object_id=None,
    object_repr: str | None = None,
    url: str | None = None,
    **details,
):
    """Record one event (see the module docstring); returns the AuditEvent."""
    from backupsite.models import AuditEvent

    context = _current.get()
    request = who if _is_request(who) else (context.request if context is not None else None)
    actor = _user(getattr(who, "user", None)) if _is_request(who) else _user(who)
    kind, label, pk, text, link = _describe(obj)
    event = AuditEvent(
        actor=actor,
        actor_name=actor.get_username()[:150] if actor is not None else "",
        ip=ip if ip is not None else client_ip(request),
        action=action,
        object_type=object_type if object_type is not None else kind,
        object_label=str(object_label if object_label is not None else label)[:100],
        object_id=str(object_id if object_id is not None else pk)[:40] if (object_id or pk) else "",
        object_repr=str(object_repr if object_repr is not None else text)[:200],
        url=(url if url is not None else link)[:300],
        changes=[_change_row(change) for change in changes],
        details={key: _detail(key, value) for key, value in details.items()},
        batch=context.batch if context is not None else "",
        notify=notify,
    )
    event.save()
    if notify:
        if context is not None:
            context.notify.append(event.pk)
        else:
            transaction.on_commit(lambda: flush([event.pk]))
    return event


def _change_row(change) -> dict:
    if isinstance(change, configwrite.FieldChange):
        return {"field": change.field, "label": change.label, "display": change.display, "secret": change.secret}
    return {
        "field": str(change.get("field", "")),
        "label": str(change.get("label", change.get("field", ""))),
        "display": str(change.get("display", "")),
        "secret": bool(change.get("secret")),
    }


@receiver(configwrite.config_changed, dispatch_uid="backupsite.audit.config_changed")
def _config_changed(sender, change: configwrite.ConfigChange, **kwargs) -> None:
    record(
        change.actor,
        change.action,
        ip=change.ip,
        object_type=change.model,
        object_label=change.model_label,
        object_id=change.object_id,
        object_repr=change.object_repr,
        url=change.url,
        changes=change.changes,
        notify=True,
    )


# --- logins -------------------------------------------------------------------------------
@receiver(user_logged_in, dispatch_uid="backupsite.audit.login")
def _logged_in(sender, request, user, **kwargs) -> None:
    record(user, LOGIN, user, ip=client_ip(request))


@receiver(user_logged_out, dispatch_uid="backupsite.audit.logout")
def _logged_out(sender, request, user, **kwargs) -> None:
    if user is not None:
        record(user, LOGOUT, user, ip=client_ip(request))


@receiver(user_login_failed, dispatch_uid="backupsite.audit.login_failed")
def _login_failed(sender, credentials, request=None, **kwargs) -> None:
    # Django has already replaced the password in *credentials* by stars.
    name = str(credentials.get("username") or "")[:150]
    record(None, LOGIN_FAILED, ip=client_ip(request), object_type="auth.user", object_repr=name, username=name)


def locked_out(sender, request=None, username=None, ip_address=None, **kwargs) -> None:
    """django-axes' ``user_locked_out`` (connected in ``backupsite/apps.py``)."""
    name = str(username or "")[:150]
    record(
        None,
        LOCKED_OUT,
        ip=client_ip(request) if request is not None else ip_address,
        object_type="auth.user",
        object_repr=name,
        username=name,
    )


# --- e-mails to the other administrators --------------------------------------------------
MAIL_ATTEMPTS = 10
MAIL_RETRY_BASE = 60  # seconds; doubled each attempt, with jitter, at most MAIL_RETRY_MAX
MAIL_RETRY_MAX = 6 * 3600
MAIL_LEASE = 300  # a delivery in progress holds the mail this long


def backoff(attempts: int) -> float:
    """Seconds before attempt *attempts* + 1: exponential with "equal jitter"."""
    ceiling = min(MAIL_RETRY_MAX, MAIL_RETRY_BASE * 2 ** max(0, attempts - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not cryptography


def _site_url() -> str:
    return settings.BACKUPSITE_SITE_URL.rstrip("/")


def _render(events, recipient) -> tuple[str, str, str]:
    first = events[0]
    context = {
        "events": events,
        "first": first,
        "count": len(events),
        "actor": first.actor_name or _("the system"),
        "ip": first.ip or _("unknown address"),
        "at": timezone.localtime(first.at),
        "recipient": recipient,
        "site_url": _site_url(),
        "audit_url": _site_url() + "/audit/",
    }
    # One line whatever the template and the object names render: no header injection.
    subject = " ".join(render_to_string("emails/admin_change_subject.txt", context).split())[:255]
    body = render_to_string("emails/admin_change.txt", context)
    html = render_to_string("emails/admin_change.html", context)
    return subject, body, html


def flush(event_ids) -> list:
    """Make one e-mail per other active administrator for the committed events among
    *event_ids*, and hand them to the workers after commit. Returns the mails."""
    from backupsite.models import AdminMail, AuditEvent
    from backupsite.roles import administrators

    events = list(AuditEvent.objects.filter(pk__in=list(event_ids), notify=True).order_by("at", "pk"))
    if not events:
        return []
    actors = {event.actor_id for event in events if event.actor_id is not None}
    recipients = administrators().exclude(pk__in=actors).exclude(email="").order_by("pk")
    mails = []
    with transaction.atomic():
        for user in recipients:
            with for_user(user):  # each administrator reads it in their own language
                subject, body, html = _render(events, user)
            mail = AdminMail.objects.create(recipient=user, address=user.email, subject=subject, body=body, html=html)
            mail.events.set(events)
            mails.append(mail)
        ids = [mail.pk for mail in mails]
        transaction.on_commit(lambda: _enqueue(ids))
    return mails


def _enqueue(mail_ids: list[int]) -> None:
    from backupsite import tasks

    for mail_id in mail_ids:
        try:
            tasks.deliver_admin_mail.delay(mail_id)
        except Exception:
            log.exception("Could not queue configuration-change e-mail %s; it is sent later", mail_id)


def deliver(mail_id: int, *, now=None) -> float | None:
    """Send one admin mail if it is due and nobody else is sending it. Returns the
    seconds until the next attempt when sending failed, else None."""
    from backupsite.models import AdminMail

    now = now or timezone.now()
    claimed = AdminMail.objects.filter(pk=mail_id, state=AdminMail.State.PENDING, next_attempt_at__lte=now).update(
        next_attempt_at=now + timedelta(seconds=MAIL_LEASE)
    )
    if not claimed:
        return None
    mail = AdminMail.objects.get(pk=mail_id)
    message = EmailMultiAlternatives(mail.subject, mail.body, None, [mail.address])
    if mail.html:
        message.attach_alternative(mail.html, "text/html")
    try:
        message.send()
    except Exception as exc:  # noqa: BLE001 - any mail failure: retry later, never lose the event
        attempts = mail.attempts + 1
        error = f"{type(exc).__name__}: {exc}"[:300]
        if attempts >= MAIL_ATTEMPTS:
            AdminMail.objects.filter(pk=mail_id).update(attempts=attempts, state=AdminMail.State.FAILED, error=error)
            log.error(
                "Configuration-change e-mail %s to %s failed %s times; giving up", mail_id, mail.address, attempts
            )
            return None
        delay = backoff(attempts)
        AdminMail.objects.filter(pk=mail_id).update(
            attempts=attempts, next_attempt_at=now + timedelta(seconds=delay), error=error
        )
        log.warning(
            "Configuration-change e-mail %s to %s failed (%s); retry in %.0f s", mail_id, mail.address, error, delay
        )
        return delay
    AdminMail.objects.filter(pk=mail_id).update(
        state=AdminMail.State.SENT, sent_at=timezone.now(), attempts=mail.attempts + 1, error=""
    )
    return None


def resend_due(*, now=None, limit: int = 50) -> int:
    """Deliver pending mails whose time has come (their task was lost, or the broker was
    down); returns how many went out."""
    from backupsite.models import AdminMail

    now = now or timezone.now()
    due = AdminMail.objects.filter(state=AdminMail.State.PENDING, next_attempt_at__lte=now).order_by("next_attempt_at")
    sent = 0
    for mail_id in list(due.values_list("pk", flat=True)[:limit]):
        if deliver(mail_id, now=now) is None and AdminMail.objects.filter(pk=mail_id, state="sent").exists():
            sent += 1
    return sent


# --- retention ----------------------------------------------------------------------------
def prune(*, now=None) -> int:
    """Remove events older than ``BACKUPSITE_AUDIT_RETENTION_DAYS`` (0 keeps them all),
    and the sent or failed mails about them."""
    from backupsite.models import AdminMail, AuditEvent

    days = int(getattr(settings, "BACKUPSITE_AUDIT_RETENTION_DAYS", 0) or 0)
    if days <= 0:
        return 0
    cutoff = (now or timezone.now()) - timedelta(days=days)
    AdminMail.objects.filter(created_at__lt=cutoff).exclude(state=AdminMail.State.PENDING).delete()
    return AuditEvent.objects.filter(at__lt=cutoff)._prune()


def housekeeping(*, now=None) -> dict:
    return {"pruned": prune(now=now), "resent": resend_due(now=now)}
