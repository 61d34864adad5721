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
    #: Settings without a field that :meth:`settings_from_cleaned` decides about itself
    #: (kept or dropped), so :meth:`settings_to_store` must not carry the stored value
    #: over: an SFTP host key belongs to its server and goes when the server changes.
    managed_settings: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        data=None,
        *,
        settings: dict | None = None,
        secrets: dict | None = None,
        pending_secrets: dict | None = None,
        pinned: dict | None = None,
        **kwargs,
    ):
        """*settings* / *secrets*: the stored ones (editing). *pending_secrets*: secrets
        typed earlier in this same form and carried over a page reload (the destination
        pages' test button without JavaScript), kept like stored ones. *pinned*: settings
        confirmed by an administrator (a server fingerprint, ``Fingerprint.setting``):
        they fill their field where it is left blank, or are added to the settings when
        the kind has no field for them."""
        kwargs.setdefault("prefix", self.backend_class.kind)
        self.stored_settings = dict(settings or {})
        self.pinned = dict(pinned or {})
        initial = self.initial_from_settings(dict(settings or {}))
        super().__init__(data, initial=initial, **kwargs)
        if self.is_bound:
            for name, value in self.pinned.items():
                key = self.add_prefix(name)
                if name in self.fields and not self.data.get(key):
                    self.data = self.data.copy()
                    self.data[key] = value
        self.stored_secrets = dict(secrets or {})
        self.pending_secrets = {k: v for k, v in dict(pending_secrets or {}).items() if k in self.secret_fields and v}
        for name in self.secret_fields:
            field = self.fields.get(name)
            if field is None:
                continue
            field.widget = forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"})
            if self.pending_secrets.get(name):
                self._kept(name, _("A value was typed; leave blank to keep it."))
            elif self.stored_secrets.get(name):
                self._kept(name, _("A value is stored; leave blank to keep it."))
        self.parsed_settings: dict | None = None

    def _kept(self, name: str, text) -> None:
        field = self.fields[name]
        field.required = False
        field.help_text = f"{field.help_text} {text}".strip()
        self._bound_fields_cache.pop(name, None)  # a bound field copies the help text

    def keep_typed_secrets(self) -> None:
        """Say so where a secret was typed in this submission (and has no error of its
        own): the page that answers it (a test without JavaScript, a save with errors)
        carries it over the reload, and a password field never shows its value, so it
        need not be typed again. Called when the page is rendered."""
        if not self.is_bound:
            return
        errors = self._errors or {}  # never validates here
        for name in self.secret_fields:
            typed = self.data.get(self.add_prefix(name))
            if name in self.fields and typed and name not in errors and not self.pending_secrets.get(name):
                self._kept(name, _("A value was typed; leave blank to keep it."))

    # --- mapping between the form and the stored settings -------------------------
    def initial_from_settings(self, settings: dict) -> dict:
        return settings

    def settings_from_cleaned(self, cleaned: dict) -> dict:
        return {k: v for k, v in cleaned.items() if k not in self.secret_fields}

    def settings_to_store(self, cleaned: dict) -> dict:
        """:meth:`settings_from_cleaned`, plus the stored settings the form has no field
        for and does not produce (a confirmed fingerprint must survive an edit of the
        password), plus the :attr:`pinned` ones."""
        produced = self.settings_from_cleaned(cleaned)
        kept = {
            k: v
            for k, v in self.stored_settings.items()
            if k not in self.fields and k not in produced and k not in self.managed_settings
        }
        pinned = {k: v for k, v in self.pinned.items() if k not in self.fields}
        return {**kept, **produced, **pinned}

    def secrets_from_cleaned(self, cleaned: dict) -> dict:
        """The secrets to store: what was typed, or the stored value where left blank."""
        secrets = {**self.stored_secrets, **self.pending_secrets}
        for name in self.secret_fields:
            value = cleaned.get(name)
            if value:
                secrets[name] = value
        return {k: v for k, v in secrets.items() if v}

    def clean(self):
        from destinations.backends.base import ConfError

        cleaned = super().clean()
        if self.errors:
            return cleaned
        try:
            conf = self.backend_class.conf_class.parse(self.settings_to_store(cleaned))
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
