"""Planning exports: the configuration (PlanningExport and its ExportDatasets) and the
record of each run (ExportRun, with one ExportUpload per destination).

Imported by ``jobs/models.py``, so these are models of the ``jobs`` app. Configuration
is written through :mod:`backupsite.configwrite` (registered in ``jobs/apps.py``).
"""

from __future__ import annotations

import datetime as dt
import re

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models.signals import pre_save
from django.dispatch import receiver
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from backupsite.validators import split_addresses, validate_address_list, validate_no_control_chars
from jobs.runstate import RunRecord, one_active_run
from jobs.scheduled import ScheduleTracking

#: Source kinds an export can read (``jobs.exports.drivers.REGISTRY`` has the drivers).
EXPORT_SOURCE_KINDS = ("postgresql", "mysql", "sqlite")
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._()+-]*\.xlsx\Z")
_FOLDER_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9 ._()+-]*\Z")


def validate_file_name(value: str) -> None:
    """A plain file name ending in ``.xlsx``: letters, digits, blanks, ``._()+-``; no
    folder, not hidden (temporary files at the destinations are hidden)."""
    if not _FILE_NAME.match(value or "") or len(value) > 100 or value.endswith(" .xlsx"):
        raise ValidationError(
            _(
                "A file name ending in .xlsx, such as topics.xlsx: letters, digits, blanks and . _ ( ) + -, "
                "starting with a letter or digit."
            ),
            code="file_name",
        )


def validate_export_folder(value: str) -> None:
    """A folder under the destination's base path: empty (the base path itself) or
    names joined by ``/``; no ``..``, no hidden names, no leading or trailing ``/``."""
    if not value:
        return
    parts = value.split("/")
    if len(value) > 255 or any(not _FOLDER_PART.match(part) or part.strip() != part for part in parts):
        raise ValidationError(
            _(
                "A folder under the destination's path, such as planning or exports/newsroom: names of letters, "
                "digits, blanks and . _ ( ) + - joined by /, none starting with a dot; leave it empty for the "
                "destination's path itself."
            ),
            code="folder",
        )
    if any(part in (".", "..") for part in parts):
        raise ValidationError(_("“..” is not allowed in the folder."), code="folder")


def validate_sheet_title(value: str) -> None:
    from jobs.exports.xlsx import SheetError, check_sheet_title

    try:
        check_sheet_title(value)
    except SheetError as exc:
        raise ValidationError(str(exc), code="sheet_title") from None


def validate_sql(value: str) -> None:
    from jobs.exports.query import QueryRefused, check

    try:
        check(value)
    except QueryRefused as exc:
        raise ValidationError(str(exc), code="sql") from None


