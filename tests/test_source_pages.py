"""Source pages: administrators create, edit, test, measure and delete sources of every
registered kind through the configuration-write layer; other roles see them. The panel's
own database is always there (a data migration makes it; loaddemo never makes a second)
and cannot be deleted; a source a job uses cannot be deleted either (the page names the
jobs). *Test* connects to real PostgreSQL and MariaDB servers on loopback and reports
their version and size; no page ever shows a stored secret (RELIABILITY 18, 22)."""

from __future__ import annotations

import importlib
from io import StringIO

import pytest
from django.apps import apps as global_apps
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from backupsite.ratelimit import LIMITS
from jobs import services
from jobs.models import Job, Run, Source, SourceUndeletable

pytest_plugins = ["tests.servers"]

SECRET = "Hunter2-secret-value"


@pytest.fixture
def admin(client, alice):
    client.force_login(alice)
    return client


def create(client, kind: str, name: str, settings: dict, **extra):
    data = {"name": name, "kind": kind, "action": "save", **{f"{kind}-{k}": v for k, v in settings.items()}, **extra}
    return client.post(reverse("jobs:source_create"), data)


# --- the panel's own database ------------------------------------------------------------
def test_the_migration_made_the_panel_database_source(db):
    panel = Source.objects.get(kind="panel_database")
    assert (panel.name, panel.slug, panel.is_permanent, panel.is_sensitive) == (
        "Panel database",
        "panel-database",
        True,
        True,
    )


def test_the_migration_is_idempotent_and_avoids_taken_names(db):
    migration = importlib.import_module("jobs.migrations.0013_panel_database_source")
    migration.create_panel_source(global_apps, None)
    assert Source.objects.filter(kind="panel_database").count() == 1
    Source.objects.filter(kind="panel_database").delete()  # queryset delete: only a flushed database loses it
    Source.objects.create(name="Panel database", kind="directory", settings={"path": "/srv"})
    migration.create_panel_source(global_apps, None)
    panel = Source.objects.get(kind="panel_database")
    assert panel.name == "Panel database (2)" and panel.slug == "panel-database-2"


def test_there_is_never_a_second_panel_database_source(db):
    from django.db import IntegrityError, transaction

    with pytest.raises(IntegrityError), transaction.atomic():
        Source.objects.create(name="Another panel", kind="panel_database")
    assert Source.panel_database() == Source.objects.get(kind="panel_database")


def test_loaddemo_does_not_duplicate_it(db, settings, tmp_path, monkeypatch):
    import sqlite3

    from jobs.sources import dbtools

    (tmp_path / "var").mkdir()
    sqlite3.connect(tmp_path / "var" / "db.sqlite3").close()  # the test database itself lives in memory
    config = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "var" / "db.sqlite3")}
    monkeypatch.setattr(dbtools, "panel_database_config", lambda: config)
    settings.DATA_DIR = tmp_path / "var"
    settings.BACKUPSITE_LOCAL_BACKUP_DIR = tmp_path / "var" / "backups"
    settings.BACKUPSITE_LOCAL_ROOTS = [str(settings.BACKUPSITE_LOCAL_BACKUP_DIR)]
    call_command("loaddemo", stdout=StringIO())
    call_command("loaddemo", stdout=StringIO())
    assert Source.objects.filter(kind="panel_database").count() == 1
    assert Source.objects.filter(name__startswith="Panel database").count() == 1


def test_the_panel_database_cannot_be_deleted(admin, config_changes):
    panel = Source.objects.get(kind="panel_database")
    url = reverse("jobs:source_delete", args=[panel.pk])
    page = admin.get(url).content.decode()
    assert "always a source" in page and 'type="submit"' not in page.split("<main")[1].split("</main>")[0]
    response = admin.post(url)
    assert response.status_code == 409 and "cannot be deleted" in response.content.decode()
    with pytest.raises(SourceUndeletable):
        panel.delete()
    assert Source.objects.filter(pk=panel.pk).exists() and config_changes == []
    assert "Delete" not in admin.get(panel.get_absolute_url()).content.decode().split("<dl")[0].split("<h1>")[1]


