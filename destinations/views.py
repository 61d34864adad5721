"""Destination pages: the list and the details (every role), create, edit, test,
trust a fingerprint and delete (administrators). What they do is in
:mod:`destinations.services`; the views choose the forms, the template and the status.

The form page works without JavaScript: every kind's fieldset is in the page under its
heading and only the chosen kind's is validated; the Test button reloads the page with
the result. ``static/js/destination-form.js`` shows only the chosen kind's fieldset and
``static/js/fragments.js`` tests in the background (``X-Requested-With: fetch`` answers
with the result fragment). The wizard's step 3 is built from the same parts
(:class:`~destinations.forms.KindForms`, :func:`services.test_kind_form`, the trust
token, the partials ``destinations/_kind_chooser.html``, ``_kind_fieldsets.html`` and
``_test_region.html``, the two scripts).
"""

from __future__ import annotations

import functools

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_http_methods, require_POST

from backupsite import sudo
from backupsite.kindpages import KindFormPage, chosen_kind, form_view, unvalidated
from backupsite.sudo import sudo_required
from destinations import services
from destinations.backends import REGISTRY
from destinations.backends.base import CAPABILITY_LABELS, READ
from destinations.forms import DestinationForm, KindChoiceForm, KindForms, kind_form
from destinations.models import Destination

FORM_TEMPLATE = "destinations/destination_form.html"
DESTINATIONS_PER_PAGE = 25
REGION_TEMPLATE = "destinations/_test_region.html"


def _kind_info(kind: str) -> dict:
    cls = REGISTRY[kind]
    return {"kind": kind, "label": cls.label, "help_text": cls.help_text}


# --- list and details ------------------------------------------------------------------
@permission_required("destinations.view_destination", raise_exception=True)
def destination_list(request):
    page = Paginator(services.list_rows(), DESTINATIONS_PER_PAGE).get_page(request.GET.get("page"))
    context = {"destinations": services.with_last_uploads(page.object_list), "page": page}
    return render(request, "destinations/destination_list.html", context)


def _detail_context(request, destination: Destination, **extra) -> dict:
    result = destination.last_test
    trust = ""
    if result is not None and result.needs_confirmation and request.user.has_perm("destinations.change_destination"):
        trust = services.trust_token(destination.kind, result.fingerprint, destination.pk)
    capabilities = []
    kind_known = destination.kind in REGISTRY
    if kind_known:
        declared = REGISTRY[destination.kind].capabilities
        capabilities = [(label, cap in declared) for cap, label in CAPABILITY_LABELS.items()]
        form = kind_form(destination.kind, destination=destination)
        stored = [
            str(form.fields[name].label) if name in form.fields else name
            for name in form.secret_fields
            if destination.secrets.get(name)
        ]
    else:
        stored = []
    return {
        "destination": destination,
        "kind_info": _kind_info(destination.kind) if kind_known else None,
        "jobs": services.jobs_using(destination),
        "uploads": services.recent_uploads(destination),
        "result": result,
        "trust_token": trust,
        "capabilities": capabilities,
        "write_only": kind_known and not destination.can(READ),
        "stored_secrets": stored,
        **extra,
    }


@permission_required("destinations.view_destination", raise_exception=True)
def destination_detail(request, pk: int):
    destination = get_object_or_404(Destination, pk=pk)
    return render(request, "destinations/destination_detail.html", _detail_context(request, destination))


# --- create and edit ---------------------------------------------------------------------
def _action(post) -> str | None:
    if post is None:
        return None
    if post.get("trust"):
        return "trust"
    if post.get("action") == "test":
        return "test"
    return "save"


@form_view("destinations.add_destination")
def destination_create(request):
    return _form_page(request, None)


@form_view("destinations.change_destination")
def destination_edit(request, pk: int):
    return _form_page(request, get_object_or_404(Destination, pk=pk))


