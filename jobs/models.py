from __future__ import annotations

import zoneinfo
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone
from django.utils.text import slugify

from backupsite.crypto import EncryptedJSONField
from backupsite.validators import split_addresses, validate_address_list, validate_no_control_chars


def _unique_slug(model, name: str, pk=None, fallback: str = "item") -> str:
    base = slugify(name)[:90] or fallback
    slug, n = base, 2
    while model.objects.filter(slug=slug).exclude(pk=pk).exists():
        slug, n = f"{base}-{n}", n + 1
    return slug


class Source(models.Model):
    """Something that can be backed up, offered as a checkbox in the wizard. ``kind``
    selects a class from ``jobs.sources.REGISTRY``; ``settings`` is its configuration."""

    name = models.CharField(max_length=100, unique=True, validators=[validate_no_control_chars])
    slug = models.SlugField(max_length=100, unique=True, blank=True)  # set from the name on save
    kind = models.CharField(max_length=30)
    settings = models.JSONField(default=dict, blank=True)
    secrets = EncryptedJSONField()
    size_bytes = models.BigIntegerField(null=True, blank=True)
    file_count = models.BigIntegerField(null=True, blank=True)
    size_measured_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs):
        if not self.slug:
            self.slug = _unique_slug(Source, self.name, self.pk, "source")
        super().save(*args, **kwargs)

    def get_absolute_url(self) -> str:
        return reverse("jobs:source_detail", args=[self.pk])

    def handler(self):
        from jobs.sources import get_kind

        return get_kind(self.kind)(self.name, self.slug, self.settings, self.secrets)

    @property
    def kind_label(self) -> str:
        from jobs.sources import REGISTRY

        cls = REGISTRY.get(self.kind)
        return cls.label if cls else self.kind

    def measure(self) -> None:
        size, files = self.handler().measure()
        self.size_bytes, self.file_count, self.size_measured_at = size, files, timezone.now()
        self.save(update_fields=["size_bytes", "file_count", "size_measured_at", "updated_at"])


