"""Alerts: e-mails to a job's report-to addresses and pings to its dead man's switch.

What is sent, and when:

* **failure**: a run fails, is interrupted or times out (``notify_run_failed``), or one
  of its uploads finally fails (``notify_upload_failed``): the job, a link to the run,
  the phase, the error, and where the job's backups are still kept;
* **recovery**: the first successful run after a failure e-mail (``Job.alert_open``);
* **success**: after every successful run, when the job asks for it (``notify_success``);
* **stale**: no successful run for twice the job's interval, once per stale period
  (:func:`check_stale`, from the dispatcher tick);
* **test**: the "Send test e-mail" button;
* **export failure**: a planning export run fails, is partial, interrupted or timed out
  (``notify_export_failed``), to the export's report-to addresses;
* **pings** (``Job.ping_url``, healthchecks.io / Uptime Kuma style): ``<url>`` at the
  start (``/start``) and on success, ``<url>/fail`` with the error, so a panel that is
  itself down is noticed from outside.

Everything goes through one outbox (:class:`~jobs.models.Notification`): the message is
rendered and stored in the transaction that decided to send it, and delivered by a task
*after commit* (never for a transaction that rolled back), retried with backoff
(``BACKUPSITE_NOTIFICATION_ATTEMPTS``) and re-sent by the sweep if its task was lost. A
run never waits for a mail server or a monitoring service.
"""

from __future__ import annotations

import http.client
import logging
import ssl
from datetime import timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Q
from django.template.loader import render_to_string
from django.utils import formats, timezone, translation
from django.utils.translation import gettext as _
from django.utils.translation import pgettext_lazy

log = logging.getLogger(__name__)

#: Tests set this to False so a notification is delivered at once, inside the test's
#: transaction (pytest-django never commits it); tests/test_notifications.py proves
#: the after-commit behaviour with it left on.
DELIVER_AFTER_COMMIT = True
#: Set by ``runbackup`` (a foreground run, perhaps without any worker running): deliver in
#: this process after commit instead of through a task.
DELIVER_HERE = False
RETRY_BASE_SECONDS = 30


# --- queueing ------------------------------------------------------------------------------
def _queue(notification) -> None:
    from jobs import enqueue

    if not DELIVER_AFTER_COMMIT:
        deliver(notification.pk)
    elif DELIVER_HERE:
        transaction.on_commit(lambda: deliver(notification.pk))
    else:
        enqueue.notification(notification.pk)


def render(template: str, context: dict) -> tuple[str, str]:
    context = {**context, "site_url": settings.BACKUPSITE_SITE_URL.rstrip("/")}
    # One line, whatever the template renders: no header injection through a job name.
    subject = " ".join(render_to_string(f"emails/{template}_subject.txt", context).split())
    body = render_to_string(f"emails/{template}.txt", context)
    return subject[:255], body


def send_alert(recipients: list[str], template: str, context: dict, *, what: str, job=None, run=None) -> bool:
    """Render ``emails/<template>_subject.txt`` and ``emails/<template>.txt`` and queue
    them for *recipients*. Never raises: a broken template or database must not hide the
    outcome it reports (the failure is logged instead). Returns whether one was queued."""
    from jobs.models import Notification

    if not recipients:
        return False
    try:
        subject, body = render(template, context)
        notification = Notification.objects.create(
            channel=Notification.Channel.EMAIL,
            kind=template,
            job=job,
            run=run,
            recipients=list(recipients),
            subject=subject,
            body=body,
        )
        _queue(notification)
    except Exception:
        log.exception("Could not queue the %s", what)
        return False
    return True


def ping(job, event: str, *, run=None, error: str = "") -> bool:
    """Queue a request to the job's ping URL: *event* "start", "success" or "fail"."""
    from backupsite.crypto import encrypt_text
    from jobs.models import Notification

    if not job or not job.ping_url:
        return False
    base = job.ping_url.rstrip("/")
    url = {"start": f"{base}/start", "fail": f"{base}/fail"}.get(event, job.ping_url)
    try:
        notification = Notification.objects.create(
            channel=Notification.Channel.PING,
            kind=f"ping_{event}",
            job=job,
            run=run,
            body=error[:10000],
            url_encrypted=encrypt_text(url),
        )
        _queue(notification)
    except Exception:
        log.exception("Could not queue the %s ping of job %s", event, job.pk)
        return False
    return True


