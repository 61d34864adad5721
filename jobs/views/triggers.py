"""The event trigger: ``POST /hooks/jobs/<id>/<token>/`` (or ``POST /hooks/jobs/<id>/``
with the token in an ``X-Backupsite-Token`` or ``Authorization: Bearer`` header) starts
a run of the job, so another system can back up at a business event (a POS at day
close). No login and no CSRF token (it is called by machines); the token is compared in
constant time with the job's stored (encrypted) secret, and every call is rate-limited
through ``backupsite.ratelimit`` per client address and per job. A wrong token or an
unknown job answer the same 404.

And the administrators' side on the job page: show the URL again, make or regenerate
it, remove it; all through ``backupsite.configwrite`` (audited like every change).
"""

from __future__ import annotations

import hmac

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_not_required, permission_required
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from backupsite import audit, configwrite, ratelimit
from backupsite.sudo import active as sudo_active
from backupsite.sudo import sudo_required
from jobs import notifications
from jobs.models import Job, Run
from jobs.services import AlreadyRunning, enqueue_run

_DUMMY = "x" * 43  # compared against when the job does not exist: the same work either way


def _token_from(request, token: str | None) -> str:
    if token:
        return token
    header = request.headers.get("X-Backupsite-Token", "")
    if header:
        return header.strip()
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return ""


def _too_many(exc: ratelimit.RateLimited) -> JsonResponse:
    response = JsonResponse({"error": str(exc)}, status=429)
    response["Retry-After"] = str(exc.retry_after)
    return response


@csrf_exempt
@login_not_required
@never_cache
@require_POST
def job_trigger(request, pk: int, token: str | None = None):
    ip = configwrite.client_ip(request) or "unknown"
    try:
        ratelimit.hit("job-trigger-ip", f"ip:{ip}")
        ratelimit.hit("job-trigger", f"job:{pk}")
    except ratelimit.RateLimited as exc:
        return _too_many(exc)
    candidate = _token_from(request, token)
    job = Job.objects.filter(pk=pk).first()
    if job is None or not job.has_trigger:
        hmac.compare_digest(_DUMMY.encode(), candidate.encode())
        return JsonResponse({"error": "Not found."}, status=404)
    if not job.trigger_token_matches(candidate):
        return JsonResponse({"error": "Not found."}, status=404)
    if not job.enabled:
        return JsonResponse({"error": f"The job “{job.name}” is disabled."}, status=409)
    try:
        run = enqueue_run(job, trigger=Run.Trigger.EVENT, log_lines=[f"Started through the trigger URL from {ip}."])
    except AlreadyRunning as exc:
        active = job.active_run()
        return JsonResponse({"error": str(exc), "run": active.pk if active else None}, status=409)
    audit.record(request, audit.RUN_TRIGGERED, run, via="path token" if token else "header token")
    site = settings.BACKUPSITE_SITE_URL.rstrip("/")
    return JsonResponse({"run": run.pk, "state": run.state, "url": site + run.get_absolute_url()}, status=202)


def trigger_url(request, job: Job) -> str:
    """The full trigger URL with its secret (administrators, in sudo mode only: the job
    page shows it only then, see :func:`job_trigger_show`)."""
    path = reverse("jobs:job_trigger_token", args=[job.pk, job.trigger_token])
    return settings.BACKUPSITE_SITE_URL.rstrip("/") + path


def show_trigger(request, job: Job) -> bool:
    """Whether the job page may show the trigger URL's secret to this request."""
    return job.has_trigger and request.user.has_perm("jobs.change_job") and sudo_active(request)


@permission_required("jobs.change_job", raise_exception=True)
@sudo_required
def job_trigger_show(request, pk: int):
    """Reveal the trigger URL after the password was re-entered (sudo mode), audited."""
    job = get_object_or_404(Job, pk=pk)
    if job.has_trigger:
        audit.record(request, audit.TRIGGER_REVEALED, job)
    return redirect(reverse("jobs:job_detail", args=[job.pk]) + "#trigger")


