from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from destinations.backends import DestinationError, TestResult
from destinations.models import Destination


@permission_required("destinations.view_destination", raise_exception=True)
def destination_list(request):
    return render(request, "destinations/destination_list.html", {"destinations": Destination.objects.all()})


@permission_required("destinations.view_destination", raise_exception=True)
def destination_detail(request, pk: int):
    destination = get_object_or_404(Destination, pk=pk)
    return render(request, "destinations/destination_detail.html", {"destination": destination})


@require_POST
@permission_required("destinations.change_destination", raise_exception=True)
def destination_test(request, pk: int):
    destination = get_object_or_404(Destination, pk=pk)
    try:
        result = destination.backend().test()
    except DestinationError as exc:  # invalid settings, unknown kind
        result = TestResult(ok=False, message=str(exc))
    destination.record_test(result)
    (messages.success if result.ok else messages.error)(request, f"{destination.name}: {result.message}")
    return redirect(destination)
