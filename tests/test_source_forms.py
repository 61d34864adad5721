"""The source kind forms, one per registered kind (named by the kind class): paths checked
as RELIABILITY 18 asks (``../``, NUL, a symlink escaping an allowed root, ``..\\``, the
panel's own files), names that reach a command line, secrets never rendered back and
kept when left blank (RELIABILITY 22), errors next to their field."""

from __future__ import annotations

import os

import pytest

from jobs.models import Source
from jobs.sources import REGISTRY
from jobs.sources.forms import (
    DirectoryForm,
    MysqlForm,
    PanelDatabaseForm,
    PostgresForm,
    SourceKindForm,
    SqliteForm,
    kind_form,
)

SECRET = "Hunter2-secret-\"quote'"


def bound(cls, data: dict, **kwargs) -> SourceKindForm:
    prefix = cls.kind_class.kind
    return cls({f"{prefix}-{k}": v for k, v in data.items()}, **kwargs)


@pytest.fixture
def allowed(tmp_path, settings):
    """An allowed root with a folder inside, and a folder outside it."""
    root = tmp_path / "allowed"
    (root / "office").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    settings.BACKUPSITE_SOURCE_ROOTS = [str(root)]
    return root


def test_every_kind_names_its_form():
    for kind, cls in REGISTRY.items():
        form_class = cls.form_class()
        assert issubclass(form_class, SourceKindForm) and form_class.kind_class is cls, kind


def test_a_good_directory(tmp_path):
    form = bound(DirectoryForm, {"path": str(tmp_path) + "/", "include": "*.pdf\n\n  docs/** \n", "exclude": "*.tmp"})
    assert form.is_valid(), form.errors
    assert form.settings_to_store(form.cleaned_data) == {
        "path": str(tmp_path),
        "include": ["*.pdf", "docs/**"],
        "exclude": ["*.tmp"],
    }


@pytest.mark.parametrize(
    "path, message",
    [
        ("relative/dir", "must be absolute"),
        ("{root}/office/../../outside", "must not contain “..”"),
        ("../../etc", "must be absolute"),
        ("{root}/of\x00fice", "not allowed"),
        ("{root}\\..\\..\\etc", "backslashes"),
        ("..\\..\\etc", "backslashes"),
        ("{root}/office\nx", "not allowed"),
        ("/etc", "inside one of the allowed folders"),
        ("{outside}", "inside one of the allowed folders"),
        ("", "required"),
    ],
)
def test_bad_directory_paths_are_errors_at_the_path_field(allowed, path, message):
    value = path.format(root=allowed, outside=allowed.parent / "outside")
    form = bound(DirectoryForm, {"path": value})
    assert not form.is_valid()
    assert message in " ".join(form.errors["path"]), form.errors


def test_a_symlink_escaping_an_allowed_root_is_refused(allowed):
    os.symlink("/etc", allowed / "etc-link")
    os.symlink(allowed / "office", allowed / "inside-link")
    form = bound(DirectoryForm, {"path": str(allowed / "etc-link")})
    assert not form.is_valid()
    assert "leads to /etc (a symbolic link), outside the allowed folders" in form.errors["path"][0]
    assert bound(DirectoryForm, {"path": str(allowed / "inside-link")}).is_valid()


def test_without_source_roots_any_folder_but_the_panels_own(tmp_path, settings):
    settings.BACKUPSITE_SOURCE_ROOTS = []
    assert bound(DirectoryForm, {"path": str(tmp_path)}).is_valid()
    for panel_path in (settings.BACKUPSITE_ARCHIVE_DIR, settings.DATA_DIR / "restores", settings.DATA_DIR / "broker"):
        form = bound(DirectoryForm, {"path": str(panel_path)})
        assert not form.is_valid()
        assert "never backs up the panel's own files" in form.errors["path"][0]


def test_bad_patterns(tmp_path):
    form = bound(DirectoryForm, {"path": str(tmp_path), "exclude": "ok\n" + "\x01bad"})
    assert not form.is_valid() and "not a usable pattern" in form.errors["exclude"][0]