# --- what is sent -----------------------------------------------------------------------------
def _job_of(run):
    from jobs.models import Job

    return Job.objects.filter(pk=run.job_id).first() if run.job_id else None


#: The word after "Backup" in a failure e-mail's subject, per final state (its own
#: message: a state's label is a heading, "Failed", and reads differently in a sentence).
SUBJECT_STATES = {
    "failed": pgettext_lazy("alert subject: Backup …", "failed"),
    "partial": pgettext_lazy("alert subject: Backup …", "partially succeeded"),
    "interrupted": pgettext_lazy("alert subject: Backup …", "interrupted"),
    "timed_out": pgettext_lazy("alert subject: Backup …", "timed out"),
    "cancelled": pgettext_lazy("alert subject: Backup …", "cancelled"),
    "skipped": pgettext_lazy("alert subject: Backup …", "skipped"),
}

#: The word after "Planning export" in an export failure e-mail's subject.
EXPORT_SUBJECT_STATES = {
    "failed": pgettext_lazy("alert subject: Planning export …", "failed"),
    "partial": pgettext_lazy("alert subject: Planning export …", "partially succeeded"),
    "interrupted": pgettext_lazy("alert subject: Planning export …", "interrupted"),
    "timed_out": pgettext_lazy("alert subject: Planning export …", "timed out"),
}


def alert_language(job=None, run=None) -> str:
    """The language of the alert e-mails of *job* (or of *run*'s job, from its snapshot
    when the job is gone or the run was a one-off): the job's ``language``, else
    ``LANGUAGE_CODE``. The report-to addresses are not users: they have no choice of
    their own."""
    code = getattr(job, "language", "") if job is not None else ""
    if not code and run is not None:
        code = (run.config or {}).get("job", {}).get("language", "")
    return code if code in dict(settings.LANGUAGES) else settings.LANGUAGE_CODE


def in_alert_language(job=None, run=None):
    """Render (subject, body and every text the context computes) in the job's language."""
    return translation.override(alert_language(job, run))


def _recipients(run, job) -> list[str]:
    if job is not None:
        return job.report_to_list
    return list(run.config.get("job", {}).get("report_to") or [])


def kept_at(run) -> list[str]:
    """Where backups of the run's job still are, for a failure e-mail: this run's archive
    (if it was made) and the job's last good backup."""
    from jobs.models import Run, Upload

    places = []

    def describe(candidate, label: str) -> None:
        where = []
        path = candidate.local_file
        if path is not None and path.is_file():
            where.append(
                _("the local copy on %(host)s") % {"host": candidate.host}
                if candidate.host
                else _("the local copy on the server")
            )
        where += [
            _("destination “%(name)s”") % {"name": name}
            for name in Upload.objects.filter(run=candidate, state=Upload.State.SUCCEEDED).values_list(
                "destination_name", flat=True
            )
        ]
        if where:
            places.append(f"{label}: {', '.join(where)}")

    if run.archive_size is not None:
        describe(run, _("This run's archive %(name)s") % {"name": run.archive_name})
    if run.job_id:
        last = (
            Run.objects.filter(job_id=run.job_id, state__in=[Run.State.SUCCEEDED, Run.State.PARTIAL])
            .exclude(pk=run.pk)
            .order_by("-created_at")
            .first()
        )
        if last is not None:
            when = formats.date_format(timezone.localtime(last.created_at), "SHORT_DATETIME_FORMAT")
            describe(last, _("The last good backup, run #%(pk)s of %(when)s") % {"pk": last.pk, "when": when})
    return places or [_("No backup of this job exists yet.")]


