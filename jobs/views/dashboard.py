from django.contrib.auth.decorators import permission_required
from django.db.models import Max, Prefetch, Q
from django.shortcuts import render

from jobs import heartbeats
from jobs.models import Job, Run, Upload


@permission_required("jobs.view_job", raise_exception=True)
def dashboard(request):
    jobs = Job.objects.annotate(
        last_success_at=Max("runs__finished_at", filter=Q(runs__state=Run.State.SUCCEEDED)),
    ).order_by("name")
    rows = [{"job": job, "last_run": job.last_run, "last_success_at": job.last_success_at} for job in jobs]
    active = (
        Run.objects.filter(state__in=Run.LIVE_STATES)
        .select_related("job")
        .prefetch_related(Prefetch("uploads", queryset=Upload.objects.order_by("pk")))[:10]
    )
    return render(
        request,
        "jobs/dashboard.html",
        {"rows": rows, "active_runs": active, "services": heartbeats.status()},
    )


@permission_required("jobs.view_job", raise_exception=True)
def coming_soon(request, page: str):
    return render(request, "coming_soon.html", {"page": page})
