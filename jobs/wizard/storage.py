"""Where a wizard keeps its steps between requests: the session, per wizard, encrypted.

formtools' :class:`~formtools.wizard.storage.session.SessionStorage` keeps one wizard per
view class in the session (``get_prefix`` has a TODO for a unique id), and its
``process_step`` stores the raw POST data, passwords included. Here:

* every wizard has its own id (:func:`new_wizard_id`), carried in a hidden field of the
  form, so two browser tabs with two wizards never mix (the session key is
  ``wizard_job_wizard_<id>``);
* the step data holds only the step's own fields (no CSRF token, nothing of other forms)
  and never a secret: secret fields (the backup password, a destination's password or
  key) are kept apart, each encrypted with the panel's field-encryption keys
  (:func:`backupsite.crypto.encrypt_text`) before it reaches the session, and decrypted
  only in memory while a request needs them;
* a wizard expires ``BACKUPSITE_WIZARD_TTL_MINUTES`` after its last use: it is dropped
  on the next request of the same session (:func:`drop_expired`), and the beat task
  ``purge-abandoned-wizards`` removes expired wizards from every stored session
  (:func:`purge_abandoned`), so a tab that was simply closed leaves nothing behind;
  Finish and Cancel remove the wizard at once (:meth:`WizardStorage.discard`).
"""

from __future__ import annotations

import re
import secrets
import time

from django.conf import settings
from formtools.wizard.storage.session import SessionStorage

from backupsite.crypto import decrypt_text, encrypt_text

#: The session keys of wizards start with this (formtools adds ``wizard_``).
SESSION_PREFIX = "wizard_job_wizard_"
_WIZARD_ID = re.compile(r"[A-Za-z0-9_-]{16,40}")


def new_wizard_id() -> str:
    return secrets.token_urlsafe(16)


def valid_wizard_id(value: object) -> bool:
    return isinstance(value, str) and bool(_WIZARD_ID.fullmatch(value))


def ttl_seconds() -> int:
    return int(settings.BACKUPSITE_WIZARD_TTL_MINUTES) * 60


class WizardStorage(SessionStorage):
    """formtools' session storage plus encrypted secrets per step, a last-used time and
    a way to remove the wizard entirely."""

    secrets_key = "step_secrets"
    touched_key = "touched"

    def init_data(self):
        super().init_data()
        data = self.data
        data[self.secrets_key] = {}
        data[self.touched_key] = time.time()
        self.data = data

    def touch(self) -> None:
        data = self.data
        data[self.touched_key] = time.time()
        self.data = data

    def discard(self) -> None:
        """Remove the wizard from the session: its steps, its secrets, everything."""
        self.request.session.pop(self.prefix, None)
        self.request.session.modified = True

    # --- secrets, encrypted --------------------------------------------------------
    def set_step_secrets(self, step: str, typed: dict[str, str]) -> None:
        """Keep the secrets typed in *step* (field key → value), encrypted. A secret not
        in *typed* (left blank) keeps its earlier value."""
        data = self.data
        stored = dict(data.setdefault(self.secrets_key, {}).get(step, {}))
        for key, value in typed.items():
            if value:
                stored[key] = encrypt_text(value)
        data[self.secrets_key][step] = stored
        self.data = data

    def get_step_secrets(self, step: str) -> dict[str, str]:
        """The secrets typed earlier in *step*, decrypted (in memory only)."""
        stored = self.data.get(self.secrets_key, {}).get(step, {})
        return {key: decrypt_text(token) for key, token in stored.items()}

    def reset(self):
        super().reset()  # init_data() drops the secrets with the steps


def _expired(value, now: float, ttl: int) -> bool:
    touched = value.get(WizardStorage.touched_key) if isinstance(value, dict) else None
    return not isinstance(touched, int | float) or now - touched > ttl


#: At most this many wizards per session (each page load of the wizard starts one): the
#: least recently used go first.
MAX_PER_SESSION = 20


def drop_expired(session, *, now: float | None = None, starting: bool = False) -> int:
    """Remove this session's wizards that were not used for the TTL, and the least
    recently used beyond :data:`MAX_PER_SESSION` (one less when *starting* a new one);
    returns how many."""
    now = time.time() if now is None else now
    ttl = ttl_seconds()
    wizards = [key for key in list(session.keys()) if key.startswith(SESSION_PREFIX)]
    stale = [key for key in wizards if _expired(session[key], now, ttl)]
    fresh = sorted((k for k in wizards if k not in stale), key=lambda k: session[k][WizardStorage.touched_key])
    stale += fresh[: max(0, len(fresh) - MAX_PER_SESSION + (1 if starting else 0))]
    for key in stale:
        del session[key]
    return len(stale)


def purge_abandoned(*, now: float | None = None) -> int:
    """Remove expired wizards from every stored session (the database session engine),
    keeping each session's own expiry; also delete expired sessions. Returns how many
    wizards were removed. A session written meanwhile is left for the next pass (the
    update is conditional on the data read)."""
    from django.contrib.sessions.backends.db import SessionStore
    from django.contrib.sessions.models import Session
    from django.utils import timezone

    if settings.SESSION_ENGINE != "django.contrib.sessions.backends.db":
        return 0
    now = time.time() if now is None else now
    ttl = ttl_seconds()
    SessionStore.clear_expired()
    store = SessionStore()
    removed = 0
    for row in Session.objects.filter(expire_date__gt=timezone.now()).only("session_key", "session_data").iterator():
        data = store.decode(row.session_data)
        stale = [k for k in data if k.startswith(SESSION_PREFIX) and _expired(data[k], now, ttl)]
        if not stale:
            continue
        for key in stale:
            del data[key]
        updated = Session.objects.filter(session_key=row.session_key, session_data=row.session_data).update(
            session_data=store.encode(data)
        )
        removed += len(stale) if updated else 0
    return removed