@require_POST
@permission_required("jobs.change_job", raise_exception=True)
@sudo_required
def job_trigger_regenerate(request, pk: int):
    job = get_object_or_404(Job, pk=pk)
    had = job.has_trigger
    job.new_trigger_token()
    configwrite.save(job, request=request)
    if had:
        messages.success(request, _("A new trigger URL was made; the old one no longer works."))
    else:
        messages.success(request, _("The trigger URL was made."))
    return redirect(reverse("jobs:job_detail", args=[job.pk]) + "#trigger")


@require_POST
@permission_required("jobs.change_job", raise_exception=True)
def job_trigger_remove(request, pk: int):
    job = get_object_or_404(Job, pk=pk)
    job.trigger_token_encrypted = ""
    configwrite.save(job, request=request)
    messages.success(request, _("The trigger URL was removed; calls to it are refused."))
    return redirect(reverse("jobs:job_detail", args=[job.pk]) + "#trigger")


@require_POST
@permission_required("jobs.run_job", raise_exception=True)
def job_test_email(request, pk: int):
    job = get_object_or_404(Job, pk=pk)
    if not job.report_to_list:
        messages.warning(request, _("This job has no report-to addresses: nobody would get alerts."))
    elif notifications.send_test_email(job, request.user):
        messages.success(
            request,
            gettext("A test e-mail to %(addresses)s is on its way.") % {"addresses": ", ".join(job.report_to_list)},
        )
    else:
        messages.error(request, _("The test e-mail could not be queued; see the log."))
    return redirect(reverse("jobs:job_detail", args=[job.pk]) + "#alerts")


class AlertSettingsForm(forms.ModelForm):
    """The job's alert and drill settings (administrators, on the job page). The ping URL
    is a credential of the monitoring service: never rendered back; left blank it stays."""

    ping_url = forms.URLField(
        label=_("Ping URL"),
        required=False,
        assume_scheme="https",
        widget=forms.URLInput(attrs={"autocomplete": "off", "placeholder": "https://hc-ping.com/…"}),
        help_text=_(
            "Requested at the start (…/start), on success, and on failure (…/fail) with the error. Leave it "
            "blank to keep the current one."
        ),
    )
    remove_ping_url = forms.BooleanField(label=_("Remove the ping URL"), required=False)

    class Meta:
        model = Job
        fields = ["language", "notify_success", "drill_interval_days"]
        labels = {
            "language": _("Language of the alert e-mails"),
            "notify_success": _("E-mail after every successful run too"),
            "drill_interval_days": _("Integrity drill every … days (0: never)"),
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["language"].required = False  # not sent: the job keeps its language

    def clean_ping_url(self):
        value = self.cleaned_data["ping_url"]
        if value and not value.lower().startswith(("http://", "https://")):
            raise forms.ValidationError(_("The ping URL must start with http:// or https://."))
        return value

    def save(self, commit=True):
        job = super().save(commit=False)
        if self.cleaned_data.get("remove_ping_url"):
            job.ping_url = ""
        elif self.cleaned_data.get("ping_url"):
            job.ping_url = self.cleaned_data["ping_url"]
        return job


@require_POST
@permission_required("jobs.change_job", raise_exception=True)
def job_alert_settings(request, pk: int):
    job = get_object_or_404(Job, pk=pk)
    form = AlertSettingsForm(request.POST, instance=job)
    if form.is_valid():
        configwrite.save(form.save(), request=request)
        messages.success(request, _("The alert settings were saved."))
    else:
        errors = "; ".join(str(error) for errors in form.errors.values() for error in errors)
        messages.error(request, gettext("The alert settings were not saved: %(errors)s") % {"errors": errors})
    return redirect(reverse("jobs:job_detail", args=[job.pk]) + "#alerts")
