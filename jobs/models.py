from __future__ import annotations

import zoneinfo
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxLengthValidator, MaxValueValidator, MinValueValidator, URLValidator
from django.db import models, transaction
from django.db.models import OuterRef, Q, Subquery
from django.db.models.signals import pre_save
from django.dispatch import receiver
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from backupsite.crypto import EncryptedJSONField, EncryptedTextField, TokenTextField
from backupsite.slugs import unique_slug
from backupsite.validators import (
    split_addresses,
    validate_address_list,
    validate_folder_slug,
    validate_no_control_chars,
)
from jobs.runstate import BytesProgress, RunRecord, one_active_run
from jobs.scheduled import ScheduleTracking

#: The folder of a one-off run ("only execute backup" in the wizard): ``oneoff-<run id>``.
ONEOFF_PREFIX = "oneoff-"


def oneoff_folder(run_id: int) -> str:
    """The folder slug of a one-off run, here and at every destination
    (``backupsite/oneoff-<run id>/``): never a job's (see :meth:`Job.slug_for`), so no
    job's retention ever touches it."""
    return f"{ONEOFF_PREFIX}{int(run_id)}"


def default_timezone() -> str:
    """New jobs follow the site's time zone (TIME_ZONE) unless changed."""
    return settings.TIME_ZONE


def default_language() -> str:
    """New jobs send their alert e-mails in the site's language (LANGUAGE_CODE)."""
    return settings.LANGUAGE_CODE


def language_choices():
    return settings.LANGUAGES


class SourceUndeletable(Exception):
    """The source cannot be deleted (the panel's own database)."""


