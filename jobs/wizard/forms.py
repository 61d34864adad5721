"""The wizard's steps, one form each: 1 General, 2 Content, 3 Destination, 4 Summary.

Each form validates its own step, the same way when the step is sent and when
formtools validates every step again on Finish. What a form needs besides its data comes
from the view as keyword arguments: ``job`` (the job being edited or duplicated, else
None), ``mode`` ("create", "edit" or "duplicate"), ``pending`` (secrets typed earlier in
this step, decrypted from the wizard's storage: a secret field left blank keeps them)
and, for steps 2 and 3, ``memory`` (the wizard's own notes: the current backup password
checked, passed connection tests, the fingerprints an administrator confirmed) and, for
step 3, ``request``.

Secret fields are never rendered back; the step's form lists them in
:meth:`StepForm.secret_keys` so the view stores them encrypted, apart from the rest.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import zoneinfo
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property, lru_cache

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError
from django.forms.utils import flatatt
from django.utils import timezone
from django.utils.choices import BaseChoiceIterator
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from backupsite.kindpages import unvalidated
from backupsite.languages import choices as language_choices
from backupsite.validators import split_addresses, validate_address_list, validate_no_control_chars
from destinations import services as destination_services
from destinations.backends import REGISTRY as DESTINATION_KINDS
from destinations.backends import DestinationError
from destinations.backends.base import TestResult, job_folder
from destinations.forms import KindChoiceForm, KindForms
from destinations.models import Destination
from jobs import schedule
from jobs.engine import agekeys
from jobs.models import Job, Source
from jobs.wizard import passwords

CREATE, EDIT, DUPLICATE = "create", "edit", "duplicate"
KEEP, NEW = "keep", "new"


@lru_cache(maxsize=1)
def timezone_choices() -> list[tuple[str, str]]:
    return [(name, name) for name in sorted(zoneinfo.available_timezones())]


@lru_cache(maxsize=1)
def _zone_options() -> dict[str, str]:
    return {name: format_html('<option value="{}">{}</option>', name, label) for name, label in timezone_choices()}


class ZoneSelect(forms.Select):
    """The time zone ``<select>`` (about 600 zones) rendered in Python: Django's widget
    template per option would cost tens of milliseconds per page."""

    def render(self, name, value, attrs=None, renderer=None):
        attrs = self.build_attrs(self.attrs, {**(attrs or {}), "name": name})
        options = _zone_options()
        chosen = str(value) if value is not None else ""
        body = "".join(
            html.replace('">', '" selected>', 1) if zone_name == chosen else html for zone_name, html in options.items()
        )
        return mark_safe(f"<select{flatatt(attrs)}>{body}</select>")  # noqa: S308 - escaped above


class _ZoneChoices(BaseChoiceIterator):
    """The zones as a choice iterator: Django normalises a list of choices whenever a
    field is made or copied (about 1,200 calls for 600 zones, several times per wizard
    request); an iterator is taken as it is."""

    def __iter__(self):
        return iter(timezone_choices())

    def __deepcopy__(self, memo):
        return self


class ZoneField(forms.ChoiceField):
    """A time zone of the IANA database (the ones this Python knows)."""

    widget = ZoneSelect

    def __init__(self, **kwargs):
        super().__init__(choices=_ZoneChoices(), **kwargs)

    def valid_value(self, value) -> bool:
        return str(value) in _zone_names()


@lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    return frozenset(name for name, _label in timezone_choices())


def next_full_hour(tz_name: str) -> datetime:
    """The default first start: the next full hour, as a wall-clock time in *tz_name*."""
    now = timezone.now().astimezone(schedule.zone(tz_name))
    return now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


class StepForm(forms.Form):
    """What the wizard needs of every step's form."""

    #: Names of the secret fields (never rendered back, stored encrypted).
    secret_fields: tuple[str, ...] = ()
    title = ""

    def __init__(self, *args, job: Job | None = None, mode: str = CREATE, pending: dict | None = None, **kwargs):
        self.job = job
        self.mode = mode
        self.pending = dict(pending or {})
        super().__init__(*args, **kwargs)
        for name in self.secret_fields:
            if self.pending.get(self.add_prefix(name)) and name in self.fields:
                field = self.fields[name]
                field.required = False
                field.help_text = f"{field.help_text} {_('A value was typed; leave blank to keep it.')}".strip()

    def secret_keys(self) -> list[str]:
        """The data keys of this step's secret fields."""
        return [self.add_prefix(name) for name in self.secret_fields]

    def secret(self, name: str) -> str:
        """A secret field's value: what was typed now, else what was typed earlier."""
        return (self.cleaned_data.get(name) if hasattr(self, "cleaned_data") else "") or self.pending.get(
            self.add_prefix(name), ""
        )

    def suppress_errors(self) -> None:
        """Show what was entered without validating it (a step revisited with Back,
        whose entries were kept as they were)."""
        unvalidated(self)


