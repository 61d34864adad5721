"""Celery tasks of the panel itself: thin wrappers around backupsite.audit."""

from __future__ import annotations

from backupsite import audit
from backupsite.celery import app


@app.task(bind=True, acks_late=True, ignore_result=True)
def deliver_admin_mail(self, mail_id: int) -> None:
    """Send one "configuration changed" e-mail; on failure try again after a growing,
    jittered delay (the row keeps the count; housekeeping catches a lost task)."""
    delay = audit.deliver(mail_id)
    if delay is not None and not self.request.is_eager:
        self.apply_async((mail_id,), countdown=delay)


@app.task(ignore_result=True)
def audit_housekeeping() -> dict:
    """Prune audit events past their retention; send admin mails whose task was lost."""
    return audit.housekeeping()
