"""Slugs: made unique from a name, and checked before they become folder names.

A job's slug names its folder in the archive dir and at every destination
(``backupsite/<job slug>/``), a source's slug its folder inside the archive and its
temporary files. :func:`safe_folder_name` is the one check every place that builds a
path from a slug calls, whatever the models checked when the row was saved: a row
changed with ``QuerySet.update()`` or loaded from a fixture never went through
``save()``.

This module imports nothing from Django at import time, so the Django-free parts
(the archive engine, the destination contract) can use it too.
"""

from __future__ import annotations

import re

# Safe as one path component anywhere (local folders, SMB, SFTP, S3 keys) and as a
# command-line argument: no separators, no dots, no leading dash, no upper case.
_FOLDER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
FOLDER_NAME_MAX_LENGTH = 100


class UnsafeFolderName(ValueError):
    """A slug that must not be used as a folder name (the message says why, readably)."""


def safe_folder_name(value: object, what: str = "folder name") -> str:
    """Return *value* if it is a plain slug (``[a-z0-9][a-z0-9_-]*``, at most 100
    characters), else raise :class:`UnsafeFolderName` naming *what* was refused."""
    if not isinstance(value, str) or not value:
        raise UnsafeFolderName(f"The {what} is empty.")
    if len(value) > FOLDER_NAME_MAX_LENGTH or not _FOLDER_NAME.fullmatch(value):
        raise UnsafeFolderName(
            f"The {what} {value[:FOLDER_NAME_MAX_LENGTH]!r} is not allowed: only lowercase letters, digits, "
            f"“-” and “_” (not first), at most {FOLDER_NAME_MAX_LENGTH} characters."
        )
    return value


def unique_slug(model, name: str, pk=None, fallback: str = "item") -> str:
    """A slug for *name* that no other row of *model* has: ``nas-1``, ``nas-1-2``, …
    (always a safe folder name)."""
    from django.utils.text import slugify

    base = slugify(name)[:90].strip("-_") or fallback
    slug, n = base, 2
    while model.objects.filter(slug=slug).exclude(pk=pk).exists():
        slug, n = f"{base}-{n}", n + 1
    return slug