def test_sqlite_paths(allowed, settings, tmp_path):
    assert bound(SqliteForm, {"path": str(allowed / "office" / "app.sqlite3")}).is_valid()
    form = bound(SqliteForm, {"path": str(tmp_path / "outside" / "app.sqlite3")})
    assert not form.is_valid() and "allowed folders" in form.errors["path"][0]
    form = bound(SqliteForm, {"path": str(allowed / "office") + "/../x.db"})
    assert not form.is_valid() and "“..”" in form.errors["path"][0]


def test_sqlite_never_the_panels_own_database_file(tmp_path, settings, monkeypatch):
    from jobs.sources import dbtools

    settings.BACKUPSITE_SOURCE_ROOTS = []
    panel = tmp_path / "var" / "db.sqlite3"
    panel.parent.mkdir()
    panel.write_bytes(b"")
    monkeypatch.setattr(
        dbtools, "panel_database_config", lambda: {"ENGINE": "django.db.backends.sqlite3", "NAME": str(panel)}
    )
    form = bound(SqliteForm, {"path": str(panel)})
    assert not form.is_valid()
    assert "the panel's database" in form.errors["path"][0]


@pytest.mark.parametrize("cls", [PostgresForm, MysqlForm])
@pytest.mark.parametrize(
    "data, field, message",
    [
        ({}, "database", "required"),
        ({"database": "--help"}, "database", "must not start with “-”"),
        ({"database": "shop", "host": "-oProxyCommand=x"}, "host", "must not start with “-”"),
        ({"database": "shop", "user": "-U"}, "user", "must not start with “-”"),
        ({"database": "shop", "port": "70000"}, "port", "less than or equal to 65535"),
        ({"database": "shop", "port": "5x"}, "port", "whole number"),
        ({"database": "shop\nDROP"}, "database", "control characters"),
    ],
)
def test_database_settings_errors_land_at_their_field(cls, data, field, message):
    form = bound(cls, {"password": "", **data})
    assert not form.is_valid()
    assert message in " ".join(form.errors.get(field, [])), form.errors


def test_postgres_ssl_mode_and_defaults():
    form = bound(PostgresForm, {"database": "shop", "sslmode": "verify-full", "port": ""})
    assert form.is_valid(), form.errors
    assert form.settings_to_store(form.cleaned_data) == {"database": "shop", "sslmode": "verify-full"}
    assert not bound(PostgresForm, {"database": "shop", "sslmode": "bogus"}).is_valid()


@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
def test_secrets_are_never_rendered_and_blank_keeps_them(db, kind):
    source = Source.objects.create(
        name="Shop",
        kind=kind,
        settings={"host": "db.example", "database": "shop", "user": "bk", "exclude_table_data": ["sessions"]},
        secrets={"password": SECRET},
    )
    form = kind_form(kind, source=source)
    html = form.as_div()
    assert SECRET not in html and 'type="password"' in html
    assert "A value is stored; leave blank to keep it." in html
    assert 'value="db.example"' in html  # settings are shown

    data = {f"{kind}-{k}": v for k, v in {"host": "db2.example", "database": "shop", "user": "bk"}.items()}
    form = kind_form(kind, {**data, f"{kind}-password": ""}, source=source)
    assert form.is_valid(), form.errors
    assert form.secrets_from_cleaned(form.cleaned_data) == {"password": SECRET}
    # Settings without a field (the panel-style exclusions) are kept.
    assert form.settings_to_store(form.cleaned_data)["exclude_table_data"] == ["sessions"]
    assert SECRET not in form.as_div()  # a bound form does not echo it either

    form = kind_form(kind, {**data, f"{kind}-password": "new-one"}, source=source)
    assert form.is_valid() and form.secrets_from_cleaned(form.cleaned_data) == {"password": "new-one"}


def test_the_password_typed_on_create_is_not_echoed_on_an_error():
    form = bound(PostgresForm, {"database": "--bad", "password": SECRET})
    assert not form.is_valid()
    assert SECRET not in form.as_div()


def test_the_panel_database_form_has_no_fields():
    form = PanelDatabaseForm({})
    assert form.is_valid() and not form.fields
    assert form.settings_to_store(form.cleaned_data) == {}


def test_the_unsaved_handler_carries_what_was_typed():
    form = bound(MysqlForm, {"database": "shop", "host": "db.example", "password": SECRET})
    assert form.is_valid(), form.errors
    handler = form.handler("Shop")
    assert handler.conf.database == "shop" and handler._password == SECRET
    assert SECRET not in repr(handler) and SECRET not in handler.describe()