class _FormPage(KindFormPage):
    """The create / edit page: the common form, the kind chooser (create only), the
    kinds' forms (:class:`~destinations.forms.KindForms`: only the chosen one validated),
    and the tokens carried between a test and the save (see :mod:`destinations.services`)."""

    created_text = gettext_lazy("Destination “%(name)s” created.")
    saved_text = gettext_lazy("Destination “%(name)s” saved.")
    test_actions = ("test", "trust")

    def __init__(self, request, destination: Destination | None) -> None:
        self.request = request
        self.destination = destination
        self.creating = destination is None
        self.destination_id = destination.pk if destination else None
        self.post = request.POST if request.method == "POST" else None
        self.region: dict = {
            "trusted_tokens": [],
            "can_trust": True,
            "trust_in_form": True,
            "failed_hint": _("You can still save: the settings are kept and can be tested again later."),
            "passed_hint": _("These settings are not saved yet."),
        }
        self.sudo_needed = False
        kinds = list(REGISTRY) if self.creating else [destination.kind]
        self.chosen = chosen_kind(request, self.post, kinds) if self.creating else destination.kind
        self.chooser = KindChoiceForm(self.post, initial={"kind": self.chosen}) if self.creating else None
        pinned, pending = self._carried()
        self.kind_forms = KindForms(
            self.post,
            kinds=kinds,
            chosen=self.chosen,
            destination=destination,
            pending=pending,
            pinned=pinned,
            use_required_attribute=not self.creating,
        )
        self.chosen_form = self.kind_forms.chosen_form
        self.common = DestinationForm(self.post, instance=destination)

    def _carried(self) -> tuple[dict, dict]:
        """Settings pinned by confirmed fingerprints, and secrets typed before a reload."""
        if self.post is None or not self.chosen:
            return {}, {}
        pinned, tokens = services.pinned_from_tokens(self.post.getlist("trusted"), self.chosen, self.destination_id)
        if self.action == "trust":
            token = self.post.get("trust", "")
            try:
                setting, value = services.read_trust_token(token, self.chosen, self.destination_id)
            except services.TokenError as exc:
                self.region["test_error"] = str(exc)
            else:
                pinned[setting] = value
                tokens.append(token)
        self.region["trusted_tokens"] = tokens
        pending = services.read_pending(self.post.get("pending_secrets", ""), self.request.user, self.chosen)
        return pinned, pending

    @property
    def action(self) -> str | None:
        return _action(self.post)

    # --- actions ------------------------------------------------------------------------
    def save(self):
        """The saved destination, or None when a form has errors."""
        checks = [self.common.is_valid(), self.chosen_form is not None and self.chosen_form.is_valid()]
        if self.chooser is not None:
            checks.append(self.chooser.is_valid())
        if not all(checks):
            return None
        if self.replaces_secret() and not sudo.confirm_inline(self.request, self.post.get("sudo_password", "")):
            # Sudo mode: replacing a stored secret needs the password typed again. The page
            # comes back with a password field, the typed secrets carried (pending token).
            self.sudo_needed = True
            return None
        return services.save(self.common, self.chosen_form, request=self.request, tested=self.post.get("tested", ""))

    def replaces_secret(self) -> bool:
        """Whether this save would overwrite a stored secret with another value."""
        if self.creating:
            return False
        stored = dict(self.destination.secrets or {})
        typed = services.typed_secrets(self.chosen_form)
        return any(stored.get(name) and value != stored[name] for name, value in typed.items())

    def test(self) -> int:
        """Test the unsaved settings; the HTTP status of the answer (422: the settings
        have errors, shown next to their fields on a full page)."""
        unvalidated(self.common)  # a test needs no name yet
        if "test_error" in self.region:
            return 200
        if self.chosen_form is None:
            self.region["test_error"] = _("Choose a kind first.")
            return 422
        status, region = services.test_kind_form(self.request, self.chosen_form, destination_id=self.destination_id)
        self.region.update(region)
        return status

    # --- rendering --------------------------------------------------------------------------
    def region_context(self) -> dict:
        form = self.chosen_form
        if self.post is not None and form is not None and hasattr(form, "cleaned_data"):
            typed = services.typed_secrets(form)
            self.region["pending"] = services.pending_token(self.request.user, self.chosen, typed)
        return self.region

    def context(self) -> dict:
        return {
            "destination": self.destination,
            "creating": self.creating,
            "common": self.common,
            "chooser": self.chooser,
            "kind_forms": self.kind_forms.rows(),
            "chosen": self.chosen,
            "sudo_needed": self.sudo_needed,
            "sudo_error": self.sudo_needed and bool(self.post and self.post.get("sudo_password")),
            **self.region_context(),
        }

    def fragment(self, status: int):
        return _retry_after(render(self.request, REGION_TEMPLATE, self.region_context(), status=status), self.region)

    def full_page(self, status: int):
        if self.sudo_needed:
            status = 403
        response = render(self.request, FORM_TEMPLATE, self.context(), status=status if status in (403, 429) else 200)
        return _retry_after(response, self.region)


