from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from jobs import downloads
from jobs.models import Run

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
    """The archive (or manifest): the local copy, else streamed from a destination; with
    Range (resume) and safe headers (``jobs.downloads``)."""
    run = get_object_or_404(Run, pk=pk)
    return downloads.serve(request, run, what)


@require_POST
@permission_required("jobs.change_run", raise_exception=True)
def run_cancel(request, pk: int):
    run = get_object_or_404(Run, pk=pk)
    if run.is_active:
        Run.objects.filter(pk=pk, state__in=Run.ACTIVE_STATES).update(cancel_requested=True)
        messages.info(request, "Cancellation requested; the run stops at the next checkpoint.")
    return redirect(run)
