from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from destinations.backends import DestinationError
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
        message = destination.backend().test()
        ok = True
    except DestinationError as exc:
        message, ok = str(exc), False
    destination.last_test_at = timezone.now()
    destination.last_test_ok = ok
    destination.last_test_message = message[:500]
    destination.save(update_fields=["last_test_at", "last_test_ok", "last_test_message", "updated_at"])
    (messages.success if ok else messages.error)(request, f"{destination.name}: {message}")
    return redirect(destination)