class Job(models.Model):
    class Interval(models.TextChoices):
        MANUAL = "manual", "Manually only"
        HOURLY = "hourly", "Hourly"
        DAILY = "daily", "Daily"
        WEEKLY = "weekly", "Weekly"
        MONTHLY = "monthly", "Monthly"
        CRON = "cron", "Cron expression"

    class Encryption(models.TextChoices):
        NONE = "none", "Not encrypted"
        PASSWORD = "password", "Encrypted, key protected by the backup password"
        RECIPIENT = "recipient", "Encrypted to an age public key (no key on this server)"

    name = models.CharField(max_length=100, unique=True, validators=[validate_no_control_chars])
    slug = models.SlugField(max_length=100, unique=True, blank=True)  # set from the name on save
    report_to = models.TextField(
        blank=True,
        validators=[validate_address_list],
        help_text="E-mail addresses (comma separated) alerted when a run fails.",
    )
    interval = models.CharField(max_length=10, choices=Interval.choices, default=Interval.MANUAL)
    cron = models.CharField(max_length=100, blank=True, validators=[validate_no_control_chars])
    first_run_at = models.DateTimeField(null=True, blank=True)
    timezone = models.CharField(max_length=64, default="UTC")
    sources = models.ManyToManyField(Source, related_name="jobs")
    destinations = models.ManyToManyField("destinations.Destination", related_name="jobs")
    archive_name_template = models.CharField(
        max_length=100, default="{job}-{date}-{time}", validators=[validate_no_control_chars]
    )
    encryption = models.CharField(max_length=10, choices=Encryption.choices, default=Encryption.NONE)
    # The public key archives are encrypted to (X25519, "age1…").
    age_recipient = models.CharField(max_length=100, blank=True)
    # With PASSWORD: the job's age identity, itself age-encrypted with the backup password
    # (the content of backupsite-key.age, base64). The password is never stored.
    age_identity_wrapped = models.TextField(blank=True)
    compression_level = models.PositiveSmallIntegerField(
        default=3, validators=[MinValueValidator(1), MaxValueValidator(19)]
    )
    keep_last = models.PositiveIntegerField(null=True, blank=True)
    max_age_days = models.PositiveIntegerField(null=True, blank=True)
    enabled = models.BooleanField(default=True)
    next_run_at = models.DateTimeField(null=True, blank=True, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        permissions = [("run_job", "Can run backup jobs")]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs):
        if not self.slug:
            self.slug = _unique_slug(Job, self.name, self.pk, "job")
        super().save(*args, **kwargs)

    def get_absolute_url(self) -> str:
        return reverse("jobs:job_detail", args=[self.pk])

    def clean(self) -> None:
        from jobs.naming import validate_template

        errors = {}
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            errors["timezone"] = "Unknown time zone."
        try:
            validate_template(self.archive_name_template)
        except ValueError as exc:
            errors["archive_name_template"] = str(exc)
        if errors:
            raise ValidationError(errors)

    @property
    def report_to_list(self) -> list[str]:
        return split_addresses(self.report_to)

    @property
    def last_run(self):
        return self.runs.order_by("-created_at").first()

    @property
    def last_success(self):
        return self.runs.filter(state=Run.State.SUCCEEDED).order_by("-finished_at").first()

    def active_run(self):
        return self.runs.filter(state__in=Run.ACTIVE_STATES).first()

    # --- encryption ---------------------------------------------------------------
    @property
    def encrypts(self) -> bool:
        return self.encryption != self.Encryption.NONE

    @property
    def key_file(self) -> bytes | None:
        """The content of ``backupsite-key.age`` (password mode), or None."""
        from jobs.engine import agekeys

        if self.encryption != self.Encryption.PASSWORD or not self.age_identity_wrapped:
            return None
        return agekeys.from_text(self.age_identity_wrapped)

    def set_backup_password(self, password: str, *, old_password: str | None = None) -> None:
        """Encrypt with the job's own key, protected by *password*.

        The first time, a new identity is made. Later, *old_password* unwraps the same
        identity and *password* re-wraps it, so older backups stay readable with the new
        password. (Not saved: call save().)"""
        from jobs.engine import agekeys

        if self.age_identity_wrapped and self.encryption == self.Encryption.PASSWORD:
            if old_password is None:
                raise agekeys.KeyError_("The current backup password is needed to change it.")
            wrapped = agekeys.rewrap(agekeys.from_text(self.age_identity_wrapped), old_password, password)
        else:
            identity, recipient = agekeys.new_identity()
            wrapped = agekeys.wrap_identity(identity, password)
            self.age_recipient = recipient
        self.age_identity_wrapped = agekeys.to_text(wrapped)
        self.encryption = self.Encryption.PASSWORD

    def set_recipient(self, recipient: str) -> None:
        """Encrypt to an age public key whose identity never touches this server."""
        from jobs.engine import agekeys

        self.age_recipient = agekeys.validate_recipient(recipient)
        self.age_identity_wrapped = ""
        self.encryption = self.Encryption.RECIPIENT

    def identity(self, password: str) -> str:
        """The job's age identity, unwrapped with the backup password (verify, restore)."""
        from jobs.engine import agekeys

        key_file = self.key_file
        if key_file is None:
            raise agekeys.KeyError_("This job's key is not stored here (public-key encryption or none).")
        return agekeys.unwrap_identity(key_file, password)


