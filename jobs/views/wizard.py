"""The backup wizard's view: create (``/jobs/new/``), edit (``/jobs/<pk>/edit/``) and
duplicate (``/jobs/<pk>/duplicate/``) a job in the same four steps.

formtools' :class:`~formtools.wizard.views.SessionWizardView`, with:

* one storage per wizard (``wizard_id``, a hidden field; see :mod:`jobs.wizard.storage`),
  secrets encrypted apart from the step data, expiry and clean-up;
* Back (and the step links) keep what was entered on the step being left, unvalidated;
  a step shown again from the storage is shown as it was entered, its errors only when
  it is sent (or when Finish finds it invalid: formtools validates every step again);
* the extra buttons, each answered with a fragment when sent in the background by
  ``static/js/fragments.js`` or ``static/js/wizard.js`` (``X-Requested-With: fetch``),
  else with the whole step: *Update preview* (step 1), *Measure now* (step 2), *Test
  connection* and *I have checked this fingerprint: trust it* (step 3: the destination
  pages' test, trust token and result region, :mod:`destinations.services`);
* *Cancel*, which removes the wizard at once.

The steps' rules are in :mod:`jobs.wizard.forms`, Finish in :mod:`jobs.wizard.finish`.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime
from functools import cached_property

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied, SuspiciousOperation
from django.db.models import Q
from django.shortcuts import get_object_or_404, redirect, render
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.decorators import method_decorator
from django.utils.translation import gettext as _
from django.views.decorators.debug import sensitive_post_parameters
from formtools.wizard.forms import ManagementForm
from formtools.wizard.views import SessionWizardView

from backupsite.kindpages import is_fetch
from destinations import services as destination_services
from destinations.backends import DestinationError
from destinations.backends.base import FREE_SPACE
from destinations.models import Destination
from jobs.models import Job, Source
from jobs.sources import SourceError
from jobs.wizard import forms as steps
from jobs.wizard import storage as wizard_storage
from jobs.wizard.finish import finish

STEP_TEMPLATES = {
    "general": "jobs/wizard/step_general.html",
    "content": "jobs/wizard/step_content.html",
    "destination": "jobs/wizard/step_destination.html",
    "summary": "jobs/wizard/step_summary.html",
}
#: The extra buttons; ``trust`` is the destination pages' own trust button (its value a
#: signed trust token, ``destinations/_test_result.html``).
ACTIONS = ("wizard_preview", "wizard_measure", "wizard_test", "trust")
FRAGMENTS = {
    "wizard_preview": "jobs/wizard/_general_preview.html",
    "wizard_measure": "jobs/wizard/_sources.html",
    "wizard_test": "destinations/_test_region.html",
    "trust": "destinations/_test_region.html",
}
PERMISSIONS = {steps.CREATE: "jobs.add_job", steps.DUPLICATE: "jobs.add_job", steps.EDIT: "jobs.change_job"}


@method_decorator(sensitive_post_parameters(), name="dispatch")
class JobWizard(SessionWizardView):
    form_list = [
        ("general", steps.GeneralForm),
        ("content", steps.ContentForm),
        ("destination", steps.DestinationForm),
        ("summary", steps.SummaryForm),
    ]
    storage_name = "jobs.wizard.storage.WizardStorage"
    mode = steps.CREATE

    # --- setting up -----------------------------------------------------------------------
    def dispatch(self, request, *args, **kwargs):
        if not request.user.has_perm(PERMISSIONS[self.mode]):
            raise PermissionDenied
        self.job = get_object_or_404(Job, pk=kwargs["pk"]) if "pk" in kwargs else None
        wizard_storage.drop_expired(request.session, starting=request.method == "GET")
        return super().dispatch(request, *args, **kwargs)

    def get_prefix(self, request, *args, **kwargs):
        """One storage per wizard (per browser tab): the id comes with every POST."""
        if request.method == "POST":
            wizard_id = request.POST.get("wizard_id", "")
            if not wizard_storage.valid_wizard_id(wizard_id):
                raise SuspiciousOperation("The wizard id is missing or malformed.")
        else:
            wizard_id = wizard_storage.new_wizard_id()
        self.wizard_id = wizard_id
        return f"job_wizard_{wizard_id}"

    @property
    def owner(self) -> list:
        return [self.mode, self.job.pk if self.job is not None else None]

    def get(self, request, *args, **kwargs):
        self.storage.reset()
        self.storage.current_step = self.steps.first
        self.storage.extra_data = {"owner": self.owner}
        return self.render(self.get_form())

    def post(self, *args, **kwargs):
        request = self.request
        if self.storage.extra_data.get("owner") is None:
            # Not started by this session, finished, cancelled or expired (formtools has
            # just made an empty storage for it: drop that too).
            self.storage.discard()
            return self.render_expired()
        if self.storage.extra_data.get("owner") != self.owner:
            raise SuspiciousOperation("This wizard belongs to another page.")
        self.storage.touch()
        if "wizard_cancel" in request.POST:
            self.storage.discard()
            messages.info(request, _("The wizard was cancelled; nothing was saved."))
            return redirect(self.job.get_absolute_url() if self.mode == steps.EDIT else reverse("jobs:job_list"))
        action = next((name for name in ACTIONS if name in request.POST), None)
        goto = request.POST.get("wizard_goto_step")
        step = self._posted_step()
        self.trust_error = ""
        if action == "trust" and step == "destination" and request.POST.get("destination-target") == steps.NEW:
            self._trust_new_destination()  # before the form is built: it gets the pinned setting
        form = self.get_form(step, data=request.POST)
        # Whatever happens next (Next with errors, Back, a test), what was typed on this
        # step is kept, secrets encrypted: nothing has to be typed twice.
        self._keep_entries(step, form)
        if action is None and not goto:
            return super().post(*args, **kwargs)
        if goto:
            if goto not in self.get_form_list():
                raise SuspiciousOperation("Unknown step.")
            return self.render_goto_step(goto)
        return self.handle_action(action, step, form)

    def _posted_step(self) -> str:
        management = ManagementForm(self.request.POST, prefix=self.prefix)
        if not management.is_valid() or management.cleaned_data["current_step"] not in self.get_form_list():
            raise SuspiciousOperation("ManagementForm data is missing or has been tampered with.")
        step = management.cleaned_data["current_step"]
        self.storage.current_step = step
        return step

    def render_expired(self):
        again = reverse("jobs:job_edit", args=[self.job.pk]) if self.mode == steps.EDIT else reverse("jobs:job_create")
        return render(self.request, "jobs/wizard/expired.html", {"again": again}, status=410)

    # --- forms ----------------------------------------------------------------------------
    def get_form_kwargs(self, step=None):
        step = step or self.steps.current
        kwargs = {"job": self.job, "mode": self.mode, "pending": self.storage.get_step_secrets(step)}
        if step == "content":
            kwargs["memory"] = self.storage.extra_data
        elif step == "destination":
            kwargs.update(memory=self.storage.extra_data, request=self.request, job_slug=self._folder_slug())
        elif step == "summary":
            allowed = [steps.SAVE_AND_RUN, steps.RUN_ONLY, steps.SAVE]
            if self.mode == steps.EDIT:
                allowed.remove(steps.RUN_ONLY)
            if not self.request.user.has_perm("jobs.run_job"):
                allowed = [steps.SAVE]
            kwargs["allowed"] = tuple(allowed)
        return kwargs

    def get_form_initial(self, step):
        job = self.job
        if step == "general" and job is not None:
            local = job.first_run_at.astimezone(_zone(job.timezone)) if job.first_run_at else None
            name = job.name if self.mode == steps.EDIT else _copy_name(job.name)
            return {
                "name": name,
                "report_to": job.report_to,
                "language": job.language,
                "interval": job.interval,
                "cron": job.cron,
                "timezone": job.timezone,
                "first_date": local.date() if local else None,
                "first_time": local.time() if local else None,
                "keep_last": job.keep_last,
                "max_age_days": job.max_age_days,
            }
        if step == "content" and job is not None:
            return {
                "sources": list(job.sources.values_list("pk", flat=True)),
                "encryption": job.encryption,
                "age_recipient": job.age_recipient if job.encryption == Job.Encryption.RECIPIENT else "",
            }
        if step == "destination":
            if job is not None and job.destinations.exists():
                return {"target": steps.KEEP}
            first = Destination.objects.filter(enabled=True).defer("secrets").order_by("name").first()
            return {"target": str(first.pk) if first else steps.NEW}
        return {}

    def process_step(self, form):
        """Only the step's own fields go into the session, never a secret: those are
        stored encrypted, apart (a blank one keeps what was typed before)."""
        data, typed = self._split(form)
        self.storage.set_step_secrets(self.steps.current, typed)
        return data

    def _split(self, form) -> tuple[dict, dict]:
        secret = set(form.secret_keys())
        own = f"{form.prefix}-"
        data, typed = {}, {}
        for key, values in form.data.lists():
            if not key.startswith(own):
                continue
            if key in secret:
                typed[key] = values[0] if values else ""
            else:
                data[key] = values
        return data, typed

    def _keep_entries(self, step: str, form) -> None:
        """What was entered on a step left with Back or an extra button, kept unvalidated."""
        data, typed = self._split(form)
        self.storage.set_step_data(step, data)
        self.storage.set_step_secrets(step, typed)

    def render_next_step(self, form, **kwargs):
        next_step = self.steps.next
        new_form = self.get_form(next_step, data=self.storage.get_step_data(next_step))
        self.storage.current_step = next_step
        return self.render(self._quiet(new_form), **kwargs)

    def render_goto_step(self, goto_step, **kwargs):
        """Jump to *goto_step* (the step list's links); forward only as far as the steps
        before it are valid: the first one with errors is shown instead, with them (the
        summary must never be built from a step that does not validate)."""
        order = list(self.get_form_list())
        for step in order[: order.index(goto_step)]:
            form = self.get_form(step, data=self.storage.get_step_data(step))
            if not form.is_valid():
                self.storage.current_step = step
                return self.render(form, **kwargs)
            self._valid_forms[step] = form  # (the summary reads them: not validated twice)
        self.storage.current_step = goto_step
        form = self.get_form(goto_step, data=self.storage.get_step_data(goto_step))
        return self.render(self._quiet(form), **kwargs)

    @staticmethod
    def _quiet(form):
        """A step shown again from the storage, as it was entered (errors when it is sent)."""
        if form.is_bound:
            form.suppress_errors()
        return form

    def render_done(self, form, **kwargs):
        """formtools' Finish: every step validated again; the wizard then removed."""
        final = OrderedDict()
        for step in self.get_form_list():
            step_form = self.get_form(step=step, data=self.storage.get_step_data(step))
            if not step_form.is_valid():
                return self.render_revalidation_failure(step, step_form, **kwargs)
            final[step] = step_form
        response = self.done(list(final.values()), form_dict=final, **kwargs)
        self.storage.discard()
        return response

    def done(self, form_list, form_dict=None, **kwargs):
        cleaned = {step: form.cleaned_data for step, form in form_dict.items()}
        destination_form = form_dict["destination"]
        tested = destination_form.remembered_test() if cleaned["destination"].get("target") == steps.NEW else ""
        outcome = finish(steps=cleaned, mode=self.mode, job=self.job, request=self.request, tested=tested)
        messages.add_message(self.request, getattr(messages, outcome.level.upper()), outcome.message)
        return redirect(outcome.url)

    # --- the extra buttons --------------------------------------------------------------
    def handle_action(self, action: str, step: str, form):
        status = 200
        if action == "wizard_measure" and step == "content":
            self._measure(form)
        elif action in ("wizard_test", "trust") and step == "destination":
            status = self._test(form, action)
        if is_fetch(self.request) and action in FRAGMENTS:
            if status == 422:
                return TemplateResponse(self.request, "jobs/wizard/_empty.html", {}, status=422)
            context = self.get_context_data(form=form)
            response = TemplateResponse(self.request, FRAGMENTS[action], context, status=status)
            retry_after = getattr(form, "region", {}).get("retry_after")
            if status == 429 and retry_after:
                response["Retry-After"] = str(retry_after)
            return response
        if status != 422:
            form.suppress_errors()
        return self.render(form)

    def _measure(self, form) -> None:
        if not self.request.user.has_perm("jobs.change_source"):
            raise PermissionDenied
        source = Source.objects.filter(pk=_int(self.request.POST.get("wizard_measure"))).first()
        if source is None:
            form.measure_message = _("This source no longer exists.")
            return
        try:
            source.measure()
        except (SourceError, ValueError, OSError) as exc:
            form.measure_message = _("Could not measure “%(name)s”: %(error)s") % {"name": source.name, "error": exc}
        else:
            form.measure_message = _("Measured “%(name)s”.") % {"name": source.name}

    def _trust_new_destination(self) -> None:
        """Pin the fingerprint of the trust token (signed when the test saw it, so only
        what the server really showed) into the wizard's memory for the new
        destination's kind; the test then runs again with it."""
        if not self.request.user.has_perm("destinations.add_destination"):
            raise PermissionDenied
        kind = self.request.POST.get("destination-kind", "")
        try:
            setting, value = destination_services.read_trust_token(self.request.POST.get("trust", ""), kind)
        except destination_services.TokenError as exc:
            self.trust_error = str(exc)
            return
        self.storage.extra_data.setdefault("pinned", {}).setdefault(kind, {})[setting] = value

    def _test(self, form, action: str) -> int:
        """Test (or trust and test again) the chosen destination now, as the destination
        pages do. Returns the HTTP status of the answer: 422 when the new destination's
        settings have errors (shown next to their fields), 429 when throttled."""
        form.skip_connection = True  # the page may validate the step: never a second test
        target = form.chosen_target()
        if target == steps.NEW:
            if not form.may_create:
                raise PermissionDenied
            if self.trust_error:
                form.region["test_error"] = self.trust_error
                return 200
            status, region = destination_services.test_kind_form(self.request, form.kinds.chosen_form)
            form.region.update(region)
            form.result = region.get("result")
            form.remember_test(form.chosen_kind(), region)
            return status
        if not self.request.user.has_perm("destinations.change_destination"):
            raise PermissionDenied  # as the destination pages' own Test button
        destination = Destination.objects.filter(pk=_int(target), enabled=True).first()
        if destination is None:
            form.region["test_error"] = _("Choose a destination to test.")
            return 200
        try:
            destination_services.throttle_test(self.request)
        except destination_services.TestThrottled as exc:
            form.region.update(throttled=str(exc), retry_after=exc.retry_after)
            return 429
        if action == "trust":
            try:
                result = destination_services.trust_and_retest(
                    destination, self.request.POST.get("trust", ""), request=self.request
                )
            except destination_services.TokenError as exc:
                form.region["test_error"] = str(exc)
                return 200
        else:
            result = destination_services.test_destination(destination)
        form.region["result"] = form.result = result
        if result.needs_confirmation:
            form.region["trust_token"] = destination_services.trust_token(
                destination.kind, result.fingerprint, destination.pk
            )
        return 200

    # --- rendering ------------------------------------------------------------------------
    def get_template_names(self):
        return [STEP_TEMPLATES[self.steps.current]]

    def get_context_data(self, form, **kwargs):
        context = super().get_context_data(form=form, **kwargs)
        context.pop("owner", None)
        for key in ("tested", "pinned", "checked"):
            context.pop(key, None)  # the wizard's memory is not for templates
        current = self.steps.current
        context.update(
            wizard_id=self.wizard_id,
            mode=self.mode,
            job=self.job,
            step_titles=[(name, cls.title) for name, cls in self.get_form_list().items()],
            current_index=list(self.get_form_list()).index(current),
            visited=self._visited(),
            heading=self._heading(),
        )
        estimate = self._estimate()
        if current == "general":
            context["preview"] = form.preview()
        elif current == "content":
            context["rows"] = rows = form.rows()
            context["rows_html"] = steps.source_rows_html(
                rows, form["sources"].html_name, may_measure=self.request.user.has_perm("jobs.change_source")
            )
            chosen = [row for row in rows if row.checked]
            context["total"] = sum(row.size or 0 for row in chosen)
            context["unmeasured"] = [row.source.name for row in chosen if row.size is None]
            context["warnings"] = size_warnings(context["total"], self._likely_destinations) if chosen else []
            context["sensitive_chosen"] = any(row.source.is_sensitive for row in chosen)
        elif current == "destination":
            context.update(self._destination_context(form, estimate))
        elif current == "summary":
            context.update(self._summary_context())
        return context

    def _visited(self) -> list[str]:
        data = self.storage.data.get(self.storage.step_data_key, {})
        return [name for name in self.get_form_list() if name in data]

    def _heading(self) -> str:
        if self.mode == steps.EDIT:
            return _("Edit job “%(name)s”") % {"name": self.job.name}
        if self.mode == steps.DUPLICATE:
            return _("Duplicate job “%(name)s”") % {"name": self.job.name}
        return _("New backup job")

    @cached_property
    def _valid_forms(self) -> dict:
        """Step forms this request validated and found valid (the view is made per request)."""
        return {}

    def _cleaned(self, step: str) -> dict | None:
        if step in self._valid_forms:
            return self._valid_forms[step].cleaned_data
        data = self.storage.get_step_data(step)
        if data is None:
            return None
        form = self.get_form(step, data=data)
        if step == "destination":
            form.skip_connection = True
        return form.cleaned_data if form.is_valid() else None

    def _folder_slug(self) -> str:
        general = self.storage.get_step_data("general")
        name = (general or {}).get("general-name", "").strip() if general else ""
        if self.mode == steps.EDIT and self.job is not None and (not name or name == self.job.name):
            return self.job.slug
        return Job.slug_for(name, None) if name else ""

    def _estimate(self) -> int | None:
        data = self.storage.get_step_data("content")
        if not data:
            return None
        ids = [_int(v) for v in data.getlist("content-sources")]
        sizes = Source.objects.filter(pk__in=[i for i in ids if i is not None]).values_list("size_bytes", flat=True)
        return sum(size or 0 for size in sizes)

    def _likely_destinations(self) -> list[Destination]:
        """Step 2's warnings: the destination chosen in step 3, else the job's, else every
        saved one (the likely choice)."""
        data = self.storage.get_step_data("destination")
        target = data.get("destination-target") if data else None
        if target and target not in (steps.KEEP, steps.NEW):
            return list(Destination.objects.filter(pk=_int(target)).described())
        if self.job is not None and (target == steps.KEEP or target is None) and self.job.destinations.exists():
            return list(self.job.destinations.described())
        if target == steps.NEW:
            return []
        return list(Destination.objects.filter(enabled=True).described())

    def _destination_context(self, form, estimate: int | None) -> dict:
        result = getattr(form, "result", None)
        chosen = form.chosen_target()
        targets = []
        for row in form.folders():
            free = result.free_bytes if result is not None and row["value"] == steps.NEW else None
            targets.append(
                {
                    **row,
                    "chosen": row["value"] == chosen,
                    "warnings": size_warnings(estimate or 0, row["destinations"], free_bytes=free),
                }
            )
        return {
            "kind_forms": form.kinds.rows(),
            "result": result,
            "targets": targets,
            "targets_html": steps.targets_html(targets),
            "target_choices_html": form.target_choices_html({t["value"]: t["folder"] for t in targets}),
            "estimate": estimate,
            **self._region(form, chosen),
        }

    def _region(self, form, target: str) -> dict:
        """What ``destinations/_test_region.html`` shows: the step's own test (or the
        trust token of a fingerprint to confirm), nothing carried in the page (the
        wizard's storage keeps the typed secrets, the confirmed fingerprints and the
        passed tests)."""
        new = target == steps.NEW
        perm = "destinations.add_destination" if new else "destinations.change_destination"
        region = {
            "can_trust": self.request.user.has_perm(perm),
            "trust_in_form": True,
            "failed_hint": _("A new destination must pass the test before you can go on.") if new else "",
            "passed_hint": _("The new destination is saved when you finish the wizard.") if new else "",
        }
        region.update((key, value) for key, value in form.region.items() if key not in ("tested", "retry_after"))
        return region

    def _summary_context(self) -> dict:
        general = self._cleaned("general") or {}
        content = self._cleaned("content") or {}
        destination = self._cleaned("destination") or {}
        target = destination.get("target")
        kept = [d.name for d in self.job.destinations.all()] if self.job is not None else []
        if target == steps.NEW:
            added = [_("%(name)s (new, tested)") % {"name": destination.get("name", "")}]
        elif destination.get("destination") is not None:
            added = [destination["destination"].name]
        else:
            added = []
        if target == steps.KEEP:
            where = kept
        elif self.mode == steps.EDIT:
            where = kept + added
        else:
            where = added
        sources = list(content.get("sources") or [])
        encryption = content.get("encryption", "")
        first = general.get("first_run_at")
        zone = _zone(general.get("timezone") or "UTC")
        return {
            "general": general,
            "content": content,
            "sources": sources,
            "total": sum(s.size_bytes or 0 for s in sources),
            "where": where,
            "first_local": first.astimezone(zone) if first else None,
            "upcoming": [t.astimezone(zone) for t in _upcoming(general)],  # the saved job's arithmetic
            "words": _words(general),
            "language_name": dict(settings.LANGUAGES).get(general.get("language"), general.get("language", "")),
            "folder": f"backupsite/{self._folder_slug()}/",
            "unencrypted": encryption == Job.Encryption.NONE,
            "sensitive_in_clear": Job.is_sensitive_in_clear(encryption, sources),
            "password_changes": bool(content.get("password")) and self.mode == steps.EDIT,
            "keeps_password": encryption == Job.Encryption.PASSWORD and not content.get("password"),
        }


class JobEditWizard(JobWizard):
    mode = steps.EDIT


class JobDuplicateWizard(JobWizard):
    mode = steps.DUPLICATE


# --- helpers ---------------------------------------------------------------------------------
def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _zone(name: str):
    from jobs.schedule import ScheduleError, zone

    try:
        return zone(name)
    except ScheduleError:
        return zone("UTC")


def _copy_name(name: str) -> str:
    base = _("%(name)s (copy)") % {"name": name}
    candidate, n = base[:100], 2
    while Job.objects.filter(Q(name__iexact=candidate)).exists():
        candidate = f"{base[:95]} {n}"
        n += 1
    return candidate


def _upcoming(general: dict) -> list[datetime]:
    from django.utils import timezone

    from jobs.schedule import ScheduleError, upcoming

    if not general:
        return []
    try:
        return upcoming(
            general["interval"],
            general.get("first_run_at"),
            general["timezone"],
            general.get("cron", ""),
            timezone.now(),
        )
    except (ScheduleError, ValueError, KeyError):
        return []


def _words(general: dict) -> str:
    from jobs.schedule import describe

    if not general:
        return ""
    return describe(general["interval"], general.get("first_run_at"), general["timezone"], general.get("cron", ""))


def size_warnings(estimate: int, destinations, *, free_bytes: int | None = None) -> list[str]:
    """Warnings when *estimate* bytes (the measured size of the chosen sources, before
    compression) may not fit a destination: the largest archive it takes (an e-mail
    attachment limit) or the free space it last reported."""
    from django.template.defaultfilters import filesizeformat

    warnings = []
    if not estimate:
        return warnings
    if callable(destinations):  # (loaded only when there is something to warn about)
        destinations = destinations()
    for destination in destinations:
        try:  # settings only: the limits need no credentials (and no query for them)
            kind = destination.kind_class
            backend = kind(kind.conf_class(**destination.settings))
        except (DestinationError, TypeError, ValueError):
            continue
        limit = backend.size_limit()
        if limit is not None and estimate > limit:
            warnings.append(
                _(
                    "%(name)s takes archives of at most %(limit)s; the chosen content measures %(size)s before "
                    "compression, so the backup may be refused there."
                )
                % {"name": destination.name, "limit": filesizeformat(limit), "size": filesizeformat(estimate)}
            )
        free = (destination.status or {}).get("free_bytes")
        if free is None and destination.last_test is not None:
            free = destination.last_test.free_bytes
        if isinstance(free, int) and backend.can(FREE_SPACE) and estimate > free:
            warnings.append(
                _("%(name)s had %(free)s free when last checked; the chosen content measures %(size)s.")
                % {"name": destination.name, "free": filesizeformat(free), "size": filesizeformat(estimate)}
            )
    if free_bytes is not None and not destinations and estimate > free_bytes:
        warnings.append(
            _("The new destination has %(free)s free; the chosen content measures %(size)s.")
            % {"free": filesizeformat(free_bytes), "size": filesizeformat(estimate)}
        )
    return warnings
