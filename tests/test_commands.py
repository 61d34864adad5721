"""Management commands: runbackup's exit codes, loaddemo, bootstrapadmin."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from jobs.models import Run

ROOT = Path(__file__).resolve().parents[1]


def test_runbackup_succeeds_by_name_slug_or_id(job):
    for ref in ("Office backup", "office-backup", str(job.pk)):
        out = io.StringIO()
        call_command("runbackup", ref, stdout=out)
        assert "succeeded" in out.getvalue()
    assert Run.objects.filter(job=job, state=Run.State.SUCCEEDED, trigger=Run.Trigger.CLI).count() == 3


def test_runbackup_unknown_job_is_a_one_line_error(db):
    with pytest.raises(CommandError, match="No job named 'nope'"):
        call_command("runbackup", "nope")


def test_runbackup_failure_raises_with_the_runs_error(job, source_tree):
    source = job.sources.get()
    source.settings = {"path": str(source_tree / "gone")}
    source.save()
    with pytest.raises(CommandError, match=r"Run #\d+ failed: The directory .* does not exist"):
        call_command("runbackup", job.name, stdout=io.StringIO())


def test_runbackup_partial_exits_3(job, source_tree):
    os.mkfifo(source_tree / "fifo")
    with pytest.raises(SystemExit) as info:
        call_command("runbackup", job.name, stdout=io.StringIO(), stderr=io.StringIO())
    assert info.value.code == 3


def test_runbackup_refuses_when_already_running(job):
    from jobs import services

    services.create_run(job)
    with pytest.raises(CommandError, match="already running"):
        call_command("runbackup", job.name)


@pytest.mark.slow
def test_fresh_install_commands_and_exit_codes(tmp_path):
    """What `make run` does before starting the processes, then runbackup's real exit codes."""
    env = {
        "PATH": os.environ["PATH"],
        "DJANGO_SETTINGS_MODULE": "backupsite.settings",
        "BACKUPSITE_ENV_FILE": "",
        "BACKUPSITE_DATA_DIR": str(tmp_path / "var"),
        "DEBUG": "1",
    }

    def manage(*args):
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )

    assert manage("migrate", "--noinput").returncode == 0
    for _ in range(2):  # idempotent
        result = manage("loaddemo")
        assert result.returncode == 0, result.stderr
    first = manage("bootstrapadmin")
    assert "password:" in first.stdout
    assert "no administrator created" in manage("bootstrapadmin").stdout

    ok = manage("runbackup", "Demo backup")
    assert ok.returncode == 0, ok.stderr
    assert "succeeded" in ok.stdout
    assert list((tmp_path / "var" / "backups" / "backupsite" / "demo-backup").glob("*.tar.zst"))

    # The demo planning export: the newcomer's Run now, from the command line.
    exported = manage("runexport", "Demo planning export")
    assert exported.returncode == 0, exported.stderr
    assert "topics.xlsx" in exported.stdout and "succeeded" in exported.stdout
    planning = tmp_path / "var" / "backups" / "planning"
    assert sorted(p.name for p in planning.iterdir()) == ["appointments.xlsx", "topics.xlsx"]
    no_export = manage("runexport", "Nope")
    assert no_export.returncode == 1
    assert no_export.stderr.strip() == "CommandError: No planning export named 'Nope'."

    missing = manage("runbackup", "No such job")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "CommandError: No job named 'No such job'."
