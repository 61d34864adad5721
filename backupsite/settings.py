"""Settings for backupsite, read only from the environment.

See README.md ("Configuration") for every variable and its default. A ``.env`` file in
the project directory (or the file named by ``BACKUPSITE_ENV_FILE``) is read first;
real environment variables win over it.
"""

from __future__ import annotations

import os
import re
import socket
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import environ
from csp.constants import NONE as CSP_NONE
from csp.constants import SELF as CSP_SELF
from django.core.exceptions import ImproperlyConfigured

from backupsite.clientip import parse_proxies
from backupsite.env import (
    env_bool,
    env_int,
    env_list,
    env_secret,
    env_str,
    is_placeholder,
    new_fernet_key,
    new_secret_key,
    required_secret,
)
from backupsite.logs import FORMATS, logging_config
from backupsite.private import create_private_file, private_dir

BASE_DIR = Path(__file__).resolve().parent.parent

_env_file = os.environ.get("BACKUPSITE_ENV_FILE", str(BASE_DIR / ".env"))
if _env_file and Path(_env_file).is_file():
    environ.Env.read_env(_env_file, overwrite=False)

DEBUG = env_bool("DEBUG", False)

DATA_DIR = Path(env_str("BACKUPSITE_DATA_DIR", str(BASE_DIR / "var"))).resolve()
# Only the panel's user may enter it (database, archives, mail: see backupsite/private.py).
private_dir(DATA_DIR)

SECRET_KEY = required_secret("SECRET_KEY", debug=DEBUG, dev_file=DATA_DIR / "secret_key", factory=new_secret_key)
# MultiFernet keys, comma separated; the first one encrypts, all of them decrypt.
FIELD_ENCRYPTION_KEYS = [
    key.strip()
    for key in required_secret(
        "FIELD_ENCRYPTION_KEYS",
        debug=DEBUG,
        dev_file=DATA_DIR / "field_encryption_key",
        factory=new_fernet_key,
    ).split(",")
    if key.strip()
]

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "axes",
    "csp",
    "backupsite",
    "destinations",
    "jobs",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # The language: the cookie set by the language selector, else the browser's
    # Accept-Language, else LANGUAGE_CODE; no URL prefix (URLs stay where they are).
    "django.middleware.locale.LocaleMiddleware",
    # Django's, except that a POST to a URL without its slash is redirected with 308.
    "backupsite.middleware.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # A signed-in user's own choice (saved on the user) wins over the browser's.
    "backupsite.middleware.UserLanguageMiddleware",
    # A batch per request: one "configuration changed" e-mail per administrator and request.
    "backupsite.audit.AuditMiddleware",
    "backupsite.middleware.NoStoreForSignedInUsers",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns a locked-out login into the lockout page (429).
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "backupsite.urls"
WSGI_APPLICATION = "backupsite.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "backupsite.roles.roles_context",
                "backupsite.languages.language_context",
            ],
        },
    },
]

# Form widgets are rendered with Django's own Jinja2 copies of its widget templates: the
# same markup at about half the cost per field (a destination form of the wizard has 36
# fields, measured with bench/pages.py). The pages stay Django templates.
FORM_RENDERER = "django.forms.renderers.Jinja2"

