"""pg_dump against the PostgreSQL server it dumps (issue 12, item 2).

pg_dump refuses a server of a newer major version than its own. The panel compares
``pg_dump --version`` with the server's ``SHOW server_version_num``: the PostgreSQL
source fails before dumping with a message naming the client to install, and the system
check ``backupsite.E005`` reports it for the panel's own database (``migrate``,
``check --database default``). Tested against the PostgreSQL the tests start, with the
real ``pg_dump`` the panel finds and with a fake older one first on PATH (a shell script
that only answers ``--version``: no older PostgreSQL client is installed here).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core import mail

from destinations.models import Destination
from jobs import services
from jobs.models import Job, Run, Source
from jobs.sources.postgres import Major, PostgresConf, client_version, pg_tool, server_version

pytest_plugins = ["tests.servers"]

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.stack_independent
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)", Major(15)),
        ("pg_dump (PostgreSQL) 18.1", Major(18)),
        ("pg_dump (PostgreSQL) 17beta2", Major(17)),
        ("pg_dump (PostgreSQL) 9.6.24", Major(9, 6)),
        ("pg_dump (PostgreSQL) 9.2.4", Major(9, 2)),
        ("pg_dump: unknown", None),
    ],
)
def test_client_versions(text, expected):
    assert Major.from_text(text) == expected


@pytest.mark.stack_independent
def test_server_versions_and_their_order():
    assert Major.from_server_version_num("170002") == Major(17)
    assert Major.from_server_version_num(150018) == Major(15)
    assert Major.from_server_version_num("90624") == Major(9, 6)
    assert Major(9, 6) < Major(10) < Major(15) < Major(17)
    assert Major(9, 2) < Major(9, 6)
    assert str(Major(9, 6)) == "9.6" and str(Major(17)) == "17"


def fake_pg_dump(folder: Path, version: str) -> Path:
    """A ``pg_dump`` that says it is *version* and records any other use."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "pg_dump"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "--version" ]; then echo "pg_dump (PostgreSQL) {version}"; exit 0; fi\n'
        f'echo "$@" >> "{folder}/dumped"\n'
        "exit 1\n"
    )
    script.chmod(0o755)
    return script


def older_than(server: Major) -> str:
    return "9.6.24" if server <= Major(10) else f"{server.number - 1}.9"


@pytest.fixture
def server_major(postgres_server) -> Major:
    conf = PostgresConf.parse({**postgres_server.settings("postgres")})
    return server_version(conf, postgres_server.password)


def test_the_pg_dump_the_panel_finds_dumps_the_server_the_tests_start(postgres_server, server_major):
    tool = pg_tool("pg_dump")
    found = client_version(tool)
    assert found is not None, f"{tool} --version says no version"
    assert found >= server_major, f"pg_dump {found} ({tool}) is older than the test server {server_major}"
    with postgres_server.connect() as conn:
        number = conn.execute("SHOW server_version_num").fetchone()[0]
    assert Major.from_server_version_num(number) == server_major


def make_pg_job(postgres_server, folders) -> Job:  # needs the db fixture
    database = postgres_server.create_database()
    source = Source.objects.create(
        name="Shop database",
        kind="postgresql",
        settings=postgres_server.settings(database),
        secrets={"password": postgres_server.password},
    )
    destination = Destination.objects.create(name="Disk", kind="local", settings={"path": str(folders["backups"])})
    job = Job.objects.create(name="Shop backup", report_to="ops@example.com")
    job.sources.set([source])
    job.destinations.set([destination])
    return job


def test_a_pg_dump_older_than_the_server_fails_the_run_before_dumping(
    db, postgres_server, server_major, folders, tmp_path, monkeypatch
):
    old = older_than(server_major)
    fake = fake_pg_dump(tmp_path / "old-client", old)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    assert pg_tool("pg_dump") == str(fake)
    job = make_pg_job(postgres_server, folders)

    run = services.execute_run(services.create_run(job).pk)

    assert run.state == Run.State.FAILED
    assert f"pg_dump {Major.from_text(f'(PostgreSQL) {old}')} ({fake})" in run.error
    assert f"cannot dump the PostgreSQL {server_major} server" in run.error
    assert f"postgresql-client-{server_major}" in run.error
    assert not (fake.parent / "dumped").exists(), "the old pg_dump was started to dump"
    assert postgres_server.password not in run.error + run.log
    assert len(mail.outbox) == 1 and f"cannot dump the PostgreSQL {server_major} server" in mail.outbox[0].body


def test_a_pg_dump_as_new_as_the_server_passes_the_check(
    db, postgres_server, server_major, folders, tmp_path, monkeypatch
):
    """The check lets an equal version through: the fake then runs, and fails the way
    pg_dump would, with its own message."""
    fake = fake_pg_dump(tmp_path / "same-client", f"{server_major}.99")
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    job = make_pg_job(postgres_server, folders)

    run = services.execute_run(services.create_run(job).pk)

    assert run.state == Run.State.FAILED
    assert (fake.parent / "dumped").read_text().startswith("-Fc "), "the dump was not attempted"
    assert "cannot dump the PostgreSQL" not in run.error


def check_panel_database(postgres_server, database: str, path: str, data: Path) -> subprocess.CompletedProcess:
    """``manage.py check --database default`` of a panel whose database is *database* on
    the test server, with *path* as PATH."""
    env = {
        "PATH": path,
        "DJANGO_SETTINGS_MODULE": "backupsite.settings",
        "BACKUPSITE_ENV_FILE": "",
        "BACKUPSITE_DATA_DIR": str(data),
        "DEBUG": "1",
        "DATABASE_URL": postgres_server.url(database),
    }
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--database", "default"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_system_check_reports_a_pg_dump_older_than_the_panel_database(postgres_server, server_major, tmp_path):
    database = postgres_server.create_database()
    good = check_panel_database(postgres_server, database, os.environ["PATH"], tmp_path / "data")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "backupsite.E005" not in good.stdout + good.stderr

    fake = fake_pg_dump(tmp_path / "old-client", older_than(server_major))
    path = f"{fake.parent}{os.pathsep}{os.environ['PATH']}"
    bad = check_panel_database(postgres_server, database, path, tmp_path / "data")
    output = bad.stdout + bad.stderr
    assert bad.returncode != 0, output
    assert "backupsite.E005" in output
    assert f"cannot dump the PostgreSQL {server_major} server of the panel's own database" in output
    assert "apt.postgresql.org" in output
    assert postgres_server.password not in output
