"""The planning-export form (administrators) and its datasets (an inline formset)."""

from __future__ import annotations

from django import forms
from django.forms import BaseInlineFormSet, inlineformset_factory
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from destinations.backends.base import REPLACE
from destinations.models import Destination
from jobs.exports.models import EXPORT_SOURCE_KINDS
from jobs.models import ExportDataset, PlanningExport, Source


def export_destinations():
    """Destinations an export can write to: kinds that can replace a file (the e-mail
    kind cannot)."""
    return Destination.objects.defer("secrets").order_by("name")


class DestinationChoices(forms.ModelMultipleChoiceField):
    def label_from_instance(self, obj: Destination) -> str:
        return f"{obj.name} — {obj.describe()}"


class PlanningExportForm(forms.ModelForm):
    destinations = DestinationChoices(
        queryset=Destination.objects.none(),
        widget=forms.CheckboxSelectMultiple,
        label=_("Destinations"),
        help_text=_("Every night the files go to each of these (FTP, SFTP, a Windows share, a folder, …)."),
    )

    class Meta:
        model = PlanningExport
        fields = [
            "name",
            "source",
            "window_days",
            "window_offset_days",
            "run_at",
            "destinations",
            "folder",
            "report_to",
            "enabled",
        ]
        widgets = {
            "run_at": forms.TimeInput(attrs={"type": "time"}, format="%H:%M"),
            "report_to": forms.TextInput(),
            "name": forms.TextInput(attrs={"autocomplete": "off"}),
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["source"].queryset = Source.objects.filter(kind__in=EXPORT_SOURCE_KINDS).order_by("name")
        self.fields["source"].empty_label = gettext("Choose a database…")
        usable = [d.pk for d in export_destinations() if d.can(REPLACE)]
        self.fields["destinations"].queryset = Destination.objects.filter(pk__in=usable).defer("secrets")
        if self.instance.pk is not None:
            self.initial.setdefault("destinations", list(self.instance.destinations.values_list("pk", flat=True)))


class DatasetForm(forms.ModelForm):
    class Meta:
        model = ExportDataset
        fields = ["file_name", "sheet_title", "sql"]
        widgets = {
            "sql": forms.Textarea(attrs={"rows": 8, "spellcheck": "false", "class": "sql"}),
            "file_name": forms.TextInput(attrs={"placeholder": "topics.xlsx"}),
        }


class BaseDatasetFormSet(BaseInlineFormSet):
    default_error_messages = {
        # Django's "Please submit at least 1 form." says nothing to someone filling in a page.
        "too_few_forms": _("Add at least one dataset: a file name, a sheet title and a query."),
    }

    def clean(self) -> None:
        super().clean()
        names = set()
        for form in self.kept_forms():
            name = (form.cleaned_data.get("file_name") or "").lower()
            if name and name in names:
                form.add_error("file_name", gettext("Each dataset needs its own file name."))
            names.add(name)

    def kept_forms(self) -> list:
        """The forms that are (still) datasets, in their order on the page."""
        return [
            f
            for f in self.forms
            if hasattr(f, "cleaned_data")
            and f.cleaned_data
            and not f.cleaned_data.get("DELETE")
            and (f.instance.pk or f.has_changed())
        ]


DatasetFormSet = inlineformset_factory(
    PlanningExport,
    ExportDataset,
    form=DatasetForm,
    formset=BaseDatasetFormSet,
    extra=1,
    min_num=1,
    validate_min=True,
    can_delete=True,
    max_num=20,
    validate_max=True,
)
