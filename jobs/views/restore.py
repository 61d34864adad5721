"""Verify a stored backup, and restore it into a folder on this server.

Both run on a worker (``jobs.verification``, ``jobs.restores``): the page checks what a
user can get wrong at once and queues the work; a restore gets its own page with a
progress bar that polls a fragment. The password field is never rendered back, stored or
logged (``sensitive_post_parameters`` also keeps it out of error reports). A sensitive
run (its archive holds the panel's database) is refused, GET and POST alike, to users
without ``jobs.access_sensitive_run``.
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables
from django.views.decorators.http import require_http_methods

from backupsite import audit, sudo
from destinations.models import Destination
from jobs import restores
from jobs.downloads import readable_uploads
from jobs.models import Restore, Run
from jobs.verification import VerificationError, request_verification
from jobs.views.runs import refuse_sensitive

LOCAL = "local"


def is_encrypted(run: Run) -> bool:
    encryption = run.config.get("job", {}).get("encryption")
    return run.archive_name.endswith(".age") or encryption not in (None, "", "none")


def location_choices(run: Run) -> list[tuple[str, str]]:
    choices = []
    path = run.local_file
    if path is not None and path.is_file():
        choices.append((LOCAL, "This server (local copy)"))
    for upload in readable_uploads(run):  # write-only kinds (e-mail) cannot be read back
        choices.append((str(upload.destination_id), f"Destination “{upload.destination_name}”"))
    return choices


def _destination(value: str):
    if value == LOCAL:
        return None
    return get_object_or_404(Destination, pk=int(value))


class _LocationForm(forms.Form):
    location = forms.ChoiceField(label=_("Read the backup from"))
    password = forms.CharField(
        label=_("Backup password"),
        required=False,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "off"}),
        help_text=_("The job's backup password: it unlocks the job's key for this check only and is not stored."),
    )

    def __init__(self, *args, run: Run, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["location"].choices = location_choices(run)
        if not is_encrypted(run):
            del self.fields["password"]


class VerifyForm(_LocationForm):
    checksum_only = forms.BooleanField(
        label=_("Only compare the stored file with its checksum (no password; contents not checked)"),
        required=False,
    )

    def __init__(self, *args, run: Run, **kwargs):
        super().__init__(*args, run=run, **kwargs)
        if not is_encrypted(run):
            del self.fields["checksum_only"]


class RestoreForm(_LocationForm):
    """Where to restore, and optionally only some of the backup: whole sources, or one
    folder or file inside it, picked from the manifest (*outline*). When newer backups of
    the job exist, restoring this older one must be confirmed."""

    target = forms.CharField(
        label=_("Restore into"),
        max_length=500,
        help_text=_("A new (or empty) folder inside an allowed restore folder."),
    )
    sources = forms.MultipleChoiceField(
        label=_("Only these sources"),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text=_("Leave all unticked to restore everything."),
    )
    path = forms.CharField(
        label=_("Only this folder or file"),
        required=False,
        max_length=1000,
        help_text=_(
            "A path as it is in the backup, starting with the source's folder, e.g. “office-files/docs/2026”. "
            "Only it and what is below it are restored and checked; the rest is skipped."
        ),
        widget=forms.TextInput(attrs={"list": "backup-folders", "autocomplete": "off", "spellcheck": "false"}),
    )
    confirm_older = forms.BooleanField(label=_("Restore this older backup anyway"), required=True)

    field_order = ["location", "target", "password", "sources", "path", "confirm_older"]

    def __init__(self, *args, run: Run, outline: restores.Outline | None, newer: restores.NewerBackups, **kwargs):
        super().__init__(*args, run=run, **kwargs)
        self.outline = outline
        if outline is None or not outline.sources:
            del self.fields["sources"]
        else:
            self.fields["sources"].choices = [
                (s["slug"], f"{s['name']} ({source_kind_label(s['kind'])}, {s['slug']}/)") for s in outline.sources
            ]
        if outline is None:
            self.fields["path"].help_text = _(
                "The backup's contents could not be listed here; type a path as it is in the backup."
            )
        if not newer.count:
            del self.fields["confirm_older"]
        else:
            self.fields["confirm_older"].help_text = newer.message

    def clean(self):
        cleaned = super().clean()
        paths = list(cleaned.get("sources") or [])
        if cleaned.get("path"):
            paths.append(cleaned["path"])
        try:
            selection = restores.selection_of(paths)
        except VerificationError as exc:
            self.add_error("path", str(exc))
            return cleaned
        if self.outline is not None and selection is not None:
            typed = restores.selection_of([cleaned["path"]]).paths[0] if cleaned.get("path") else None
            for missing in self.outline.unmatched(selection):
                # The sources come from the manifest's own list; a typed path may not.
                field = "path" if missing == typed else None
                self.add_error(field, _("%(path)s is not in this backup.") % {"path": missing})
        cleaned["only"] = list(selection.paths) if selection is not None else []
        return cleaned


def source_kind_label(kind: str) -> str:
    from jobs.sources import REGISTRY

    cls = REGISTRY.get(kind)
    return str(cls.label) if cls is not None else kind


def _restorable_run(pk: int) -> Run:
    run = get_object_or_404(Run.objects.select_related("job"), pk=pk)
    if run.is_active or not run.archive_name or run.archive_size is None:
        raise Http404("This run has no finished archive.")
    return run


@sensitive_post_parameters("password")
@require_http_methods(["GET", "POST"])
@permission_required("jobs.run_job", raise_exception=True)
def run_verify(request, pk: int):
    run = _restorable_run(pk)
    refused = refuse_sensitive(request, run)
    if refused is not None:
        return refused
    form = VerifyForm(request.POST if request.method == "POST" else None, run=run)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        if _verify(request, run, data):
            return redirect(run)
    uploads = run.uploads.all()
    return render(request, "jobs/run_verify.html", {"run": run, "form": form, "uploads": uploads})


@sensitive_variables("data")
def _verify(request, run: Run, data: dict) -> bool:
    try:
        request_verification(
            run,
            _destination(data["location"]),
            data.get("password") or None,
            checksum_only=bool(data.get("checksum_only")),
            user=request.user,
        )
    except VerificationError as exc:
        audit.record(request, audit.VERIFY, run, outcome="refused", message=str(exc))
        messages.error(request, gettext("Could not verify: %(error)s") % {"error": exc})
        return False
    audit.record(
        request,
        audit.VERIFY,
        run,
        where=dict(location_choices(run)).get(data["location"], data["location"]),
        checksum_only=bool(data.get("checksum_only")),
        outcome="queued",
    )
    messages.info(
        request,
        _(
            "Verification started in the background: the result appears under “Verification” when it is done "
            "(a damaged backup is marked invalid and the report-to addresses are alerted)."
        ),
    )
    return True


@sensitive_post_parameters("password")
@require_http_methods(["GET", "POST"])
@permission_required("jobs.change_job", raise_exception=True)
def run_restore(request, pk: int):
    run = _restorable_run(pk)
    refused = refuse_sensitive(request, run)
    if refused is not None:
        return refused
    if not sudo.active(request):  # restoring overwrites files: the password again (after the refusals)
        return sudo.refusal(request)
    roots = restores.restore_roots()
    newer = restores.newer_backups(run)
    outline = restores.outline_for(run, _first_location(run))
    initial = {"target": str(roots[0] / f"run-{run.pk}")}
    data = request.POST if request.method == "POST" else None
    form = RestoreForm(data, run=run, outline=outline, newer=newer, initial=initial)
    if request.method == "POST" and form.is_valid():
        restore = _restore(request, run, form.cleaned_data)
        if restore is not None:
            return redirect(restore)
    context = {
        "run": run,
        "form": form,
        "roots": roots,
        "newer": newer,
        "folders": outline.folders if outline is not None else [],
        "recent": run.restores.select_related("requested_by")[:5],
    }
    return render(request, "jobs/run_restore.html", context)


def _first_location(run: Run):
    """Where the page reads the manifest from to list the backup's contents: the local
    copy, else the first destination holding the run."""
    choices = location_choices(run)
    return _destination(choices[0][0]) if choices else None


@sensitive_variables("data")
def _restore(request, run: Run, data: dict):
    try:
        restore = restores.request_restore(
            run,
            data["target"],
            destination=_destination(data["location"]),
            password=data.get("password") or None,
            only=data.get("only") or None,
            user=request.user,
        )
    except VerificationError as exc:
        audit.record(request, audit.RESTORE, run, target=data["target"], outcome="failed", message=str(exc))
        messages.error(request, _("Nothing was restored: %(reason)s") % {"reason": exc})
        return None
    where = dict(location_choices(run)).get(data["location"], data["location"])
    audit.record(request, audit.RESTORE, run, where=where, target=data["target"], outcome="queued")
    return restore


def _restore_of(request, pk: int) -> Restore:
    restore = get_object_or_404(Restore.objects.select_related("run", "requested_by"), pk=pk)
    if not restore.run.archive_allowed_for(request.user):
        raise PermissionDenied
    return restore


@permission_required("jobs.change_job", raise_exception=True)
def restore_detail(request, pk: int):
    restore = _restore_of(request, pk)
    return render(request, "jobs/restore_detail.html", {"restore": restore, "run": restore.run})


@permission_required("jobs.change_job", raise_exception=True)
def restore_progress(request, pk: int):
    """The fragment the restore page polls while the restore is queued or running."""
    restore = _restore_of(request, pk)
    response = render(request, "jobs/_restore_progress.html", {"restore": restore})
    response["Cache-Control"] = "no-store"
    return response
