from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_http_methods, require_POST

from backupsite import audit
from backupsite.pagination import EndAwarePaginator
from destinations.backends.base import ROOT_FOLDER
from jobs import downloads
from jobs.engine.agekeys import AGE_SUFFIX
from jobs.models import Run, Upload
from jobs.services import CancelOutcome, cancel_run

RUNS_PER_PAGE = 25


@permission_required("jobs.view_run", raise_exception=True)
def run_list(request):
    # The table shows the job's name as the run recorded it: no join; never the log or
    # the configuration snapshot (large) of 25 rows.
    runs = Run.objects.defer("config", "log").order_by("-created_at", "-pk")
    state = request.GET.get("state", "")
    if state in Run.State.values:
        runs = runs.filter(state=state)
    page = EndAwarePaginator(runs, RUNS_PER_PAGE).get_page(request.GET.get("page"))
    query = urlencode({"state": state}) if state in Run.State.values else ""  # the page links keep the filter
    return render(
        request, "jobs/run_list.html", {"page": page, "state": state, "states": Run.State.choices, "query": query}
    )


def _run_context(request, run: Run) -> dict:
    """What the run page and its polled fragment show; ``archive_allowed`` hides the
    download, verify and restore controls of a sensitive run from those who may not."""
    from jobs.models import Activity

    return {
        "run": run,
        "uploads": run.uploads.all(),
        "archive_allowed": run.archive_allowed_for(request.user),
        "running_activities": run.activities.filter(state=Activity.State.RUNNING),
    }


@permission_required("jobs.view_run", raise_exception=True)
def run_detail(request, pk: int):
    run = get_object_or_404(Run.objects.select_related("job", "created_by"), pk=pk)
    return render(request, "jobs/run_detail.html", _run_context(request, run))


@permission_required("jobs.view_run", raise_exception=True)
def run_progress(request, pk: int):
    """The fragment the run page polls while the run is active."""
    run = get_object_or_404(Run, pk=pk)
    response = render(request, "jobs/_run_progress.html", _run_context(request, run))
    response["Cache-Control"] = "no-store"
    return response


def refuse_sensitive(request, run: Run) -> HttpResponse | None:
    """A 403 page saying why, when *run*'s archive is sensitive (the panel's database)
    and the user lacks ``jobs.access_sensitive_run``; None when the user may go on. Every
    view that reads a run's archive calls it."""
    if run.archive_allowed_for(request.user):
        return None
    return render(request, "jobs/run_sensitive_refused.html", {"run": run}, status=403)


def archive_gone(request, run: Run) -> HttpResponse:
    """404 page for a finished run whose local copy is gone: where copies still are."""
    uploads = run.uploads.filter(state=Upload.State.SUCCEEDED).select_related("destination")
    copies = [
        {
            "name": upload.destination_name,
            "where": upload.destination.describe() if upload.destination is not None else "",
            "folder": f"{ROOT_FOLDER}/{run.job_slug}/{upload.remote_name or run.archive_name}",
        }
        for upload in uploads
    ]
    return render(request, "jobs/run_archive_gone.html", {"run": run, "copies": copies}, status=404)


@permission_required("jobs.download_run", raise_exception=True)
def run_download(request, pk: int, what: str = "archive"):
    """The archive (or manifest): the local copy, else streamed from a destination; with
    Range (resume) and safe headers (``jobs.downloads``)."""
    run = get_object_or_404(Run, pk=pk)
    refused = refuse_sensitive(request, run)
    if refused is not None:
        return refused
    try:
        return downloads.serve(request, run, what)
    except downloads.NotAvailable:
        if run.archive_gone:  # say where copies still are (a write-only kind, say)
            return archive_gone(request, run)
        raise


@permission_required("jobs.download_run", raise_exception=True)
def run_key_file(request, pk: int):
    """The key file of an encrypted run (``backupsite-key-<key id>.age``): the age identity
    its archive is encrypted to, itself encrypted with the backup password, so a
    downloaded archive restores with the stock ``age -d -i backupsite-key-<key id>.age``
    (which asks for that password) without a visit to the destination. Always the run's
    own key, also after the job's key was replaced."""
    run = get_object_or_404(Run.objects.select_related("job"), pk=pk)
    refused = refuse_sensitive(request, run)
    if refused is not None:
        return refused
    key_file = run.key_file if run.archive_name.endswith(AGE_SUFFIX) else None
    if key_file is None:
        raise Http404("This backup has no key file here.")
    response = HttpResponse(key_file, content_type="application/octet-stream")
    response["Content-Disposition"] = f'attachment; filename="{run.key_file_name}"'
    return response


CANCEL_MESSAGES = {
    CancelOutcome.NOT_STARTED: (messages.SUCCESS, _("Cancelled before it started.")),
    CancelOutcome.ABANDONED: (
        messages.SUCCESS,
        _(
            "Cancelled. The worker running this backup had stopped, so the cancellation was completed at once: "
            "its temporary files were removed and the next backup can start."
        ),
    ),
    CancelOutcome.REQUESTED: (
        messages.INFO,
        _("Cancellation requested; the worker stops the run at its next checkpoint, within seconds."),
    ),
    CancelOutcome.UPLOADS: (
        messages.SUCCESS,
        _(
            "Cancelled: the uploads that had not finished are stopped (one under way stops at its next "
            "checkpoint). The archive stays on the server that made it."
        ),
    ),
    CancelOutcome.FINISHED: (messages.INFO, _("This run had already ended; there was nothing to cancel.")),
}


@require_POST
@permission_required("jobs.change_run", raise_exception=True)
def run_cancel(request, pk: int):
    run = get_object_or_404(Run, pk=pk)
    outcome = cancel_run(run.pk, user=request.user)
    if outcome != CancelOutcome.FINISHED:
        audit.record(request, audit.RUN_CANCELLED, run, outcome=outcome)
    level, text = CANCEL_MESSAGES[outcome]
    messages.add_message(request, level, text)
    return redirect(run)


@require_POST
@permission_required("jobs.change_job", raise_exception=True)
def run_keep_forever(request, pk: int):
    """Mark a run's backup "keep forever" (retention never removes it), or unmark it."""
    from jobs.backups import set_keep_forever

    run = get_object_or_404(Run, pk=pk)
    keep = request.POST.get("keep") == "1"
    set_keep_forever(run, keep, user=request.user)
    audit.record(request, audit.KEEP_FOREVER, run, keep_forever=keep)
    messages.success(
        request,
        _("This backup is kept forever: retention never removes it.")
        if keep
        else _("“Keep forever” removed: the job's retention rules apply to this backup again."),
    )
    return redirect(run)


@require_http_methods(["GET", "POST"])
@permission_required("jobs.delete_run", raise_exception=True)
def run_delete_backup(request, pk: int):
    """Delete one run's backup here and at every destination that can delete (after a
    confirmation page that lists them); the run stays in the history."""
    from jobs.backups import BackupProtected, delete_backup, places

    run = get_object_or_404(Run.objects.select_related("job"), pk=pk)
    if request.method == "POST":
        try:
            lines = delete_backup(run, user=request.user)
        except BackupProtected as exc:
            messages.error(request, str(exc))
            return redirect(run)
        audit.record(request, audit.BACKUP_DELETED, run, result=" ".join(lines))
        messages.success(request, _("Backup deleted. %(details)s") % {"details": " ".join(lines)})
        return redirect(run)
    return render(request, "jobs/run_confirm_delete.html", {"run": run, "places": places(run)})