def _form_page(request, destination: Destination | None):
    if destination is not None and destination.kind not in REGISTRY:
        messages.error(request, _("This destination's kind is not installed; it cannot be edited."))
        return redirect(destination)
    return _FormPage(request, destination).respond()


def _retry_after(response, region: dict):
    if response.status_code == 429 and region.get("retry_after"):
        response["Retry-After"] = str(region["retry_after"])
    return response


# --- test, trust, delete -----------------------------------------------------------------
def _throttled_page(request, destination: Destination, exc: services.TestThrottled):
    context = _detail_context(request, destination, throttled=str(exc))
    response = render(request, "destinations/destination_detail.html", context, status=429)
    response["Retry-After"] = str(exc.retry_after)
    return response


def _connection_test(view):
    """A POST that tests the connection of one destination (administrators): counted by
    the tests' rate limit, the detail page with 429 over it; *view* gets the destination."""

    @require_POST
    @permission_required("destinations.change_destination", raise_exception=True)
    @functools.wraps(view)
    def wrapped(request, pk: int):
        destination = get_object_or_404(Destination, pk=pk)
        try:
            services.throttle_test(request)
        except services.TestThrottled as exc:
            return _throttled_page(request, destination, exc)
        return view(request, destination)

    return wrapped


@_connection_test
def destination_test(request, destination: Destination):
    result = services.test_destination(destination)
    (messages.success if result.ok else messages.error)(request, f"{destination.name}: {result.message}")
    return redirect(destination)


@_connection_test
def destination_trust(request, destination: Destination):
    try:
        result = services.trust_and_retest(destination, request.POST.get("trust", ""), request=request)
    except services.TokenError as exc:
        messages.error(request, str(exc))
        return redirect(destination)
    if result.ok:
        messages.success(request, _("Fingerprint stored; the connection test passed."))
    else:
        messages.error(request, _("Fingerprint stored, but the test failed: %(message)s") % {"message": result.message})
    return redirect(destination)


@require_http_methods(["GET", "POST"])
@permission_required("destinations.delete_destination", raise_exception=True)
@sudo_required
def destination_delete(request, pk: int):
    destination = get_object_or_404(Destination, pk=pk)
    if request.method == "POST":
        try:
            services.delete(destination, request=request)
        except services.InUse as exc:
            context = {"destination": destination, "jobs": exc.jobs, "refused": exc.message}
            return render(request, "destinations/destination_confirm_delete.html", context, status=409)
        messages.success(
            request,
            _("Destination “%(name)s” deleted. The backups already there were left in place.")
            % {"name": destination.name},
        )
        return redirect("destinations:list")
    context = {"destination": destination, "jobs": services.jobs_using(destination)}
    return render(request, "destinations/destination_confirm_delete.html", context)
