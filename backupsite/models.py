"""The audit log and the outbox of "configuration changed" e-mails (see backupsite/audit.py)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from backupsite.languages import choices as language_choices


class AppendOnly(Exception):
    """An audit event is never changed or deleted (except by the retention prune)."""


class AuditEventQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AppendOnly("Audit events are append-only.")

    def delete(self):
        raise AppendOnly("Audit events are append-only; only backupsite.audit.prune() removes old ones.")

    def _prune(self) -> int:
        """Delete these rows (for :func:`backupsite.audit.prune` only)."""
        return models.QuerySet.delete(self)[0]


class AuditEvent(models.Model):
    """Who did what to which object, when and from where. Written once, never changed;
    old events are pruned after ``BACKUPSITE_AUDIT_RETENTION_DAYS``.

    ``changes`` is a list of ``{"field", "label", "display", "secret"}``: the display is
    already masked (a secret shows only as "set", "changed" or "removed"), so no stored
    secret ever reaches this table."""

    at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    #: The actor's user name when the event was recorded (kept when the user is renamed).
    actor_name = models.CharField(max_length=150, blank=True, db_index=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    action = models.CharField(max_length=40, db_index=True)
    object_type = models.CharField(max_length=100, blank=True, db_index=True)  # "destinations.destination"
    object_label = models.CharField(max_length=100, blank=True)  # "destination"
    object_id = models.CharField(max_length=40, blank=True)
    object_repr = models.CharField(max_length=200, blank=True)
    url = models.CharField(max_length=300, blank=True)
    changes = models.JSONField(default=list, blank=True)
    details = models.JSONField(default=dict, blank=True)
    #: The request (or standalone write) the event belongs to: one e-mail per request.
    batch = models.CharField(max_length=32, blank=True)
    #: Whether the other administrators are e-mailed about it (configuration and roles).
    notify = models.BooleanField(default=False)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-at", "-pk"]
        indexes = [models.Index(fields=["object_type", "object_id"], name="audit_object")]
        verbose_name = _("audit event")

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.actor_name or '-'} {self.action} {self.object_repr}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AppendOnly("Audit events are append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnly("Audit events are append-only.")

    @property
    def action_label(self) -> str:
        from backupsite.audit import action_label

        return action_label(self.action)

    @property
    def object_label_display(self) -> str:
        """The kind of object in the reader's language ("destination", „Speicherort“): the
        model's verbose name now, else the label stored with the event."""
        from django.apps import apps

        try:
            return str(apps.get_model(self.object_type)._meta.verbose_name) if self.object_type else self.object_label
        except (LookupError, ValueError):
            return self.object_label

    @property
    def summary(self) -> str:
        """One line: "changed destination “NAS”"."""
        what = " ".join(
            part for part in (self.object_label_display, f"“{self.object_repr}”" if self.object_repr else "") if part
        )
        return f"{self.action_label} {what}".strip()


class AdminMail(models.Model):
    """One "configuration changed" e-mail to one administrator, for the events of one
    request: rendered when the request ends, delivered by a task after commit, retried
    with backoff, and sent again by the housekeeping task if its task was lost."""

    class State(models.TextChoices):
        PENDING = "pending", _("Pending")
        SENT = "sent", _("Sent")
        FAILED = "failed", _("Failed")

    recipient = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    address = models.EmailField()
    events = models.ManyToManyField(AuditEvent, related_name="+")
    subject = models.CharField(max_length=255)
    body = models.TextField()
    html = models.TextField(blank=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING, db_index=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    error = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.subject} → {self.address} ({self.state})"


class UserProfile(models.Model):
    """What the panel keeps about a user besides Django's user row: the language the
    panel and its e-mails to them are in (blank: the browser's, else LANGUAGE_CODE)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="profile")
    language = models.CharField(
        _("language"),
        max_length=10,
        blank=True,
        choices=language_choices,
        help_text=_("Blank: the browser's language."),
    )

    class Meta:
        verbose_name = _("user profile")

    def __str__(self) -> str:
        return f"{self.user_id}: {self.language or '-'}"
