"""What the wizard's Finish does with the validated steps.

* *Keep settings and execute backup*: save the job, queue a run, open the run page.
* *Only execute backup*: run once from the entered settings without saving a job
  (:func:`jobs.services.enqueue_oneoff`); a destination created in step 3 is saved (it
  is configuration the administrator typed).
* *Only keep settings*: save the job, open the job page.

Every write goes through :mod:`backupsite.configwrite` (one transaction: a failure
saving the job also undoes the destination created for it).
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.utils.translation import gettext as _

from backupsite import audit, configwrite
from destinations import services as destination_services
from destinations.models import Destination
from jobs import services
from jobs.models import Job, Run
from jobs.wizard.forms import DUPLICATE, EDIT, KEEP, NEW, RUN_ONLY, SAVE_AND_RUN


@dataclass
class Outcome:
    url: str
    message: str
    level: str = "success"


def apply_general(job: Job, general: dict) -> None:
    job.name = general["name"]
    job.report_to = general["report_to"]
    job.language = general.get("language") or job.language or settings.LANGUAGE_CODE
    job.interval = general["interval"]
    job.cron = general.get("cron", "") if general["interval"] == Job.Interval.CRON else ""
    job.timezone = general["timezone"]
    job.first_run_at = general.get("first_run_at")
    job.keep_last = general.get("keep_last")
    job.max_age_days = general.get("max_age_days")


def apply_encryption(job: Job, content: dict) -> None:
    mode = content["encryption"]
    if mode == Job.Encryption.NONE:
        job.encryption, job.age_recipient, job.age_identity_wrapped = Job.Encryption.NONE, "", ""
    elif mode == Job.Encryption.RECIPIENT:
        job.set_recipient(content["age_recipient"])
    elif content.get("password"):
        job.set_backup_password(content["password"], old_password=content.get("old_password_checked") or None)
    # else: a job that has a backup password keeps it (both fields left blank)


def new_destination(destination: dict, *, request, tested: str = "") -> Destination:
    """Save the destination created in step 3, with the test it passed (*tested*: its
    tested token, recorded if it tested exactly these settings)."""
    created = Destination(
        name=destination["name"].strip(),
        kind=destination["kind"],
        settings=destination["new_settings"],
        secrets=destination["new_secrets"],
    )
    configwrite.save(created, request=request)
    destination_services.record_tested(created, tested)
    return created


def finish(*, steps: dict, mode: str, job: Job | None, request, tested: str = "") -> Outcome:
    general, content, destination_step = steps["general"], steps["content"], steps["destination"]
    action = steps["summary"]["action"]
    user = request.user
    with transaction.atomic():
        target = destination_step.get("target")
        destination: Destination | None = None
        if target == NEW:
            destination = new_destination(destination_step, request=request, tested=tested)
        elif target != KEEP:
            destination = destination_step.get("destination")
        kept = list(job.destinations.all()) if job is not None and target == KEEP else []

        if action == RUN_ONLY:
            settings_of = Job(
                name=general["name"],
                report_to=general["report_to"],
                language=general.get("language") or settings.LANGUAGE_CODE,
            )
            password = ""
            if content["encryption"] == Job.Encryption.RECIPIENT:
                settings_of.set_recipient(content["age_recipient"])
            elif content["encryption"] == Job.Encryption.PASSWORD:
                password = content.get("password") or ""
            destinations = [destination] if destination is not None else kept
            run = services.enqueue_oneoff(
                settings_of, sources=content["sources"], destinations=destinations, password=password, user=user
            )
            audit.record(request, audit.RUN_MANUAL, run, via="wizard, only execute backup")
            return Outcome(
                run.get_absolute_url(),
                _("One-off backup “%(name)s” queued; it writes to its own folder %(folder)s.")
                % {"name": run.job_name, "folder": f"backupsite/{run.job_slug}/"},
            )

        saved = job if mode == EDIT and job is not None else Job()
        apply_general(saved, general)
        apply_encryption(saved, content)
        if mode == DUPLICATE and job is not None:
            saved.archive_name_template = job.archive_name_template
            saved.compression_level = job.compression_level
        if mode == EDIT:
            destinations = kept if target == KEEP else [*saved.destinations.all(), destination]
        else:
            destinations = kept if target == KEEP else [destination]
        configwrite.save(
            saved, request=request, m2m={"sources": content["sources"], "destinations": [d for d in destinations if d]}
        )

    if action == SAVE_AND_RUN:
        try:
            run = services.enqueue_run(saved, trigger=Run.Trigger.WIZARD, user=user)
            audit.record(request, audit.RUN_MANUAL, run, via="wizard, keep settings and execute backup")
        except services.AlreadyRunning as exc:
            return Outcome(saved.get_absolute_url(), str(exc), "warning")
        return Outcome(run.get_absolute_url(), _("Job “%(name)s” saved; its backup is running.") % {"name": saved.name})
    text = _("Job “%(name)s” saved.") if mode == EDIT else _("Job “%(name)s” created.")
    return Outcome(saved.get_absolute_url(), text % {"name": saved.name})
