"""Runs holding the panel's own database are for administrators only (issue 6, item 1):
every URL that reads a run's archive, per role; the run page says why; the job page
warns about password hashes in clear; the demo job leaves the panel database out. Also
the page for a download whose local copy is gone (item 6)."""

from __future__ import annotations

import sqlite3
from io import StringIO

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.core.management import call_command
from django.urls import reverse

from jobs import services
from jobs.models import Job, Run, Source
from jobs.sources import dbtools
from tests.conftest import grant_sudo, restore_with_stock_tools

MESSAGE = (
    "This backup contains the panel's own database (password hashes); only administrators can download, "
    "verify or restore it."
)


@pytest.fixture
def panel_file(tmp_path, monkeypatch):
    """The panel's database as a small SQLite file (the test database lives in memory)."""
    path = tmp_path / "var" / "db.sqlite3"
    path.parent.mkdir()
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE auth_user (id INTEGER PRIMARY KEY, password TEXT)")
    conn.execute("INSERT INTO auth_user (password) VALUES ('pbkdf2_sha256$hash')")
    conn.commit()
    conn.close()
    monkeypatch.setattr(
        dbtools, "panel_database_config", lambda: {"ENGINE": "django.db.backends.sqlite3", "NAME": str(path)}
    )
    return path


@pytest.fixture
def panel_job(job, panel_file) -> Job:
    """A job with a folder and the panel's database, unencrypted, to the same local disk."""
    panel = Source.panel_database()  # made by the migration
    panel_job = Job.objects.create(name="Panel backup")
    panel_job.sources.set([job.sources.get(), panel])
    panel_job.destinations.set(job.destinations.all())
    return panel_job


@pytest.fixture
def sensitive_run(panel_job) -> Run:
    run = services.execute_run(services.create_run(panel_job).pk)
    assert run.state == Run.State.SUCCEEDED, run.error
    assert run.is_sensitive
    return run


@pytest.fixture
def finished_run(job) -> Run:
    run = services.execute_run(services.create_run(job).pk)
    assert run.state == Run.State.SUCCEEDED and not run.is_sensitive
    return run


@pytest.fixture
def roots(settings, tmp_path):
    root = tmp_path / "restores"
    root.mkdir()
    settings.BACKUPSITE_RESTORE_ROOTS = [str(root)]
    return root


def archive_urls(run: Run, roots) -> list[tuple[str, str, dict | None]]:
    """(method, url, data) of every request that reads a run's archive."""
    verify = reverse("jobs:run_verify", args=[run.pk])
    restore = reverse("jobs:run_restore", args=[run.pk])
    return [
        ("get", reverse("jobs:run_download", args=[run.pk]), None),
        ("get", reverse("jobs:run_manifest", args=[run.pk]), None),
        ("get", verify, None),
        ("post", verify, {"location": "local"}),
        ("get", restore, None),
        ("post", restore, {"location": "local", "target": str(roots / f"run-{run.pk}")}),
    ]


def test_only_administrators_hold_the_sensitive_permission(alice, bob, charlie, dave):
    assert [u.has_perm(Run.SENSITIVE_PERMISSION) for u in (alice, bob, charlie, dave)] == [True, False, False, False]


@pytest.mark.parametrize("user", ["bob", "charlie", "dave"])
def test_every_archive_url_refuses_non_administrators(
    client, request, user, sensitive_run, roots, django_capture_on_commit_callbacks
):
    client.force_login(request.getfixturevalue(user))
    for method, url, data in archive_urls(sensitive_run, roots):
        with django_capture_on_commit_callbacks(execute=False) as queued:
            response = getattr(client, method)(url, data or {})
        assert response.status_code == 403, (method, url)
        assert queued == []
        if user == "bob" and "/restore/" not in url:  # past the view's own permission: it says why
            assert MESSAGE in response.content.decode(), url
    assert list(roots.iterdir()) == []
    sensitive_run.refresh_from_db()
    assert sensitive_run.verify_message == ""