def test_the_panel_database_cannot_be_created_from_the_page(admin):
    response = create(admin, "panel_database", "Second panel", {})
    assert response.status_code == 200 and "Select a valid choice" in response.content.decode()
    assert Source.objects.filter(kind="panel_database").count() == 1


# --- who may do what -----------------------------------------------------------------------
@pytest.mark.parametrize("user", ["bob", "charlie"])
def test_other_roles_see_but_do_not_change(db, client, request, user, tmp_path):
    source = Source.objects.create(name="Files", kind="directory", settings={"path": str(tmp_path)})
    client.force_login(request.getfixturevalue(user))
    page = client.get(reverse("jobs:source_list")).content.decode()
    assert "Files" in page and "Panel database" in page and reverse("jobs:source_create") not in page
    assert client.get(source.get_absolute_url()).status_code == 200
    for method, name in [
        ("get", "jobs:source_create"),
        ("post", "jobs:source_create"),
    ]:
        assert getattr(client, method)(reverse(name)).status_code == 403
    for method, name in [
        ("get", "jobs:source_edit"),
        ("post", "jobs:source_edit"),
        ("post", "jobs:source_test"),
        ("post", "jobs:source_measure"),
        ("get", "jobs:source_delete"),
        ("post", "jobs:source_delete"),
    ]:
        assert getattr(client, method)(reverse(name, args=[source.pk])).status_code == 403, name
    assert Source.objects.filter(pk=source.pk).exists()


def test_create_needs_csrf(alice, tmp_path):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    assert create(client, "directory", "Files", {"path": str(tmp_path)}).status_code == 403


# --- create, edit ---------------------------------------------------------------------------
def test_the_new_source_page_has_every_creatable_kind(admin):
    page = admin.get(reverse("jobs:source_create")).content.decode()
    for kind in ("directory", "postgresql", "mysql", "sqlite"):
        assert f'id="kind-{kind}"' in page and f'data-kind="{kind}"' in page
    assert 'id="kind-panel_database"' not in page
    assert "js/kind-form.js" in page


def test_create_a_directory_source_through_configwrite(admin, alice, tmp_path, config_changes):
    response = create(admin, "directory", "Office files", {"path": str(tmp_path), "exclude": "*.tmp\n*.bak"})
    source = Source.objects.get(name="Office files")
    assert response.status_code == 302 and response["Location"] == source.get_absolute_url()
    assert source.settings == {"path": str(tmp_path), "exclude": ["*.tmp", "*.bak"]}
    assert [c.action for c in config_changes] == ["created"] and config_changes[0].actor == alice
    page = admin.get(source.get_absolute_url()).content.decode()
    assert f"Directory {tmp_path}" in page


def test_other_kinds_fieldsets_are_ignored(admin, tmp_path):
    data = {"mysql-database": "--bad", "postgresql-database": ""}  # typed into other kinds' fields
    response = create(admin, "directory", "Files", {"path": str(tmp_path)}, **data)
    assert response.status_code == 302 and Source.objects.get(name="Files").kind == "directory"


def test_errors_show_next_to_their_field(admin, settings, tmp_path):
    settings.BACKUPSITE_SOURCE_ROOTS = [str(tmp_path / "allowed")]
    (tmp_path / "allowed").mkdir()
    response = create(admin, "directory", "Files", {"path": "/etc/../root"})
    page = response.content.decode()
    assert response.status_code == 200 and not Source.objects.filter(name="Files").exists()
    fieldset = page.split('data-kind="directory"')[1].split("</fieldset>")[0]
    assert "must not contain “..”" in fieldset
    response = create(admin, "directory", "Files", {"path": "/etc"})
    assert "inside one of the allowed folders" in response.content.decode()


def test_a_duplicate_name_is_an_error(admin, tmp_path):
    create(admin, "directory", "Files", {"path": str(tmp_path)})
    response = create(admin, "directory", "Files", {"path": str(tmp_path)})
    assert response.status_code == 200 and "already exists" in response.content.decode()


