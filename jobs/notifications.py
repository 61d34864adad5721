"""E-mails to a job's report-to addresses: a failed run, a damaged backup."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.mail import send_mail
from django.template.loader import render_to_string

log = logging.getLogger(__name__)


def send_alert(recipients: list[str], template: str, context: dict, *, what: str) -> bool:
    """Render ``emails/<template>_subject.txt`` and ``emails/<template>.txt`` and send
    them. Never raises: a broken mail server must not hide the outcome it reports (the
    failure is logged instead). Returns whether a message went out."""
    if not recipients:
        return False
    context = {**context, "site_url": settings.BACKUPSITE_SITE_URL.rstrip("/")}
    # One line, whatever the template renders: no header injection through a job name.
    subject = " ".join(render_to_string(f"emails/{template}_subject.txt", context).split())
    body = render_to_string(f"emails/{template}.txt", context)
    try:
        send_mail(subject, body, None, recipients)
    except Exception:
        log.exception("Could not send the %s e-mail", what)
        return False
    return True


def notify_run_failed(run) -> bool:
    """E-mail the job's report-to addresses that *run* failed."""
    recipients = run.config.get("job", {}).get("report_to") or []
    return send_alert(recipients, "run_failed", {"run": run}, what=f"failure e-mail for run {run.pk}")