class Source(models.Model):
    """Something that can be backed up, offered as a checkbox in the wizard. ``kind``
    selects a class from ``jobs.sources.REGISTRY``; ``settings`` is its configuration."""

    name = models.CharField(max_length=100, unique=True, validators=[validate_no_control_chars])
    # Set from the name on save; becomes a folder name (archives, destinations), so only
    # a plain slug is accepted, by full_clean() and by save() alike.
    slug = models.SlugField(max_length=100, unique=True, blank=True, validators=[validate_folder_slug])
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
        verbose_name = _("source")
        constraints = [
            # The panel's own database is one source, made by a migration (never two).
            models.UniqueConstraint(
                fields=["kind"], condition=Q(kind="panel_database"), name="one_panel_database_source"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs):
        if not self.slug:
            self.slug = unique_slug(Source, self.name, self.pk, "source")
        # Also without full_clean() (the shell, scripts). Fixtures and update() bypass save():
        # every place that builds a path checks again (safe_folder_name).
        validate_folder_slug(self.slug)
        super().save(*args, **kwargs)

    def get_absolute_url(self) -> str:
        return reverse("jobs:source_detail", args=[self.pk])

    def delete(self, *args, **kwargs):
        """Refuses for the panel's own database (its kind is a singleton): it is always
        there, for disaster recovery of the panel."""
        if self.is_permanent:
            raise SourceUndeletable(f"“{self.name}” is the panel's own database; it cannot be deleted.")
        return super().delete(*args, **kwargs)

    PANEL_DATABASE = "panel_database"

    @classmethod
    def panel_database(cls) -> Source:
        """The panel's own database source: made by a migration, made again here if it
        is missing (a database flushed by hand); never a second one."""
        existing = cls.objects.filter(kind=cls.PANEL_DATABASE).first()
        if existing is not None:
            return existing
        name = "Panel database"
        if cls.objects.filter(name=name).exists():
            name = "Panel database (backupsite)"
        return cls.objects.create(name=name, kind=cls.PANEL_DATABASE)

    @property
    def kind_class(self):
        from jobs.sources import REGISTRY

        return REGISTRY.get(self.kind)

    @property
    def is_permanent(self) -> bool:
        cls = self.kind_class
        return cls is not None and cls.singleton

    def handler(self):
        from jobs.sources import get_kind

        return get_kind(self.kind)(self.name, self.slug, self.settings, self.secrets)

    @property
    def kind_label(self) -> str:
        cls = self.kind_class
        return cls.label if cls else self.kind

    def describe(self) -> str:
        """One line for pages (never a secret); the error, readably, for a bad row."""
        from jobs.sources import SourceError, get_kind

        try:
            # Without the secrets: a description never needs them (and a list page then
            # need not load and decrypt them).
            return get_kind(self.kind)(self.name, self.slug, self.settings).describe()
        except (SourceError, ValueError) as exc:
            return f"Invalid configuration: {exc}"

    @property
    def is_sensitive(self) -> bool:
        """Archives holding this source are for administrators only (the panel's database)."""
        from jobs.sources import is_sensitive

        return is_sensitive({"kind": self.kind})

    def measure(self) -> None:
        size, files = self.handler().measure()
        self.size_bytes, self.file_count, self.size_measured_at = size, files, timezone.now()
        self.save(update_fields=["size_bytes", "file_count", "size_measured_at", "updated_at"])


class Job(ScheduleTracking, models.Model):
    class Interval(models.TextChoices):
        MANUAL = "manual", _("Manually only")
        HOURLY = "hourly", _("Hourly")
        DAILY = "daily", _("Daily")
        WEEKLY = "weekly", _("Weekly")
        MONTHLY = "monthly", _("Monthly")
        CRON = "cron", _("Cron expression")

    class Encryption(models.TextChoices):
        NONE = "none", _("Not encrypted")
        PASSWORD = "password", _("Encrypted, key protected by the backup password")
        RECIPIENT = "recipient", _("Encrypted to an age public key (no key on this server)")

    name = models.CharField(max_length=100, unique=True, validators=[validate_no_control_chars])
    # Set from the name on save; becomes a folder name (archives, destinations), so only
    # a plain slug is accepted, by full_clean() and by save() alike.
    slug = models.SlugField(max_length=100, unique=True, blank=True, validators=[validate_folder_slug])
    report_to = models.TextField(
        blank=True,
        validators=[validate_address_list],
        help_text=_("E-mail addresses (comma separated) alerted when a run fails."),
    )
    interval = models.CharField(max_length=10, choices=Interval.choices, default=Interval.MANUAL)
    cron = models.CharField(max_length=100, blank=True, validators=[validate_no_control_chars])
    first_run_at = models.DateTimeField(null=True, blank=True)
    timezone = models.CharField(
        max_length=64, default=default_timezone, help_text=_("Schedule times are wall-clock times in this zone.")
    )
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
    # --- alerts (jobs/notifications.py) ------------------------------------------------
    notify_success = models.BooleanField(
        default=False, help_text=_("Also e-mail the report-to addresses after every successful run.")
    )
    #: The language of the alert e-mails to the report-to addresses (they are not users).
    language = models.CharField(
        _("language of the alert e-mails"),
        max_length=10,
        choices=language_choices,
        default=default_language,
        help_text=_("Failure, recovery, stale and test e-mails to the report-to addresses are written in it."),
    )
    #: A credential of the monitoring service (its token is in the path): encrypted at rest,
    #: never rendered back; pages show :attr:`ping_host` only.
    ping_url = EncryptedTextField(
        validators=[URLValidator(schemes=["http", "https"]), MaxLengthValidator(500)],
        help_text=_(
            "Optional dead man's switch (healthchecks.io, Uptime Kuma): requested at the start, on "
            "success, and at <url>/fail with the error."
        ),
    )
    #: A failure was e-mailed and no run succeeded since: the next success sends the recovery e-mail.
    alert_open = models.BooleanField(default=False)
    #: When the stale alert ("no successful run for twice the interval") was last sent.
    stale_alerted_at = models.DateTimeField(null=True, blank=True)
    # --- integrity drill (jobs/drills.py) ------------------------------------------------
    drill_interval_days = models.PositiveSmallIntegerField(
        default=7, help_text=_("Read the newest backup back from each destination every this many days (0: never).")
    )
    last_drill_at = models.DateTimeField(null=True, blank=True)
    # --- event trigger (jobs/triggers.py): the secret of the trigger URL, encrypted ------
    trigger_token_encrypted = TokenTextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = _("job")
        permissions = [("run_job", "Can run backup jobs")]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs):
        if not self.slug:
            self.slug = self.slug_for(self.name, self.pk)
        # Also without full_clean() (the shell, scripts). Fixtures and update() bypass save():
        # every place that builds a path checks again (safe_folder_name).
        validate_folder_slug(self.slug)
        if not getattr(self, "_key_rewrapped", False):
            super().save(*args, **kwargs)
            return
        with transaction.atomic():
            super().save(*args, **kwargs)
            self._rewrap_runs()
        self._key_rewrapped = False

    def get_absolute_url(self) -> str:
        return reverse("jobs:job_detail", args=[self.pk])

    @classmethod
    def slug_for(cls, name: str, pk=None) -> str:
        """The slug (and so the folder ``backupsite/<slug>/``) a job named *name* gets:
        ``office``, ``office-2``, … Never the folder of another job, of a deleted job
        whose backups are still there (its runs' snapshots name it), or of a one-off run
        (``oneoff-<run id>``, see :func:`oneoff_folder`: a job named "Oneoff 5" gets
        ``job-oneoff-5``): so no job's retention ever lists backups that are not its own."""
        from django.utils.text import slugify

        base = slugify(name)[:90].strip("-_") or "job"
        if base.startswith(ONEOFF_PREFIX.rstrip("-")):
            base = f"job-{base}"[:90]
        slug, n = base, 2
        while cls._slug_taken(slug, pk):
            slug, n = f"{base}-{n}", n + 1
        return slug

    @classmethod
    def _slug_taken(cls, slug: str, pk) -> bool:
        if cls.objects.filter(slug=slug).exclude(pk=pk).exists():
            return True
        # A job's slug never changes, so only runs without a job (a deleted job's, the
        # one-offs') can name a folder no job has: few rows, found through the job index.
        return Run.objects.filter(job__isnull=True, config__job__slug=slug).exists()

    def clean(self) -> None:
        from jobs.naming import validate_template
        from jobs.schedule import ScheduleError, validate_cron

        errors = {}
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            errors["timezone"] = _("Unknown time zone.")
        if self.interval == self.Interval.CRON:
            try:
                self.cron = validate_cron(self.cron, self.timezone if "timezone" not in errors else "UTC")
            except ScheduleError as exc:
                errors["cron"] = str(exc)
        elif self.interval != self.Interval.MANUAL and self.first_run_at is None:
            errors["first_run_at"] = _("A scheduled job needs its first start.")
        try:
            validate_template(self.archive_name_template)
        except ValueError as exc:
            errors["archive_name_template"] = str(exc)
        if errors:
            raise ValidationError(errors)

    # --- schedule (the arithmetic lives in jobs.schedule) ----------------------------
    SCHEDULE_FIELDS = ("interval", "cron", "first_run_at", "timezone")

    def next_run_after(self, moment):
        """The first scheduled moment strictly after *moment* (None for manual jobs)."""
        from jobs.schedule import next_run_after

        return next_run_after(self.interval, self.first_run_at, self.timezone, self.cron, moment)

    def upcoming_runs(self, count: int = 3, after=None) -> list:
        from jobs.schedule import upcoming

        return upcoming(self.interval, self.first_run_at, self.timezone, self.cron, after or timezone.now(), count)

    @property
    def schedule_description(self) -> str:
        from jobs.schedule import describe

        return describe(self.interval, self.first_run_at, self.timezone, self.cron)

    def refresh_next_run(self, now=None) -> None:
        """Recompute ``next_run_at`` from the schedule (not saved)."""
        from jobs.schedule import ScheduleError

        try:
            self.next_run_at = self.next_run_after(now or timezone.now())
        except ScheduleError:
            self.next_run_at = None

    @property
    def report_to_list(self) -> list[str]:
        return split_addresses(self.report_to)

    @property
    def typical_interval(self) -> timedelta | None:
        """The time between two scheduled runs (the gap after the next one: cron
        expressions and months vary), or None for manual jobs."""
        from jobs.schedule import ScheduleError

        try:
            times = self.upcoming_runs(2)
        except ScheduleError:
            return None
        if len(times) < 2:
            return None
        return times[1] - times[0]

    @property
    def ping_host(self) -> str:
        """The host of the ping URL, all a page shows of it (the path holds its token)."""
        from urllib.parse import urlsplit

        if not self.ping_url:
            return ""
        try:
            return urlsplit(self.ping_url).hostname or ""
        except ValueError:
            return ""

    # --- event trigger ------------------------------------------------------------------
    @property
    def has_trigger(self) -> bool:
        return bool(self.trigger_token_encrypted)

    @property
    def trigger_token(self) -> str:
        """The trigger URL's secret, decrypted (administrators see it again on the job
        page); empty when the job has no trigger URL."""
        from backupsite.crypto import decrypt_text

        return decrypt_text(self.trigger_token_encrypted) if self.trigger_token_encrypted else ""

    def trigger_token_matches(self, candidate: str) -> bool:
        """Constant-time comparison of *candidate* with the stored secret."""
        import hmac

        stored = self.trigger_token
        return bool(stored) and hmac.compare_digest(stored.encode(), (candidate or "").encode())

    def new_trigger_token(self) -> str:
        """Make (or replace) the trigger URL's secret; returns it (not saved)."""
        import secrets

        from backupsite.crypto import encrypt_text

        token = secrets.token_urlsafe(32)
        self.trigger_token_encrypted = encrypt_text(token)
        return token

    # --- integrity drill ------------------------------------------------------------------
    def destination_uploads(self) -> list:
        """The job's destinations (without their credentials), ordered by name, each with
        ``last_upload`` (its newest upload of this job), ``proven`` (the newest read back
        and found intact), ``failed`` (the newest read back and found damaged or missing)
        and ``last_verified`` (the newer of those two): Uploads, or None. Two queries
        however many destinations the job has."""

        def newest(**verified):
            uploads = Upload.objects.filter(run__job=self, destination=OuterRef("pk"), **verified)
            order = ("-verified_at", "-pk") if verified else ("-pk",)
            return Subquery(uploads.order_by(*order).values("pk")[:1])

        destinations = list(
            self.destinations.defer("secrets")
            .annotate(last_upload_pk=newest(), proven_pk=newest(verify_ok=True), failed_pk=newest(verify_ok=False))
            .order_by("name")
        )
        Upload.attach(destinations, last_upload="last_upload_pk", proven="proven_pk", failed="failed_pk")
        for destination in destinations:
            # A verification sets verified_at and verify_ok together: the newest of either.
            destination.last_verified = max(
                (u for u in (destination.proven, destination.failed) if u is not None),
                key=lambda upload: (upload.verified_at, upload.pk),
                default=None,
            )
        return destinations

    def last_proven(self, destinations: list | None = None) -> list[dict]:
        """Per destination of the job, the newest upload read back and found intact
        ("last proven at the destination"), and a newer failed read-back if there is one.
        From *destinations* (:meth:`destination_uploads`, which it calls without them)."""
        from destinations.backends.base import READ

        proven = []
        for destination in self.destination_uploads() if destinations is None else destinations:
            upload, failed = destination.proven, destination.failed
            if failed is not None and upload is not None and failed.verified_at < upload.verified_at:
                failed = None
            destination.readable = destination.can(READ)
            proven.append({"destination": destination, "upload": upload, "failed": failed})
        return proven

    @property
    def last_run(self):
        return self.runs.order_by("-created_at").first()

    @property
    def last_success(self):
        return self.runs.filter(state=Run.State.SUCCEEDED).order_by("-finished_at").first()

    def active_run(self):
        return self.runs.filter(state__in=Run.ACTIVE_STATES).first()

    # --- sensitive content ----------------------------------------------------------
    SENSITIVE_IN_CLEAR_WARNING = _(
        "This job backs up the panel's own database without encryption: password hashes would leave this "
        "server in clear. Set a backup password."
    )

    @staticmethod
    def is_sensitive_in_clear(encryption: str, sources) -> bool:
        """The rule behind :attr:`SENSITIVE_IN_CLEAR_WARNING`, for a saved job or for the
        wizard's choices before anything is saved: a sensitive source (the panel's
        database) in a job that does not encrypt."""
        return encryption in ("", None, Job.Encryption.NONE) and any(source.is_sensitive for source in sources)

    @property
    def sensitive_in_clear(self) -> bool:
        return self.is_sensitive_in_clear(self.encryption, self.sources.all())

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
        password (the runs' copies of the key are re-wrapped by save()). A new identity
        leaves the runs of the old one their own copy. (Not saved: call save().)"""
        from jobs.engine import agekeys

        if self.age_identity_wrapped and self.encryption == self.Encryption.PASSWORD:
            if old_password is None:
                raise agekeys.KeyError_("The current backup password is needed to change it.")
            wrapped = agekeys.rewrap(agekeys.from_text(self.age_identity_wrapped), old_password, password)
            self._key_rewrapped = True  # save() re-wraps the runs' copies too
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

    def _rewrap_runs(self) -> None:
        """A new backup password re-wrapped the job's key: the runs keeping a copy of the
        same key (:attr:`Run.age_identity_wrapped`) take the new wrapping, so the new
        password opens every backup made with this key. Runs of an earlier key keep theirs
        (and the password that was set then)."""
        Run.objects.filter(job=self, config__job__age_recipient=self.age_recipient).exclude(
            age_identity_wrapped=""
        ).update(age_identity_wrapped=self.age_identity_wrapped)

    def identity(self, password: str) -> str:
        """The job's age identity, unwrapped with the backup password (verify, restore)."""
        from jobs.engine import agekeys

        key_file = self.key_file
        if key_file is None:
            raise agekeys.KeyError_("This job's key is not stored here (public-key encryption or none).")
        return agekeys.unwrap_identity(key_file, password)


@receiver(pre_save, sender=Job)
def _keep_next_run_current(sender, instance: Job, raw: bool = False, **kwargs) -> None:
    """``next_run_at`` follows the schedule however a job is saved: the wizard, an edit
    page, the shell, ``loaddata`` (raw saves included). ``QuerySet.update()`` bypasses
    this, as it bypasses every signal: call ``job.refresh_next_run()`` after one."""
    if instance.schedule_changed() or (instance.next_run_at is None and instance.interval != Job.Interval.MANUAL):
        instance.refresh_next_run()
        instance.remember_schedule()


class Run(RunRecord, BytesProgress, models.Model):
    class State(models.TextChoices):
        QUEUED = "queued", _("Queued")
        WAITING = "waiting", _("Waiting for a free slot")
        RUNNING = "running", _("Running")
        UPLOADING = "uploading", _("Uploading")
        SUCCEEDED = "succeeded", _("Succeeded")
        PARTIAL = "partial", _("Partially succeeded")
        FAILED = "failed", _("Failed")
        CANCELLED = "cancelled", _("Cancelled")
        INTERRUPTED = "interrupted", _("Interrupted")  # the worker stopped (killed, crashed, restarted)
        TIMED_OUT = "timed_out", _("Timed out")  # the soft time limit stopped it
        SKIPPED = "skipped", _("Skipped")  # its scheduled slot came while the previous run was still archiving

    class Phase(models.TextChoices):
        PENDING = "", _("Not started")
        COLLECT = "collect", _("Collecting")
        ARCHIVE = "archive", _("Archiving")
        UPLOAD = "upload", _("Uploading")
        RETENTION = "retention", _("Applying retention")
        NOTIFY = "notify", _("Notifying")
        DONE = "done", _("Done")

    class Trigger(models.TextChoices):
        MANUAL = "manual", _("Run now")
        SCHEDULE = "schedule", _("Schedule")
        CLI = "cli", _("Command line")
        WIZARD = "wizard", _("Wizard")
        EVENT = "event", _("Event (trigger URL)")

    #: The archive stage: the job's one active run (database-enforced) and, while
    #: running, a heavy slot. Once the archive is written the run is ``uploading``: not
    #: active any more (its uploads are tracked on their Upload rows, so a destination
    #: retried for hours blocks neither this job's next backup nor anyone else's).
    ACTIVE_STATES = (State.QUEUED, State.WAITING, State.RUNNING)
    #: A worker is archiving the run (it holds a heavy slot and sends heartbeats).
    HELD_STATES = (State.RUNNING,)
    #: Not finished yet: archiving or uploading (pages poll, the dashboard lists them).
    LIVE_STATES = (State.QUEUED, State.WAITING, State.RUNNING, State.UPLOADING)
    FINAL_STATES = (
        State.SUCCEEDED,
        State.PARTIAL,
        State.FAILED,
        State.CANCELLED,
        State.INTERRUPTED,
        State.TIMED_OUT,
        State.SKIPPED,
    )
    #: Final states that e-mail the job's report-to addresses.
    ALERT_STATES = (State.FAILED, State.INTERRUPTED, State.TIMED_OUT)

    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="runs")
    job_name = models.CharField(max_length=100)
    config = models.JSONField(default=dict, help_text="Snapshot of the configuration the run used.")
    trigger = models.CharField(max_length=10, choices=Trigger.choices, default=Trigger.MANUAL)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    state = models.CharField(max_length=20, choices=State.choices, default=State.QUEUED, db_index=True)
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
    #: Retention never removes this run's archive (here or at a destination).
    keep_forever = models.BooleanField(default=False)
    #: The key file (base64) of the identity this run's archive is encrypted to, wrapped
    #: with the backup password: a one-off run's own (the password typed in the wizard), or
    #: a copy of its job's ``age_identity_wrapped`` taken when the run archived (re-wrapped
    #: with the job's when its password changes), so replacing the job's key later loses
    #: nothing. Empty when not encrypted with a password (and for rows made before runs
    #: kept their key: :attr:`key_file` falls back to the job's, if it is the same key).
    age_identity_wrapped = models.TextField(blank=True)
    #: When "delete this backup" removed the archive (the run stays in the history).
    deleted_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # When the run was last handed to the workers (created, woken when a slot freed, or
    # handed over again by the reconcile), and how often the reconcile handed it over
    # again because nobody took it (once at most, then it fails): see jobs/reconcile.py.
    enqueued_at = models.DateTimeField(null=True, blank=True)
    requeues = models.PositiveSmallIntegerField(default=0)
    #: How often the archive stage was started again after its worker died
    #: (``BACKUPSITE_RUN_RESTARTS`` at most, then the run ends interrupted).
    restarts = models.PositiveSmallIntegerField(default=0)
    #: The worker host that wrote the local copy: every task that reads it (uploads, local
    #: verify, local retention) goes to that host's queue ``host.<name>``.
    host = models.CharField(max_length=255, blank=True)
    #: Items the archive could not include (unreadable files): the run ends "partial".
    warning_count = models.PositiveIntegerField(default=0)
    #: When the current phase began (rate and time left on the run page).
    phase_started_at = models.DateTimeField(null=True, blank=True)
    #: When the archive stage gave its heavy slot back (archive written, failed, ended).
    released_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        permissions = [
            ("download_run", "Can download backups"),
            # Runs whose archive holds the panel's own database (password hashes), or any
            # other sensitive source: download, verify and restore (administrators).
            ("access_sensitive_run", "Can download, verify and restore backups of the panel's own database"),
        ]
        indexes = [
            # Retention looks up the kept-forever runs of a job after every run: few rows.
            models.Index(fields=["keep_forever"], condition=Q(keep_forever=True), name="run_kept_forever"),
            # A job's latest runs (job page, dashboard, newer-backups warning) and its last
            # success: index seeks, however long the history (bench/pages.py).
            models.Index(fields=["job", "-created_at"], name="run_job_recent"),
            models.Index(fields=["job", "state", "-finished_at"], name="run_job_succeeded"),
            # The runs list, newest first (all of its ordering: no sort on PostgreSQL), and
            # filtered by state.
            models.Index(fields=["-created_at", "-id"], name="run_recent"),
            models.Index(fields=["state", "-created_at"], name="run_state_recent"),
        ]
        constraints = [
            one_active_run("job", name="one_active_run_per_job"),
        ]

    def __str__(self) -> str:
        return f"Run #{self.pk} of {self.job_name}"

    def get_absolute_url(self) -> str:
        return reverse("jobs:run_detail", args=[self.pk])

    @property
    def outcome(self) -> str:
        """What happened, in words, for the final states that need explaining (run page,
        alert e-mail); empty for the others."""
        text = OUTCOMES.get(self.state, "")
        if self.state == self.State.TIMED_OUT:
            text = text % {"limit": time_limit_text()}
        return str(text)

    @property
    def speed(self):
        """Rate and time left of the current phase (jobs.progress.Speed), or None."""
        from jobs.progress import speed

        return speed(self.bytes_done, self.bytes_total, self.phase_started_at)

    @property
    def waiting_for(self) -> str:
        """What a waiting run waits for, in words (the heavy slot's holders)."""
        from jobs import slots

        return slots.waiting_for() if self.state == self.State.WAITING else ""

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
    def archive_gone(self) -> bool:
        """A finished archive was made, but its local copy is no longer on this server."""
        return (
            self.state in (self.State.SUCCEEDED, self.State.PARTIAL)
            and bool(self.archive_name)
            and self.archive_size is not None
            and not self.can_download
        )

    @property
    def downloadable(self) -> bool:
        """The archive can be offered for download: from the local copy, or from a
        destination that holds it and can read it back (``jobs.downloads``)."""
        from jobs import downloads

        return downloads.available(self)

    @property
    def job_slug(self) -> str:
        """The folder of this run's backups, in the archive dir and at every destination
        (``backupsite/<slug>/``): its job's slug when the run was made, or
        ``oneoff-<run id>`` for a one-off run. Everything that builds a path from a run
        takes it from here (the snapshot), never from the job row."""
        return self.config.get("job", {}).get("slug", "")

    @property
    def is_oneoff(self) -> bool:
        """Made by "only execute backup": no job, its own folder, never touched by retention."""
        return bool((self.config or {}).get("job", {}).get("oneoff"))

    @property
    def recipient(self) -> str:
        """The age public key the archive was (or will be) encrypted to, as the snapshot says."""
        return (self.config or {}).get("job", {}).get("age_recipient") or ""

    @property
    def key_file(self) -> bytes | None:
        """The key file of this run's archive: the identity it was encrypted to, wrapped
        with the backup password. The run's own (kept when it archived, so a later key
        change of the job loses nothing); for an older row without one, its job's current
        key, but only if that is the key the archive was encrypted to. None: not encrypted
        with a password, or the key is not here."""
        from jobs.engine import agekeys

        if self.age_identity_wrapped:
            return agekeys.from_text(self.age_identity_wrapped)
        job = self.job if self.job_id is not None else None
        if job is None or job.key_file is None:
            return None
        if (self.config or {}).get("job", {}).get("encryption", Job.Encryption.PASSWORD) != Job.Encryption.PASSWORD:
            return None  # made without encryption or to a public key
        if self.recipient and self.recipient != job.age_recipient:
            return None  # the job's key was replaced since: this is not the archive's key
        return job.key_file

    @property
    def key_file_name(self) -> str:
        """The name of this run's key file beside its archive (``backupsite-key-<key id>.age``;
        ``backupsite-key.age`` when the snapshot names no key)."""
        from jobs.engine import agekeys

        job = (self.config or {}).get("job", {})
        if self.recipient and job.get("encryption") == Job.Encryption.PASSWORD:
            return agekeys.key_file_name(self.recipient)
        return agekeys.KEY_FILE_NAME

    @property
    def encrypted_with_key_file(self) -> bool:
        """Encrypted to a key the panel keeps wrapped (``backupsite-key.age`` exists)."""
        from jobs.engine.agekeys import AGE_SUFFIX

        return self.archive_name.endswith(AGE_SUFFIX) and self.key_file is not None

    # --- sensitive content ----------------------------------------------------------
    SENSITIVE_PERMISSION = "jobs.access_sensitive_run"

    @property
    def is_sensitive(self) -> bool:
        """The archive holds the panel's own database (or another sensitive source), as
        the configuration snapshot the run was made with says."""
        from jobs.sources import is_sensitive

        return any(is_sensitive(source) for source in (self.config or {}).get("sources") or [])

    def archive_allowed_for(self, user) -> bool:
        """Whether *user* may read this run's archive as far as its content goes
        (download, manifest, verify, restore); each view checks its own permission too."""
        return not self.is_sensitive or user.has_perm(self.SENSITIVE_PERMISSION)