# --- Database ---------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{DATA_DIR / 'db.sqlite3'}")
_db = environ.Env.db_url_config(DATABASE_URL)
if _db["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets readers work while the worker writes; IMMEDIATE transactions take the
    # write lock up front, so the web process and the worker wait for each other
    # (up to the timeout) instead of failing with "database is locked".
    _db["OPTIONS"] = {
        "timeout": env_int("SQLITE_BUSY_TIMEOUT", 30, minimum=1),
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # Sessions and password hashes: make the file 0600 before SQLite first opens it
    # (SQLite creates it 0644 under the usual umask, and gives its -wal and -shm files
    # the database file's mode).
    _db_file = str(_db.get("NAME") or "")
    if _db_file and _db_file != ":memory:" and not _db_file.startswith("file:") and Path(_db_file).parent.is_dir():
        create_private_file(_db_file)
else:
    _db["CONN_MAX_AGE"] = env_int("CONN_MAX_AGE", 60, minimum=0)
    _db["CONN_HEALTH_CHECKS"] = True
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache: the shared rate limiter's counters (backupsite/ratelimit.py) --------
# Every web process must count together: the database cache on the embedded default,
# Redis in production (CACHE_URL=redis://host:6379/1).
CACHE_URL = env_str("CACHE_URL", "dbcache://backupsite_cache")
CACHES = {"default": environ.Env.cache_url_config(CACHE_URL)}
BACKUPSITE_CACHE_TABLE = CACHES["default"]["LOCATION"] if CACHES["default"]["BACKEND"].endswith("DatabaseCache") else ""

# --- Auth -------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# django-axes first: it refuses a locked-out login before any password is checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"

# The panel speaks English, German and Swedish. LANGUAGE_CODE is the language of a
# visitor whose browser asks for none of them, and the language new jobs send their
# alert e-mails in. Each name is written in its own language (the selector's labels).
LANGUAGES = [("en", "English"), ("de", "Deutsch"), ("sv", "Svenska")]
LANGUAGE_CODE = env_str("LANGUAGE_CODE", "en").strip().lower()
if LANGUAGE_CODE not in dict(LANGUAGES):
    raise ImproperlyConfigured(f"LANGUAGE_CODE must be one of {', '.join(dict(LANGUAGES))}, not {LANGUAGE_CODE!r}.")
LOCALE_PATHS = [BASE_DIR / "locale"]
# The cookie the language selector sets (for the login page and other anonymous pages).
LANGUAGE_COOKIE_NAME = "backupsite_language"
LANGUAGE_COOKIE_SAMESITE = "Lax"
LANGUAGE_COOKIE_HTTPONLY = True
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

# --- Static files (vendored, served by WhiteNoise; no CDN) -----------------
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
# Outside the data dir: a new release must serve its own files, not a volume's old ones.
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
try:  # WhiteNoise warns on every start when the folder is missing.
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)
except OSError:
    pass
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if not DEBUG
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}


