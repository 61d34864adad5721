"""How strong a backup password is: a length rule with a readable hint.

The backup password protects the job's key (``backupsite-key.age``), which lies beside
the backups at every destination: whoever reads a destination can try passwords
offline, as fast as scrypt lets them. So the rule is about length, the one thing that
helps: at least :data:`MIN_LENGTH` characters, not a known common password (Django's
list of 20,000), not one character repeated. Beyond that the hint grows with length
and variety; ``static/js/wizard.js`` shows the same hint while typing (the server
decides).
"""

from __future__ import annotations

from functools import lru_cache

from django.utils.translation import gettext_lazy as _

MIN_LENGTH = 12

#: Hint per score (0 refused, 1 fair, 2 good, 3 strong): the same words as wizard.js.
HINTS = {
    0: _("Too weak"),
    1: _("Fair: longer is better (a few unrelated words make a good password)"),
    2: _("Good"),
    3: _("Strong"),
}


@lru_cache(maxsize=1)
def _common():
    from django.contrib.auth.password_validation import CommonPasswordValidator

    return CommonPasswordValidator()


def problem(password: str) -> str | None:
    """Why *password* is refused (a sentence for the form), or None."""
    if len(password) < MIN_LENGTH:
        return str(_("Use at least %(min)d characters (this one has %(n)d).") % {"min": MIN_LENGTH, "n": len(password)})
    if len(set(password)) == 1:
        return str(_("Not one character repeated: use a few unrelated words."))
    if password.lower().strip() in _common().passwords:
        return str(_("This password is on the list of common passwords; choose another."))
    return None


def score(password: str) -> int:
    """0 (refused) to 3 (strong)."""
    if problem(password):
        return 0
    classes = sum(
        (
            any(c.islower() for c in password),
            any(c.isupper() for c in password),
            any(c.isdigit() for c in password),
            any(not c.isalnum() for c in password),
        )
    )
    level = 1 if len(password) < 16 else 2 if len(password) < 20 else 3
    if classes >= 3 and level < 3:
        level += 1
    return level


def hint(password: str) -> str:
    return str(HINTS[score(password)])