def time_limit_text() -> str:
    """The soft time limit in words ("6 hours")."""
    from django.utils.timesince import timeuntil

    now = timezone.now()
    return timeuntil(now + timedelta(seconds=settings.CELERY_SOFT_TIME_LIMIT), now).replace("\xa0", " ")


# What a final state means for the user, by state (a registry, not an if chain in
# templates). %(limit)s is the soft time limit, in words.
OUTCOMES = {
    Run.State.INTERRUPTED: _(
        "The worker running this backup stopped before the run finished: it was killed, crashed or its "
        "machine restarted. The panel noticed the missing heartbeats, marked the run interrupted and removed "
        "its temporary files, so the next run starts cleanly; nothing needs to be cleaned up by hand."
    ),
    Run.State.TIMED_OUT: _(
        "The run took longer than the time limit (%(limit)s, CELERY_SOFT_TIME_LIMIT) and was stopped; its "
        "temporary files were removed. If the job needs this long, raise the limit; otherwise look for a "
        "stuck source or destination."
    ),
}


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


class Restore(BytesProgress, models.Model):
    """A restore asked for on the Restore page, done by a worker (extracting a multi-GB
    archive must not run inside a web request). The row is the truth about it: state,
    progress (stored bytes read), the outcome. The key it needs travels separately, in a
    :class:`RestoreTicket` the worker deletes before it starts."""

    class State(models.TextChoices):
        QUEUED = "queued", _("Queued")
        RUNNING = "running", _("Restoring")
        SUCCEEDED = "succeeded", _("Restored")
        FAILED = "failed", _("Failed")

    ACTIVE_STATES = (State.QUEUED, State.RUNNING)

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="restores")
    #: None: the local copy.
    destination = models.ForeignKey(
        "destinations.Destination", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    location = models.CharField(max_length=200, help_text="Where the archive is read from, in words.")
    target = models.CharField(max_length=500)
    #: Archive paths to restore (sources' folders or paths inside them); empty: everything.
    only = models.JSONField(default=list, blank=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED)
    bytes_done = models.BigIntegerField(default=0)
    bytes_total = models.BigIntegerField(default=0)
    message = models.TextField(blank=True)
    #: What was restored: files, dirs, symlinks, bytes, skipped, outside_links, ...
    details = models.JSONField(default=dict, blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"Restore of run #{self.run_id} into {self.target}"

    def get_absolute_url(self) -> str:
        return reverse("jobs:restore_detail", args=[self.pk])

    @property
    def is_active(self) -> bool:
        return self.state in self.ACTIVE_STATES


class RestoreTicket(models.Model):
    """The key of a queued :class:`Restore` (the job's age identity, unwrapped from the
    password the user typed), encrypted at rest. The worker deletes the row before it
    starts; the reaper removes tickets nobody picked up. Its rows never go into a panel
    backup (``backupsite.sensitive``)."""

    restore = models.OneToOneField(Restore, on_delete=models.CASCADE, related_name="ticket")
    secrets = EncryptedJSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"Key of restore #{self.restore_id}"


class SlotLock(models.Model):
    """One row per named lock; claiming a run locks the row ``heavy-runs`` so that two
    workers never both take the last free slot (``SELECT … FOR UPDATE`` on PostgreSQL;
    SQLite serialises writers with its IMMEDIATE transactions anyway)."""

    name = models.CharField(max_length=50, primary_key=True)

    def __str__(self) -> str:
        return self.name


class Upload(BytesProgress, models.Model):
    """One archive going to one destination: the upload stage of a run (jobs/uploads.py)."""

    class State(models.TextChoices):
        PENDING = "pending", _("Pending")
        UPLOADING = "uploading", _("Uploading")
        RETRYING = "retrying", _("Waiting to retry")  # a transient error; next_attempt_at says when
        SUCCEEDED = "succeeded", _("Succeeded")
        FAILED = "failed", _("Failed")
        DELETED = "deleted", _("Deleted")  # "delete this backup" removed it there

    #: Not settled: the run stays "uploading" while any of its uploads is in one of these.
    OPEN_STATES = (State.PENDING, State.UPLOADING, State.RETRYING)

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
    bytes_total = models.BigIntegerField(default=0)
    error = models.TextField(blank=True)
    #: The first attempt began (the retry age limit counts from here).
    first_attempt_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    #: Written by the worker uploading it; a stale one means that worker is gone (swept).
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    verified_at = models.DateTimeField(null=True, blank=True)
    verify_ok = models.BooleanField(null=True, blank=True)
    verify_message = models.TextField(blank=True)

    class Meta:
        ordering = ["pk"]
        constraints = [models.UniqueConstraint(fields=["run", "destination"], name="one_upload_per_destination")]
        indexes = [models.Index(fields=["state", "next_attempt_at"], name="upload_state_next_attempt")]

    def __str__(self) -> str:
        return f"{self.run} → {self.destination_name}"

    @classmethod
    def attach(cls, rows, **names) -> list:
        """Set on each of *rows* the Uploads its annotated primary keys name, in one query
        for all: ``Upload.attach(rows, last_upload="last_upload_pk")`` sets
        ``row.last_upload`` (None where the key is None)."""
        rows = list(rows)
        keys = [getattr(row, key) for row in rows for key in names.values()]
        found = cls.objects.in_bulk([pk for pk in keys if pk is not None])
        for row in rows:
            for attr, key in names.items():
                setattr(row, attr, found.get(getattr(row, key)))
        return rows

    @property
    def can_read_back(self) -> bool:
        """Succeeded, and its destination can read files back (verify, download)."""
        from destinations.backends.base import READ

        return self.state == self.State.SUCCEEDED and self.destination is not None and self.destination.can(READ)

    @property
    def is_open(self) -> bool:
        return self.state in self.OPEN_STATES

    @property
    def is_invalid(self) -> bool:
        """Read back from the destination and found missing or damaged."""
        return self.verify_ok is False

    @property
    def speed(self):
        from jobs.progress import speed

        if self.state != self.State.UPLOADING:
            return None
        return speed(self.bytes_done, self.bytes_total, self.started_at)


class ServiceHeartbeat(models.Model):
    """One row per dispatcher and per worker, written while it runs: whoever reads it
    (``/healthz``, the dashboard) knows which parts of the installation are alive."""

    class Role(models.TextChoices):
        DISPATCHER = "dispatcher", _("Scheduler (dispatcher tick)")
        WORKER = "worker", _("Worker")

    name = models.CharField(max_length=255, primary_key=True)  # "dispatcher", "worker:celery@host1"
    role = models.CharField(max_length=20, choices=Role.choices)
    host = models.CharField(max_length=255, blank=True)
    pid = models.PositiveIntegerField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    beat_at = models.DateTimeField(db_index=True)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["role", "name"]

    def __str__(self) -> str:
        return self.name

    @classmethod
    def alive(cls, role: str, within_seconds: float, now=None):
        """The rows of *role* that beat within the last *within_seconds*."""
        now = now or timezone.now()
        return cls.objects.filter(role=role, beat_at__gte=now - timedelta(seconds=within_seconds))


class Notification(models.Model):
    """An outgoing e-mail or ping (the outbox): made inside the transaction that decided
    to send it, delivered after commit by a task, retried by the sweep until sent or out
    of attempts. A run never waits for a mail server."""

    class Channel(models.TextChoices):
        EMAIL = "email", _("E-mail")
        PING = "ping", _("Ping URL")

    class State(models.TextChoices):
        PENDING = "pending", _("Pending")
        SENT = "sent", _("Sent")
        FAILED = "failed", _("Failed")

    channel = models.CharField(max_length=10, choices=Channel.choices)
    kind = models.CharField(max_length=30)  # "run_failed", "recovered", "stale", "start", ...
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING, db_index=True)
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    recipients = models.JSONField(default=list, blank=True)
    subject = models.CharField(max_length=255, blank=True)
    body = models.TextField(blank=True)
    #: The ping's URL (kept encrypted: a ping URL is a credential of the monitoring service).
    url_encrypted = TokenTextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.get_channel_display()} {self.kind} #{self.pk}"