def test_edit_never_shows_the_password_and_blank_keeps_it(admin, config_changes):
    source = Source.objects.create(
        name="Shop",
        kind="mysql",
        settings={"host": "db.example", "database": "shop", "user": "bk"},
        secrets={"password": SECRET},
    )
    url = reverse("jobs:source_edit", args=[source.pk])
    page = admin.get(url).content.decode()
    assert SECRET not in page and 'value="db.example"' in page and "A value is stored" in page
    assert 'id="kind-postgresql"' not in page  # the kind of a source cannot be changed
    assert SECRET not in admin.get(source.get_absolute_url()).content.decode()
    data = {"name": "Shop", "action": "save", "mysql-host": "db2.example", "mysql-database": "shop"}
    data.update({"mysql-user": "bk", "mysql-password": ""})
    assert admin.post(url, data).status_code == 302
    source.refresh_from_db()
    assert source.secrets == {"password": SECRET} and source.settings["host"] == "db2.example"
    shown = {c.field: c.display for c in config_changes[-1].changes}
    assert shown == {"settings.host": "db.example → db2.example"}
    assert admin.post(url, {**data, "mysql-password": "new-secret"}).status_code == 302
    source.refresh_from_db()
    assert source.secrets == {"password": "new-secret"}
    shown = {c.field: c.display for c in config_changes[-1].changes}
    assert shown == {"secrets.password": "changed"}
    assert "new-secret" not in repr(config_changes[-1])
    # Errors on an edit never echo the stored or the typed password.
    page = admin.post(url, {**data, "mysql-database": "--x", "mysql-password": "typed-now"}).content.decode()
    assert "new-secret" not in page and "typed-now" not in page and "must not start with" in page


