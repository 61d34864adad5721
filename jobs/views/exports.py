"""Planning-export pages: the list and the details (every role), Run now and a run's
Cancel (operators and administrators), create, edit, delete, Preview and Test connection (administrators), and
the run pages with their live progress. What they do is in :mod:`jobs.exports.service`;
every write goes through :mod:`backupsite.configwrite`.

The form page works without JavaScript: Preview and Test connection are submit buttons
that reload the page with their results under the form, keeping what was typed.
"""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import OuterRef, Prefetch, Subquery
from django.http import HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_http_methods, require_POST

from backupsite import audit
from destinations import services as destination_services
from destinations.models import Destination
from jobs.exports import service
from jobs.exports.forms import DatasetFormSet, PlanningExportForm
from jobs.exports.models import validate_export_folder
from jobs.models import ExportRun, PlanningExport, Source
from jobs.services import CancelOutcome

RUNS_PER_PAGE = 25
STATE_LABELS = dict(ExportRun.State.choices)


def export_rows():
    """Exports with their last run's id, state and time in the same query."""
    last = ExportRun.objects.filter(export=OuterRef("pk")).order_by("-created_at", "-pk")
    return (
        PlanningExport.objects.select_related("source")
        .annotate(
            last_run_id=Subquery(last.values("pk")[:1]),
            last_run_state=Subquery(last.values("state")[:1]),
            last_run_at=Subquery(last.values("created_at")[:1]),
        )
        .prefetch_related(Prefetch("destinations", queryset=Destination.objects.defer("secrets")), "datasets")
        .order_by("name", "pk")
    )


@permission_required("jobs.view_planningexport", raise_exception=True)
def export_list(request):
    exports = list(export_rows())
    for export in exports:
        export.last_run_state_label = STATE_LABELS.get(export.last_run_state, "")
    return render(request, "jobs/exports/export_list.html", {"exports": exports})


def _detail_context(request, export: PlanningExport, **extra) -> dict:
    return {
        "export": export,
        "datasets": list(export.datasets.all()),
        "destinations": list(export.destinations.defer("secrets")),
        "runs": export.runs.order_by("-created_at", "-pk")[:10],
        "active_run": export.active_run(),
        "window": export.window_for(),
        **extra,
    }


@permission_required("jobs.view_planningexport", raise_exception=True)
def export_detail(request, pk: int):
    export = get_object_or_404(PlanningExport.objects.select_related("source"), pk=pk)
    return render(request, "jobs/exports/export_detail.html", _detail_context(request, export))


@require_POST
@permission_required("jobs.run_planningexport", raise_exception=True)
def export_run_now(request, pk: int):
    export = get_object_or_404(PlanningExport, pk=pk)
    try:
        run = service.enqueue(export, user=request.user)
    except service.AlreadyRunning as exc:
        messages.warning(request, str(exc))
        return redirect(export.active_run() or export)
    messages.success(request, _("Export “%(name)s” queued.") % {"name": export.name})
    return redirect(run)


# --- Preview and Test connection --------------------------------------------------------------
def _throttled(request) -> str | None:
    try:
        destination_services.throttle_test(request)
    except destination_services.TestThrottled as exc:
        return str(exc)
    return None


@require_POST
@permission_required("jobs.change_planningexport", raise_exception=True)
def export_preview(request, pk: int):
    export = get_object_or_404(PlanningExport.objects.select_related("source"), pk=pk)
    datasets = [{"file_name": d.file_name, "sheet_title": d.sheet_title, "sql": d.sql} for d in export.datasets.all()]
    previews, window = service.preview(
        export.source, datasets, window_days=export.window_days, offset_days=export.window_offset_days
    )
    context = _detail_context(request, export, previews=previews, preview_window=window)
    return render(request, "jobs/exports/export_detail.html", context)


@require_POST
@permission_required("jobs.change_planningexport", raise_exception=True)
def export_test(request, pk: int):
    export = get_object_or_404(PlanningExport, pk=pk)
    throttled = _throttled(request)
    checks = [] if throttled else service.test_destinations(export.destinations.all(), export.folder)
    context = _detail_context(request, export, checks=checks, throttled=throttled)
    return render(request, "jobs/exports/export_detail.html", context, status=429 if throttled else 200)


# --- create, edit, delete -------------------------------------------------------------------------
@require_http_methods(["GET", "POST"])
@permission_required("jobs.add_planningexport", raise_exception=True)
def export_create(request):
    return _form_page(request, None)


@require_http_methods(["GET", "POST"])
@permission_required("jobs.change_planningexport", raise_exception=True)
def export_edit(request, pk: int):
    return _form_page(request, get_object_or_404(PlanningExport, pk=pk))


def _new_export_initial() -> dict:
    return {"window_days": 5, "window_offset_days": 0, "enabled": True}


def _form_page(request, export: PlanningExport | None):
    post = request.POST if request.method == "POST" else None
    instance = export or PlanningExport()
    form = PlanningExportForm(post, instance=instance, initial=None if export else _new_export_initial())
    formset = DatasetFormSet(post, instance=instance, prefix="datasets")
    action = (post or {}).get("action", "save")
    context: dict = {"form": form, "formset": formset, "export": export, "creating": export is None}
    status = 200
    if post is not None and action == "save":
        if form.is_valid() and formset.is_valid():
            saved = service.save_export(form, formset, request=request)
            text = (
                _("Planning export “%(name)s” created.") if export is None else _("Planning export “%(name)s” saved.")
            )
            messages.success(request, text % {"name": saved.name})
            return redirect(saved)
    elif post is not None and action == "preview":
        context.update(_preview_unsaved(form, formset))
    elif post is not None and action == "test":
        throttled = _throttled(request)
        if throttled:
            context["throttled"], status = throttled, 429
        else:
            context["checks"] = _test_unsaved(form)
    return render(request, "jobs/exports/export_form.html", context, status=status)


