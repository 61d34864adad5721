"""Forms of the destination pages: the common part (name, enabled) and one form per
kind, named by the kind's backend (``Backend.form_class_path``).

A kind's form is a plain ``forms.Form`` whose non-secret fields map onto the kind's
``Conf`` (override :meth:`KindForm.initial_from_settings` and
:meth:`KindForm.settings_from_cleaned` where they differ, e.g. one "server" field that is
split into host and folder). Secret fields (the backend's ``secret_fields``) are
password inputs that are never rendered back; left blank on edit, the stored value is
kept. :meth:`KindForm.clean` parses the settings through the kind's ``Conf``, so the
form and the backend validate alike, and puts a ``ConfError`` next to its field.
"""

from __future__ import annotations

from typing import ClassVar

from django import forms
from django.utils.translation import gettext_lazy as _

from destinations.backends import REGISTRY, get_kind
from destinations.backends.base import Backend, ConfError
from destinations.backends.local import LocalBackend
from destinations.models import Destination


class DestinationForm(forms.ModelForm):
    class Meta:
        model = Destination
        fields = ["name", "enabled"]
        help_texts = {
            "name": _("Shown in jobs, logs and e-mails, e.g. “NAS in the office”."),
            "enabled": _("Disabled destinations receive no uploads."),
        }


class KindChoiceForm(forms.Form):
    kind = forms.ChoiceField(label=_("Kind"), choices=())

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["kind"].choices = [(kind, cls.label) for kind, cls in REGISTRY.items()]


class KindForm(forms.Form):
    backend_class: ClassVar[type[Backend]]
    #: Fields whose values go into the secrets (encrypted), never shown again.
    secret_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, data=None, *, settings: dict | None = None, secrets: dict | None = None, **kwargs):
        kwargs.setdefault("prefix", self.backend_class.kind)
        initial = self.initial_from_settings(dict(settings or {}))
        super().__init__(data, initial=initial, **kwargs)
        self.stored_secrets = dict(secrets or {})
        for name in self.secret_fields:
            field = self.fields.get(name)
            if field is None:
                continue
            field.widget = forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"})
            if self.stored_secrets.get(name):
                field.required = False
                field.help_text = f"{field.help_text} {_('A value is stored; leave blank to keep it.')}".strip()
        self.parsed_settings: dict | None = None

    # --- mapping between the form and the stored settings -------------------------
    def initial_from_settings(self, settings: dict) -> dict:
        return settings

    def settings_from_cleaned(self, cleaned: dict) -> dict:
        return {k: v for k, v in cleaned.items() if k not in self.secret_fields}

    def secrets_from_cleaned(self, cleaned: dict) -> dict:
        """The secrets to store: what was typed, or the stored value where left blank."""
        secrets = dict(self.stored_secrets)
        for name in self.secret_fields:
            value = cleaned.get(name)
            if value:
                secrets[name] = value
        return {k: v for k, v in secrets.items() if v}

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        try:
            conf = self.backend_class.conf_class.parse(self.settings_from_cleaned(cleaned))
        except ConfError as exc:
            field = exc.field if exc.field in self.fields else None
            self.add_error(field, str(exc))
        except ValueError as exc:
            self.add_error(None, str(exc))
        else:
            self.parsed_settings = conf.as_dict()
        return cleaned

    def backend(self) -> Backend:
        """An unsaved backend from the form (the test button tests before saving)."""
        assert self.parsed_settings is not None, "call is_valid() first"
        return self.backend_class(
            self.backend_class.conf_class.parse(self.parsed_settings), self.secrets_from_cleaned(self.cleaned_data)
        )


def kind_form(kind: str, data=None, *, destination: Destination | None = None, **kwargs) -> KindForm:
    """The form of *kind*, prefilled from *destination* (whose secrets stay unseen)."""
    cls = get_kind(kind).form_class()
    settings = destination.settings if destination is not None and destination.kind == kind else None
    secrets = destination.secrets if destination is not None and destination.kind == kind else None
    return cls(data, settings=settings, secrets=secrets, **kwargs)


class LocalForm(KindForm):
    backend_class = LocalBackend

    path = forms.CharField(
        label=_("Folder"),
        max_length=500,
        help_text=_("An absolute path on this server, inside an allowed folder (BACKUPSITE_LOCAL_ROOTS)."),
    )
    create = forms.BooleanField(
        label=_("Create the folder if it does not exist"),
        required=False,
        help_text=_("Leave unticked to be warned when the folder is missing (a typo, a disk not mounted)."),
    )