def _open_alert(job) -> None:
    from jobs.models import Job

    if job is not None:
        Job.objects.filter(pk=job.pk).update(alert_open=True)


def notify_run_failed(run) -> bool:
    """E-mail the job's report-to addresses that *run* failed (and ping /fail)."""
    job = _job_of(run)
    with in_alert_language(job, run):
        sent = send_alert(
            _recipients(run, job),
            "run_failed",
            {
                "run": run,
                "kept": kept_at(run),
                "phase": run.get_phase_display(),
                "state_word": SUBJECT_STATES.get(run.state) or run.get_state_display().lower(),
            },
            what=f"failure e-mail for run {run.pk}",
            job=job,
            run=run,
        )
    _open_alert(job)
    ping(job, "fail", run=run, error=f"Run #{run.pk} {run.get_state_display().lower()}: {run.error}")
    return sent


def notify_upload_failed(upload) -> bool:
    """E-mail that an upload finally failed (retries used up, or a permanent error)."""
    run = upload.run
    job = _job_of(run)
    with in_alert_language(job, run):
        sent = send_alert(
            _recipients(run, job),
            "upload_failed",
            {"run": run, "upload": upload, "kept": kept_at(run)},
            what=f"upload failure e-mail for upload {upload.pk}",
            job=job,
            run=run,
        )
    _open_alert(job)
    return sent


def notify_export_failed(export_run) -> bool:
    """E-mail the planning export's report-to addresses that *export_run* did not fully
    succeed (failed, partial, interrupted, timed out): the error and each destination's
    result. Through the outbox like every alert."""
    recipients = (export_run.config.get("export") or {}).get("report_to") or []
    return send_alert(
        recipients,
        "export_failed",
        {
            "run": export_run,
            "uploads": list(export_run.uploads.all()),
            "state_word": EXPORT_SUBJECT_STATES.get(export_run.state) or export_run.get_state_display().lower(),
        },
        what=f"failure e-mail for export run {export_run.pk}",
    )


def run_closed(run) -> None:
    """A run's uploads all settled and it was closed: success / recovery e-mails and
    the ping. (Upload failures were e-mailed one by one when they happened.)"""
    from jobs.models import Job, Run

    job = _job_of(run)
    if job is None:
        return
    if run.state == Run.State.SUCCEEDED:
        recovered = Job.objects.filter(pk=job.pk, alert_open=True).update(alert_open=False, stale_alerted_at=None)
        template = "run_recovered" if recovered else "run_succeeded" if job.notify_success else None
        if template is not None:
            with in_alert_language(job, run):
                send_alert(job.report_to_list, template, {"run": run, "job": job}, what=template, job=job, run=run)
        ping(job, "success", run=run)
    elif run.state in (Run.State.PARTIAL, Run.State.FAILED):
        ping(job, "fail", run=run, error=f"Run #{run.pk} {run.get_state_display().lower()}: {run.error}")


def send_test_email(job, user=None) -> bool:
    who = user.get_username() if user is not None and user.is_authenticated else ""
    with in_alert_language(job):
        return send_alert(
            job.report_to_list, "test_email", {"job": job, "who": who}, what=f"test e-mail of job {job.pk}", job=job
        )


# --- stale jobs -------------------------------------------------------------------------------
def stale_plan(jobs, now):
    """Pure: which jobs get a stale alert now. *jobs*: (job id, interval, last success
    or None, created_at, stale_alerted_at). A job is stale when its last success (or its
    creation) is more than twice its interval ago; the alert goes once per stale period:
    again only when another twice-the-interval has passed since the last alert."""
    due = []
    for pk, interval, last_success, created, alerted in jobs:
        if not is_stale(interval, last_success, created, now):
            continue
        if alerted is not None and now - alerted <= 2 * interval:
            continue
        due.append((pk, now - (last_success or created)))
    return due


def is_stale(interval, last_success, created, now) -> bool:
    """Pure: a scheduled job is stale when its last success (or, never successful, its
    creation) is more than twice its interval ago. Manual jobs (no interval) never are."""
    if interval is None or interval <= timedelta(0):
        return False
    return now - (last_success or created) > 2 * interval


