"""The base of every destination kind's form (:class:`KindForm`).

It lives in a module of its own that imports nothing of backupsite at import time, so a
kind's module can define its form next to its backend (``from destinations.kindforms
import KindForm``) without an import cycle: ``destinations.forms`` imports the models
and the registry, which import every kind's module. ``destinations.forms`` re-exports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from django import forms
from django.utils.translation import gettext_lazy as _

if TYPE_CHECKING:
    from destinations.backends.base import Backend


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
        from destinations.backends.base import ConfError

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
