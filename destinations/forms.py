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

from django import forms
from django.utils.translation import gettext_lazy as _

from backupsite.kindpages import unvalidated
from destinations.kindforms import KindForm
from destinations.models import Destination

# Kind modules import KindForm from destinations.kindforms (which imports nothing of
# backupsite at import time); the registry imports the kind modules, so the registry is
# imported late here.


class DestinationForm(forms.ModelForm):
    class Meta:
        model = Destination
        fields = ["name", "enabled"]
        labels = {"name": _("Name"), "enabled": _("Enabled")}
        help_texts = {
            "name": _("Shown in jobs, logs and e-mails, e.g. “NAS in the office”."),
            "enabled": _("Disabled destinations receive no uploads."),
        }


class KindChoiceForm(forms.Form):
    kind = forms.ChoiceField(label=_("Kind"), choices=())

    def __init__(self, *args, **kwargs):
        from destinations.backends import REGISTRY  # kind modules import this module: import late

        super().__init__(*args, **kwargs)
        self.fields["kind"].choices = [(kind, cls.label) for kind, cls in REGISTRY.items()]


def kind_form(kind: str, data=None, *, destination: Destination | None = None, **kwargs) -> KindForm:
    """The form of *kind*, prefilled from *destination* (whose secrets stay unseen)."""
    from destinations.backends import get_kind  # kind modules import this module: import late

    cls = get_kind(kind).form_class()
    settings = destination.settings if destination is not None and destination.kind == kind else None
    secrets = destination.secrets if destination is not None and destination.kind == kind else None
    return cls(data, settings=settings, secrets=secrets, **kwargs)


DEFAULT_FIELDS_TEMPLATE = "destinations/_kind_fields.html"


class KindForms:
    """The kind part of a destination's form, one implementation for the destination
    pages and the wizard's step 3: one :class:`KindForm` per kind, each under its own
    prefix (``<prefix>-<kind>``, or the kind alone), rendered by
    ``destinations/_kind_chooser.html`` and ``destinations/_kind_fieldsets.html``.

    Without JavaScript every kind's fieldset is in the page, so every form is bound to
    the data (what was typed stays), but only the *chosen* kind's is validated; it gets
    what its page carried over a reload: *pending* (secrets typed before, by field name:
    the destination pages carry them in an encrypted token, the wizard in its encrypted
    storage) and *pinned* (settings an administrator confirmed, a server fingerprint:
    :attr:`KindForm.pinned`)."""

    def __init__(
        self,
        data=None,
        *,
        kinds,
        chosen: str | None,
        destination: Destination | None = None,
        prefix: str = "",
        pending: dict | None = None,
        pinned: dict | None = None,
        use_required_attribute: bool = True,
    ) -> None:
        self.prefix = prefix
        self.chosen = chosen
        options = {"use_required_attribute": use_required_attribute}
        self.forms: dict[str, KindForm] = {}
        for kind in kinds:
            if prefix:
                options["prefix"] = f"{prefix}-{kind}"
            if data is None:
                form = kind_form(kind, destination=destination, **options)
            elif kind != chosen:
                form = unvalidated(kind_form(kind, data, **options))
            else:
                form = kind_form(kind, data, destination=destination, pending_secrets=pending, pinned=pinned, **options)
            self.forms[kind] = form

    @property
    def chosen_form(self) -> KindForm | None:
        return self.forms.get(self.chosen) if self.chosen else None

    def secret_keys(self) -> list[str]:
        """The data keys of every kind's secret fields."""
        return [form.add_prefix(name) for form in self.forms.values() for name in form.secret_fields]

    def suppress_errors(self) -> None:
        for form in self.forms.values():
            unvalidated(form)

    def rows(self) -> list[dict]:
        """What the two partials show per kind (at render time: the chosen form says
        which secrets typed in this submission its page carries over)."""
        if self.chosen_form is not None:
            self.chosen_form.keep_typed_secrets()
        return [
            {
                "kind": kind,
                "label": form.backend_class.label,
                "help_text": form.backend_class.help_text,
                "form": form,
                "template": getattr(form, "fieldset_template", DEFAULT_FIELDS_TEMPLATE),
                "chosen": kind == self.chosen,
            }
            for kind, form in self.forms.items()
        ]


from destinations.backends.local import LocalBackend  # noqa: E402 - the registry imports the kinds


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
