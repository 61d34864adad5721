from django.contrib.auth.decorators import permission_required
from django.core.paginator import Paginator
from django.shortcuts import render

from jobs import heartbeats, overview
from jobs.models import Job

JOBS_PER_PAGE = 25


@permission_required("jobs.view_job", raise_exception=True)
def dashboard(request):
    """Every job's latest run and last success, a page at a time, and what runs now: a
    fixed number of queries however many jobs and runs there are (``jobs.overview``)."""
    jobs = overview.with_latest(Job.objects.order_by("name"))
    page = Paginator(jobs, JOBS_PER_PAGE).get_page(request.GET.get("page"))
    rows = overview.attach_latest_runs(page.object_list)
    context = {"page": page, "rows": rows, "active_runs": overview.active_runs(), "services": heartbeats.status()}
    return render(request, "jobs/dashboard.html", context)