def test_administrators_download_verify_and_restore_it(
    client, alice, sensitive_run, roots, tmp_path, django_capture_on_commit_callbacks
):
    client.force_login(alice)
    grant_sudo(client)  # restoring asks for the password again
    expected = {"get": 200, "post": 302}
    for method, url, data in archive_urls(sensitive_run, roots):
        with django_capture_on_commit_callbacks(execute=True):
            response = getattr(client, method)(url, data or {})
        assert response.status_code == expected[method], (method, url)
    archive = tmp_path / "download.tar.zst"
    response = client.get(reverse("jobs:run_download", args=[sensitive_run.pk]))
    archive.write_bytes(b"".join(response.streaming_content))
    restore_with_stock_tools(archive, tmp_path / "out")
    assert (tmp_path / "out" / "panel-database" / "backupsite.sqlite3").is_file()
    assert (roots / f"run-{sensitive_run.pk}" / "panel-database" / "backupsite.sqlite3").is_file()
    sensitive_run.refresh_from_db()
    assert sensitive_run.verify_ok is True


def test_a_permission_decides_never_a_group_name(client, sensitive_run, roots, django_capture_on_commit_callbacks):
    """A site-made group with every other permission is refused; the one permission opens it."""
    group = Group.objects.create(name="night shift")
    for codename in ("view_run", "view_job", "download_run", "run_job", "change_job"):
        group.permissions.add(Permission.objects.get(codename=codename))
    user = User.objects.create_user("erin", password="erin-password")
    user.groups.add(group)
    client.force_login(user)
    urls = archive_urls(sensitive_run, roots)
    with django_capture_on_commit_callbacks(execute=False):
        assert {getattr(client, m)(u, d or {}).status_code for m, u, d in urls} == {403}
    group.permissions.add(Permission.objects.get(codename="access_sensitive_run"))
    user = User.objects.get(pk=user.pk)  # fresh permission cache
    client.force_login(user)
    with django_capture_on_commit_callbacks(execute=False):
        assert client.get(urls[0][1]).status_code == 200


def test_operators_still_run_it_and_download_ordinary_runs(
    client, bob, panel_job, finished_run, django_capture_on_commit_callbacks
):
    client.force_login(bob)
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post(reverse("jobs:job_run_now", args=[panel_job.pk]))
    assert response.status_code == 302 and Run.objects.filter(job=panel_job).exists()
    response = client.get(reverse("jobs:run_download", args=[finished_run.pk]))
    assert response.status_code == 200


def test_the_run_page_says_why_the_download_button_is_missing(client, alice, bob, sensitive_run):
    download = reverse("jobs:run_download", args=[sensitive_run.pk])
    verify = 'action="' + reverse("jobs:run_verify", args=[sensitive_run.pk])
    restore = reverse("jobs:run_restore", args=[sensitive_run.pk])
    fragment = reverse("jobs:run_progress", args=[sensitive_run.pk])
    client.force_login(bob)
    for page in (client.get(sensitive_run.get_absolute_url()), client.get(fragment)):
        html = page.content.decode()
        assert MESSAGE in html
        assert download not in html and verify not in html and restore not in html
    client.force_login(alice)
    html = client.get(sensitive_run.get_absolute_url()).content.decode()
    assert MESSAGE not in html
    assert download in html and verify in html and restore in html


def test_sensitivity_comes_from_the_runs_snapshot():
    def run(*sources):
        return Run(config={"sources": list(sources)})

    assert not run().is_sensitive and not Run(config={}).is_sensitive
    assert not run({"kind": "directory"}, {"kind": "sqlite"}).is_sensitive
    assert run({"kind": "directory"}, {"kind": "panel_database"}).is_sensitive
    assert run({"kind": "directory", "sensitive": True}).is_sensitive  # a source marked sensitive
    assert run({"kind": "removed-kind"}).is_sensitive  # unknown: fail closed


# --- the warning ----------------------------------------------------------------------
def test_the_job_page_warns_about_password_hashes_in_clear(client, charlie, job, panel_job):
    warning = "password hashes would leave this server in clear. Set a backup password."
    client.force_login(charlie)
    assert panel_job.sensitive_in_clear and not job.sensitive_in_clear
    assert warning in client.get(panel_job.get_absolute_url()).content.decode()
    assert warning not in client.get(job.get_absolute_url()).content.decode()
    panel_job.set_backup_password("a long backup password")
    panel_job.save()
    assert not panel_job.sensitive_in_clear
    assert warning not in client.get(panel_job.get_absolute_url()).content.decode()


