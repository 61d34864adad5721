"""Validators shared by the models of several apps."""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.utils.text import Truncator
from django.utils.translation import gettext_lazy as _

from backupsite.slugs import UnsafeFolderName, safe_folder_name

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def validate_no_control_chars(value: str) -> None:
    """Refuse CR, LF, NUL and other control characters (header injection, log forging)."""
    if _CONTROL.search(value or ""):
        raise ValidationError(_("Control characters (such as line breaks) are not allowed here."))


def split_addresses(value: str) -> list[str]:
    return [part.strip() for part in re.split(r"[,;\s]+", value or "") if part.strip()]


def validate_address_list(value: str) -> None:
    """A comma- or line-separated list of e-mail addresses.

    The error quotes the whole entry the user typed between two commas (or line
    breaks), not the first word of it: "not an address" is named as typed, not as "not".
    """
    for entry in re.split(r"[,;\r\n]+", value or ""):
        if not all(_is_address(part) for part in split_addresses(entry)):
            raise ValidationError(
                _("“%(address)s” is not an e-mail address; separate several addresses with commas."),
                code="invalid_address",
                params={"address": Truncator(entry.strip()).chars(_SHOWN_CHARS)},
            )


_SHOWN_CHARS = 80  # of a wrong entry in the error (a pasted paragraph stays readable)


def _is_address(text: str) -> bool:
    try:
        validate_email(text)
    except ValidationError:
        return False
    return True


# --- slugs that become folder names (backupsite/slugs.py) ----------------------------
def validate_folder_slug(value: str) -> None:
    """Model-field validator for slugs that become folder names (see safe_folder_name)."""
    try:
        safe_folder_name(value, "slug")
    except UnsafeFolderName:
        raise ValidationError(
            _("Only lowercase letters, digits, “-” and “_” are allowed here, starting with a letter or digit."),
            code="unsafe_slug",
        ) from None
