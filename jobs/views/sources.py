from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from jobs.models import Source
from jobs.sources import SourceError


@permission_required("jobs.view_source", raise_exception=True)
def source_list(request):
    return render(request, "jobs/source_list.html", {"sources": Source.objects.prefetch_related("jobs")})


@permission_required("jobs.view_source", raise_exception=True)
def source_detail(request, pk: int):
    source = get_object_or_404(Source, pk=pk)
    try:
        description = source.handler().describe()
    except (SourceError, ValueError) as exc:
        description = f"Invalid configuration: {exc}"
    return render(request, "jobs/source_detail.html", {"source": source, "description": description})


@require_POST
@permission_required("jobs.change_source", raise_exception=True)
def source_measure(request, pk: int):
    source = get_object_or_404(Source, pk=pk)
    try:
        source.measure()
    except (SourceError, ValueError, OSError) as exc:
        messages.error(request, f"Could not measure “{source.name}”: {exc}")
    else:
        messages.success(request, f"Measured “{source.name}”.")
    return redirect(source)
