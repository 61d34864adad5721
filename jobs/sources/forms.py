"""Forms of the source pages: the common part (the name) and one form per kind, named by
the kind class (``SourceKind.form_class_path``), as the destination pages do.

A kind's form maps its fields onto the kind's settings (override
:meth:`SourceKindForm.initial_from_settings` and :meth:`SourceKindForm.settings_from_cleaned`
where they differ, e.g. patterns typed one per line). Secret fields (the kind's
``secret_fields``: database passwords) are password inputs that are never rendered back;
left blank on edit, the stored value is kept (RELIABILITY 22). :meth:`SourceKindForm.clean`
parses the settings through the kind's ``Conf`` and its server checks
(``SourceKind.check_settings``: allowed roots, the panel's own files, names that reach a
command line), so the form and a run validate alike, and puts each error next to its
field.
"""

from __future__ import annotations

from typing import ClassVar

from django import forms
from django.utils.translation import gettext_lazy as _

from jobs.models import Source
from jobs.sources import REGISTRY, get_kind
from jobs.sources.base import ConfError, SourceKind
from jobs.sources.directory import DirectorySource, check_path_syntax
from jobs.sources.mysql import MysqlSource
from jobs.sources.panel import PanelDatabaseSource
from jobs.sources.postgres import SSL_MODES, PostgresSource
from jobs.sources.sqlite import SqliteSource


class SourceForm(forms.ModelForm):
    class Meta:
        model = Source
        fields = ["name"]
        labels = {"name": _("Name")}
        help_texts = {
            "name": _("Shown as a checkbox in the backup wizard and in logs, e.g. “Office files”."),
        }


def creatable_kinds() -> dict[str, type[SourceKind]]:
    """The kinds a source can be created of: those with a form, but not the panel's own
    database (it is one, made by a migration)."""
    return {kind: cls for kind, cls in REGISTRY.items() if cls.form_class_path and not cls.singleton}


class KindChoiceForm(forms.Form):
    kind = forms.ChoiceField(label=_("Kind"), choices=())

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["kind"].choices = [(kind, cls.label) for kind, cls in creatable_kinds().items()]


class SourceKindForm(forms.Form):
    kind_class: ClassVar[type[SourceKind]]
    #: The template of the kind's fieldset (default: every field, in order).
    fieldset_template: ClassVar[str] = "jobs/sources/_kind_fields.html"

    def __init__(self, data=None, *, settings: dict | None = None, secrets: dict | None = None, **kwargs):
        kwargs.setdefault("prefix", self.kind_class.kind)
        self.stored_settings = dict(settings or {})
        super().__init__(data, initial=self.initial_from_settings(dict(self.stored_settings)), **kwargs)
        self.stored_secrets = dict(secrets or {})
        for name in self.secret_fields:
            field = self.fields.get(name)
            if field is None:
                continue
            field.widget = forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"})
            if self.stored_secrets.get(name):
                field.required = False
                field.help_text = f"{field.help_text} {_('A value is stored; leave blank to keep it.')}".strip()
        self.conf = None

    @property
    def secret_fields(self) -> tuple[str, ...]:
        return self.kind_class.secret_fields

    # --- mapping between the form and the stored settings -------------------------
    def initial_from_settings(self, settings: dict) -> dict:
        return settings

    def settings_from_cleaned(self, cleaned: dict) -> dict:
        return {k: v for k, v in cleaned.items() if k not in self.secret_fields and v not in (None, "")}

    def settings_to_store(self, cleaned: dict) -> dict:
        """The settings to save: what the form produced, plus stored settings it has no
        field for (``exclude_table_data`` of a database source stays)."""
        kept = {k: v for k, v in self.stored_settings.items() if k not in self.fields}
        return {**kept, **self.settings_from_cleaned(cleaned)}

    def secrets_from_cleaned(self, cleaned: dict) -> dict:
        """The secrets to store: what was typed, or the stored value where left blank."""
        secrets = dict(self.stored_secrets)
        for name in self.secret_fields:
            if cleaned.get(name):
                secrets[name] = cleaned[name]
        return {k: v for k, v in secrets.items() if v}

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        try:
            self.conf = self.kind_class.check_settings(self.settings_to_store(cleaned))
        except ConfError as exc:
            self.add_error(exc.field if exc.field in self.fields else None, str(exc))
        except ValueError as exc:
            self.add_error(None, str(exc))
        return cleaned

    def handler(self, name: str = "", slug: str = "unsaved") -> SourceKind:
        """An unsaved source of this kind from the form (the Test button tests before
        saving)."""
        assert hasattr(self, "cleaned_data"), "call is_valid() first"
        return self.kind_class(
            name or str(_("New source")),
            slug,
            self.settings_to_store(self.cleaned_data),
            self.secrets_from_cleaned(self.cleaned_data),
        )


