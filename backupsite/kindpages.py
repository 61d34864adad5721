"""What the create / edit pages of the plugin kinds (destinations, sources) share.

Both pages are a common form, a kind chooser (create only) and one fieldset per kind
(only the chosen one validated). *Save* redirects to the saved object; *Test* reloads
the page with the result, or answers a background request (``X-Requested-With:
fetch``) with the result fragment. A page class mixes in :class:`KindFormPage` and
provides ``save()``, ``test()``, ``fragment(status)`` and ``full_page(status)``.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.forms.utils import ErrorDict
from django.http import HttpResponse
from django.shortcuts import redirect
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods


def is_fetch(request) -> bool:
    """A background request of ``static/js/fragments.js`` / ``kind-form.js``."""
    return request.headers.get("X-Requested-With") == "fetch"


def unvalidated(form):
    """Keep what was typed in *form* without validating it (another kind's fieldset; a
    name while only testing; a wizard step shown again as it was entered)."""
    form._errors = ErrorDict()
    form.cleaned_data = {}
    return form


def form_view(permission: str):
    """The decorators of a create or edit page: GET and POST only, for holders of
    *permission*, and the POSTed values (secrets) kept out of error reports."""

    def decorate(view):
        view = permission_required(permission, raise_exception=True)(view)
        view = require_http_methods(["GET", "POST"])(view)
        return sensitive_post_parameters()(view)

    return decorate


def chosen_kind(request, post, kinds: list[str]) -> str | None:
    """The kind chosen on a create page: the posted one (None if it is not one of
    *kinds*), or on a first visit the one in the address, else the first."""
    data = post if post is not None else request.GET
    kind = data.get("kind")
    if kind in kinds:
        return kind
    return None if post is not None else (kinds[0] if kinds else None)


class KindFormPage:
    """The save / test flow of a create or edit page (see the module's docstring)."""

    #: ``%(name)s`` messages after a save (lazy: translated when shown).
    created_text: str
    saved_text: str
    #: The values of :attr:`action` that run a connection test.
    test_actions: tuple[str, ...] = ("test",)

    request = None
    creating: bool

    @property
    def action(self) -> str | None:
        raise NotImplementedError

    def save(self):
        """The saved object, or None when a form has errors."""
        raise NotImplementedError

    def test(self) -> int:
        """Test the unsaved settings; the HTTP status of the answer."""
        raise NotImplementedError

    def fragment(self, status: int) -> HttpResponse:
        """The answer to a background test."""
        raise NotImplementedError

    def full_page(self, status: int) -> HttpResponse:
        """The whole page (with the result of a test, if one ran)."""
        raise NotImplementedError

    def respond(self) -> HttpResponse:
        status = 200
        if self.action == "save":
            saved = self.save()
            if saved is not None:
                text = self.created_text if self.creating else self.saved_text
                messages.success(self.request, text % {"name": saved.name})
                return redirect(saved)
        elif self.action in self.test_actions:
            status = self.test()
            if is_fetch(self.request):
                if status == 422:  # the script then sends the form normally: errors by their fields
                    return HttpResponse(status=422)
                return self.fragment(status)
        return self.full_page(status)