def _preview_unsaved(form, formset) -> dict:
    """Preview what is typed (saved or not): the chosen database, the typed queries."""
    form.is_valid()
    formset.is_valid()
    source = form.cleaned_data.get("source") if hasattr(form, "cleaned_data") else None
    if source is None:
        source_id = form.data.get("source")
        source = Source.objects.filter(pk=source_id).first() if str(source_id or "").isdigit() else None
    if source is None:
        return {"preview_error": _("Choose a database first.")}
    datasets = []
    for dataset_form in formset.forms:
        if dataset_form.data.get(f"{dataset_form.prefix}-DELETE"):
            continue
        sql = dataset_form.data.get(f"{dataset_form.prefix}-sql", "")
        if not sql.strip():
            continue
        datasets.append(
            {
                "file_name": dataset_form.data.get(f"{dataset_form.prefix}-file_name", ""),
                "sheet_title": dataset_form.data.get(f"{dataset_form.prefix}-sheet_title", ""),
                "sql": sql,
            }
        )
    if not datasets:
        return {"preview_error": _("Enter a query first.")}
    days = form.cleaned_data.get("window_days") or 5
    offset = form.cleaned_data.get("window_offset_days") or 0
    previews, window = service.preview(source, datasets, window_days=days, offset_days=offset)
    return {"previews": previews, "preview_window": window}


def _test_unsaved(form) -> list:
    ids = [value for value in form.data.getlist("destinations") if str(value).isdigit()]
    chosen = list(form.fields["destinations"].queryset.filter(pk__in=ids))
    if not chosen:
        return [service.DestinationCheck(_("Destinations"), False, _("Choose at least one destination first."))]
    folder = (form.data.get("folder") or "").strip()
    try:
        validate_export_folder(folder)
    except ValidationError as exc:
        return [service.DestinationCheck(_("Folder"), False, " ".join(exc.messages))]
    return service.test_destinations(chosen, folder)


@require_http_methods(["GET", "POST"])
@permission_required("jobs.delete_planningexport", raise_exception=True)
def export_delete(request, pk: int):
    export = get_object_or_404(PlanningExport, pk=pk)
    if request.method == "POST":
        try:
            service.delete_export(export, request=request)
        except service.InUse as exc:
            messages.error(request, str(exc))
            return redirect(export)
        messages.success(
            request,
            _("Planning export “%(name)s” deleted. Its files at the destinations and its runs were kept.")
            % {"name": export.name},
        )
        return redirect("jobs:exports")
    return render(request, "jobs/exports/export_confirm_delete.html", {"export": export})


# --- runs --------------------------------------------------------------------------------------
@permission_required("jobs.view_exportrun", raise_exception=True)
def export_run_list(request):
    runs = ExportRun.objects.order_by("-created_at", "-pk")
    export_id = request.GET.get("export")
    if export_id and not export_id.isdigit():
        return HttpResponseBadRequest("export must be an id")
    if export_id:
        runs = runs.filter(export_id=int(export_id))
    page = Paginator(runs, RUNS_PER_PAGE).get_page(request.GET.get("page"))
    query = urlencode({"export": export_id}) if export_id else ""  # the page links keep the filter
    return render(request, "jobs/exports/run_list.html", {"page": page, "runs": page.object_list, "query": query})


def _run_context(run: ExportRun) -> dict:
    return {"run": run, "uploads": list(run.uploads.all())}


@permission_required("jobs.view_exportrun", raise_exception=True)
def export_run_detail(request, pk: int):
    run = get_object_or_404(ExportRun, pk=pk)
    return render(request, "jobs/exports/run_detail.html", _run_context(run))


CANCEL_MESSAGES = {
    CancelOutcome.NOT_STARTED: (messages.SUCCESS, gettext_lazy("Cancelled before it started.")),
    CancelOutcome.ABANDONED: (
        messages.SUCCESS,
        gettext_lazy(
            "Cancelled. The worker running this export had stopped, so the cancellation was completed at once: "
            "its staging folder is removed and the next run can start."
        ),
    ),
    CancelOutcome.REQUESTED: (
        messages.INFO,
        gettext_lazy("Cancellation requested; the worker stops the run at its next checkpoint, within seconds."),
    ),
    CancelOutcome.FINISHED: (messages.INFO, gettext_lazy("This run had already ended; there was nothing to cancel.")),
}


@require_POST
@permission_required("jobs.run_planningexport", raise_exception=True)
def export_run_cancel(request, pk: int):
    """*Cancel* (operators and administrators, who may *Run now*), audited as a backup
    run's cancel."""
    run = get_object_or_404(ExportRun, pk=pk)
    outcome = service.cancel_run(run.pk, user=request.user)
    if outcome != CancelOutcome.FINISHED:
        audit.record(request, audit.RUN_CANCELLED, run, outcome=outcome)
    level, text = CANCEL_MESSAGES[outcome]
    messages.add_message(request, level, text)
    return redirect(run)


@permission_required("jobs.view_exportrun", raise_exception=True)
def export_run_progress(request, pk: int):
    """The fragment the run page polls while the run is active."""
    run = get_object_or_404(ExportRun, pk=pk)
    response = render(request, "jobs/exports/_run_progress.html", _run_context(run))
    response["Cache-Control"] = "no-store"
    return response
