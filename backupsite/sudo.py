""" "Sudo mode": re-enter your password before the most dangerous actions.

Revealing a trigger URL, replacing a stored secret, deleting a job or a destination and
restoring a backup each need a password confirmed within the last
``BACKUPSITE_SUDO_MINUTES`` (10 by default). A session that left its screen unlocked
is not enough to send a company's backups elsewhere or overwrite its files.

One line protects a view::

    from backupsite.sudo import sudo_required

    @sudo_required
    def job_trigger_show(request, pk): ...

(or ``SudoRequiredMixin`` first in a class-based view's bases). Without a recent
confirmation, a GET is sent to the confirmation page and comes back after it; a POST is
sent there too (its form data is not replayed: the page it came from is shown again,
and the user repeats the action). A fetch/XHR request gets a 403 with
``X-Sudo-Required: 1`` so a script can send the user to the page. Logging in with the
password form counts as a confirmation.
"""

from __future__ import annotations

import time
from functools import wraps
from urllib.parse import urlencode

from django.conf import settings
from django.http import HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _

from backupsite.kindpages import is_fetch

SESSION_KEY = "_sudo_until"


def sudo_seconds() -> int:
    return int(getattr(settings, "BACKUPSITE_SUDO_MINUTES", 10)) * 60


def grant(request) -> None:
    """The user just typed their password: unlock sudo mode for a while."""
    request.session[SESSION_KEY] = time.time() + sudo_seconds()


def revoke(request) -> None:
    request.session.pop(SESSION_KEY, None)


def active(request) -> bool:
    session = getattr(request, "session", None)
    if session is None or not getattr(request, "user", None) or not request.user.is_authenticated:
        return False
    try:
        until = float(session.get(SESSION_KEY) or 0)
    except (TypeError, ValueError):
        return False
    return until > time.time()


def remaining(request) -> int:
    """Seconds of sudo mode left (0 when off)."""
    if not active(request):
        return 0
    return max(0, int(float(request.session[SESSION_KEY]) - time.time()))


def confirm_url(request) -> str:
    """The confirmation page, coming back to this page (a POST comes back as a GET)."""
    back = request.get_full_path() if request.method in ("GET", "HEAD") else request.path
    referer = request.headers.get("Referer", "")
    if (
        request.method not in ("GET", "HEAD")
        and referer
        and url_has_allowed_host_and_scheme(
            referer, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        )
    ):
        back = referer  # the page whose button was pressed: show it again
    return f"{reverse('sudo')}?{urlencode({'next': back})}"


def refusal(request) -> HttpResponse:
    if is_fetch(request):
        response = HttpResponse(_("Confirm your password first."), status=403, content_type="text/plain")
        response["X-Sudo-Required"] = "1"
        return response
    return redirect(confirm_url(request))


def sudo_required(view):
    """Decorator: the view runs only in sudo mode (see the module docstring)."""

    @wraps(view)
    def wrapped(request, *args, **kwargs):
        if not active(request):
            return refusal(request)
        return view(request, *args, **kwargs)

    return wrapped


class SudoRequiredMixin:
    """The class-based views' :func:`sudo_required` (put it first in the bases)."""

    def dispatch(self, request, *args, **kwargs):
        if not active(request):
            return refusal(request)
        return super().dispatch(request, *args, **kwargs)


def confirm_inline(request, password: str) -> bool:
    """Sudo mode is on, or *password* (typed in the form itself) is the user's: then it
    is granted. For forms that must not lose what was typed (a replaced secret)."""
    if active(request):
        return True
    if not password:
        return False
    from django.contrib.auth import authenticate

    from backupsite import audit

    # Through authenticate(): django-axes counts a wrong password like a failed login.
    confirmed = authenticate(request, username=request.user.get_username(), password=password)
    if confirmed is None or confirmed.pk != request.user.pk:
        return False
    grant(request)
    audit.record(request, audit.SUDO, request.user)
    return True
