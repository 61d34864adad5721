"""System checks: report at start-up what would otherwise fail in the middle of a run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

from backupsite.private import private_dir, shared_mode


def _writable_dir(path: Path) -> str | None:
    try:
        private_dir(path)
    except OSError as exc:
        return f"cannot be created: {exc.strerror or exc}"
    if not os.access(path, os.W_OK | os.X_OK):
        return "is not writable by this process"
    return None


@register(Tags.compatibility, deploy=False)
def check_data_dirs(app_configs=None, **kwargs):
    errors = []
    for label, path in (
        ("BACKUPSITE_DATA_DIR", settings.DATA_DIR),
        ("BACKUPSITE_ARCHIVE_DIR", settings.BACKUPSITE_ARCHIVE_DIR),
    ):
        problem = _writable_dir(Path(path))
        if problem:
            errors.append(
                Error(
                    f"{label} ({path}) {problem}.",
                    hint="Create it and give the user running backupsite write access.",
                    id="backupsite.E001",
                )
            )
    return errors


@register(Tags.compatibility)
def check_binaries(app_configs=None, **kwargs):
    messages = []
    for name in settings.BACKUPSITE_REQUIRED_BINARIES:
        if shutil.which(name) is None:
            messages.append(
                Error(
                    f"The program {name!r} is not installed or not on PATH.",
                    hint=f"Install it (Debian: apt-get install {name}).",
                    id="backupsite.E002",
                )
            )
    for name in settings.BACKUPSITE_OPTIONAL_BINARIES:
        if shutil.which(name) is None:
            messages.append(
                Warning(
                    f"The program {name!r} is not installed; sources or restores that need it will fail.",
                    id="backupsite.W001",
                )
            )
    return messages


@register(Tags.security, deploy=True)
def check_site_url(app_configs=None, **kwargs):
    from urllib.parse import urlsplit

    host = urlsplit(settings.BACKUPSITE_SITE_URL).hostname or ""
    if not settings.DEBUG and host in {"", "127.0.0.1", "localhost", "::1"}:
        return [
            Warning(
                f"BACKUPSITE_SITE_URL is {settings.BACKUPSITE_SITE_URL!r}: links in e-mails will not reach the panel.",
                hint="Set it to the panel's public address, e.g. https://backup.example.com.",
                id="backupsite.W002",
            )
        ]
    return []


@register(Tags.security, deploy=True)
def check_encryption_keys(app_configs=None, **kwargs):
    from cryptography.fernet import Fernet

    errors = []
    for index, key in enumerate(settings.FIELD_ENCRYPTION_KEYS):
        try:
            Fernet(key)
        except (ValueError, TypeError):
            errors.append(
                Error(
                    f"FIELD_ENCRYPTION_KEYS entry #{index + 1} is not a valid Fernet key.",
                    hint='Generate one with: python -c "from cryptography.fernet import Fernet; '
                    'print(Fernet.generate_key().decode())"',
                    id="backupsite.E003",
                )
            )
    return errors


@register(Tags.security)
def check_data_dir_permissions(app_configs=None, **kwargs):
    """Other local users must not read the database (sessions, password hashes), the
    archives or the mail, nor change them."""
    warnings = []
    for label, path in (
        ("BACKUPSITE_DATA_DIR", settings.DATA_DIR),
        ("BACKUPSITE_ARCHIVE_DIR", settings.BACKUPSITE_ARCHIVE_DIR),
    ):
        mode = shared_mode(path)
        if mode is not None:
            warnings.append(
                Warning(
                    f"{label} ({path}) has mode {mode:04o}: other users of this machine can open what is "
                    "inside (the database with sessions and password hashes, archives, e-mails).",
                    hint=f"Run: chmod 700 {path} (and chmod -R go= {path} for files made by older versions). "
                    "backupsite makes its own files 0600 in 0700 folders.",
                    id="backupsite.W003",
                )
            )
    return warnings
