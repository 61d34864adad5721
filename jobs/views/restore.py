"""Verify a stored backup, and restore it into a folder on this server.

Both run synchronously in the request for now (see ``jobs.verification``); the password
field is never rendered back, stored or logged (``sensitive_post_parameters`` also keeps
it out of error reports). A sensitive run (its archive holds the panel's database) is
refused, GET and POST alike, to users without ``jobs.access_sensitive_run``.
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.template.defaultfilters import filesizeformat
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables
from django.views.decorators.http import require_http_methods

from backupsite import audit, sudo
from destinations.models import Destination
from jobs.downloads import readable_uploads
from jobs.engine.restore import RestoreError
from jobs.models import Run
from jobs.verification import VerificationError, request_verification, restore_roots, restore_run
from jobs.views.runs import refuse_sensitive

LOCAL = "local"


def is_encrypted(run: Run) -> bool:
    encryption = run.config.get("job", {}).get("encryption")
    return run.archive_name.endswith(".age") or encryption not in (None, "", "none")


def location_choices(run: Run) -> list[tuple[str, str]]:
    choices = []
    path = run.local_file
    if path is not None and path.is_file():
        choices.append((LOCAL, "This server (local copy)"))
    for upload in readable_uploads(run):  # write-only kinds (e-mail) cannot be read back
        choices.append((str(upload.destination_id), f"Destination “{upload.destination_name}”"))
    return choices


def _destination(value: str):
    if value == LOCAL:
        return None
    return get_object_or_404(Destination, pk=int(value))


class _LocationForm(forms.Form):
    location = forms.ChoiceField(label="Read the backup from")
    password = forms.CharField(
        label="Backup password",
        required=False,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "off"}),
        help_text="The job's backup password: it unlocks the job's key for this check only and is not stored.",
    )

    def __init__(self, *args, run: Run, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["location"].choices = location_choices(run)
        if not is_encrypted(run):
            del self.fields["password"]


class VerifyForm(_LocationForm):
    checksum_only = forms.BooleanField(
        label="Only compare the stored file with its checksum (no password; contents not checked)",
        required=False,
    )

    def __init__(self, *args, run: Run, **kwargs):
        super().__init__(*args, run=run, **kwargs)
        if not is_encrypted(run):
            del self.fields["checksum_only"]


class RestoreForm(_LocationForm):
    target = forms.CharField(
        label="Restore into",
        max_length=500,
        help_text="A new (or empty) folder inside an allowed restore folder.",
    )

    field_order = ["location", "target", "password"]


def _restorable_run(pk: int) -> Run:
    run = get_object_or_404(Run.objects.select_related("job"), pk=pk)
    if run.is_active or not run.archive_name or run.archive_size is None:
        raise Http404("This run has no finished archive.")
    return run


@sensitive_post_parameters("password")
@require_http_methods(["GET", "POST"])
@permission_required("jobs.run_job", raise_exception=True)
def run_verify(request, pk: int):
    run = _restorable_run(pk)
    refused = refuse_sensitive(request, run)
    if refused is not None:
        return refused
    form = VerifyForm(request.POST if request.method == "POST" else None, run=run)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        if _verify(request, run, data):
            return redirect(run)
    uploads = run.uploads.all()
    return render(request, "jobs/run_verify.html", {"run": run, "form": form, "uploads": uploads})


@sensitive_variables("data")
def _verify(request, run: Run, data: dict) -> bool:
    try:
        request_verification(
            run,
            _destination(data["location"]),
            data.get("password") or None,
            checksum_only=bool(data.get("checksum_only")),
            user=request.user,
        )
    except VerificationError as exc:
        audit.record(request, audit.VERIFY, run, outcome="refused", message=str(exc))
        messages.error(request, f"Could not verify: {exc}")
        return False
    audit.record(
        request,
        audit.VERIFY,
        run,
        where=dict(location_choices(run)).get(data["location"], data["location"]),
        checksum_only=bool(data.get("checksum_only")),
        outcome="queued",
    )
    messages.info(
        request,
        "Verification started in the background: the result appears under “Verification” when it is done "
        "(a damaged backup is marked invalid and the report-to addresses are alerted).",
    )
    return True


@sensitive_post_parameters("password")
@require_http_methods(["GET", "POST"])
@permission_required("jobs.change_job", raise_exception=True)
def run_restore(request, pk: int):
    run = _restorable_run(pk)
    refused = refuse_sensitive(request, run)
    if refused is not None:
        return refused
    if not sudo.active(request):  # restoring overwrites files: the password again (after the refusals)
        return sudo.refusal(request)
    roots = restore_roots()
    initial = {"target": str(roots[0] / f"run-{run.pk}")}
    form = RestoreForm(request.POST if request.method == "POST" else None, run=run, initial=initial)
    if request.method == "POST" and form.is_valid() and _restore(request, run, form.cleaned_data):
        return redirect(run)
    return render(request, "jobs/run_restore.html", {"run": run, "form": form, "roots": roots})


@sensitive_variables("data")
def _restore(request, run: Run, data: dict) -> bool:
    try:
        report = restore_run(
            run,
            data["target"],
            destination=_destination(data["location"]),
            password=data.get("password") or None,
            web=True,
        )
    except (VerificationError, RestoreError) as exc:
        audit.record(request, audit.RESTORE, run, target=data["target"], outcome="failed", message=str(exc))
        messages.error(request, f"Nothing was restored: {exc}")
        return False
    result = report.result
    audit.record(
        request,
        audit.RESTORE,
        run,
        where=report.where,
        target=str(result.target),
        files=result.files,
        outcome="restored",
    )
    messages.success(
        request,
        f"Restored {result.files} files ({filesizeformat(result.bytes)}) from {report.where} into "
        f"{result.target}; every file matched the manifest.",
    )
    return True