class PlanningExport(ScheduleTracking, models.Model):
    """A nightly export: each dataset's query over the window, one ``.xlsx`` file per
    dataset, written with fixed names into *folder* at every destination (replacing the
    previous night's files)."""

    name = models.CharField(_("name"), max_length=100, unique=True, validators=[validate_no_control_chars])
    source = models.ForeignKey(
        "jobs.Source",
        on_delete=models.PROTECT,
        related_name="exports",
        verbose_name=_("database"),
        limit_choices_to={"kind__in": EXPORT_SOURCE_KINDS},
        help_text=_("Opened read-only; each query runs in a read-only transaction."),
    )
    window_days = models.PositiveSmallIntegerField(
        _("days in the window"),
        default=5,
        validators=[MinValueValidator(1), MaxValueValidator(366)],
        help_text=_("How many days each file covers: 5 = today and the four days after it."),
    )
    window_offset_days = models.SmallIntegerField(
        _("first day"),
        default=0,
        validators=[MinValueValidator(-366), MaxValueValidator(366)],
        help_text=_("0 = the window starts today at 00:00 (site time zone), 1 = tomorrow, -1 = yesterday."),
    )
    run_at = models.TimeField(
        _("time of day"), default=dt.time(2, 0), help_text=_("When it runs each night, in the site's time zone.")
    )
    destinations = models.ManyToManyField(
        "destinations.Destination", related_name="exports", verbose_name=_("destinations")
    )
    folder = models.CharField(
        _("folder"),
        max_length=255,
        blank=True,
        validators=[validate_export_folder],
        help_text=_("Where the files go at each destination, under its path: empty = the destination's path itself."),
    )
    report_to = models.TextField(
        _("report to"),
        blank=True,
        validators=[validate_address_list],
        help_text=_("E-mail addresses (comma separated) told when an export fails."),
    )
    enabled = models.BooleanField(_("enabled"), default=True, help_text=_("Runs every night at its time."))
    next_run_at = models.DateTimeField(null=True, blank=True, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = _("planning export")
        permissions = [("run_planningexport", "Can run planning exports")]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("jobs:export_detail", args=[self.pk])

    SCHEDULE_FIELDS = ("run_at", "enabled")

    @property
    def report_to_list(self) -> list[str]:
        return split_addresses(self.report_to)

    def window_for(self, moment: dt.datetime | None = None) -> tuple[dt.datetime, dt.datetime]:
        """The window of a run at *moment* (default now): aware, in the site's zone."""
        from jobs.exports.window import window

        return window(moment or timezone.now(), self.window_days, self.window_offset_days, site_zone())

    def next_run_after(self, moment: dt.datetime) -> dt.datetime | None:
        from jobs.exports.window import next_run_after

        return next_run_after(self.run_at, site_zone(), moment) if self.enabled else None

    def refresh_next_run(self, now: dt.datetime | None = None) -> None:
        """Recompute ``next_run_at`` (not saved)."""
        self.next_run_at = self.next_run_after(now or timezone.now())

    @property
    def last_run(self):
        return self.runs.order_by("-created_at", "-pk").first()

    def active_run(self):
        return self.runs.filter(state__in=ExportRun.ACTIVE_STATES).first()

    def describe_folder(self) -> str:
        return self.folder or str(_("the destination's path itself"))


@receiver(pre_save, sender=PlanningExport)
def _keep_next_run_current(sender, instance: PlanningExport, raw: bool = False, **kwargs) -> None:
    """``next_run_at`` follows the time of day and the enabled switch however an export
    is saved (pages, shell, fixtures); ``QuerySet.update()`` bypasses this."""
    if instance.schedule_changed() or (instance.enabled and instance.next_run_at is None):
        instance.refresh_next_run()
        instance.remember_schedule()


def site_zone():
    from zoneinfo import ZoneInfo

    return ZoneInfo(settings.TIME_ZONE)


class ExportDataset(models.Model):
    """One file of an export: a query over the window, written as one sheet."""

    export = models.ForeignKey(PlanningExport, on_delete=models.CASCADE, related_name="datasets")
    position = models.PositiveSmallIntegerField(_("position"), default=0)
    file_name = models.CharField(
        _("file name"),
        max_length=100,
        validators=[validate_file_name],
        help_text=_("The same name every night, so each file replaces the last one: topics.xlsx."),
    )
    sheet_title = models.CharField(
        _("sheet title"), max_length=31, validators=[validate_sheet_title], help_text=_("At most 31 characters.")
    )
    sql = models.TextField(
        _("SQL query"),
        validators=[validate_sql],
        help_text=_(
            "One SELECT (or WITH … SELECT). Write %(start)s and %(end)s where the window's first moment and the "
            "moment after its last go, for example WHERE starts_at >= %(start)s AND starts_at < %(end)s."
        ),
    )

    class Meta:
        ordering = ["position", "pk"]
        verbose_name = _("export dataset")
        constraints = [models.UniqueConstraint(fields=["export", "file_name"], name="one_file_name_per_export")]

    def __str__(self) -> str:
        return f"{self.export.name if self.export_id else '?'}: {self.file_name}"

    def get_absolute_url(self) -> str:
        return reverse("jobs:export_detail", args=[self.export_id])


class ExportRun(RunRecord, models.Model):
    class State(models.TextChoices):
        QUEUED = "queued", _("Queued")
        WAITING = "waiting", _("Waiting for a free slot")
        RUNNING = "running", _("Running")
        SUCCEEDED = "succeeded", _("Succeeded")
        PARTIAL = "partial", _("Partially succeeded")
        FAILED = "failed", _("Failed")
        INTERRUPTED = "interrupted", _("Interrupted")
        TIMED_OUT = "timed_out", _("Timed out")
        CANCELLED = "cancelled", _("Cancelled")

    class Phase(models.TextChoices):
        PENDING = "", _("Not started")
        QUERY = "query", _("Writing the files")
        UPLOAD = "upload", _("Uploading")
        DONE = "done", _("Done")

    class Trigger(models.TextChoices):
        MANUAL = "manual", _("Run now")
        SCHEDULE = "schedule", _("Schedule")
        CLI = "cli", _("Command line")

    ACTIVE_STATES = (State.QUEUED, State.WAITING, State.RUNNING)
    FINAL_STATES = (
        State.SUCCEEDED,
        State.PARTIAL,
        State.FAILED,
        State.INTERRUPTED,
        State.TIMED_OUT,
        State.CANCELLED,
    )
    ALERT_STATES = (State.FAILED, State.PARTIAL, State.INTERRUPTED, State.TIMED_OUT)
    #: No upload stage outlives the run: live is active (a *Cancel* is possible while active).
    LIVE_STATES = ACTIVE_STATES

    export = models.ForeignKey(PlanningExport, null=True, blank=True, on_delete=models.SET_NULL, related_name="runs")
    export_name = models.CharField(max_length=100)
    #: The configuration the run works with, frozen when it was created.
    config = models.JSONField(default=dict)
    trigger = models.CharField(max_length=10, choices=Trigger.choices, default=Trigger.MANUAL)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    state = models.CharField(max_length=20, choices=State.choices, default=State.QUEUED, db_index=True)
    phase = models.CharField(max_length=10, choices=Phase.choices, default=Phase.PENDING, blank=True)
    window_start = models.DateTimeField(null=True, blank=True)
    window_end = models.DateTimeField(null=True, blank=True)
    #: Live progress: which dataset, how many of its rows so far; bytes while uploading.
    datasets_done = models.PositiveSmallIntegerField(default=0)
    datasets_total = models.PositiveSmallIntegerField(default=0)
    current_file = models.CharField(max_length=100, blank=True)
    rows_done = models.BigIntegerField(default=0)
    bytes_done = models.BigIntegerField(default=0)
    bytes_total = models.BigIntegerField(default=0)
    #: One entry per file written: file_name, sheet_title, rows, size, sha256, columns.
    files = models.JSONField(default=list, blank=True)
    log = models.TextField(blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    #: How often the tick handed the run to the workers again because nobody took it.
    requeues = models.PositiveSmallIntegerField(default=0)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    #: Set by *Cancel*; the worker polls it (as a backup run's) and stops at its next
    #: progress point.
    cancel_requested = models.BooleanField(default=False)
    #: The worker machine that executes the run (``BACKUPSITE_HOST``): its staging folder
    #: is there, so only a worker on that host removes it after a crash.
    host = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        verbose_name = _("export run")
        constraints = [
            one_active_run("export", name="one_active_run_per_export"),
        ]

    def __str__(self) -> str:
        return f"Export run #{self.pk} of {self.export_name}"

    def get_absolute_url(self) -> str:
        return reverse("jobs:export_run_detail", args=[self.pk])

    @property
    def total_rows(self) -> int:
        return sum(int(f.get("rows") or 0) for f in self.files or [])

    @property
    def total_size(self) -> int:
        return sum(int(f.get("size") or 0) for f in self.files or [])

    @property
    def progress_percent(self) -> int | None:
        if self.state == self.State.SUCCEEDED:
            return 100
        if self.phase == self.Phase.UPLOAD and self.bytes_total:
            return max(0, min(100, 50 + int(self.bytes_done * 50 / self.bytes_total)))
        if self.datasets_total:
            return max(0, min(50, int(self.datasets_done * 50 / self.datasets_total)))
        return None


class ExportUpload(models.Model):
    """The files of one run at one destination."""

    class State(models.TextChoices):
        PENDING = "pending", _("Pending")
        UPLOADING = "uploading", _("Uploading")
        SUCCEEDED = "succeeded", _("Succeeded")
        FAILED = "failed", _("Failed")

    run = models.ForeignKey(ExportRun, on_delete=models.CASCADE, related_name="uploads")
    destination = models.ForeignKey(
        "destinations.Destination", null=True, on_delete=models.SET_NULL, related_name="export_uploads"
    )
    destination_name = models.CharField(max_length=100)
    #: Where the files went, for people: ``sftp://host/path/planning``.
    remote_folder = models.CharField(max_length=500, blank=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    bytes_done = models.BigIntegerField(default=0)
    error = models.TextField(blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["pk"]
        constraints = [models.UniqueConstraint(fields=["run", "destination"], name="one_export_upload_per_destination")]

    def __str__(self) -> str:
        return f"{self.run} → {self.destination_name}"
