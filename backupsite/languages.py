"""The languages of the panel: a user's own choice, and rendering in a recipient's language.

Precedence for a page: the signed-in user's saved choice (:class:`UserProfile.language`,
applied by ``backupsite.middleware.UserLanguageMiddleware``), else the language cookie
the selector sets, else the browser's Accept-Language, else ``LANGUAGE_CODE``. E-mails
are rendered in their recipient's language: a user's saved one (else ``LANGUAGE_CODE``:
an e-mail has no browser), or, for alert e-mails to a job's report-to addresses, the job's
``language``.
"""

from __future__ import annotations

import functools

from django.conf import settings
from django.contrib.auth.signals import user_logged_in
from django.utils import translation


def supported(code: str | None) -> str:
    """*code* if the panel speaks it, else ``""``."""
    return code if code and code in dict(settings.LANGUAGES) else ""


def user_language(user) -> str:
    """The language *user* chose (``""``: none; they get the browser's)."""
    from backupsite.models import UserProfile

    if user is None or not getattr(user, "pk", None):
        return ""
    code = UserProfile.objects.filter(user_id=user.pk).values_list("language", flat=True).first()
    return supported(code)


#: The signed-in user's choice, cached in their session: [user id, code].
SESSION_KEY = "backupsite_language"


def remember_at_login(sender, request, user, **kwargs) -> None:
    """Put the user's choice into the new session at login (the login writes the session
    anyway), so that no page needs a query for it."""
    session = getattr(request, "session", None)
    if session is not None:
        session[SESSION_KEY] = [user.pk, user_language(user)]


user_logged_in.connect(remember_at_login, dispatch_uid="backupsite.languages.remember_at_login")


def session_language(request) -> str:
    """The signed-in user's choice, from their session (put there at login; read from the
    profile for a session older than that)."""
    session = getattr(request, "session", None)
    cached = session.get(SESSION_KEY) if session is not None else None
    if isinstance(cached, list) and len(cached) == 2 and cached[0] == request.user.pk:
        return supported(cached[1])
    code = user_language(request.user)
    if session is not None:
        session[SESSION_KEY] = [request.user.pk, code]
    return code


def set_user_language(user, code: str, request=None) -> str:
    """Save *code* (``""``: the browser's) as *user*'s language; returns what was saved."""
    from backupsite.models import UserProfile

    code = supported(code)
    UserProfile.objects.update_or_create(user=user, defaults={"language": code})
    if request is not None and getattr(request, "session", None) is not None:
        request.session[SESSION_KEY] = [user.pk, code]
    return code


def for_user(user):
    """A context manager rendering in *user*'s language (``LANGUAGE_CODE`` if none)."""
    return translation.override(user_language(user) or settings.LANGUAGE_CODE)


def language_context(request):
    """For the language selector: the languages and the signed-in user's saved choice."""
    return {
        "panel_languages": settings.LANGUAGES,
        "saved_language": getattr(request, "user_language", ""),
    }


def site_language():
    """A context manager rendering in ``LANGUAGE_CODE`` (text stored for everyone)."""
    return translation.override(settings.LANGUAGE_CODE)


def in_site_language(func):
    """Run *func* in ``LANGUAGE_CODE``: for text that is stored once and read by everyone
    (the audit log's labels and values), so it does not depend on who made the change."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with site_language():
            return func(*args, **kwargs)

    return wrapper


def choices():
    """``LANGUAGES``, as a callable for model fields (a migration does not freeze it)."""
    return settings.LANGUAGES