def scheduled_jobs(now):
    """The enabled scheduled jobs that could be stale now, each annotated with
    ``last_success_at`` (one query; the stale alerts and ``/healthz`` read it)."""
    from django.db.models import Max
    from django.db.models.functions import Coalesce

    from jobs.models import Job, Run

    # Twice the shortest possible interval (a cron job every minute): nothing younger can
    # be stale, so a tick right after 10,000 jobs were made looks at none of them.
    return list(
        Job.objects.filter(enabled=True)
        .exclude(interval=Job.Interval.MANUAL)
        .annotate(last_success_at=Max("runs__finished_at", filter=Q(runs__state=Run.State.SUCCEEDED)))
        .annotate(since=Coalesce("last_success_at", "created_at"))
        .filter(since__lt=now - timedelta(minutes=2))
    )


def stale_jobs(now=None) -> list[tuple]:
    """(job, time since its last success or creation) of every stale job, oldest first."""
    now = now or timezone.now()
    found = [
        (job, now - (job.last_success_at or job.created_at))
        for job in scheduled_jobs(now)
        if is_stale(job.typical_interval, job.last_success_at, job.created_at, now)
    ]
    return sorted(found, key=lambda item: item[1], reverse=True)


def check_stale(now=None) -> int:
    """The dispatcher tick's part: stale alerts. Returns how many were queued."""
    from jobs.models import Job

    now = now or timezone.now()
    jobs = scheduled_jobs(now)
    rows = [(j.pk, j.typical_interval, j.last_success_at, j.created_at, j.stale_alerted_at) for j in jobs]
    by_pk = {j.pk: j for j in jobs}
    sent = 0
    for pk, silent in stale_plan(rows, now):
        job = by_pk[pk]
        claimed = Job.objects.filter(pk=pk, stale_alerted_at=job.stale_alerted_at).update(stale_alerted_at=now)
        if not claimed:  # another tick sent it
            continue
        from django.utils.timesince import timesince

        with in_alert_language(job):
            silent_text = timesince(now - silent, now).replace("\xa0", " ")
            context = {"job": job, "last_success_at": job.last_success_at, "silent_text": silent_text}
            if send_alert(job.report_to_list, "job_stale", context, what=f"stale e-mail of job {pk}", job=job):
                sent += 1
        Job.objects.filter(pk=pk).update(alert_open=True)
        ping(job, "fail", error=f"No successful backup since {job.last_success_at or 'ever'}.")
    return sent


# --- delivery --------------------------------------------------------------------------------
def deliver(notification_id: int) -> str | None:
    """The delivery task: send one notification (conditional claim: one sender at a
    time); on failure try again later with backoff, until the attempts are used up."""
    from jobs.models import Notification

    now = timezone.now()
    attempts_allowed = settings.BACKUPSITE_NOTIFICATION_ATTEMPTS
    row = Notification.objects.filter(pk=notification_id, state=Notification.State.PENDING).first()
    if row is None or (row.next_attempt_at and row.next_attempt_at > now + timedelta(seconds=5)):
        return None
    lease = now + timedelta(seconds=_delay(row.attempts + 1) + settings.BACKUPSITE_PING_TIMEOUT + 60)
    claimed = Notification.objects.filter(pk=row.pk, state=row.State.PENDING, attempts=row.attempts).update(
        attempts=row.attempts + 1, next_attempt_at=lease
    )
    if not claimed:
        return None
    row.attempts += 1
    try:
        if row.channel == Notification.Channel.EMAIL:
            send_mail(row.subject, row.body, None, row.recipients)
        else:
            _ping_request(row)
    except Exception as exc:  # noqa: BLE001 - any failure of the mail server or the URL is retried
        error = _describe(exc)
        if row.attempts >= attempts_allowed:
            Notification.objects.filter(pk=row.pk).update(state=Notification.State.FAILED, error=error)
            log.warning("Giving up on %s after %s attempts: %s", row, row.attempts, error)
            return Notification.State.FAILED
        delay = _delay(row.attempts)
        Notification.objects.filter(pk=row.pk).update(
            error=error, next_attempt_at=timezone.now() + timedelta(seconds=delay)
        )
        log.info("Could not send %s (%s); trying again in %.0f s", row, error, delay)
        from jobs import enqueue

        enqueue.notification(row.pk, countdown=delay)
        return Notification.State.PENDING
    Notification.objects.filter(pk=row.pk).update(state=Notification.State.SENT, sent_at=timezone.now(), error="")
    return Notification.State.SENT


