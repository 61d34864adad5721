"""Test settings: the real settings module, with a throw-away data dir and no .env."""

import atexit
import os
import shutil
import tempfile

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

from backupsite.settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
