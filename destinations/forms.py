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

from destinations.kindforms import KindForm
from destinations.models import Destination

# Kind modules import KindForm from destinations.kindforms (which imports nothing of
# backupsite at import time); the registry imports the kind modules, so the registry is
# imported late here.


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
