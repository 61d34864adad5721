"""The suite runs where ``BACKUPSITE_TEST_STACK`` says (tests/teststack.py): its own
database, broker and cache, and those of the installations tests start as processes,
are the stack's, on servers this session started (never one that happened to run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from tests import teststack

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json
import django
django.setup()
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from backupsite.celery import app
with connection.cursor() as cursor:
    cursor.execute("SELECT 1")
backend = settings.CACHES["default"]["BACKEND"]
if backend.endswith("RedisCache"):  # (the database cache needs migrate first)
    cache.set("probe", "seen", 30)
print(json.dumps({"vendor": connection.vendor, "name": str(connection.settings_dict["NAME"]),
                  "broker": app.conf.broker_url, "cache": backend, "cached": cache.get("probe")
                  if backend.endswith("RedisCache") else None}))
"""


def test_the_suite_database_broker_and_cache_are_the_stack_s(db):
    if teststack.is_postgres():
        assert connection.vendor == "postgresql"
        assert connection.settings_dict["PORT"] == teststack.POSTGRES.port
        assert connection.settings_dict["NAME"] == f"test_{teststack.SUITE_DATABASE}"
        with teststack.POSTGRES.connect() as conn:  # (the superuser may ask)
            (data_directory,) = conn.execute("SHOW data_directory").fetchone()
        # The server this session started, in its own temporary folder.
        assert Path(data_directory).parent == teststack.POSTGRES.directory
        assert teststack.REDIS.url(teststack.BROKER_DB) == settings.CELERY_BROKER_URL
        assert settings.CACHES["default"]["BACKEND"] == "django.core.cache.backends.redis.RedisCache"
        assert settings.CACHES["default"]["LOCATION"] == teststack.REDIS.url(teststack.CACHE_DB)
        assert teststack.REDIS.ping()
    else:
        assert connection.vendor == "sqlite"
        assert str(connection.settings_dict["NAME"]).endswith("test-db.sqlite3")  # a file, as in production
        assert settings.CELERY_BROKER_URL == "filesystem://"
        assert settings.CACHES["default"]["BACKEND"] == "django.core.cache.backends.db.DatabaseCache"


def test_an_installation_s_processes_use_their_own_database_and_broker(tmp_path):
    data = tmp_path / "var"
    installation = teststack.installation(data)
    env = {
        "PATH": "/usr/bin:/bin",
        "DJANGO_SETTINGS_MODULE": "backupsite.settings",
        "BACKUPSITE_ENV_FILE": "",
        "BACKUPSITE_DATA_DIR": str(data),
        "DEBUG": "1",
        **installation.env,
    }
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[-1])
    if teststack.is_postgres():
        assert seen["cached"] == "seen"
        assert seen["vendor"] == "postgresql" and seen["name"] == installation.database
        assert installation.database != teststack.SUITE_DATABASE
        assert seen["broker"] == installation.env["CELERY_BROKER_URL"] != settings.CELERY_BROKER_URL
        assert seen["cache"].endswith("RedisCache")
        with teststack.POSTGRES.connect() as conn:
            names = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
        assert installation.database in names
        # A second installation shares nothing with the first.
        other = teststack.installation(tmp_path / "other")
        assert other.database != installation.database
        assert other.env["CELERY_BROKER_URL"] != installation.env["CELERY_BROKER_URL"]
        assert other.env["CACHE_URL"] not in (installation.env["CACHE_URL"], settings.CACHES["default"]["LOCATION"])
    else:
        assert installation.env == {}  # the settings' defaults: everything in the data dir
        assert seen == {
            "vendor": "sqlite",
            "name": str(data / "db.sqlite3"),
            "broker": "filesystem://",
            "cache": "django.core.cache.backends.db.DatabaseCache",
            "cached": None,
        }
        assert (data / "db.sqlite3").is_file()


@pytest.mark.stack_independent
def test_an_unknown_stack_is_refused(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", "import tests.settings"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "BACKUPSITE_TEST_STACK": "mysql", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "BACKUPSITE_TEST_STACK='mysql': use one of default, postgres." in result.stderr
