"""The Users page (administrators): list, invite or create, change the role and the
address, deactivate or activate, send a password-reset e-mail. What happens is in
:mod:`backupsite.users` (through configwrite: audited, e-mailed to the other
administrators); the views pick the form, the message and the status."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import permission_required
from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from backupsite import users as services
from backupsite.forms import NewUserForm, UserForm
from backupsite.ratelimit import RateLimited
from backupsite.roles import ROLE_LABELS, role_of_many

User = get_user_model()
USERS_PER_PAGE = 50


@require_GET
@permission_required("auth.view_user", raise_exception=True)
def user_list(request):
    page = Paginator(User.objects.order_by("username"), USERS_PER_PAGE).get_page(request.GET.get("page"))
    roles = role_of_many(list(page.object_list))
    rows = [{"user": user, "role": ROLE_LABELS.get(roles[user.pk], _("No role"))} for user in page.object_list]
    return render(request, "backupsite/user_list.html", {"page": page, "rows": rows})


def _send(request, user, kind: str) -> bool:
    try:
        services.send_password_link(user, request=request, kind=kind)
    except RateLimited as exc:
        messages.error(
            request,
            _("Too many password e-mails to %(address)s; try again in %(seconds)d seconds.")
            % {"address": user.email, "seconds": exc.retry_after},
        )
        return False
    except Exception:  # noqa: BLE001 - the mail server failed; the user exists, say so
        messages.error(
            request, _("The e-mail to %(address)s could not be sent; try again later.") % {"address": user.email}
        )
        return False
    return True


@sensitive_post_parameters("password1", "password2")
@require_http_methods(["GET", "POST"])
@permission_required("auth.add_user", raise_exception=True)
def user_create(request):
    form = NewUserForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        user = form.save(commit=False)
        inviting = form.cleaned_data["how"] == NewUserForm.INVITE
        password = None if inviting else form.cleaned_data["password1"]
        services.save_user(user, role=form.cleaned_data["role"], request=request, password=password)
        if inviting and _send(request, user, services.INVITATION):
            messages.success(
                request,
                _("User “%(name)s” created; an invitation went to %(address)s.")
                % {"name": user.username, "address": user.email},
            )
        elif not inviting:
            messages.success(request, _("User “%(name)s” created with the password you set.") % {"name": user.username})
        return redirect("users:edit", user.pk)
    return render(request, "backupsite/user_form.html", {"form": form, "creating": True})


@require_http_methods(["GET", "POST"])
@permission_required("auth.change_user", raise_exception=True)
def user_edit(request, pk: int):
    user = get_object_or_404(User, pk=pk)
    form = UserForm(request.POST if request.method == "POST" else None, instance=user)
    status = 200
    if request.method == "POST" and form.is_valid():
        try:
            change = services.save_user(form.save(commit=False), role=form.cleaned_data["role"], request=request)
        except services.LastAdministrator as exc:
            form.add_error("role", str(exc))
            status = 409
        else:
            messages.success(
                request,
                _("User “%(name)s” saved.") % {"name": user.username} if change else _("Nothing was changed."),
            )
            return redirect("users:edit", user.pk)
    user.refresh_from_db()
    return render(
        request, "backupsite/user_form.html", {"form": form, "edited": user, "creating": False}, status=status
    )


@require_POST
@permission_required("auth.change_user", raise_exception=True)
def user_set_active(request, pk: int):
    user = get_object_or_404(User, pk=pk)
    active = request.POST.get("active") == "1"
    try:
        services.set_active(user, active, request=request)
    except (services.LastAdministrator, services.CannotChangeSelf) as exc:
        messages.error(request, str(exc))
    else:
        text = _("“%(name)s” can log in again.") if active else _("“%(name)s” is deactivated and can no longer log in.")
        messages.success(request, text % {"name": user.username})
    return redirect("users:edit", user.pk)


@require_POST
@permission_required("auth.change_user", raise_exception=True)
def user_send_reset(request, pk: int):
    user = get_object_or_404(User, pk=pk, is_active=True)
    if not user.email:
        messages.error(request, _("“%(name)s” has no e-mail address.") % {"name": user.username})
    elif _send(request, user, services.RESET):
        messages.success(request, _("A password-reset link went to %(address)s.") % {"address": user.email})
    return redirect("users:edit", user.pk)