# --- E-mail -----------------------------------------------------------------
def _email_settings(url: str) -> dict:
    """Parse EMAIL_URL: smtp://, smtp+tls://, smtps:// (implicit TLS), file:///path,
    console://, memory://."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in {"file", "filemail"}:
        return {
            "EMAIL_BACKEND": "backupsite.mail.PrivateFileEmailBackend",  # 0600 files, 0700 folder
            "EMAIL_FILE_PATH": unquote(parts.path) or str(DATA_DIR / "mail"),
        }
    if scheme in {"console", "consolemail"}:
        return {"EMAIL_BACKEND": "django.core.mail.backends.console.EmailBackend"}
    if scheme in {"memory", "locmem", "memorymail"}:
        return {"EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend"}
    if scheme in {"smtp", "smtp+tls", "smtps"}:
        query = parse_qs(parts.query)
        return {
            "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "EMAIL_HOST": parts.hostname or "localhost",
            "EMAIL_PORT": parts.port or {"smtp": 25, "smtp+tls": 587, "smtps": 465}[scheme],
            "EMAIL_HOST_USER": unquote(parts.username or ""),
            "EMAIL_HOST_PASSWORD": unquote(parts.password or ""),
            "EMAIL_USE_TLS": scheme == "smtp+tls",
            "EMAIL_USE_SSL": scheme == "smtps",
            "EMAIL_TIMEOUT": int(query.get("timeout", ["30"])[0]),
        }
    raise ImproperlyConfigured(f"EMAIL_URL has an unknown scheme {scheme!r}.")


_email_url = env_secret("EMAIL_URL") or f"file://{DATA_DIR / 'mail'}"
globals().update(_email_settings(_email_url))
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "backupsite <backupsite@localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# --- Security (production values whenever DEBUG is off) -------------------
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_AGE = env_int("SESSION_COOKIE_AGE", 8 * 3600, minimum=60)
CSRF_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if not DEBUG:
    SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", True)
    CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", True)
    LANGUAGE_COOKIE_SECURE = SESSION_COOKIE_SECURE
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
if env_bool("USE_X_FORWARDED_PROTO", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Reverse proxies whose X-Forwarded-For is believed (addresses or networks, comma
# separated). Empty (the default): the header is ignored, REMOTE_ADDR is the client
# (backupsite/clientip.py; docs/security.md, "Behind a reverse proxy").
BACKUPSITE_TRUSTED_PROXIES = env_list("BACKUPSITE_TRUSTED_PROXIES", [])
try:
    parse_proxies(BACKUPSITE_TRUSTED_PROXIES)
except ValueError as _exc:
    raise ImproperlyConfigured(f"BACKUPSITE_TRUSTED_PROXIES: {_exc}") from None

# Content-Security-Policy (django-csp): the panel's own static files only, no inline
# scripts or styles, no frames, forms post only to the panel.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [CSP_SELF],
        "script-src": [CSP_SELF],
        "style-src": [CSP_SELF],
        "img-src": [CSP_SELF],
        "font-src": [CSP_SELF],
        "connect-src": [CSP_SELF],
        "form-action": [CSP_SELF],
        "frame-ancestors": [CSP_NONE],
        "base-uri": [CSP_NONE],
        "object-src": [CSP_NONE],
    }
}

# Login throttling (django-axes): after BACKUPSITE_LOGIN_FAILURE_LIMIT wrong passwords
# for one user name, or from one client address (behind trusted proxies only, never a
# raw X-Forwarded-For), logins are refused for BACKUPSITE_LOGIN_LOCKOUT_MINUTES.
AXES_FAILURE_LIMIT = env_int("BACKUPSITE_LOGIN_FAILURE_LIMIT", 10, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("BACKUPSITE_LOGIN_LOCKOUT_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = ["ip_address", "username"]
AXES_CLIENT_IP_CALLABLE = "backupsite.clientip.client_ip"
AXES_RESET_ON_SUCCESS = True
AXES_DISABLE_ACCESS_LOG = True  # successful logins are in the audit log
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_SENSITIVE_PARAMETERS = ["password", "new_password1", "new_password2", "old_password"]

# "Sudo mode": re-entering the password unlocks trigger URLs, secret replacement,
# deletes and restores for this many minutes.
BACKUPSITE_SUDO_MINUTES = env_int("BACKUPSITE_SUDO_MINUTES", 10, minimum=1)
# Audit events older than this many days are pruned (0 keeps them forever).
BACKUPSITE_AUDIT_RETENTION_DAYS = env_int("BACKUPSITE_AUDIT_RETENTION_DAYS", 365, minimum=0)
# A password-reset link works this long (Django's PASSWORD_RESET_TIMEOUT, in seconds).
PASSWORD_RESET_TIMEOUT = env_int("PASSWORD_RESET_TIMEOUT", 3 * 24 * 3600, minimum=600)

# --- Celery (all of its configuration lives in backupsite/celery.py) -------
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
CELERY_SOFT_TIME_LIMIT = env_int("CELERY_SOFT_TIME_LIMIT", 6 * 3600, minimum=10)
CELERY_HARD_TIME_LIMIT = env_int("CELERY_HARD_TIME_LIMIT", CELERY_SOFT_TIME_LIMIT + 600, minimum=20)
if CELERY_HARD_TIME_LIMIT <= CELERY_SOFT_TIME_LIMIT:
    raise ImproperlyConfigured("CELERY_HARD_TIME_LIMIT must be above CELERY_SOFT_TIME_LIMIT.")
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)

# --- backupsite -------------------------------------------------------------
# Local copies of every archive (downloads are served from here first).
BACKUPSITE_ARCHIVE_DIR = Path(env_str("BACKUPSITE_ARCHIVE_DIR", str(DATA_DIR / "archives")))
# Where the demo data and the default "server hard drive" destination live.
BACKUPSITE_LOCAL_BACKUP_DIR = Path(env_str("BACKUPSITE_LOCAL_BACKUP_DIR", str(DATA_DIR / "backups")))
# How many heavy runs (archiving) may run at once on the whole installation.
BACKUPSITE_MAX_CONCURRENT_RUNS = env_int("BACKUPSITE_MAX_CONCURRENT_RUNS", 1, minimum=1)
# Crash recovery (README, "Configuration"): a worker writes a heartbeat to its run every
# BACKUPSITE_HEARTBEAT_SECONDS; a run whose last heartbeat is older than
# BACKUPSITE_STALE_RUN_SECONDS is marked interrupted by the reaper, which runs every
# BACKUPSITE_REAPER_SECONDS. The stale threshold must cover at least three heartbeats, so
# one slow database write never makes a live run look dead. A queued run that no worker
# takes within BACKUPSITE_QUEUE_GRACE_SECONDS of a slot being free is handed to the
# workers once more, and fails after another such period.
BACKUPSITE_HEARTBEAT_SECONDS = env_int("BACKUPSITE_HEARTBEAT_SECONDS", 10, minimum=1)
BACKUPSITE_STALE_RUN_SECONDS = env_int("BACKUPSITE_STALE_RUN_SECONDS", 60, minimum=3)
if BACKUPSITE_STALE_RUN_SECONDS < 3 * BACKUPSITE_HEARTBEAT_SECONDS:
    raise ImproperlyConfigured(
        f"BACKUPSITE_STALE_RUN_SECONDS ({BACKUPSITE_STALE_RUN_SECONDS}) must be at least three heartbeats "
        f"(3 × BACKUPSITE_HEARTBEAT_SECONDS = {3 * BACKUPSITE_HEARTBEAT_SECONDS}), or live runs would be "
        "marked interrupted."
    )
BACKUPSITE_REAPER_SECONDS = env_int("BACKUPSITE_REAPER_SECONDS", 15, minimum=1)
BACKUPSITE_QUEUE_GRACE_SECONDS = env_int("BACKUPSITE_QUEUE_GRACE_SECONDS", 60, minimum=1)
# A run whose worker died while archiving (killed, out of memory, machine restarted) is
# started again this many times at most, then it ends "interrupted" with a message.
BACKUPSITE_RUN_RESTARTS = env_int("BACKUPSITE_RUN_RESTARTS", 1, minimum=0)

# --- Scheduling and workers (README, "Scheduling" and "Several worker machines") ------
# This machine's name among the workers: the local copies it writes are uploaded by the
# tasks on its own queue "host.<name>". Letters, digits, ".", "_" and "-".
BACKUPSITE_HOST = env_str("BACKUPSITE_HOST", socket.gethostname() or "localhost")
if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", BACKUPSITE_HOST):
    raise ImproperlyConfigured(
        f"BACKUPSITE_HOST must be letters, digits, '.', '_' and '-' (it names a queue), not {BACKUPSITE_HOST!r}."
    )
# The dispatcher tick (due jobs, waiting runs, stale alerts, drills) and the upload sweep.
BACKUPSITE_DISPATCH_SECONDS = env_int("BACKUPSITE_DISPATCH_SECONDS", 60, minimum=1)
BACKUPSITE_SWEEP_SECONDS = env_int("BACKUPSITE_SWEEP_SECONDS", 300, minimum=1)
# Uploads failing with a transient error (timeouts, resets) are tried again after
# BACKUPSITE_UPLOAD_RETRY_SECONDS, doubling each time up to ..._RETRY_MAX_SECONDS (with
# jitter), at most BACKUPSITE_UPLOAD_MAX_ATTEMPTS attempts and no new attempt later than
# BACKUPSITE_UPLOAD_MAX_AGE_SECONDS after the first. Permanent errors are never retried.
BACKUPSITE_UPLOAD_MAX_ATTEMPTS = env_int("BACKUPSITE_UPLOAD_MAX_ATTEMPTS", 10, minimum=1)
BACKUPSITE_UPLOAD_MAX_AGE_SECONDS = env_int("BACKUPSITE_UPLOAD_MAX_AGE_SECONDS", 24 * 3600, minimum=1)
BACKUPSITE_UPLOAD_RETRY_SECONDS = env_int("BACKUPSITE_UPLOAD_RETRY_SECONDS", 60, minimum=1)
BACKUPSITE_UPLOAD_RETRY_MAX_SECONDS = env_int("BACKUPSITE_UPLOAD_RETRY_MAX_SECONDS", 3600, minimum=1)
if BACKUPSITE_UPLOAD_RETRY_MAX_SECONDS < BACKUPSITE_UPLOAD_RETRY_SECONDS:
    raise ImproperlyConfigured("BACKUPSITE_UPLOAD_RETRY_MAX_SECONDS must be at least BACKUPSITE_UPLOAD_RETRY_SECONDS.")
# E-mails and pings are tried this many times (backoff from 30 s up to an hour).
BACKUPSITE_NOTIFICATION_ATTEMPTS = env_int("BACKUPSITE_NOTIFICATION_ATTEMPTS", 8, minimum=1)
# Seconds a ping URL may take for each step (connect, TLS, answer).
BACKUPSITE_PING_TIMEOUT = env_int("BACKUPSITE_PING_TIMEOUT", 10, minimum=1)
BACKUPSITE_ZSTD_LEVEL = env_int("BACKUPSITE_ZSTD_LEVEL", 3, minimum=1)
# Free space kept on the staging disk beyond the archive's estimated size.
BACKUPSITE_STAGING_MARGIN_BYTES = env_int("BACKUPSITE_STAGING_MARGIN_MB", 64, minimum=0) * 1024 * 1024
# Binaries the system checks look for (missing ones are reported, not fatal).
BACKUPSITE_REQUIRED_BINARIES = env_list("BACKUPSITE_REQUIRED_BINARIES", ["zstd", "tar"])
BACKUPSITE_OPTIONAL_BINARIES = env_list("BACKUPSITE_OPTIONAL_BINARIES", ["age", "pg_dump", "pg_restore", "mysqldump"])

# Logs go to stderr: plain text lines by default; LOG_FORMAT=json writes one JSON object
# per line (time, level, logger, message, and run_id on every line of a run) for a log
# collector. See backupsite/logs.py.
LOG_FORMAT = env_str("LOG_FORMAT", "plain").strip().lower()
if LOG_FORMAT not in FORMATS:
    raise ImproperlyConfigured(f"LOG_FORMAT must be one of {', '.join(FORMATS)}, not {LOG_FORMAT!r}.")
LOG_LEVEL = env_str("LOG_LEVEL", "INFO").strip().upper()
LOGGING_CONFIG = "backupsite.logs.configure"
LOGGING = logging_config(LOG_FORMAT, LOG_LEVEL)
# Seconds every network step of a destination may take (connect, banner, login, each
# read and write); a kind's own "timeout" setting wins.
BACKUPSITE_DESTINATION_TIMEOUT = env_int("BACKUPSITE_DESTINATION_TIMEOUT", 30, minimum=1)
# Let destinations (and their test button) reach loopback and link-local addresses
# (127.0.0.1, ::1, 169.254.x.x). Off in production: a test button must not become a way
# into services bound to this machine or into a cloud's metadata service.
BACKUPSITE_ALLOW_LOCAL_DESTINATIONS = env_bool("BACKUPSITE_ALLOW_LOCAL_DESTINATIONS", False)
# Local destinations ("server hard drive", USB) may only write inside these folders.
BACKUPSITE_LOCAL_ROOTS = env_list(
    "BACKUPSITE_LOCAL_ROOTS", [str(BACKUPSITE_LOCAL_BACKUP_DIR), "/mnt", "/media", "/srv/backups"]
)
# Directory and SQLite sources may only read inside these folders (symlinks followed);
# empty (the default): any folder except the panel's own files.
BACKUPSITE_SOURCE_ROOTS = env_list("BACKUPSITE_SOURCE_ROOTS", [])
# Restores from the panel (and restorebackup) may only write into these folders.
BACKUPSITE_RESTORE_ROOTS = env_list("BACKUPSITE_RESTORE_ROOTS", [str(DATA_DIR / "restores")])
# E-mail destinations refuse a backup whose attachments (archive, manifest, key file)
# total more than this many MiB, before anything is sent; a destination may set its own.
BACKUPSITE_EMAIL_ATTACHMENT_LIMIT_MB = env_int("BACKUPSITE_EMAIL_ATTACHMENT_LIMIT_MB", 20, minimum=1)
# Monitoring (README, "Health and monitoring"). /healthz answers everyone with the status
# of each check; given BACKUPSITE_HEALTH_TOKEN (Authorization: Bearer, or ?token=) it also
# names the stale jobs. /metrics answers only with BACKUPSITE_METRICS_TOKEN, and is not
# there at all (404) while it is unset. Both may come from a file (..._FILE).
BACKUPSITE_HEALTH_TOKEN = env_secret("BACKUPSITE_HEALTH_TOKEN") or ""
BACKUPSITE_METRICS_TOKEN = env_secret("BACKUPSITE_METRICS_TOKEN") or ""
for _name in ("BACKUPSITE_HEALTH_TOKEN", "BACKUPSITE_METRICS_TOKEN"):
    _token = globals()[_name]
    if _token and not DEBUG and (is_placeholder(_token) or len(_token) < 16):
        raise ImproperlyConfigured(f"{_name} must be a random value of 16 characters or more, or unset.")
# A load balancer or Prometheus often asks over plain HTTP inside the network: answer it
# there instead of redirecting to HTTPS (the answer is the same, and a token was sent
# with the first request anyway).
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]
# The panel's public address, used for links in e-mails.
BACKUPSITE_SITE_URL = env_str("BACKUPSITE_SITE_URL", "http://127.0.0.1:8000")
# Planning exports: the seconds one dataset's query may spend in its database before it
# is stopped (PostgreSQL statement_timeout per fetch, MySQL max_execution_time / MariaDB
# max_statement_time for the whole query, SQLite a progress handler).
BACKUPSITE_EXPORT_STATEMENT_TIMEOUT = env_int("BACKUPSITE_EXPORT_STATEMENT_TIMEOUT", 300, minimum=1)
# An unfinished wizard (its steps, its encrypted secrets) is dropped this long after its
# last use; the beat task purge-abandoned-wizards removes it from stored sessions too.
BACKUPSITE_WIZARD_TTL_MINUTES = env_int("BACKUPSITE_WIZARD_TTL_MINUTES", 60, minimum=1)
