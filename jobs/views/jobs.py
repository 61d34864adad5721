from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from jobs.models import Job
from jobs.services import AlreadyRunning, enqueue_run


@permission_required("jobs.view_job", raise_exception=True)
def job_list(request):
    jobs = Job.objects.prefetch_related("sources", "destinations").order_by("name")
    return render(request, "jobs/job_list.html", {"jobs": jobs})


@permission_required("jobs.view_job", raise_exception=True)
def job_detail(request, pk: int):
    from jobs.views.triggers import AlertSettingsForm, trigger_url

    job = get_object_or_404(Job.objects.prefetch_related("sources", "destinations"), pk=pk)
    runs = job.runs.order_by("-created_at")[:10]
    context = {
        "job": job,
        "runs": runs,
        "active_run": job.active_run(),
        "last_proven": job.last_proven(),
        "alert_form": AlertSettingsForm(instance=job) if request.user.has_perm("jobs.change_job") else None,
        # The secret is shown to administrators only (the template checks the same).
        "trigger_url": trigger_url(request, job)
        if job.has_trigger and request.user.has_perm("jobs.change_job")
        else "",
    }
    return render(request, "jobs/job_detail.html", context)


@require_POST
@permission_required("jobs.run_job", raise_exception=True)
def job_run_now(request, pk: int):
    job = get_object_or_404(Job, pk=pk)
    try:
        run = enqueue_run(job, user=request.user)
    except AlreadyRunning as exc:
        messages.warning(request, str(exc))
        active = job.active_run()
        return redirect(active or job)
    messages.success(request, f"Backup of “{job.name}” queued.")
    return redirect(run)
