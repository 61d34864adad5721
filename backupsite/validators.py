"""Validators and slug helpers shared by the models of several apps."""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.utils.text import slugify
from django.utils.translation import gettext_lazy as _

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A slug that is safe as one path component anywhere (local folders, SMB, SFTP, S3
# keys) and as a command-line argument: no separators, no dots, no leading dash.
_FOLDER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
FOLDER_NAME_MAX_LENGTH = 100


def validate_no_control_chars(value: str) -> None:
    """Refuse CR, LF, NUL and other control characters (header injection, log forging)."""
    if _CONTROL.search(value or ""):
        raise ValidationError("Control characters (such as line breaks) are not allowed here.")


def split_addresses(value: str) -> list[str]:
    return [part.strip() for part in re.split(r"[,;\s]+", value or "") if part.strip()]


def validate_address_list(value: str) -> None:
    """A comma- or line-separated list of e-mail addresses."""
    for address in split_addresses(value):
        try:
            validate_email(address)
        except ValidationError:
            raise ValidationError("%(address)s is not a valid e-mail address.", params={"address": address}) from None


# --- slugs that become folder names -----------------------------------------------------
class UnsafeFolderName(ValueError):
    """A slug that must not be used as a folder name (the message says why, readably)."""


def safe_folder_name(value: object, what: str = "folder name") -> str:
    """Return *value* if it is a plain slug (``[a-z0-9][a-z0-9_-]*``, at most 100
    characters), else raise :class:`UnsafeFolderName`.

    Every place that turns a job's, source's or destination's slug into a path calls
    this first, whatever the models checked when the row was saved: a row changed with
    ``QuerySet.update()`` or loaded from a fixture never went through ``save()``."""
    if not isinstance(value, str) or not value:
        raise UnsafeFolderName(f"The {what} is empty.")
    if len(value) > FOLDER_NAME_MAX_LENGTH or not _FOLDER_NAME.fullmatch(value):
        raise UnsafeFolderName(
            f"The {what} {value[:FOLDER_NAME_MAX_LENGTH]!r} is not allowed: only lowercase letters, digits, "
            f"“-” and “_” (not first), at most {FOLDER_NAME_MAX_LENGTH} characters."
        )
    return value


def validate_folder_slug(value: str) -> None:
    """Model-field validator for slugs that become folder names (see safe_folder_name)."""
    try:
        safe_folder_name(value, "slug")
    except UnsafeFolderName:
        raise ValidationError(
            _("Only lowercase letters, digits, “-” and “_” are allowed here, starting with a letter or digit."),
            code="unsafe_slug",
        ) from None


def unique_slug(model, name: str, pk=None, fallback: str = "item") -> str:
    """A slug for *name* that no other row of *model* has: ``nas-1``, ``nas-1-2``, …
    (always a safe folder name, see safe_folder_name)."""
    base = slugify(name)[:90].strip("-_") or fallback
    slug, n = base, 2
    while model.objects.filter(slug=slug).exclude(pk=pk).exists():
        slug, n = f"{base}-{n}", n + 1
    return slug
