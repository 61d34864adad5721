"""What the source pages do, for the views to call: save through the configuration-write
layer, refuse deletes that would break a job or remove the panel's own database, run the
*Test* button (rate-limited; a failure is a readable result, never a secret), measure.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.db import transaction
from django.utils.translation import gettext as _

from backupsite import configwrite
from backupsite.ratelimit import RateLimited, hit
from jobs.models import Job, Source, SourceUndeletable
from jobs.sources.base import SourceError, SourceKind, TestResult

log = logging.getLogger(__name__)


class InUse(Exception):
    """Jobs use the source: it cannot be deleted. ``jobs`` names them."""

    def __init__(self, source: Source, jobs: list[Job]) -> None:
        names = ", ".join(f"“{job.name}”" for job in jobs)
        self.jobs = jobs
        self.message = _(
            "“%(name)s” cannot be deleted: it is part of %(count)d job(s): %(jobs)s. Remove it from those jobs first."
        ) % {"name": source.name, "count": len(jobs), "jobs": names}
        super().__init__(self.message)


class TestThrottled(Exception):
    __test__ = False  # not a pytest test class

    def __init__(self, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(_("Too many tests; try again in %(seconds)d seconds.") % {"seconds": retry_after})


def jobs_using(source: Source) -> list[Job]:
    return list(source.jobs.order_by("name"))


def save(common, kind_form, *, kind: str, request=None) -> Source:
    """Create or change the source from the validated forms (name; the kind's settings and
    secrets). A change of settings forgets the old measurement: it described another
    folder or database."""
    source: Source = common.save(commit=False)
    settings = kind_form.settings_to_store(kind_form.cleaned_data)
    if source.pk is not None and source.settings != settings:
        source.size_bytes = source.file_count = source.size_measured_at = None
    source.kind = kind
    source.settings = settings
    source.secrets = kind_form.secrets_from_cleaned(kind_form.cleaned_data)
    configwrite.save(source, request=request)
    return source


def delete(source: Source, *, request=None) -> None:
    """Delete *source*, or raise :class:`InUse` (naming the jobs) or ``SourceUndeletable``
    (the panel's own database). Checked and deleted in one transaction, the row locked,
    so a job added meanwhile is not left with a missing source."""
    with transaction.atomic():
        locked = Source.objects.select_for_update().get(pk=source.pk)
        if locked.is_permanent:
            raise SourceUndeletable(
                _("“%(name)s” is the panel's own database; it cannot be deleted.") % {"name": locked.name}
            )
        jobs = jobs_using(locked)
        if jobs:
            raise InUse(locked, jobs)
        configwrite.delete(locked, request=request)


def throttle_test(request) -> None:
    """Count one test for this administrator; raise :class:`TestThrottled` over the limit
    (``backupsite.ratelimit.LIMITS["source-test"]``)."""
    try:
        hit("source-test", f"user:{request.user.pk}")
    except RateLimited as exc:
        raise TestThrottled(exc.retry_after) from None


def run_test(handler: SourceKind) -> TestResult:
    """``handler.test()`` as a result: a source problem is a failed result with its
    (secret-free) message; a bug in a kind is a failed result too, logged by exception type
    only (a client library's message may quote its configuration)."""
    if not handler.testable:
        return TestResult(False, _("This kind of source has no connection test; use Measure instead."))
    try:
        return handler.test()
    except (SourceError, ValueError) as exc:
        return TestResult(False, str(exc))
    except Exception as exc:  # noqa: BLE001 - a test button must answer
        log.error("Test of a %s source failed unexpectedly: %s", handler.kind, type(exc).__name__)
        return TestResult(False, _("The test failed unexpectedly; the server log names the error type."))


@dataclass(frozen=True)
class Measured:
    ok: bool
    message: str


def measure(source: Source) -> Measured:
    try:
        source.measure()
    except (SourceError, ValueError, OSError) as exc:
        return Measured(False, _("Could not measure “%(name)s”: %(error)s") % {"name": source.name, "error": exc})
    return Measured(True, _("Measured “%(name)s”.") % {"name": source.name})
