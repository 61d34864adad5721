"""Project middleware: no caching of signed-in pages, slash redirects that keep POSTs, and
the signed-in user's language."""

from __future__ import annotations

from django.http.response import HttpResponseRedirectBase
from django.middleware.common import CommonMiddleware as DjangoCommonMiddleware
from django.utils import translation
from django.utils.cache import add_never_cache_headers
from django.utils.http import escape_leading_slashes


class NoStoreForSignedInUsers:
    """``Cache-Control: no-store`` (and the rest of Django's never-cache headers) on
    every response to a signed-in user: pages, fragments and downloads.

    A shared browser's back button must not show the runs of someone who logged out, and
    no proxy may keep a copy of a backup. Static files never get here: WhiteNoise,
    earlier in MIDDLEWARE, answers them itself, with its own caching headers."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            add_never_cache_headers(response)
        return response


class HttpResponsePermanentRedirectKeepMethod(HttpResponseRedirectBase):
    """308: like 301, but the client repeats the same method with the same body."""

    status_code = 308


class CommonMiddleware(DjangoCommonMiddleware):
    """Django's CommonMiddleware, except for unsafe methods (POST, PUT, PATCH, DELETE) to a
    URL that only exists with a trailing slash (``POST /jobs``).

    Django answers them with a RuntimeError (a 500) when DEBUG is on, and with a 301 in
    production, which browsers follow as a GET, so the form is silently dropped. Here
    they get a 308 to the same path with the slash, with DEBUG on or off: the client
    repeats the request, body included, where it was meant to go, and that view checks
    CSRF and permissions as usual. (A 404 would also be safe, but would turn a typo into
    a dead end for scripts; the redirect stays on this host, because Django escapes
    leading slashes.)"""

    SAFE_METHODS = ("GET", "HEAD", "OPTIONS", "TRACE")

    def get_full_path_with_slash(self, request):
        # Django's own computation, without its DEBUG-only RuntimeError for POST & co.
        return escape_leading_slashes(request.get_full_path(force_append_slash=True))

    def process_response(self, request, response):
        if (
            response.status_code == 404
            and request.method not in self.SAFE_METHODS
            and self.should_redirect_with_slash(request)
        ):
            return HttpResponsePermanentRedirectKeepMethod(self.get_full_path_with_slash(request))
        return super().process_response(request, response)


class UserLanguageMiddleware:
    """Speak the signed-in user's own language (saved on their profile by the language
    selector), over the browser's Accept-Language and the cookie LocaleMiddleware read.

    After AuthenticationMiddleware (it needs ``request.user``); LocaleMiddleware, earlier,
    already chose the browser's language (or LANGUAGE_CODE) and sets Content-Language and
    ``Vary`` on the way out from whatever is active then. The choice is read from the
    profile at login and kept in the session (the selector updates both), so a page
    costs no extra query; a change made in another session applies there at its next
    login; a user without a choice keeps the browser's language."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            from backupsite.languages import session_language

            language = request.user_language = session_language(request)
            if language:
                translation.activate(language)
                request.LANGUAGE_CODE = translation.get_language()
        return self.get_response(request)
