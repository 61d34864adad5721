"""``/healthz`` and ``/metrics``: for load balancers, uptime checkers and Prometheus,
outside the login (README, "Health and monitoring"). Thin: the checks live in
``backupsite/health.py``, the figures in ``backupsite/metrics.py``.

Tokens are compared in constant time. Neither page ever answers 500: a check that fails
is a failed check, a part of the metrics that fails is reported as such.
"""

from __future__ import annotations

import hmac
import logging

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe

from backupsite import health

log = logging.getLogger(__name__)


def bearer_token(request) -> str:
    """The token of an ``Authorization: Bearer …`` header ("" without one)."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def token_matches(expected: str, given: str) -> bool:
    return bool(expected) and bool(given) and hmac.compare_digest(expected.encode(), given.encode())


@login_not_required
@csrf_exempt
@require_safe
@never_cache
def healthz(request):
    """200 or 503 with ``{"status", "checks", "stale_jobs"}``; with the health token
    (header, or ``?token=`` for checkers that cannot send one) also the details.
    ``?check=database,broker`` limits the status to those checks (for a load balancer
    that should not take the panel away because a backup is stale)."""
    detailed = token_matches(settings.BACKUPSITE_HEALTH_TOKEN, bearer_token(request) or request.GET.get("token", ""))
    names = None
    if request.GET.get("check"):
        names = [name.strip() for name in request.GET["check"].split(",") if name.strip()]
        unknown = sorted(set(names) - set(health.CHECKS))
        if unknown or not names:
            return JsonResponse({"error": "unknown check", "checks": list(health.CHECKS)}, status=400)
    try:
        report = health.report(names)
        body = report.as_dict(detailed=detailed)
        status = 200 if report.ok else 503
    except Exception:  # never a 500: whatever broke, the answer is "not healthy"
        log.exception("The health report failed")
        body, status = {"status": "fail", "checks": {}}, 503
    response = JsonResponse(body, status=status)
    # An unhealthy panel asked every few seconds by a load balancer must not fill the log
    # with one django.request error per probe: the failing checks log their own warning.
    response._has_been_logged = True
    return response


@login_not_required
@csrf_exempt
@require_safe
@never_cache
def metrics(request):
    """The Prometheus text format, only with ``Authorization: Bearer <BACKUPSITE_METRICS_TOKEN>``;
    401 without it or with a wrong one, 404 while the setting is unset."""
    expected = settings.BACKUPSITE_METRICS_TOKEN
    if not expected:
        return HttpResponse("Not found.\n", status=404, content_type="text/plain; charset=utf-8")
    if not token_matches(expected, bearer_token(request)):
        response = HttpResponse("A bearer token is required.\n", status=401, content_type="text/plain; charset=utf-8")
        response["WWW-Authenticate"] = 'Bearer realm="backupsite metrics"'
        return response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from backupsite.metrics import registry

    try:
        body = generate_latest(registry())
    except Exception:
        log.exception("The metrics could not be rendered")
        return HttpResponse("Metrics unavailable.\n", status=503, content_type="text/plain; charset=utf-8")
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
