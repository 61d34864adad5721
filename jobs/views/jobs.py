"""Job pages: the list, the details, Run now, the enabled switch, the destinations of a
job, and delete. Creating, editing and duplicating go through the wizard
(``jobs/views/wizard.py``); every write goes through :mod:`backupsite.configwrite`."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.paginator import Paginator
from django.db.models import OuterRef, Prefetch, Subquery
from django.http import HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_http_methods, require_POST

from backupsite import audit, configwrite
from backupsite.sudo import sudo_required
from destinations.models import Destination
from jobs.models import Job, Run, Source
from jobs.services import AlreadyRunning, enqueue_run

JOBS_PER_PAGE = 25
STATE_LABELS = dict(Run.State.choices)


def job_rows(queryset=None):
    """Jobs with their last run's id, state and time in the same query, and their
    destinations prefetched: a page of the list costs the same whatever its length."""
    last = Run.objects.filter(job=OuterRef("pk")).order_by("-created_at", "-pk")
    return (
        (queryset if queryset is not None else Job.objects.all())
        .annotate(
            last_run_id=Subquery(last.values("pk")[:1]),
            last_run_state=Subquery(last.values("state")[:1]),
            last_run_at=Subquery(last.values("created_at")[:1]),
        )
        .prefetch_related(Prefetch("destinations", queryset=Destination.objects.defer("secrets")))
        .order_by("name", "pk")
    )


@permission_required("jobs.view_job", raise_exception=True)
def job_list(request):
    page = Paginator(job_rows(), JOBS_PER_PAGE).get_page(request.GET.get("page"))
    for job in page:
        job.last_run_state_label = STATE_LABELS.get(job.last_run_state, "")
    return render(request, "jobs/job_list.html", {"page": page, "jobs": page.object_list})


@permission_required("jobs.view_job", raise_exception=True)
def job_detail(request, pk: int):
    from jobs.views.triggers import AlertSettingsForm, show_trigger, trigger_url

    # The page names the sources and offers the other destinations: no credentials
    # loaded (a hundred destinations were a hundred decryptions per request).
    sources = Prefetch("sources", queryset=Source.objects.defer("secrets"))
    job = get_object_or_404(Job.objects.prefetch_related(sources), pk=pk)
    runs = job.runs.order_by("-created_at", "-pk")[:10]
    destinations = job.destination_uploads()
    addable = Destination.objects.exclude(pk__in=[d.pk for d in destinations]).only("pk", "name").order_by("name")
    context = {
        "job": job,
        "runs": runs,
        "active_run": job.active_run(),
        "destinations": destinations,
        "addable": addable,
        "upcoming": job.upcoming_runs(3) if job.enabled else [],
        "last_proven": job.last_proven(destinations),
        "alert_form": AlertSettingsForm(instance=job) if request.user.has_perm("jobs.change_job") else None,
        # The secret is shown to administrators in sudo mode only ("Show the trigger URL").
        "trigger_url": trigger_url(request, job) if show_trigger(request, job) else "",
    }
    return render(request, "jobs/job_detail.html", context)


@require_POST
@permission_required("jobs.run_job", raise_exception=True)
def job_run_now(request, pk: int):
    job = get_object_or_404(Job, pk=pk)
    try:
        run = enqueue_run(job, user=request.user)
        audit.record(request, audit.RUN_MANUAL, run, job=job.name)
    except AlreadyRunning as exc:
        messages.warning(request, str(exc))
        active = job.active_run()
        return redirect(active or job)
    messages.success(request, _("Backup of “%(name)s” queued.") % {"name": job.name})
    return redirect(run)


@require_POST
@permission_required("jobs.change_job", raise_exception=True)
def job_set_enabled(request, pk: int):
    job = get_object_or_404(Job, pk=pk)
    wanted = request.POST.get("enabled")
    if wanted not in ("0", "1"):
        return HttpResponseBadRequest("enabled must be 0 or 1")
    if job.enabled != (wanted == "1"):
        job.enabled = wanted == "1"
        configwrite.save(job, request=request)
    text = _("“%(name)s” is enabled: it runs on its schedule.") if job.enabled else _("“%(name)s” is disabled.")
    messages.success(request, text % {"name": job.name})
    return redirect(request.POST.get("next") if request.POST.get("next") == reverse("jobs:job_list") else job)


@require_POST
@permission_required("jobs.change_job", raise_exception=True)
def job_destinations(request, pk: int):
    """Add a saved destination to the job, or remove one."""
    job = get_object_or_404(Job, pk=pk)
    current = list(job.destinations.all())
    add, remove = request.POST.get("add"), request.POST.get("remove")
    if add:
        destination = get_object_or_404(Destination, pk=add)
        if destination not in current:
            configwrite.save(job, request=request, m2m={"destinations": [*current, destination]})
            messages.success(
                request,
                _("“%(dest)s” added: the next backups of “%(job)s” go there too.")
                % {"dest": destination.name, "job": job.name},
            )
    elif remove:
        destination = get_object_or_404(Destination, pk=remove)
        if destination in current:
            configwrite.save(job, request=request, m2m={"destinations": [d for d in current if d != destination]})
            messages.success(
                request,
                _("“%(dest)s” removed from “%(job)s”. The backups already there were left in place.")
                % {"dest": destination.name, "job": job.name},
            )
    else:
        return HttpResponseBadRequest("add or remove a destination")
    return redirect(job)


@require_http_methods(["GET", "POST"])
@permission_required("jobs.delete_job", raise_exception=True)
@sudo_required
def job_delete(request, pk: int):
    job = get_object_or_404(Job.objects.prefetch_related("destinations"), pk=pk)
    active = job.active_run()
    if request.method == "POST":
        if active is not None:
            messages.error(
                request, _("“%(name)s” is running; cancel the run or let it finish first.") % {"name": job.name}
            )
            return redirect(job)
        name = job.name
        configwrite.delete(job, request=request)
        messages.success(
            request,
            _(
                "Job “%(name)s” deleted. Its backups at the destinations and its runs in the history were kept; "
                "they are no longer removed by retention."
            )
            % {"name": name},
        )
        return redirect("jobs:job_list")
    return render(request, "jobs/job_confirm_delete.html", {"job": job, "active_run": active})
