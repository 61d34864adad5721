"""E-mails about runs: failure alerts to the job's report-to addresses."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.mail import send_mail
from django.template.loader import render_to_string

log = logging.getLogger(__name__)


def notify_run_failed(run) -> bool:
    """E-mail the job's report-to addresses that *run* failed. Never raises: a broken
    mail server must not hide the run's own outcome (it is logged instead)."""
    recipients = run.config.get("job", {}).get("report_to") or []
    if not recipients:
        return False
    context = {"run": run, "site_url": settings.BACKUPSITE_SITE_URL.rstrip("/")}
    subject = render_to_string("emails/run_failed_subject.txt", context).strip().replace("\n", " ")
    body = render_to_string("emails/run_failed.txt", context)
    try:
        send_mail(subject, body, None, recipients)
    except Exception:
        log.exception("Could not send the failure e-mail for run %s", run.pk)
        return False
    return True
