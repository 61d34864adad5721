"""Settings come only from the environment, fail loudly, and guard production."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[1]


def manage(tmp_path, *args, **env) -> subprocess.CompletedProcess:
    base = {
        "PATH": os.environ["PATH"],
        "DJANGO_SETTINGS_MODULE": "backupsite.settings",
        "BACKUPSITE_ENV_FILE": "",
        "BACKUPSITE_DATA_DIR": str(tmp_path / "data"),
        "BACKUPSITE_OPTIONAL_BINARIES": "",
    }
    base.update({k: v for k, v in env.items() if v is not None})
    for key in [k for k, v in env.items() if v is None]:
        base.pop(key, None)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=base, capture_output=True, text=True, timeout=120
    )


PROD = {
    "DEBUG": "0",
    "SECRET_KEY": "k" * 20 + "-a-long-and-random-production-secret-key-value",
    "ALLOWED_HOSTS": "backup.example.com",
}


@pytest.fixture
def prod(tmp_path):
    return {**PROD, "FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode()}


@pytest.mark.parametrize("missing", ["SECRET_KEY", "FIELD_ENCRYPTION_KEYS"])
def test_production_refuses_to_start_without_a_secret(tmp_path, prod, missing):
    result = manage(tmp_path, "check", **{**prod, missing: None})
    assert result.returncode != 0
    assert missing in result.stderr and "missing or a placeholder" in result.stderr


@pytest.mark.parametrize("placeholder", ["change-me", "", "change-me-please"])
def test_production_refuses_a_placeholder_secret_key(tmp_path, prod, placeholder):
    result = manage(tmp_path, "check", **{**prod, "SECRET_KEY": placeholder})
    assert result.returncode != 0 and "SECRET_KEY" in result.stderr


def test_secret_key_can_come_from_a_file(tmp_path, prod):
    key_file = tmp_path / "secret"
    key_file.write_text(PROD["SECRET_KEY"] + "\n")
    result = manage(tmp_path, "check", **{**prod, "SECRET_KEY": None, "SECRET_KEY_FILE": str(key_file)})
    assert result.returncode == 0, result.stderr


def test_development_generates_secrets_once_and_reuses_them(tmp_path):
    first = manage(tmp_path, "check", DEBUG="1")
    assert first.returncode == 0, first.stderr
    key_file = tmp_path / "data" / "secret_key"
    fernet_file = tmp_path / "data" / "field_encryption_key"
    content = key_file.read_text(), fernet_file.read_text()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert manage(tmp_path, "check", DEBUG="1").returncode == 0
    assert (key_file.read_text(), fernet_file.read_text()) == content


@pytest.mark.parametrize(("name", "value"), [("DEBUG", "maybe"), ("SQLITE_BUSY_TIMEOUT", "soon")])
def test_a_malformed_value_names_the_variable(tmp_path, name, value):
    result = manage(tmp_path, "check", **{"DEBUG": "1", name: value})
    assert result.returncode != 0 and name in result.stderr


def test_a_missing_binary_is_reported_by_the_system_checks(tmp_path):
    result = manage(tmp_path, "check", DEBUG="1", BACKUPSITE_REQUIRED_BINARIES="zstd,no-such-binary-xyz")
    assert result.returncode != 0
    assert "backupsite.E002" in result.stderr and "no-such-binary-xyz" in result.stderr


def test_an_unwritable_archive_dir_is_reported(tmp_path):
    result = manage(tmp_path, "check", DEBUG="1", BACKUPSITE_ARCHIVE_DIR="/dev/null/archives")
    assert result.returncode != 0 and "backupsite.E001" in result.stderr


@pytest.mark.only_stack("default")  # the suite's own database is SQLite there
def test_sqlite_uses_wal_busy_timeout_and_immediate_transactions(db, settings):
    from django.db import connection

    options = settings.DATABASES["default"]["OPTIONS"]
    assert options["transaction_mode"] == "IMMEDIATE" and options["timeout"] >= 5
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        mode = cursor.fetchone()[0]
    # The test database is a file, like the embedded default's (tests/settings.py).
    assert "journal_mode=WAL" in options["init_command"]
    assert mode == "wal"


def test_celery_uses_json_only_and_late_acks():
    from backupsite.celery import app

    conf = app.conf
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert conf.task_acks_late is True and conf.worker_prefetch_multiplier == 1
    assert conf.task_time_limit > conf.task_soft_time_limit
    assert all("expires" in entry["options"] for entry in conf.beat_schedule.values())


def test_celery_redis_visibility_timeout_exceeds_the_hard_limit(tmp_path):
    code = (
        "import django; django.setup(); from backupsite.celery import app; c = app.conf; "
        "print(c.broker_transport_options['visibility_timeout'] > c.task_time_limit)"
    )
    env = {
        "PATH": os.environ["PATH"],
        "DJANGO_SETTINGS_MODULE": "backupsite.settings",
        "BACKUPSITE_ENV_FILE": "",
        "BACKUPSITE_DATA_DIR": str(tmp_path),
        "DEBUG": "1",
        "CELERY_BROKER_URL": "redis://127.0.0.1:1/0",
    }
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.stdout.strip() == "True", result.stderr


# --- production static files (issue 6, item 3) -------------------------------------------
def test_deploy_check_reports_missing_static_files_until_collectstatic(tmp_path, prod):
    static_root = tmp_path / "static"
    env = {**prod, "STATIC_ROOT": str(static_root)}
    before = manage(tmp_path, "check", "--deploy", **env)
    assert before.returncode != 0
    assert "backupsite.E004" in before.stderr and "staticfiles.json is missing" in before.stderr, before.stderr
    assert "collectstatic --noinput" in before.stderr  # the hint says what to do
    # The ordinary checks (all collectstatic runs) do not block the command that fixes it.
    collect = manage(tmp_path, "collectstatic", "--noinput", **env)
    assert collect.returncode == 0, collect.stderr
    after = manage(tmp_path, "check", "--deploy", **env)
    assert after.returncode == 0, after.stderr
    assert "backupsite.E004" not in after.stdout + after.stderr

    # A manifest from an older release that lacks a file the templates use is an error too.
    manifest = static_root / "staticfiles.json"
    data = json.loads(manifest.read_text())
    del data["paths"]["css/app.css"]
    manifest.write_text(json.dumps(data))
    stale = manage(tmp_path, "check", "--deploy", **env)
    assert stale.returncode != 0
    assert "backupsite.E004" in stale.stderr and "css/app.css" in stale.stderr, stale.stderr


def test_development_needs_no_collected_static_files(tmp_path):
    result = manage(tmp_path, "check", "--deploy", DEBUG="1", STATIC_ROOT=str(tmp_path / "static"))
    assert "backupsite.E004" not in result.stdout + result.stderr


def test_the_static_check_knows_what_the_base_template_needs():
    from backupsite.checks import template_static_files

    assert {"css/app.css", "js/app.js"} <= set(template_static_files())


def test_readme_production_without_docker_collects_static_files():
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"^## Production without Docker\n(?P<body>.*?)(?=^## )", readme, re.MULTILINE | re.DOTALL)
    assert match, "README.md has no 'Production without Docker' section"
    steps = match["body"]
    assert "manage.py collectstatic --noinput" in steps
    assert steps.index("collectstatic --noinput") < steps.index("gunicorn ")
    assert "check --deploy" in steps and "migrate --noinput" in steps


# --- data dir permissions (issue 6, item 4) ------------------------------------------------
def test_a_new_data_dir_is_private_and_the_check_is_quiet(tmp_path):
    result = manage(tmp_path, "check", DEBUG="1")
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "data" / "archives").stat().st_mode) == 0o700
    assert "backupsite.W003" not in result.stdout + result.stderr


@pytest.mark.parametrize(("which", "mode"), [("data", 0o755), ("data", 0o730), ("archives", 0o750)])
def test_a_data_dir_open_to_other_users_is_warned_about(tmp_path, which, mode):
    data = tmp_path / "data"
    (data / "archives").mkdir(parents=True)
    data.chmod(0o700)
    (data / "archives").chmod(0o700)
    (tmp_path / which if which == "data" else data / which).chmod(mode)
    result = manage(tmp_path, "check", "--fail-level", "WARNING", DEBUG="1")
    assert result.returncode != 0
    assert "backupsite.W003" in result.stderr and f"mode {mode:04o}" in result.stderr, result.stderr
    label = "BACKUPSITE_DATA_DIR" if which == "data" else "BACKUPSITE_ARCHIVE_DIR"
    assert label in result.stderr
    # Warned about, never changed behind the administrator's back.
    assert stat.S_IMODE((tmp_path / which if which == "data" else data / which).stat().st_mode) == mode