def test_changing_the_settings_forgets_the_old_size(admin, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    source = Source.objects.create(name="Files", kind="directory", settings={"path": str(tmp_path / "a")})
    source.measure()
    url = reverse("jobs:source_edit", args=[source.pk])
    admin.post(url, {"name": "Files renamed", "action": "save", "directory-path": str(tmp_path / "a")})
    source.refresh_from_db()
    assert source.size_bytes is not None  # only the name changed
    admin.post(url, {"name": "Files", "action": "save", "directory-path": str(tmp_path / "b")})
    source.refresh_from_db()
    assert source.size_bytes is None and source.size_measured_at is None


def test_measure_from_the_page(admin, source_tree):
    source = Source.objects.create(name="Files", kind="directory", settings={"path": str(source_tree)})
    response = admin.post(reverse("jobs:source_measure", args=[source.pk]), follow=True)
    source.refresh_from_db()
    assert source.file_count == 5 and source.size_bytes > 3 * 1024 * 1024
    assert "Measured “Files”" in response.content.decode()


# --- delete ------------------------------------------------------------------------------
def test_delete_is_refused_while_a_job_uses_the_source_naming_the_jobs(admin, job, config_changes):
    source = job.sources.get()
    other = Job.objects.create(name="Second job")
    other.sources.set([source])
    url = reverse("jobs:source_delete", args=[source.pk])
    page = admin.get(url).content.decode()
    assert "Office backup" in page and "Second job" in page and 'class="btn danger"' not in page
    response = admin.post(url)
    text = response.content.decode()
    assert response.status_code == 409
    assert "it is part of 2 job(s): “Office backup”, “Second job”" in text
    assert Source.objects.filter(pk=source.pk).exists() and config_changes == []


def test_delete_an_unused_source(admin, tmp_path, config_changes):
    source = Source.objects.create(name="Old files", kind="directory", settings={"path": str(tmp_path)})
    response = admin.post(reverse("jobs:source_delete", args=[source.pk]), follow=True)
    assert "Source “Old files” deleted" in response.content.decode()
    assert not Source.objects.filter(pk=source.pk).exists()
    assert [c.action for c in config_changes] == ["deleted"]


# --- run time: the same rules ---------------------------------------------------------------
def test_a_run_refuses_a_directory_outside_the_source_roots(job, settings, tmp_path):
    settings.BACKUPSITE_SOURCE_ROOTS = [str(tmp_path / "elsewhere")]
    run = services.execute_run(services.create_run(job).pk)
    assert run.state == Run.State.FAILED
    assert "inside one of the allowed folders (BACKUPSITE_SOURCE_ROOTS)" in run.error


# --- Test ---------------------------------------------------------------------------------
def test_test_a_sqlite_source_before_saving(admin, tmp_path):
    import sqlite3

    path = tmp_path / "app.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    data = {"name": "App", "kind": "sqlite", "action": "test", "sqlite-path": str(path)}
    response = admin.post(reverse("jobs:source_create"), data, headers={"X-Requested-With": "fetch"})
    text = response.content.decode()
    assert response.status_code == 200 and "Test passed." in text and f"SQLite {sqlite3.sqlite_version}" in text
    assert "<html" not in text and not Source.objects.filter(name="App").exists()  # a fragment; nothing saved
    page = admin.post(reverse("jobs:source_create"), {**data, "sqlite-path": str(tmp_path / "nope.db")})
    assert "Test failed." in page.content.decode() and "does not exist" in page.content.decode()


def test_a_test_with_errors_answers_422_to_the_script(admin):
    data = {"name": "Shop", "kind": "postgresql", "action": "test", "postgresql-database": "--bad"}
    assert admin.post(reverse("jobs:source_create"), data, headers={"X-Requested-With": "fetch"}).status_code == 422
    page = admin.post(reverse("jobs:source_create"), data).content.decode()
    assert "Correct the settings marked below" in page and "must not start with" in page


def test_postgresql_test_reports_version_and_size(admin, postgres_server):
    database = postgres_server.create_database()
    settings = {k: str(v) for k, v in postgres_server.settings(database).items()}
    data = {"name": "Shop", "kind": "postgresql", "action": "test"}
    data.update({f"postgresql-{k}": v for k, v in settings.items()})
    data["postgresql-password"] = postgres_server.password
    response = admin.post(reverse("jobs:source_create"), data, headers={"X-Requested-With": "fetch"})
    text = response.content.decode()
    assert "Test passed." in text and "PostgreSQL 1" in text and ("KB" in text or "MB" in text)
    assert postgres_server.password not in text
    data["postgresql-password"] = "wrong-" + SECRET
    text = admin.post(reverse("jobs:source_create"), data, headers={"X-Requested-With": "fetch"}).content.decode()
    assert "Test failed." in text and "password authentication failed" in text and SECRET not in text


def test_mariadb_test_of_a_saved_source(admin, mariadb_server):
    database = mariadb_server.create_database()
    source = Source.objects.create(
        name="Web shop",
        kind="mysql",
        settings=mariadb_server.settings(database),
        secrets={"password": mariadb_server.password},
    )
    response = admin.post(reverse("jobs:source_test", args=[source.pk]), follow=True)
    text = response.content.decode()
    assert "Connected to" in text and "Server: MariaDB" in text and "Size:" in text
    assert mariadb_server.password not in text
    fragment = admin.post(reverse("jobs:source_test", args=[source.pk]), headers={"X-Requested-With": "fetch"})
    assert "Test passed." in fragment.content.decode()


def test_the_panel_database_tests_too(admin, tmp_path, monkeypatch):
    import sqlite3

    from jobs.sources import dbtools

    path = tmp_path / "db.sqlite3"
    sqlite3.connect(path).close()
    monkeypatch.setattr(
        dbtools, "panel_database_config", lambda: {"ENGINE": "django.db.backends.sqlite3", "NAME": str(path)}
    )
    panel = Source.objects.get(kind="panel_database")
    text = admin.post(reverse("jobs:source_test", args=[panel.pk]), follow=True).content.decode()
    assert "is a SQLite database" in text


def test_the_test_button_is_rate_limited(admin, tmp_path, settings):
    settings.BACKUPSITE_RATE_LIMITS = {"source-test": (2, 60)}
    assert "source-test" in LIMITS
    data = {"name": "App", "kind": "sqlite", "action": "test", "sqlite-path": str(tmp_path / "x.db")}
    statuses = [
        admin.post(reverse("jobs:source_create"), data, headers={"X-Requested-With": "fetch"}).status_code
        for _ in range(3)
    ]
    assert statuses == [200, 200, 429]


def test_a_source_of_a_kind_no_longer_installed_is_shown_not_edited(admin):
    source = Source.objects.create(name="Old kind", kind="gone", settings={})
    page = admin.get(source.get_absolute_url()).content.decode()
    assert "Unknown source kind" in page and reverse("jobs:source_edit", args=[source.pk]) not in page
    response = admin.get(reverse("jobs:source_edit", args=[source.pk]), follow=True)
    assert "cannot be edited" in response.content.decode()
