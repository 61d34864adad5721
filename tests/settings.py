"""Test settings: the real settings module, with a throw-away data dir and no .env, on
the stack ``BACKUPSITE_TEST_STACK`` chooses (tests/teststack.py: SQLite and the
filesystem broker by default; PostgreSQL and Redis started for the session with
``BACKUPSITE_TEST_STACK=postgres``)."""

import atexit
import os
import shutil
import tempfile

from tests import teststack

_data = tempfile.mkdtemp(prefix="backupsite-test-")
atexit.register(shutil.rmtree, _data, True)
os.environ["BACKUPSITE_ENV_FILE"] = ""  # never read the developer's .env
os.environ["BACKUPSITE_DATA_DIR"] = _data
os.environ.setdefault("DEBUG", "1")  # development secrets, generated under _data
os.environ["CELERY_TASK_ALWAYS_EAGER"] = "1"
# A run whose worker died ends interrupted at once here; the restarts
# (BACKUPSITE_RUN_RESTARTS, 1 by default) have their own tests, which set it.
os.environ.setdefault("BACKUPSITE_RUN_RESTARTS", "0")
os.environ.setdefault("BACKUPSITE_HOST", "test-host")
if not teststack.is_postgres():
    # The embedded default, whatever the developer's shell exports.
    for _name in ("DATABASE_URL", "CELERY_BROKER_URL", "CACHE_URL"):
        os.environ.pop(_name, None)
teststack.configure()

from backupsite.settings import *  # noqa: E402,F403

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    # A file, as the embedded default has (WAL, IMMEDIATE transactions, busy timeout), not
    # Django's in-memory test database: concurrent connections then lock as in
    # production instead of failing with "database table is locked" (shared cache).
    DATABASES["default"]["TEST"] = {"NAME": os.path.join(_data, "test-db.sqlite3")}  # noqa: F405

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