def _delay(attempts: int) -> float:
    return min(3600.0, RETRY_BASE_SECONDS * 2 ** max(0, attempts - 1))


def _describe(exc: Exception) -> str:
    """A failure in words, without credentials (an SMTP library's message may quote the
    login; a URL may carry a token): the type, plus the text for our own errors."""
    from destinations.backends.base import DestinationError

    if isinstance(exc, DestinationError | PingError):
        return str(exc)[:500]
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"[:500]
    return type(exc).__name__


def sweep(now=None) -> int:
    """Notifications whose delivery task was lost (a worker killed, the broker down):
    queued again. Called by the upload sweep."""
    from jobs import enqueue
    from jobs.models import Notification

    now = now or timezone.now()
    grace = timedelta(seconds=settings.BACKUPSITE_QUEUE_GRACE_SECONDS)
    stuck = Notification.objects.filter(state=Notification.State.PENDING).filter(
        Q(next_attempt_at__isnull=True, created_at__lt=now - grace) | Q(next_attempt_at__lt=now - grace)
    )
    count = 0
    for pk in stuck.values_list("pk", flat=True)[:500]:
        Notification.objects.filter(pk=pk, state=Notification.State.PENDING).update(next_attempt_at=None)
        transaction.on_commit(lambda pk=pk: enqueue._send("deliver_notification", [pk], queue=enqueue.DEFAULT))
        count += 1
    return count


# --- the ping request ---------------------------------------------------------------------------
class PingError(Exception):
    """A ping URL that cannot be reached or answers with an error; the message names no secret."""


def _ping_request(row) -> None:
    """GET the URL (POST with the error as the body for /fail), through the same address
    checks as a destination (no loopback, link-local or metadata addresses unless
    ``BACKUPSITE_ALLOW_LOCAL_DESTINATIONS``), with ``BACKUPSITE_PING_TIMEOUT`` seconds for
    every step. Raises PingError."""
    from backupsite.crypto import decrypt_text
    from destinations import netguard
    from destinations.backends.base import DestinationError

    url = decrypt_text(row.url_encrypted)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PingError("The ping URL must start with http:// or https://.")
    timeout = float(settings.BACKUPSITE_PING_TIMEOUT)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        target = netguard.resolve(parts.hostname, port, timeout=timeout)
        sock = netguard.connect(target, timeout)
    except DestinationError as exc:
        raise PingError(f"Ping URL: {exc}") from None
    try:
        if parts.scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=parts.hostname)
        conn = http.client.HTTPConnection(parts.hostname, port, timeout=timeout)
        conn.sock = sock
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        body = row.body.encode() if row.kind == "ping_fail" else None
        method = "POST" if body is not None else "GET"
        headers = {"User-Agent": "backupsite", "Host": parts.netloc.rsplit("@", 1)[-1]}
        if body is not None:
            headers["Content-Type"] = "text/plain; charset=utf-8"
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read(4096)
        if response.status >= 400:
            raise PingError(f"The ping URL answered {response.status} {response.reason}.")
    except ssl.SSLError as exc:
        raise PingError(f"TLS error talking to the ping URL's server ({exc.reason or type(exc).__name__}).") from None
    except TimeoutError:
        raise PingError(f"The ping URL's server did not answer within {timeout:g} seconds.") from None
    except (OSError, http.client.HTTPException) as exc:
        raise PingError(f"The ping URL could not be reached ({type(exc).__name__}).") from None
    finally:
        sock.close()