# --- step 1 --------------------------------------------------------------------------
class GeneralForm(StepForm):
    title = _("General")

    name = forms.CharField(
        label=_("Name"),
        max_length=100,
        validators=[validate_no_control_chars],
        help_text=_("Shown in the panel and in e-mails, e.g. “Office files”."),
    )
    report_to = forms.CharField(
        label=_("Report to"),
        max_length=1000,
        widget=forms.TextInput(attrs={"autocomplete": "email"}),
        help_text=_("E-mail addresses told when a backup fails, separated by commas."),
    )
    language = forms.ChoiceField(
        label=_("Language of the alert e-mails"),
        choices=language_choices,
        required=False,  # not sent: the job keeps its language (a new one: LANGUAGE_CODE)
        help_text=_("The report-to addresses get failure, recovery and test e-mails in this language."),
    )
    interval = forms.ChoiceField(label=_("Backup interval"), choices=Job.Interval.choices, initial=Job.Interval.DAILY)
    cron = forms.CharField(
        label=_("Cron expression"),
        required=False,
        max_length=100,
        validators=[validate_no_control_chars],
        help_text=_("Only for “Cron expression”: minute hour day-of-month month day-of-week, e.g. 30 2 * * 1-5."),
    )
    first_date = forms.DateField(
        label=_("First start: date"), required=False, widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d")
    )
    first_time = forms.TimeField(
        label=_("First start: time"), required=False, widget=forms.TimeInput(attrs={"type": "time"}, format="%H:%M")
    )
    timezone = ZoneField(
        label=_("Time zone"),
        help_text=_("The first start and every later run are wall-clock times in this zone."),
    )
    keep_last = forms.IntegerField(
        label=_("Keep the last"),
        required=False,
        min_value=1,
        max_value=100000,
        initial=7,
        help_text=_("Number of backups to keep; older ones are deleted after each backup. Empty: no limit."),
    )
    max_age_days = forms.IntegerField(
        label=_("Delete backups older than (days)"),
        required=False,
        min_value=1,
        max_value=100000,
        help_text=_("Empty: no age limit. The newest backup is always kept."),
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["timezone"].initial = settings.TIME_ZONE
        self.fields["language"].initial = settings.LANGUAGE_CODE
        if not self.initial.get("first_date"):
            start = next_full_hour(self.initial.get("timezone") or settings.TIME_ZONE)
            self.fields["first_date"].initial = start.date()
            self.fields["first_time"].initial = start.time()

    def clean_name(self):
        name = self.cleaned_data["name"].strip()
        others = Job.objects.filter(name__iexact=name)
        if self.mode == EDIT and self.job is not None:
            others = others.exclude(pk=self.job.pk)
        if others.exists():
            raise ValidationError(_("A job with this name exists already; choose another name."))
        return name

    def clean_report_to(self):
        value = self.cleaned_data["report_to"]
        validate_address_list(value)
        addresses = split_addresses(value)
        if not addresses:
            raise ValidationError(_("Give at least one e-mail address."))
        return ", ".join(addresses)

    def clean(self):
        cleaned = super().clean()
        interval = cleaned.get("interval")
        tz_name = cleaned.get("timezone")
        if not interval or not tz_name:
            return cleaned
        cleaned["first_run_at"] = None
        if interval == Job.Interval.MANUAL:
            return cleaned
        day, clock = cleaned.get("first_date"), cleaned.get("first_time")
        if day is None or clock is None:
            if interval != Job.Interval.CRON:
                if "first_date" not in self.errors and day is None:
                    self.add_error("first_date", _("A scheduled backup needs the date of its first start."))
                if "first_time" not in self.errors and clock is None:
                    self.add_error("first_time", _("A scheduled backup needs the time of its first start."))
        else:
            first = schedule.localize(
                datetime.combine(day, clock.replace(second=0, microsecond=0)), schedule.zone(tz_name)
            )
            cleaned["first_run_at"] = first
            if first < timezone.now() - timedelta(minutes=1) and self._first_start_changed(first):
                now = timezone.now().astimezone(schedule.zone(tz_name))
                self.add_error(
                    "first_date",
                    _("The first start is in the past (it is now %(now)s in %(zone)s); choose a later time.")
                    % {"now": now.strftime("%Y-%m-%d %H:%M"), "zone": tz_name},
                )
        if interval == Job.Interval.CRON:
            try:
                cleaned["cron"] = schedule.validate_cron(cleaned.get("cron", ""), tz_name)
            except schedule.ScheduleError as exc:
                self.add_error("cron", str(exc))
        return cleaned

    def _first_start_changed(self, first: datetime) -> bool:
        """ "In the past" is refused only when creating a job or changing its first start
        (an old job keeps its first start when edited)."""
        if self.mode != EDIT or self.job is None or self.job.first_run_at is None:
            return True
        return self.job.first_run_at.replace(second=0, microsecond=0) != first  # the form has minutes

    # --- the preview (also while the entries are still incomplete) -------------------
    def preview(self) -> dict:
        """The folder, the schedule in words and the next three runs for what is entered
        now, as far as it can be worked out (no errors raised)."""
        values = self.cleaned_data if self.is_bound and hasattr(self, "cleaned_data") and self.cleaned_data else {}
        if not values:
            values = {}
            for name in ("name", "interval", "cron", "first_date", "first_time", "timezone"):
                field = self.fields[name]
                raw = self[name].value()
                try:
                    values[name] = field.clean(raw)
                except ValidationError:
                    values[name] = None
        name = (values.get("name") or "").strip()
        pk = self.job.pk if self.mode == EDIT and self.job is not None else None
        folder = f"backupsite/{Job.slug_for(name, pk)}/" if name else ""
        if self.mode == EDIT and self.job is not None and name == self.job.name:
            folder = f"backupsite/{self.job.slug}/"
        interval, tz_name = values.get("interval") or Job.Interval.MANUAL, values.get("timezone") or settings.TIME_ZONE
        first = values.get("first_run_at")
        if first is None and values.get("first_date") and values.get("first_time"):
            try:
                first = schedule.localize(
                    datetime.combine(values["first_date"], values["first_time"]), schedule.zone(tz_name)
                )
            except schedule.ScheduleError:
                first = None
        cron = values.get("cron") or ""
        try:
            words = schedule.describe(interval, first, tz_name, cron)
            runs = schedule.upcoming(interval, first, tz_name, cron, timezone.now(), 3)
        except (schedule.ScheduleError, ValueError):
            words, runs = "", []
        zone = schedule.zone(tz_name) if tz_name in _zone_names() else zoneinfo.ZoneInfo("UTC")
        return {
            "folder": folder,
            "words": words,
            "runs": [run.astimezone(zone) for run in runs],
            "zone": tz_name,
            "manual": interval == Job.Interval.MANUAL,
        }


# --- step 2 --------------------------------------------------------------------------
class SourceChoiceField(forms.ModelMultipleChoiceField):
    def label_from_instance(self, obj):
        return obj.name


@dataclass
class SourceRow:
    """One checkbox of step 2, with what the page says about the source (worked out
    here, not in the template: a page may list a hundred sources)."""

    source: Source
    checked: bool
    location: str
    input_id: str

    @property
    def size(self) -> int | None:
        return self.source.size_bytes

    def size_text(self) -> str:
        """The size and the age of its measurement ("12.3 MB, measured 2 hours ago"), or
        "" when never measured."""
        from django.contrib.humanize.templatetags.humanize import naturaltime
        from django.template.defaultfilters import filesizeformat

        if self.source.size_bytes is None:
            return ""
        return gettext("%(size)s, measured %(ago)s") % {
            "size": filesizeformat(self.source.size_bytes),
            "ago": naturaltime(self.source.size_measured_at),
        }


def source_rows_html(rows: list[SourceRow], field_name: str, *, may_measure: bool) -> str:
    """Step 2's table rows (``jobs/wizard/_sources.html`` shows them), built here rather
    than in a template loop: a hundred rows cost about 20 ms of template lookups per
    request, this about 2 (bench/pages.py). Every value is escaped by ``format_html``."""
    not_measured = format_html('<span class="muted">{}</span>', _("not measured"))
    badge = format_html('<span class="badge muted">{}</span>', _("password hashes"))
    # Translated once, not per row.
    measure_now, measure_one = gettext("Measure now"), gettext("Measure %(name)s now")
    kind_labels: dict[str, str] = {}
    html = []
    for row in rows:
        source = row.source
        if source.kind not in kind_labels:
            kind_labels[source.kind] = str(source.kind_label)
        button = (
            format_html(
                '<button type="submit" class="btn small" name="wizard_measure" value="{}" formnovalidate '
                'data-fragment-region="[data-sources-region]" aria-label="{}">{}</button>',
                source.pk,
                measure_one % {"name": source.name},
                measure_now,
            )
            if may_measure
            else ""
        )
        html.append(
            format_html(
                '<tr data-source-row data-size="{size}">\n'
                '      <th scope="row"><input type="checkbox" name="{name}" value="{pk}" id="{id}"{checked}>\n'
                '        <label for="{id}">{label}</label>\n'
                "        {badge}</th>\n"
                '      <td>{kind}<div class="muted small">{location}</div></td>\n'
                "      <td>{size_text}</td>\n"
                "      <td>{button}</td>\n"
                "    </tr>",
                size="" if row.size is None else row.size,
                name=field_name,
                pk=source.pk,
                id=row.input_id,
                checked=mark_safe(" checked") if row.checked else "",
                label=source.name,
                badge=badge if source.is_sensitive else "",
                kind=kind_labels[source.kind],
                location=row.location,
                size_text=not_measured if row.size is None else row.size_text(),
                button=button,
            )
        )
    return mark_safe("\n    ".join(html))  # noqa: S308 - every part escaped by format_html


class ContentForm(StepForm):
    title = _("Content")
    secret_fields = ("password1", "password2", "old_password")

    sources = SourceChoiceField(
        label=_("What to back up"),
        queryset=Source.objects.none(),
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": _("Choose at least one thing to back up.")},
    )
    encryption = forms.ChoiceField(
        label=_("Encryption"),
        widget=forms.RadioSelect,
        initial=Job.Encryption.PASSWORD,
        choices=[
            (Job.Encryption.PASSWORD, _("Encrypt with a backup password")),
            (Job.Encryption.RECIPIENT, _("Encrypt to an age public key (the key to decrypt stays with you)")),
            (Job.Encryption.NONE, _("No encryption")),
        ],
    )
    password1 = forms.CharField(
        label=_("Backup password"),
        required=False,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password", "data-strength": "true"}),
        help_text=_(
            "At least 12 characters; a few unrelated words are easy to type and hard to guess. Needed to restore: "
            "write it down, it is not stored here."
        ),
    )
    password2 = forms.CharField(
        label=_("Backup password (again)"),
        required=False,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )
    old_password = forms.CharField(
        label=_("Current backup password"),
        required=False,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
        help_text=_("Only to change the password: the job's key is re-wrapped, so older backups stay readable."),
    )
    age_recipient = forms.CharField(
        label=_("age public key"),
        required=False,
        max_length=100,
        help_text=_("Starts with “age1” (from age-keygen). Restoring needs the matching identity file."),
    )

    def __init__(self, *args, memory: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.memory = memory if memory is not None else {}
        # The secrets stay in the database: the step shows and checks names, kinds,
        # locations and sizes (a hundred sources would mean a hundred decryptions).
        # The columns the rows show (and describe() reads): no credentials, a hundred rows.
        self.fields["sources"].queryset = Source.objects.only(
            "pk", "name", "slug", "kind", "settings", "size_bytes", "size_measured_at"
        ).order_by("name")
        #: Editing a job that has a backup password: blank password fields keep it.
        self.has_password = (
            self.mode == EDIT
            and self.job is not None
            and self.job.encryption == Job.Encryption.PASSWORD
            and bool(self.job.age_identity_wrapped)
        )
        if self.has_password:
            for name in ("password1", "password2"):
                field = self.fields[name]
                field.help_text = f"{field.help_text} {_('Leave both blank to keep the current password.')}"
        else:
            del self.fields["old_password"]

    @property
    def secret_fields_present(self) -> tuple[str, ...]:
        return tuple(name for name in self.secret_fields if name in self.fields)

    def secret_keys(self) -> list[str]:
        return [self.add_prefix(name) for name in self.secret_fields_present]

    def clean(self):
        cleaned = super().clean()
        mode = cleaned.get("encryption")
        cleaned["password"] = ""
        if mode == Job.Encryption.PASSWORD:
            self._clean_password(cleaned)
        elif mode == Job.Encryption.RECIPIENT:
            try:
                cleaned["age_recipient"] = agekeys.validate_recipient(cleaned.get("age_recipient") or "")
            except agekeys.KeyError_ as exc:
                self.add_error("age_recipient", str(exc))
        return cleaned

    def _clean_password(self, cleaned: dict) -> None:
        first, second = self.secret("password1"), self.secret("password2")
        if not first and not second:
            if not self.has_password:
                self.add_error("password1", _("Type a backup password, twice."))
            return
        problem = passwords.problem(first)
        if problem:
            self.add_error("password1", problem)
            return
        if first != second:
            self.add_error("password2", _("The two passwords differ; type the same password twice."))
            return
        if self.has_password:
            old = self.secret("old_password")
            if not old:
                self.add_error("old_password", _("Type the current backup password to change it."))
                return
            # Unwrapping takes a second or more (scrypt): once per wizard is enough (the
            # step is validated again for the summary and on Finish).
            checked = secret_key("old-password", {"key": self.job.age_identity_wrapped, "password": old})
            if checked not in self.memory.get("checked", []):
                try:
                    agekeys.unwrap_identity(self.job.key_file, old)
                except agekeys.KeyError_:
                    self.add_error("old_password", _("This is not the current backup password."))
                    return
                self.memory.setdefault("checked", []).append(checked)
            cleaned["old_password_checked"] = old
        cleaned["password"] = first

    # --- what the page shows ----------------------------------------------------------
    def chosen_ids(self) -> set[int]:
        if self.is_bound:
            raw = self["sources"].value() or []
        else:
            raw = [getattr(s, "pk", s) for s in (self.initial.get("sources") or [])]
        chosen = set()
        for value in raw:
            try:
                chosen.add(int(value))
            except (TypeError, ValueError):
                continue
        return chosen

    def rows(self) -> list[SourceRow]:
        chosen = self.chosen_ids()
        rows = []
        for index, source in enumerate(self.fields["sources"].queryset):
            try:
                location = source.describe()  # (without the secrets: none are loaded here)
            except Exception:  # noqa: BLE001 - a broken source still gets its checkbox
                location = _("(its settings cannot be read)")
            rows.append(SourceRow(source, source.pk in chosen, location, f"{self['sources'].auto_id}_{index}"))
        return rows

    def encryption_value(self) -> str:
        return str(self["encryption"].value() or Job.Encryption.PASSWORD)


def secret_key(purpose: str, values: dict) -> str:
    """Names *values* (secrets included) without revealing them: an HMAC with the site's
    secret key, kept in the wizard's memory after a check passed (the current backup
    password), so validating the step again does not repeat the check."""
    payload = json.dumps(values, sort_keys=True, default=str)
    key = hashlib.sha256(f"backupsite.wizard.{purpose}:{settings.SECRET_KEY}".encode()).digest()
    return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()


# --- step 3 --------------------------------------------------------------------------
class DestinationForm(StepForm):
    """Pick a saved destination, or create one of any registered kind with that kind's
    own form: the destination pages' :class:`~destinations.forms.KindForms` (the same
    partials, script, test and fingerprint confirmation); a new one is tested before the
    step passes.

    What the wizard remembers (``memory``, its server-side storage) instead of what the
    destination pages carry in the page: the settings confirmed with a trust token
    (``pinned``, per kind) and the tested token of the last passed test (``tested``, per
    kind), so neither Next nor Finish tests exactly these settings again. Secrets typed
    before come decrypted from the wizard's storage (``pending``) as the kind form's
    ``pending_secrets``."""

    title = _("Destination")

    target = forms.ChoiceField(label=_("Where the backups go"), widget=forms.RadioSelect, choices=())
    name = forms.CharField(
        label=_("Name of the new destination"),
        required=False,
        max_length=100,
        validators=[validate_no_control_chars],
        help_text=_("e.g. “NAS in the office”."),
    )
    kind = forms.ChoiceField(label=_("Kind of destination"), widget=forms.RadioSelect, required=False, choices=())

    def __init__(self, *args, memory: dict | None = None, request=None, job_slug: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.memory = memory if memory is not None else {}
        self.request = request
        self.job_slug = job_slug
        # Without their secrets: nothing here needs them decrypted (a hundred of them).
        self.saved = list(Destination.objects.filter(enabled=True).described().order_by("name"))
        choices = []
        if self.keep_destinations:
            names = ", ".join(d.name for d in self.keep_destinations)
            label = _("Keep the destinations of this job: %(names)s") if self.mode == EDIT else _("%(names)s")
            choices.append((KEEP, label % {"names": names}))
        for destination in self.saved:
            if destination in self.keep_destinations:
                continue
            choices.append((str(destination.pk), destination.name))
        self.may_create = request is None or request.user.has_perm("destinations.add_destination")
        if self.may_create:
            choices.append((NEW, _("A new destination")))
        self.fields["target"].choices = choices
        self.fields["kind"].choices = KindChoiceForm().fields["kind"].choices
        chosen = self.chosen_kind()
        own = f"{self.add_prefix(chosen)}-"
        self.kinds = KindForms(
            self.data if self.is_bound else None,
            kinds=list(DESTINATION_KINDS),
            chosen=chosen,
            prefix=self.prefix,
            pending={key[len(own) :]: value for key, value in self.pending.items() if key.startswith(own)},
            pinned=self.pinned(chosen),
            use_required_attribute=False,
        )
        if self.is_bound and self.chosen_target() != NEW:
            self.kinds.suppress_errors()  # a saved destination is picked: the kinds' fields are not used
        #: The connection test of this request (or the remembered one), for the page.
        self.result: TestResult | None = None
        #: What the result region shows (``destinations/_test_region.html``).
        self.region: dict = {}
        #: Validate without testing the connection (the Test button tests by itself).
        self.skip_connection = False

    @cached_property
    def keep_destinations(self) -> list[Destination]:
        if self.mode in (EDIT, DUPLICATE) and self.job is not None:
            return list(self.job.destinations.described())
        return []

    def secret_keys(self) -> list[str]:
        return self.kinds.secret_keys()

    def suppress_errors(self) -> None:
        super().suppress_errors()
        self.kinds.suppress_errors()

    # --- confirmed fingerprints and passed tests, remembered per kind -------------------
    def pinned(self, kind: str) -> dict:
        return dict((self.memory.get("pinned") or {}).get(kind) or {})

    def remember_test(self, kind: str, region: dict) -> None:
        """Keep the tested token of a passed test (the region of ``test_kind_form``)."""
        result = region.get("result")
        if result is not None and result.ok and region.get("tested"):
            self.memory.setdefault("tested", {})[kind] = region["tested"]

    def remembered_test(self) -> str:
        """The tested token of the chosen kind's last passed test (Finish records it on
        the new destination if it tested exactly what is saved)."""
        return (self.memory.get("tested") or {}).get(self.chosen_kind(), "")

    # --- the chosen kind ------------------------------------------------------------------
    def chosen_kind(self) -> str:
        value = self["kind"].value() if self.is_bound else self.initial.get("kind")
        return value if value in DESTINATION_KINDS else next(iter(DESTINATION_KINDS), "")

    def chosen_target(self) -> str:
        value = self["target"].value() if self.is_bound else self.initial.get("target")
        return str(value or "")

    def target_choices_html(self, folders: dict[str, str]) -> str:
        """The radio buttons of *target* (one per saved destination: a hundred cost about
        8 ms in a template loop, here well under one), each with the folder it writes to
        (*folders*, by value) for ``static/js/wizard.js`` to show when it is chosen."""
        field, chosen = self["target"], self.chosen_target()
        return mark_safe(  # noqa: S308 - every part escaped by format_html
            "\n    ".join(
                format_html(
                    '<div class="choice"><input type="radio" name="{name}" value="{value}" id="{id}" '
                    'data-folder="{folder}"{checked}> <label for="{id}">{label}</label></div>',
                    name=field.html_name,
                    value=value,
                    id=f"{field.auto_id}_{index}",
                    folder=folders.get(str(value), ""),
                    checked=mark_safe(" checked") if str(value) == chosen else "",
                    label=label,
                )
                for index, (value, label) in enumerate(field.field.choices)
            )
        )

    def clean(self):
        cleaned = super().clean()
        target = cleaned.get("target")
        if target == NEW:
            self._clean_new(cleaned)
        elif target and target != KEEP:
            destination = next((d for d in self.saved if str(d.pk) == target), None)
            if destination is None:
                self.add_error("target", _("This destination no longer exists; choose another."))
            cleaned["destination"] = destination
        return cleaned

    def _clean_new(self, cleaned: dict) -> None:
        name = (cleaned.get("name") or "").strip()
        if not name:
            self.add_error("name", _("Give the new destination a name."))
        elif Destination.objects.filter(name__iexact=name).exists():
            self.add_error(
                "name", _("A destination with this name exists already; pick it above or choose another name.")
            )
        kind = cleaned.get("kind")
        if kind not in DESTINATION_KINDS:
            self.add_error("kind", _("Choose the kind of the new destination."))
            return
        form = self.kinds.chosen_form
        if not form.is_valid():
            raise ValidationError(_("Correct the settings of the new destination marked below."), code="kind_form")
        cleaned["new_settings"] = form.parsed_settings
        cleaned["new_secrets"] = form.secrets_from_cleaned(form.cleaned_data)
        if self.errors or self.skip_connection:
            return
        self.check_connection(kind, cleaned)

    def check_connection(self, kind: str, cleaned: dict) -> TestResult:
        """Test the new destination's settings unless exactly these passed a test in this
        wizard before (Finish validates every step again: no second test)."""
        remembered = destination_services.tested_result(
            self.remembered_test(), kind, cleaned["new_settings"], cleaned["new_secrets"]
        )
        if remembered is not None and remembered.ok:
            self.result = remembered
            return remembered
        status, self.region = destination_services.test_kind_form(self.request, self.kinds.chosen_form)
        if status == 429:
            raise ValidationError(self.region.pop("throttled"), code="throttled")
        result = self.result = self.region["result"]
        if result.needs_confirmation:
            raise ValidationError(
                _("Check the server's fingerprint below and trust it if it is the right one, then go on."),
                code="fingerprint",
            )
        if not result.ok:
            raise ValidationError(
                _("The connection test failed: %(message)s") % {"message": result.message}, code="unreachable"
            )
        self.remember_test(kind, self.region)
        return result

    # --- what the page shows ------------------------------------------------------------------
    def folders(self) -> list[dict]:
        """Per choice of *target*: where the backups will go (``describe_folder`` of the
        destination, e.g. ``/srv/nas → backupsite/office``) and the destinations it means
        (for the size warnings). The page shows the chosen one's."""
        folder = job_folder(self.job_slug) if self.job_slug else "backupsite/…"

        def where(destination: Destination) -> str:
            # Words only: the Conf is built without its policy checks (which touch the
            # disk), as a page listing a hundred destinations must stay fast.
            try:
                kind = destination.kind_class
                return kind(kind.conf_class(**destination.settings)).describe_folder(folder)
            except (DestinationError, TypeError, ValueError):
                return f"{destination.name} → {folder}"

        rows = []
        saved = {str(d.pk): d for d in self.saved}
        for value, _label in self.fields["target"].choices:
            chosen = self.keep_destinations if value == KEEP else [saved[value]] if value in saved else []
            text = (
                "; ".join(where(d) for d in chosen)
                if chosen
                else _("%(folder)s in the new destination") % {"folder": folder}
            )
            rows.append({"value": value, "folder": text, "destinations": chosen})
        return rows


def targets_html(targets: list[dict]) -> str:
    """Where the chosen target writes (``static/js/wizard.js`` puts the folder of another
    choice there, from its radio button's ``data-folder``), and the size warnings of the
    choices that have any (only the chosen one's shows). One folder line, not one hidden
    block per saved destination: a hundred of them were 3 ms per request."""
    chosen = next((target for target in targets if target["chosen"]), None)
    parts = [
        format_html(
            '<p>{} <code id="remote-folder">{}</code></p>',
            _("Backups are written to"),
            chosen["folder"] if chosen else "",
        )
    ]
    for target in targets:
        if target["warnings"]:
            parts.append(
                format_html(
                    '<div data-for-target="{}"{}>{}</div>',
                    target["value"],
                    "" if target["chosen"] else mark_safe(" hidden"),
                    format_html_join(
                        "", '<p class="msg msg-warning" role="status">{}</p>', ((w,) for w in target["warnings"])
                    ),
                )
            )
    return mark_safe("\n  ".join(parts))  # noqa: S308 - every part escaped by format_html


# --- step 4 --------------------------------------------------------------------------
SAVE_AND_RUN, RUN_ONLY, SAVE = "save_run", "run_only", "save"


class SummaryForm(StepForm):
    title = _("Summary")

    action = forms.ChoiceField(choices=((SAVE_AND_RUN, SAVE_AND_RUN), (RUN_ONLY, RUN_ONLY), (SAVE, SAVE)))

    def __init__(self, *args, allowed: tuple[str, ...] = (SAVE_AND_RUN, RUN_ONLY, SAVE), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["action"].choices = [(a, a) for a in allowed]
        self.fields["action"].error_messages["invalid_choice"] = _("Choose one of the buttons below.")
