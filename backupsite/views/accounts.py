"""Account pages: login (a password login also opens sudo mode), the sudo confirmation,
password change and "forgot your password?" (Django's views in the panel's style,
rate-limited, audited)."""

from __future__ import annotations

import logging

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_not_required
from django.shortcuts import redirect, render
from django.urls import reverse, reverse_lazy
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods

from backupsite import audit, sudo
from backupsite.forms import ForgotPasswordForm, SudoForm
from backupsite.languages import set_user_language, supported
from backupsite.ratelimit import RateLimited
from backupsite.users import reset_requested

log = logging.getLogger(__name__)


class LoginView(auth_views.LoginView):
    redirect_authenticated_user = True

    def form_valid(self, form):
        response = super().form_valid(form)
        sudo.grant(self.request)  # the password was just typed
        return response


class PasswordChangeView(auth_views.PasswordChangeView):
    def form_valid(self, form):
        response = super().form_valid(form)
        audit.record(self.request, audit.PASSWORD_CHANGED, self.request.user)
        return response


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    success_url = reverse_lazy("password_reset_complete")

    def form_valid(self, form):
        response = super().form_valid(form)
        audit.record(form.user, audit.PASSWORD_RESET, form.user)
        return response


def _safe_next(request, value: str) -> str:
    if value and url_has_allowed_host_and_scheme(
        value, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return value
    return reverse("dashboard")


@sensitive_post_parameters("password")
@require_http_methods(["GET", "POST"])
def sudo_confirm(request):
    """Re-enter your password to unlock sudo mode (see backupsite/sudo.py)."""
    next_url = _safe_next(request, request.POST.get("next") or request.GET.get("next", ""))
    form = SudoForm(request.POST if request.method == "POST" else None, request=request)
    if request.method == "POST" and form.is_valid():
        sudo.grant(request)
        audit.record(request, audit.SUDO, request.user)
        messages.success(
            request,
            _("Password confirmed: for %(minutes)d minutes you can do this without typing it again.")
            % {"minutes": sudo.sudo_seconds() // 60},
        )
        return redirect(next_url)
    status = 200 if not form.is_bound or form.is_valid() else 403
    if getattr(request, "axes_locked_out", False):
        status = 429
    return render(
        request,
        "registration/sudo.html",
        {"form": form, "next": next_url, "sudo_minutes": sudo.sudo_seconds() // 60},
        status=status,
    )


@login_not_required
@require_http_methods(["GET", "POST"])
def password_reset(request):
    """ "Forgot your password?": a link by e-mail; the answer is the same whether the
    address is known or not; rate-limited per client and per address."""
    form = ForgotPasswordForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            reset_requested(request, form.cleaned_data["email"])
        except RateLimited as exc:
            response = render(
                request,
                "registration/password_reset_form.html",
                {"form": form, "throttled": exc.retry_after},
                status=429,
            )
            response["Retry-After"] = str(exc.retry_after)
            return response
        except Exception:
            log.exception("Could not send a password-reset e-mail")
        return redirect("password_reset_done")
    return render(request, "registration/password_reset_form.html", {"form": form})


@login_not_required
@require_http_methods(["POST"])
def set_language(request):
    """The language selector (every page's footer): saved on the signed-in user, and in
    the language cookie (for the login page, and for the browser after logging out).
    An empty choice goes back to the browser's language."""
    code = supported(request.POST.get("language", ""))
    if request.user.is_authenticated:
        set_user_language(request.user, code, request)
    response = redirect(_safe_next(request, request.POST.get("next", "")))
    if code:
        response.set_cookie(
            settings.LANGUAGE_COOKIE_NAME,
            code,
            max_age=settings.LANGUAGE_COOKIE_AGE,
            path=settings.LANGUAGE_COOKIE_PATH,
            domain=settings.LANGUAGE_COOKIE_DOMAIN,
            secure=settings.LANGUAGE_COOKIE_SECURE,
            httponly=settings.LANGUAGE_COOKIE_HTTPONLY,
            samesite=settings.LANGUAGE_COOKIE_SAMESITE,
        )
    else:
        response.delete_cookie(
            settings.LANGUAGE_COOKIE_NAME,
            path=settings.LANGUAGE_COOKIE_PATH,
            domain=settings.LANGUAGE_COOKIE_DOMAIN,
            samesite=settings.LANGUAGE_COOKIE_SAMESITE,
        )
    return response
