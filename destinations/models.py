from __future__ import annotations

from django.db import models
from django.urls import reverse
from django.utils.translation import gettext_lazy as _

from backupsite.crypto import EncryptedJSONField
from backupsite.slugs import unique_slug
from backupsite.validators import validate_folder_slug, validate_no_control_chars

# destinations.backends is imported inside the methods: the registry imports every kind
# module, whose forms import this module (destinations.forms), so importing it here would
# be circular while Django loads the models.


def _errors():
    from destinations.backends.base import DestinationError

    return DestinationError


class DestinationQuerySet(models.QuerySet):
    def described(self):
        """Only the columns a page that describes many destinations reads: the kind and
        its settings (where it writes, what it takes), the free space and what the last
        test learned. No credentials and no test texts (a hundred rows, at every request
        of the wizard's steps 2 and 3)."""
        return self.only("pk", "name", "kind", "settings", "enabled", "status", "last_test_details")


class Destination(models.Model):
    """Where archives go. ``kind`` selects a backend from ``destinations.backends.REGISTRY``;
    ``settings`` holds its non-secret options, ``secrets`` its credentials (encrypted)."""

    name = models.CharField(max_length=100, unique=True, validators=[validate_no_control_chars])
    # Set from the name on save. Not a folder name today, but checked like the slugs of
    # jobs and sources (only a plain slug, by full_clean() and by save() alike).
    slug = models.SlugField(max_length=100, unique=True, blank=True, validators=[validate_folder_slug])
    kind = models.CharField(max_length=30)
    settings = models.JSONField(default=dict, blank=True)
    secrets = EncryptedJSONField()
    enabled = models.BooleanField(default=True)
    last_test_at = models.DateTimeField(null=True, blank=True)
    last_test_ok = models.BooleanField(null=True, blank=True)
    last_test_message = models.CharField(max_length=500, blank=True)
    #: The last TestResult (``TestResult.to_dict()``): fingerprints, free space, folder.
    last_test_details = models.JSONField(default=dict, blank=True)
    #: Facts learned by tests and uploads, for the list page: ``free_bytes`` and
    #: ``free_checked_at``, a USB disk's label and when it was last seen, ...
    status = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = DestinationQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        verbose_name = _("destination")

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs):
        if not self.slug:
            # Unique like a job's: "NAS 1" and "NAS-1" become nas-1 and nas-1-2.
            self.slug = unique_slug(Destination, self.name, self.pk, "destination")
        # Also without full_clean() (the shell, scripts). Fixtures and update() bypass save():
        # every place that builds a path checks again (safe_folder_name).
        validate_folder_slug(self.slug)
        super().save(*args, **kwargs)

    def get_absolute_url(self) -> str:
        return reverse("destinations:detail", args=[self.pk])

    @property
    def kind_class(self):
        from destinations.backends import get_kind

        return get_kind(self.kind)

    @property
    def kind_label(self) -> str:
        try:
            return self.kind_class.label
        except _errors():
            return self.kind

    def backend(self):
        """This destination's backend, built from the row at run time (never cached in
        settings, so every destination is configured on its own). The one place that
        maps a bad row to a typed error: an unknown kind or invalid settings raise
        :class:`~destinations.backends.base.PermanentError`."""
        backend = self.kind_class.from_destination(self)
        if self.pk is not None:
            backend.status_listener = self.record_status
        return backend

    def can(self, capability: str) -> bool:
        try:
            return capability in self.kind_class.capabilities
        except _errors():
            return False

    @property
    def secret_fields(self) -> tuple[str, ...]:
        try:
            return self.kind_class.secret_fields
        except _errors():
            return ()

    def describe(self) -> str:
        """A one-line, secret-free description for pages, logs and e-mails."""
        try:
            return self.kind_class.describe(self.settings)
        except (_errors(), ValueError):
            return self.kind_label

    @property
    def last_test(self):
        from destinations.backends.base import TestResult

        return TestResult.from_dict(self.last_test_details)

    def record_test(self, result) -> None:
        """Store a TestResult (and what it learned) on the row."""
        from django.utils import timezone

        now = timezone.now()
        self.last_test_at = now
        self.last_test_ok = result.ok
        self.last_test_message = result.message[:500]
        self.last_test_details = result.to_dict()
        if result.free_bytes is not None:
            self.status = {**self.status, "free_bytes": result.free_bytes, "free_checked_at": now.isoformat()}
        type(self).objects.filter(pk=self.pk).update(
            last_test_at=self.last_test_at,
            last_test_ok=self.last_test_ok,
            last_test_message=self.last_test_message,
            last_test_details=self.last_test_details,
            status=self.status,
        )

    def record_status(self, facts: dict) -> None:
        """Merge *facts* a backend learned (``Backend.report_status``) into ``status``:
        top-level keys replace, dict values are merged key by key (the USB disks seen).
        Read and written in one transaction, so an upload and a test do not undo each
        other's facts."""
        from django.db import transaction

        if self.pk is None or not facts:
            return
        with transaction.atomic():
            current = type(self).objects.select_for_update().filter(pk=self.pk).values_list("status", flat=True).first()
            merged = dict(current or {})
            for key, value in facts.items():
                if isinstance(value, dict) and isinstance(merged.get(key), dict):
                    merged[key] = {**merged[key], **value}
                else:
                    merged[key] = value
            type(self).objects.filter(pk=self.pk).update(status=merged)
        self.status = merged

    def status_facts(self) -> list[str]:
        """Readable lines about the destination's state from ``status`` (free space, a
        USB disk last seen ...), worded by its kind."""
        try:
            return self.kind_class.status_facts(self.status or {})
        except (_errors(), ValueError, TypeError):
            return []
