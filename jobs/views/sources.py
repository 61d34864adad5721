"""Source pages: the list and the details (every role), create, edit, test, measure and
delete (administrators). What they do is in :mod:`jobs.sources.services`; the views
choose the forms, the template and the status.

The form page works without JavaScript: every kind's fieldset is in the page under its
heading and only the chosen kind's is validated; *Test* reloads the page with the result
(a typed password must then be typed again: it is never rendered back).
``static/js/kind-form.js`` shows only the chosen kind's fieldset and tests in the
background (``X-Requested-With: fetch`` answers with the result fragment).
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.paginator import Paginator
from django.db.models import Count, Prefetch
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_http_methods, require_POST

from backupsite.kindpages import KindFormPage, chosen_kind, form_view, is_fetch, unvalidated
from jobs.models import Job, Source, SourceUndeletable
from jobs.sources import REGISTRY
from jobs.sources import services as source_services
from jobs.sources.base import TestResult
from jobs.sources.forms import KindChoiceForm, SourceForm, creatable_kinds, kind_form

FORM_TEMPLATE = "jobs/source_form.html"
USED_BY_SHOWN = 3
SOURCES_PER_PAGE = 25
RESULT_TEMPLATE = "jobs/sources/_test_result.html"


def _editable(kind: str) -> bool:
    """The kind is installed and has a form (a kind registered without one is shown, not
    edited)."""
    return kind in REGISTRY and bool(REGISTRY[kind].form_class_path)


def _kind_info(kind: str) -> dict:
    cls = REGISTRY[kind]
    return {"kind": kind, "label": cls.label, "help_text": cls.help_text, "testable": cls.testable}


# --- list and details ------------------------------------------------------------------
@permission_required("jobs.view_source", raise_exception=True)
def source_list(request):
    # The first few jobs of each source by name, and how many there are: two queries,
    # and a row stays short however many jobs share a source.
    first_jobs = Prefetch(
        "jobs", queryset=Job.objects.only("id", "name").order_by("name")[:USED_BY_SHOWN], to_attr="first_jobs"
    )
    listed = Source.objects.defer("secrets").annotate(job_count=Count("jobs")).prefetch_related(first_jobs)
    page = Paginator(listed.order_by("name"), SOURCES_PER_PAGE).get_page(request.GET.get("page"))
    sources = list(page.object_list)
    for source in sources:
        source.more_jobs = source.job_count - len(source.first_jobs)
    context = {"sources": sources, "page": page, "can_create": bool(creatable_kinds())}
    return render(request, "jobs/source_list.html", context)


@permission_required("jobs.view_source", raise_exception=True)
def source_detail(request, pk: int):
    source = get_object_or_404(Source.objects.annotate(job_count=Count("jobs")), pk=pk)
    context = {
        "source": source,
        "description": source.describe(),
        "jobs": source_services.jobs_using(source),
        "kind_info": _kind_info(source.kind) if _editable(source.kind) else None,
        "stored_secrets": _stored_secret_labels(source),
    }
    return render(request, "jobs/source_detail.html", context)


def _stored_secret_labels(source: Source) -> list[str]:
    if not _editable(source.kind):
        return []
    form = kind_form(source.kind, source=source)
    return [
        str(form.fields[name].label) for name in form.secret_fields if name in form.fields and source.secrets.get(name)
    ]


# --- create and edit ---------------------------------------------------------------------
@form_view("jobs.add_source")
def source_create(request):
    return _form_page(request, None)


@form_view("jobs.change_source")
def source_edit(request, pk: int):
    return _form_page(request, get_object_or_404(Source, pk=pk))


class _FormPage(KindFormPage):
    """The create / edit page: the name, the kind chooser (create only), one form per
    kind (only the chosen one bound for validation)."""

    created_text = gettext_lazy("Source “%(name)s” created.")
    saved_text = gettext_lazy("Source “%(name)s” saved.")

    def __init__(self, request, source: Source | None) -> None:
        self.request = request
        self.source = source
        self.creating = source is None
        self.post = request.POST if request.method == "POST" else None
        self.kinds = list(creatable_kinds()) if self.creating else [source.kind]
        self.chosen = chosen_kind(request, self.post, self.kinds) if self.creating else source.kind
        self.chooser = KindChoiceForm(self.post, initial={"kind": self.chosen}) if self.creating else None
        self.forms = {kind: self._kind_form(kind) for kind in self.kinds}
        self.chosen_form = self.forms.get(self.chosen)
        self.common = SourceForm(self.post, instance=source)
        self.result: TestResult | None = None
        self.test_error = ""

    def _kind_form(self, kind: str):
        options = {"use_required_attribute": not self.creating}
        if self.post is None:
            return kind_form(kind, source=self.source, **options)
        if kind != self.chosen:
            return unvalidated(kind_form(kind, self.post, **options))
        return kind_form(kind, self.post, source=self.source, **options)

    @property
    def action(self) -> str | None:
        if self.post is None:
            return None
        return "test" if self.post.get("action") == "test" else "save"

    def save(self) -> Source | None:
        checks = [self.common.is_valid(), self.chosen_form is not None and self.chosen_form.is_valid()]
        if self.chooser is not None:
            checks.append(self.chooser.is_valid())
        if not all(checks):
            return None
        return source_services.save(self.common, self.chosen_form, kind=self.chosen, request=self.request)

    def test(self) -> int:
        """Test the unsaved settings; the HTTP status of the answer (422: the settings
        have errors, shown next to their fields on a full page)."""
        unvalidated(self.common)
        form = self.chosen_form
        if form is None:
            self.test_error = _("Choose a kind first.")
            return 422
        if not form.is_valid():
            self.test_error = _("Correct the settings marked below, then test again.")
            return 422
        try:
            source_services.throttle_test(self.request)
        except source_services.TestThrottled as exc:
            self.test_error = str(exc)
            return 429
        name = self.post.get("name", "") if self.post is not None else ""
        self.result = source_services.run_test(form.handler(name))
        return 200

    def result_context(self) -> dict:
        return {"result": self.result, "test_error": self.test_error}

    def context(self) -> dict:
        kind_forms = [
            {
                **_kind_info(kind),
                "form": form,
                "template": form.fieldset_template,
                "chosen": kind == self.chosen,
            }
            for kind, form in self.forms.items()
        ]
        return {
            "source": self.source,
            "creating": self.creating,
            "common": self.common,
            "chooser": self.chooser,
            "kind_forms": kind_forms,
            "chosen": self.chosen,
            "any_testable": any(kf["testable"] for kf in kind_forms),
            **self.result_context(),
        }

    def fragment(self, status: int):
        return render(self.request, RESULT_TEMPLATE, self.result_context(), status=status)

    def full_page(self, status: int):
        return render(self.request, FORM_TEMPLATE, self.context(), status=429 if status == 429 else 200)


def _form_page(request, source: Source | None):
    if source is not None and not _editable(source.kind):
        messages.error(request, _("This source's kind is not installed; it cannot be edited."))
        return redirect(source)
    return _FormPage(request, source).respond()


# --- test, measure, delete ------------------------------------------------------------------
@require_POST
@permission_required("jobs.change_source", raise_exception=True)
def source_test(request, pk: int):
    source = get_object_or_404(Source, pk=pk)
    try:
        source_services.throttle_test(request)
    except source_services.TestThrottled as exc:
        messages.error(request, str(exc))
        return redirect(source)
    try:
        handler = source.handler()
    except (ValueError, source_services.SourceError) as exc:
        result = TestResult(False, str(exc))
    else:
        result = source_services.run_test(handler)
    if is_fetch(request):
        return render(request, RESULT_TEMPLATE, {"result": result})
    if result.ok:
        messages.success(request, _("%(name)s: %(message)s") % {"name": source.name, "message": _summary(result)})
    else:
        messages.error(request, _("%(name)s: %(message)s") % {"name": source.name, "message": result.message})
    return redirect(source)


def _summary(result: TestResult) -> str:
    from django.template.defaultfilters import filesizeformat

    parts = [result.message]
    if result.version:
        parts.append(_("Server: %(version)s.") % {"version": result.version})
    if result.size_bytes is not None:
        parts.append(_("Size: %(size)s.") % {"size": filesizeformat(result.size_bytes)})
    return " ".join(parts)


@require_POST
@permission_required("jobs.change_source", raise_exception=True)
def source_measure(request, pk: int):
    source = get_object_or_404(Source, pk=pk)
    outcome = source_services.measure(source)
    (messages.success if outcome.ok else messages.error)(request, outcome.message)
    return redirect(source)


@require_http_methods(["GET", "POST"])
@permission_required("jobs.delete_source", raise_exception=True)
def source_delete(request, pk: int):
    source = get_object_or_404(Source, pk=pk)
    context = {"source": source, "jobs": source_services.jobs_using(source)}
    if request.method == "POST":
        try:
            source_services.delete(source, request=request)
        except source_services.InUse as exc:
            context.update(jobs=exc.jobs, refused=exc.message)
            return render(request, "jobs/source_confirm_delete.html", context, status=409)
        except SourceUndeletable as exc:
            context["refused"] = str(exc)
            return render(request, "jobs/source_confirm_delete.html", context, status=409)
        messages.success(
            request,
            _("Source “%(name)s” deleted. Backups that contain it are kept.") % {"name": source.name},
        )
        return redirect("jobs:source_list")
    return render(request, "jobs/source_confirm_delete.html", context)
