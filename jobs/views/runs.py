from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.paginator import Paginator
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_POST

from jobs.models import Run
from jobs.services import CancelOutcome, cancel_run

RUNS_PER_PAGE = 25


@permission_required("jobs.view_run", raise_exception=True)
def run_list(request):
    runs = Run.objects.select_related("job").order_by("-created_at", "-pk")
    state = request.GET.get("state", "")
    if state in Run.State.values:
        runs = runs.filter(state=state)
    page = Paginator(runs, RUNS_PER_PAGE).get_page(request.GET.get("page"))
    return render(request, "jobs/run_list.html", {"page": page, "state": state, "states": Run.State.choices})


@permission_required("jobs.view_run", raise_exception=True)
def run_detail(request, pk: int):
    run = get_object_or_404(Run.objects.select_related("job", "created_by"), pk=pk)
    return render(request, "jobs/run_detail.html", {"run": run, "uploads": run.uploads.all()})


@permission_required("jobs.view_run", raise_exception=True)
def run_progress(request, pk: int):
    """The fragment the run page polls while the run is active."""
    run = get_object_or_404(Run, pk=pk)
    response = render(request, "jobs/_run_progress.html", {"run": run, "uploads": run.uploads.all()})
    response["Cache-Control"] = "no-store"
    return response


@permission_required("jobs.download_run", raise_exception=True)
def run_download(request, pk: int, what: str = "archive"):
    run = get_object_or_404(Run, pk=pk)
    if not run.can_download:
        raise Http404("This run has no archive to download.")
    path = run.local_file
    if what == "manifest":
        path = path.with_name(path.name + ".manifest.json")
        content_type = "application/json"
    else:
        content_type = "application/zstd"
    try:
        handle = open(path, "rb")  # noqa: SIM115 - FileResponse closes it
    except FileNotFoundError:
        raise Http404("The archive is no longer on this server.") from None
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