def kind_form(kind: str, data=None, *, source: Source | None = None, **kwargs) -> SourceKindForm:
    """The form of *kind*, prefilled from *source* (whose secrets stay unseen)."""
    cls = get_kind(kind).form_class()
    same = source is not None and source.kind == kind
    return cls(data, settings=source.settings if same else None, secrets=source.secrets if same else None, **kwargs)


# --- the kinds -------------------------------------------------------------------------
def _lines(value: str) -> list[str]:
    return [line.strip() for line in (value or "").splitlines() if line.strip()]


class DirectoryForm(SourceKindForm):
    kind_class = DirectorySource

    path = forms.CharField(
        label=_("Folder"),
        max_length=1000,
        strip=False,
        help_text=_("An absolute path on this server, e.g. /srv/office. Symbolic links inside it are kept as links."),
        widget=forms.TextInput(attrs={"spellcheck": "false", "autocomplete": "off"}),
    )
    include = forms.CharField(
        label=_("Only files matching"),
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false"}),
        help_text=_("Optional: patterns, one per line, e.g. *.pdf or invoices/**. Empty: everything."),
    )
    exclude = forms.CharField(
        label=_("Leave out"),
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false"}),
        help_text=_("Optional: patterns, one per line, e.g. *.tmp or cache/."),
    )

    def clean_path(self) -> str:
        try:
            return check_path_syntax(self.cleaned_data["path"])
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None

    def initial_from_settings(self, settings: dict) -> dict:
        return {
            "path": settings.get("path", ""),
            "include": "\n".join(settings.get("include") or []),
            "exclude": "\n".join(settings.get("exclude") or []),
        }

    def settings_from_cleaned(self, cleaned: dict) -> dict:
        settings = {"path": cleaned["path"]}
        for name in ("include", "exclude"):
            patterns = _lines(cleaned.get(name, ""))
            if patterns:
                settings[name] = patterns
        return settings


class _DatabaseForm(SourceKindForm):
    host = forms.CharField(label=_("Server"), required=False, max_length=255)
    port = forms.IntegerField(label=_("Port"), required=False, min_value=1, max_value=65535)
    database = forms.CharField(label=_("Database"), max_length=64)
    user = forms.CharField(label=_("User name"), required=False, max_length=80)
    password = forms.CharField(
        label=_("Password"),
        required=False,
        strip=False,
        max_length=1000,
        help_text=_("Stored encrypted; given to the dump tool through its environment or a private file, never shown."),
    )

    field_order = ["host", "port", "database", "user", "password"]

    def initial_from_settings(self, settings: dict) -> dict:
        return {k: v for k, v in settings.items() if k in self.base_fields}


class PostgresForm(_DatabaseForm):
    kind_class = PostgresSource

    sslmode = forms.ChoiceField(
        label=_("Encryption (SSL mode)"),
        required=False,
        choices=[(mode, mode or _("libpq's default (prefer)")) for mode in SSL_MODES],
        help_text=_("“verify-full” checks the server's certificate and name; “require” only encrypts."),
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["host"].help_text = _("Host name or address; empty: the local socket.")
        self.fields["port"].help_text = _("Empty: 5432.")
        self.fields["user"].help_text = _(
            "A user allowed to read every table (pg_dump); empty: the worker's user name."
        )


class MysqlForm(_DatabaseForm):
    kind_class = MysqlSource

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["host"].help_text = _("Host name or address; empty or “localhost”: the local socket.")
        self.fields["port"].help_text = _("Empty: 3306.")
        self.fields["user"].help_text = _("A user with SELECT, SHOW VIEW, TRIGGER and EVENT on the database.")


class SqliteForm(SourceKindForm):
    kind_class = SqliteSource

    path = forms.CharField(
        label=_("Database file"),
        max_length=1000,
        strip=False,
        help_text=_("The absolute path of the SQLite file, e.g. /srv/app/db.sqlite3. It may be in use meanwhile."),
        widget=forms.TextInput(attrs={"spellcheck": "false", "autocomplete": "off"}),
    )

    def clean_path(self) -> str:
        try:
            return check_path_syntax(self.cleaned_data["path"], "database file")
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None


class PanelDatabaseForm(SourceKindForm):
    """No settings: the panel's own database is read from its own configuration."""

    kind_class = PanelDatabaseSource