def test_the_rule_works_on_unsaved_choices_for_the_wizard():
    panel, files = Source(kind="panel_database"), Source(kind="directory")
    assert Job.is_sensitive_in_clear(Job.Encryption.NONE, [files, panel])
    assert not Job.is_sensitive_in_clear(Job.Encryption.NONE, [files])
    assert not Job.is_sensitive_in_clear(Job.Encryption.PASSWORD, [panel])
    assert not Job.is_sensitive_in_clear(Job.Encryption.RECIPIENT, [panel])


# --- the demo -------------------------------------------------------------------------
@pytest.fixture
def demo_dirs(settings, tmp_path, panel_file):
    settings.DATA_DIR = tmp_path / "var"
    settings.BACKUPSITE_LOCAL_BACKUP_DIR = tmp_path / "var" / "backups"
    settings.BACKUPSITE_LOCAL_ROOTS = [str(tmp_path / "var" / "backups")]


def test_the_demo_job_leaves_the_panel_database_out(db, demo_dirs):
    call_command("loaddemo", stdout=StringIO())
    job = Job.objects.get(name="Demo backup")
    assert [s.name for s in job.sources.all()] == ["Demo files"]
    assert Source.objects.filter(kind="panel_database", name="Panel database").exists()  # still in the list
    assert not job.sensitive_in_clear


def test_loaddemo_takes_the_panel_database_out_of_an_older_demo_job(db, demo_dirs):
    call_command("loaddemo", stdout=StringIO())
    job = Job.objects.get(name="Demo backup")
    panel = Source.objects.get(kind="panel_database")
    job.sources.add(panel)  # as loaddemo made it before
    out = StringIO()
    call_command("loaddemo", stdout=out)
    assert "Removed the panel database from “Demo backup”" in out.getvalue()
    assert not job.sources.filter(pk=panel.pk).exists()

    job.sources.add(panel)  # an administrator who encrypted it keeps it
    job.set_backup_password("a long backup password")
    job.save()
    call_command("loaddemo", stdout=StringIO())
    assert job.sources.filter(pk=panel.pk).exists()


# --- a download whose local copy is gone ----------------------------------------------
@pytest.mark.parametrize("debug", [True, False])
def test_a_gone_local_copy_says_where_the_backup_still_is(client, bob, finished_run, folders, settings, debug):
    settings.DEBUG = debug
    local = finished_run.local_file
    local.unlink()
    local.with_name(local.name + ".manifest.json").unlink()
    client.force_login(bob)
    # While the destination holds it, the download streams from there (tests/test_download_ranges.py);
    # once no readable copy is left, the page says where the backup was stored.
    assert client.get(reverse("jobs:run_download", args=[finished_run.pk])).status_code == 200
    remote = folders["backups"] / "backupsite" / "office-backup"
    for leftover in remote.iterdir():
        leftover.unlink()
    for name in ("jobs:run_download", "jobs:run_manifest"):
        response = client.get(reverse(name, args=[finished_run.pk]))
        html = response.content.decode()
        assert response.status_code == 404
        assert "This backup is no longer on this server; it is still at:" in html
        assert "Local disk" in html and f"Server hard drive: {folders['backups']}" in html
        assert f"backupsite/office-backup/{finished_run.archive_name}" in html
        assert "css/app.css" in html and "There is nothing at this address" not in html


def test_a_gone_local_copy_without_any_upload_is_nowhere(client, bob, finished_run):
    finished_run.uploads.update(state="failed")
    finished_run.local_file.unlink()
    client.force_login(bob)
    response = client.get(reverse("jobs:run_download", args=[finished_run.pk]))
    assert response.status_code == 404
    html = response.content.decode()
    assert "it is nowhere any more" in html and "it is still at" not in html


def test_a_gone_sensitive_copy_is_still_refused_first(client, bob, sensitive_run):
    sensitive_run.local_file.unlink()
    client.force_login(bob)
    response = client.get(reverse("jobs:run_download", args=[sensitive_run.pk]))
    assert response.status_code == 403 and "Local disk" not in response.content.decode()
