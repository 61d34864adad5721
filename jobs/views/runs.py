from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.http import FileResponse, Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_POST

from backupsite.pagination import EndAwarePaginator
from destinations.backends.base import ROOT_FOLDER
from jobs.models import Run, Upload
from jobs.naming import MANIFEST_SUFFIX
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
    return render(request, "jobs/run_list.html", {"page": page, "state": state, "states": Run.State.choices})


def _run_context(request, run: Run) -> dict:
    """What the run page and its polled fragment show; ``archive_allowed`` hides the
    download, verify and restore controls of a sensitive run from those who may not."""
    return {"run": run, "uploads": run.uploads.all(), "archive_allowed": run.archive_allowed_for(request.user)}


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
    run = get_object_or_404(Run, pk=pk)
    refused = refuse_sensitive(request, run)
    if refused is not None:
        return refused
    if run.archive_gone:
        return archive_gone(request, run)
    if not run.can_download:
        raise Http404("This run has no archive to download.")
    path = run.local_file
    if what == "manifest":
        path = path.with_name(path.name + MANIFEST_SUFFIX)
        content_type = "application/json"
    else:
        content_type = "application/zstd"
    try:
        handle = open(path, "rb")  # noqa: SIM115 - FileResponse closes it
    except FileNotFoundError:
        return archive_gone(request, run)
    # FileResponse streams in chunks and sets Content-Length and an RFC 6266
    # Content-Disposition (quotes and non-ASCII are encoded, never injected).
    return FileResponse(handle, as_attachment=True, filename=path.name, content_type=content_type)


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
    CancelOutcome.FINISHED: (messages.INFO, _("This run had already ended; there was nothing to cancel.")),
}


@require_POST
@permission_required("jobs.change_run", raise_exception=True)
def run_cancel(request, pk: int):
    run = get_object_or_404(Run, pk=pk)
    level, text = CANCEL_MESSAGES[cancel_run(run.pk, user=request.user)]
    messages.add_message(request, level, text)
    return redirect(run)
