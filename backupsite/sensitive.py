"""What of the panel itself must never leave it as readable data: one place for both lists.

**Excluded tables.** The "Panel database" source dumps the panel's own database for
disaster recovery, but never the *rows* of the tables registered here: sessions (a
session key is a login), verification and restore tickets (they hold unwrapped backup keys), the
database cache (rate-limit counters) and django-axes' login-throttling tables
(password-reset links are not stored: Django derives them from the password hash). The
tables themselves stay in the dump (their schema), so a
restored panel works and simply asks everyone to log in again. A feature that adds such
a table adds one line::

    register_excluded_table("accounts_resettoken", "password-reset tokens: each one sets a password")

**The panel's own files.** A directory source never archives the panel's database file
(and its ``-wal``/``-shm``/``-journal``), its key files, its settings file, the archive
folder, the broker and mail folders or the beat schedule (:func:`panel_paths`). A
directory source that *covers* them (``/``, the data dir) leaves them out and says so in
the run log; one whose path is *inside* one of them is refused
(:func:`check_directory_source`, the same check the Source forms will call).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

DEFAULT_CACHE_TABLE = "backupsite_cache"
# The file names Celery beat's shelve may use beside ``celerybeat-schedule``.
_BEAT_SUFFIXES = ("", ".db", ".dat", ".dir", ".bak")
# Secrets settings.py accepts as ``NAME_FILE`` (see backupsite/env.py).
_SECRET_FILE_VARIABLES = ("SECRET_KEY_FILE", "FIELD_ENCRYPTION_KEYS_FILE", "EMAIL_URL_FILE")


# --- excluded tables ------------------------------------------------------------------
@dataclass(frozen=True)
class ExcludedTable:
    table: str
    reason: str


_EXCLUDED: dict[str, str] = {}


def check_table_name(name, *, max_length: int = 63) -> str:
    """A table name that goes into a dump tool's arguments or an SQL identifier (quoted
    there): text, 1 to *max_length* characters (PostgreSQL's limit), no control
    characters; ValueError otherwise."""
    if not isinstance(name, str) or not name or len(name) > max_length:
        raise ValueError(f"A table name is 1 to {max_length} characters of text.")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError("A table name must not contain control characters.")
    return name


def register_excluded_table(table: str, reason: str) -> None:
    """Leave out the rows of *table* from every panel-database dump (idempotent)."""
    _EXCLUDED.setdefault(check_table_name(table), reason)


def cache_table() -> str:
    """The database cache's table (``settings.BACKUPSITE_CACHE_TABLE``), whether or not
    the panel uses one yet: a table that does not exist is simply skipped."""
    return str(getattr(settings, "BACKUPSITE_CACHE_TABLE", "") or DEFAULT_CACHE_TABLE)


def excluded_tables() -> list[ExcludedTable]:
    entries = dict(_EXCLUDED)
    entries.setdefault(cache_table(), "the database cache: rate-limit counters")
    return [ExcludedTable(table, reason) for table, reason in entries.items()]


def excluded_table_names() -> list[str]:
    return [entry.table for entry in excluded_tables()]


register_excluded_table("django_session", "sessions: a session key logs anyone in as its user")
register_excluded_table("jobs_verifyticket", "verification tickets: they hold unwrapped backup keys")
register_excluded_table("jobs_restoreticket", "restore tickets: they hold unwrapped backup keys")
# django-axes: failed logins (user names as typed, addresses, browsers) and lockouts. A
# restored panel starts with nobody locked out. (Password-reset links are HMACs of the
# user's password hash and last login: nothing of them is stored.)
for _table in ("axes_accessattempt", "axes_accessattemptexpiration", "axes_accessfailurelog", "axes_accesslog"):
    register_excluded_table(_table, "login throttling: failed attempts and lockouts")


# --- the panel's own files ------------------------------------------------------------
@dataclass(frozen=True)
class PanelPath:
    path: str  # absolute, symlinks resolved
    what: str  # "the panel's database", for messages


def _real(path) -> str:
    return os.path.realpath(os.fspath(path))


def _database_files() -> list[Path]:
    from jobs.sources.dbtools import engine_family, panel_database_config

    db = panel_database_config()
    name = str(db.get("NAME") or "")
    if engine_family(str(db.get("ENGINE", ""))) != "sqlite3" or not name.startswith("/"):
        return []  # PostgreSQL, or an in-memory test database: no file here
    return [Path(name + suffix) for suffix in ("", "-wal", "-shm", "-journal")]


def panel_paths() -> list[PanelPath]:
    """Every file and folder of the panel's own that a directory source must not archive,
    read from the settings at call time."""
    data = Path(settings.DATA_DIR)
    found: list[tuple[Path, str]] = [(p, "the panel's database") for p in _database_files()]
    found += [
        (data / "secret_key", "the panel's secret key"),
        (data / "field_encryption_key", "the panel's encryption key"),
    ]
    for variable in _SECRET_FILE_VARIABLES:
        if os.environ.get(variable):
            found.append((Path(os.environ[variable]), f"the file named by {variable}"))
    env_file = os.environ.get("BACKUPSITE_ENV_FILE", str(Path(settings.BASE_DIR) / ".env"))
    if env_file:
        found.append((Path(env_file), "the panel's settings file"))
    found += [
        (Path(settings.BACKUPSITE_ARCHIVE_DIR), "the panel's archive folder"),
        (data / "broker", "the panel's task queue folder"),
        (data / "mail", "the panel's mail folder"),
        (data / "restores", "the panel's restore folder"),
        (Path(settings.BACKUPSITE_LOCAL_BACKUP_DIR) / "backupsite", "the backups of the “Server hard drive”"),
    ]
    mail_folder = getattr(settings, "EMAIL_FILE_PATH", None)
    if mail_folder:
        found.append((Path(mail_folder), "the panel's mail folder"))
    # As backupsite/celery.py names it (a test keeps the two in step).
    found += [(data / f"celerybeat-schedule{suffix}", "the task schedule") for suffix in _BEAT_SUFFIXES]
    seen: dict[str, PanelPath] = {}
    for path, what in found:
        real = _real(path)
        seen.setdefault(real, PanelPath(real, what))
    return list(seen.values())


def _inside(path: str, folder: str) -> bool:
    """*path* is *folder* or below it (both absolute and normalised)."""
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def check_directory_source(path: str) -> None:
    """Refuse (ValueError, a message for users) a directory source whose folder is one of
    the panel's own paths or inside one."""
    real = _real(path)
    for item in panel_paths():
        if _inside(real, item.path):
            raise ValueError(
                f"{path} is {item.what} ({item.path}) or inside it: a directory source never backs up the "
                "panel's own files. Back up the panel with the “Panel database” source in an encrypted job."
            )


def panel_paths_under(root: str) -> list[PanelPath]:
    """The panel's own paths strictly below the folder *root* (a directory source over
    them leaves them out)."""
    real = _real(root)
    return [item for item in panel_paths() if item.path != real and _inside(item.path, real)]