class Activity(models.Model):
    """Work a worker does on a run besides the backup itself: verify, restore, the
    integrity drill. Progress is written here, throttled, for the run page."""

    class Kind(models.TextChoices):
        VERIFY = "verify", _("Verification")
        RESTORE = "restore", _("Restore")
        DRILL = "drill", _("Integrity drill")

    class State(models.TextChoices):
        RUNNING = "running", _("Running")
        SUCCEEDED = "succeeded", _("Succeeded")
        FAILED = "failed", _("Failed")

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="activities")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    where = models.CharField(max_length=200, blank=True)  # "the local copy", "destination “NAS”"
    state = models.CharField(max_length=10, choices=State.choices, default=State.RUNNING)
    bytes_done = models.BigIntegerField(default=0)
    bytes_total = models.BigIntegerField(default=0)
    message = models.TextField(blank=True)
    host = models.CharField(max_length=255, blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at", "-pk"]
        verbose_name_plural = "activities"

    def __str__(self) -> str:
        return f"{self.get_kind_display()} of run #{self.run_id}"

    @property
    def progress_percent(self) -> int | None:
        if not self.bytes_total:
            return None
        return max(0, min(100, int(self.bytes_done * 100 / self.bytes_total)))

    @property
    def speed(self):
        from jobs.progress import speed

        if self.state != self.State.RUNNING:
            return None
        return speed(self.bytes_done, self.bytes_total, self.started_at)


# Planning exports (issue 10) live in their own module; importing them here makes them
# models of this app.
from jobs.exports.models import (  # noqa: E402
    ExportDataset,
    ExportRun,
    ExportUpload,
    PlanningExport,
)

__all__ = [
    "ExportDataset",
    "ExportRun",
    "ExportUpload",
    "Job",
    "PlanningExport",
    "Run",
    "SlotLock",
    "Source",
    "Upload",
    "VerifyTicket",
]
