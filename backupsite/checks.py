"""System checks: report at start-up what would otherwise fail in the middle of a run."""

from __future__ import annotations

import json
import os
import re
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


@register(Tags.database)
def check_pg_dump_version(app_configs=None, databases=None, **kwargs):
    """On PostgreSQL the panel backs its own database up with ``pg_dump``, which refuses
    a server of a newer major version than its own: say so at start-up, not in the
    first backup. A database check: ``migrate`` (the web container runs it) and
    ``check --database default`` run it; a plain ``check`` does not touch the database."""
    from django.db import DatabaseError, connections

    if not databases or "default" not in databases:
        return []
    connection = connections["default"]
    if connection.vendor != "postgresql":
        return []
    from jobs.sources.base import SourceError
    from jobs.sources.postgres import Major, client_version, dump_version_problem, pg_tool

    hint = (
        "Install the PostgreSQL client of the server's major version or newer (Debian/Ubuntu: "
        "postgresql-client-<version> from apt.postgresql.org); the Docker image brings one."
    )
    try:
        tool = pg_tool("pg_dump")
    except SourceError:
        return [
            Error(
                "pg_dump is not installed: the panel's own database (PostgreSQL) cannot be backed up.",
                hint=hint,
                id="backupsite.E005",
            )
        ]
    try:
        connection.ensure_connection()
        server = Major.from_server_version_num(connection.pg_version)
    except DatabaseError:
        return []  # an unreachable database is reported by whatever needs it first
    problem = dump_version_problem(tool, client_version(tool), server, "of the panel's own database")
    return [Error(problem, hint=hint, id="backupsite.E005")] if problem else []


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


_STATIC_TAG = re.compile(r"""{%\s*static\s+(["'])(?P<name>[^"']+)\1""")


def template_static_files() -> list[str]:
    """Every ``{% static "…" %}`` name in the project's templates (base.html's CSS and
    JS, and whatever a page adds): each must be in the static manifest."""
    names: set[str] = set()
    for engine in settings.TEMPLATES:
        for folder in engine.get("DIRS", []):
            for template in Path(folder).rglob("*.html"):
                try:
                    names.update(m["name"] for m in _STATIC_TAG.finditer(template.read_text("utf-8", "replace")))
                except OSError:
                    continue
    return sorted(names)


@register(Tags.staticfiles, deploy=True)
def check_static_manifest(app_configs=None, **kwargs):
    """Without ``collectstatic`` the manifest storage of production (DEBUG off) raises
    on the first ``{% static %}``: every page, the login page included, answers 500.

    A deployment check only (``check --deploy``, run by the web container before it
    starts): ``collectstatic`` itself runs the ordinary checks and must not be refused
    for the very thing it is about to create."""
    from django.contrib.staticfiles.storage import ManifestFilesMixin
    from django.core.files.storage import storages

    if settings.DEBUG:
        return []
    storage = storages["staticfiles"]
    if not isinstance(storage, ManifestFilesMixin):
        return []
    where = Path(settings.STATIC_ROOT) / storage.manifest_name
    hint = "Run: python manage.py collectstatic --noinput (after every upgrade too; the Docker image does it)."
    try:
        with storage.manifest_storage.open(storage.manifest_name) as fh:
            paths = json.loads(fh.read().decode("utf-8")).get("paths", {})
    except FileNotFoundError:
        return [
            Error(
                f"The static files have not been collected: {where} is missing, so every page would answer "
                "with a server error.",
                hint=hint,
                id="backupsite.E004",
            )
        ]
    except (OSError, ValueError, AttributeError) as exc:
        problem = f"The static manifest {where} cannot be read ({type(exc).__name__})."
        return [Error(problem, hint=hint, id="backupsite.E004")]
    missing = [name for name in template_static_files() if name not in paths]
    if missing:
        return [
            Error(
                f"The collected static files are out of date: {', '.join(missing)} missing from {where}; "
                "pages that use them would answer with a server error.",
                hint=hint,
                id="backupsite.E004",
            )
        ]
    return []
