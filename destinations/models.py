from __future__ import annotations

from django.db import models
from django.urls import reverse

from backupsite.crypto import EncryptedJSONField
from backupsite.slugs import unique_slug
from backupsite.validators import validate_folder_slug, validate_no_control_chars


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
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

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
        except KeyError:
            return self.kind

    def backend(self):
        """Build this destination's backend from the row, at run time (never cached in
        settings), so every destination can be configured on its own."""
        return self.kind_class.from_destination(self)

    def describe(self) -> str:
        """A one-line, secret-free description for pages, logs and e-mails."""
        try:
            return self.kind_class.describe(self.settings)
        except (KeyError, ValueError):
            return self.kind