class Run(models.Model):
    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        WAITING = "waiting", "Waiting for a free slot"
        RUNNING = "running", "Running"
        UPLOADING = "uploading", "Uploading"
        SUCCEEDED = "succeeded", "Succeeded"
        PARTIAL = "partial", "Partially succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    class Phase(models.TextChoices):
        PENDING = "", "Not started"
        COLLECT = "collect", "Collecting"
        ARCHIVE = "archive", "Archiving"
        UPLOAD = "upload", "Uploading"
        RETENTION = "retention", "Applying retention"
        NOTIFY = "notify", "Notifying"
        DONE = "done", "Done"

    class Trigger(models.TextChoices):
        MANUAL = "manual", "Run now"
        SCHEDULE = "schedule", "Schedule"
        CLI = "cli", "Command line"
        WIZARD = "wizard", "Wizard"

    ACTIVE_STATES = (State.QUEUED, State.WAITING, State.RUNNING, State.UPLOADING)
    FINAL_STATES = (State.SUCCEEDED, State.PARTIAL, State.FAILED, State.CANCELLED)

    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="runs")
    job_name = models.CharField(max_length=100)
    config = models.JSONField(default=dict, help_text="Snapshot of the configuration the run used.")
    trigger = models.CharField(max_length=10, choices=Trigger.choices, default=Trigger.MANUAL)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED, db_index=True)
    phase = models.CharField(max_length=10, choices=Phase.choices, default=Phase.PENDING, blank=True)
    bytes_done = models.BigIntegerField(default=0)
    bytes_total = models.BigIntegerField(default=0)
    files_done = models.BigIntegerField(default=0)
    archive_name = models.CharField(max_length=255, blank=True)
    archive_size = models.BigIntegerField(null=True, blank=True)
    archive_sha256 = models.CharField(max_length=64, blank=True)
    file_count = models.BigIntegerField(null=True, blank=True)
    local_path = models.CharField(max_length=500, blank=True, help_text="Relative to the archive folder.")
    log = models.TextField(blank=True)
    error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    verified_at = models.DateTimeField(null=True, blank=True)
    verify_ok = models.BooleanField(null=True, blank=True)
    verify_message = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        permissions = [("download_run", "Can download backups")]
        constraints = [
            # The per-job lock, enforced by the database: at most one active run per job.
            models.UniqueConstraint(
                fields=["job"],
                condition=Q(state__in=["queued", "waiting", "running", "uploading"]),
                name="one_active_run_per_job",
            ),
        ]

    def __str__(self) -> str:
        return f"Run #{self.pk} of {self.job_name}"

    def get_absolute_url(self) -> str:
        return reverse("jobs:run_detail", args=[self.pk])

    @property
    def is_active(self) -> bool:
        return self.state in self.ACTIVE_STATES

    @property
    def progress_percent(self) -> int | None:
        if self.state == self.State.SUCCEEDED:
            return 100
        if not self.bytes_total:
            return None
        return max(0, min(100, int(self.bytes_done * 100 / self.bytes_total)))

    @property
    def duration(self) -> timedelta | None:
        if self.started_at is None:
            return None
        return (self.finished_at or timezone.now()) - self.started_at

    @property
    def duration_display(self) -> str:
        """'0.2 s', '3 min 12 s', '2 h 05 min'."""
        duration = self.duration
        if duration is None:
            return ""
        seconds = duration.total_seconds()
        if seconds < 60:
            return f"{seconds:.1f} s"
        minutes, secs = divmod(int(seconds), 60)
        if minutes < 60:
            return f"{minutes} min {secs:02d} s"
        hours, minutes = divmod(minutes, 60)
        return f"{hours} h {minutes:02d} min"

    @property
    def local_file(self):
        if not self.local_path:
            return None
        path = (settings.BACKUPSITE_ARCHIVE_DIR / self.local_path).resolve()
        root = settings.BACKUPSITE_ARCHIVE_DIR.resolve()
        if root not in path.parents:
            return None
        return path

    @property
    def can_download(self) -> bool:
        path = self.local_file
        return self.state in (self.State.SUCCEEDED, self.State.PARTIAL) and path is not None and path.is_file()

    @property
    def downloadable(self) -> bool:
        """The archive can be offered for download: from the local copy, or from a
        destination that holds it and can read it back (``jobs.downloads``)."""
        from jobs import downloads

        return downloads.available(self)

    @property
    def job_slug(self) -> str:
        return self.config.get("job", {}).get("slug", "")

    def append_log(self, line: str) -> None:
        stamp = timezone.now().strftime("%Y-%m-%d %H:%M:%S")
        self.log = f"{self.log}{stamp} {line}\n"


class VerifyTicket(models.Model):
    """A verification asked for in the panel, waiting for a worker (a multi-GB verify
    must not run inside a web request). For an encrypted backup it holds the job's age
    identity, unwrapped from the password the user typed, encrypted at rest; the worker
    deletes the row before it starts, and the reaper removes tickets nobody picked up."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="+")
    destination = models.ForeignKey(
        "destinations.Destination", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    checksum_only = models.BooleanField(default=False)
    secrets = EncryptedJSONField()
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"Verification of run #{self.run_id}"


class SlotLock(models.Model):
    """One row per named lock; claiming a run locks the row ``heavy-runs`` so that two
    workers never both take the last free slot (``SELECT … FOR UPDATE`` on PostgreSQL;
    SQLite serialises writers with its IMMEDIATE transactions anyway)."""

    name = models.CharField(max_length=50, primary_key=True)

    def __str__(self) -> str:
        return self.name


class Upload(models.Model):
    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        UPLOADING = "uploading", "Uploading"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="uploads")
    destination = models.ForeignKey(
        "destinations.Destination", null=True, on_delete=models.SET_NULL, related_name="uploads"
    )
    destination_name = models.CharField(max_length=100)
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    remote_name = models.CharField(max_length=255, blank=True)
    bytes_done = models.BigIntegerField(default=0)
    error = models.TextField(blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    verified_at = models.DateTimeField(null=True, blank=True)
    verify_ok = models.BooleanField(null=True, blank=True)
    verify_message = models.TextField(blank=True)

    class Meta:
        ordering = ["pk"]
        constraints = [models.UniqueConstraint(fields=["run", "destination"], name="one_upload_per_destination")]

    def __str__(self) -> str:
        return f"{self.run} → {self.destination_name}"

    @property
    def can_read_back(self) -> bool:
        """Succeeded, and its destination can read files back (verify, download)."""
        from destinations.backends.base import READ

        return self.state == self.State.SUCCEEDED and self.destination is not None and self.destination.can(READ)
