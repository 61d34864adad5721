"""The audit log page (administrators): every event, newest first, filterable by
object, actor, action and time, paginated. Read only: events are never edited or
deleted here (the model refuses it anyway; retention prunes old ones)."""

from __future__ import annotations

from datetime import datetime, time, timedelta

from django import forms
from django.apps import apps
from django.conf import settings
from django.contrib.auth.decorators import permission_required
from django.core.paginator import Paginator
from django.shortcuts import render
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_GET

from backupsite.audit import ACTIONS
from backupsite.models import AuditEvent

EVENTS_PER_PAGE = 50


def _type_label(object_type: str) -> str:
    try:
        return str(apps.get_model(object_type)._meta.verbose_name)
    except (LookupError, ValueError):
        return object_type


class AuditFilter(forms.Form):
    type = forms.ChoiceField(label=_("Object"), required=False)
    object = forms.CharField(label=_("Object id"), required=False, max_length=40, widget=forms.HiddenInput)
    actor = forms.ChoiceField(label=_("Who"), required=False)
    action = forms.ChoiceField(label=_("Action"), required=False)
    since = forms.DateField(label=_("From"), required=False, widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(label=_("Until"), required=False, widget=forms.DateInput(attrs={"type": "date"}))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        types = AuditEvent.objects.exclude(object_type="").order_by().values_list("object_type", flat=True).distinct()
        self.fields["type"].choices = [
            ("", _("All")),
            *sorted(((t, _type_label(t)) for t in types), key=lambda c: c[1]),
        ]
        actors = AuditEvent.objects.exclude(actor_name="").order_by().values_list("actor_name", flat=True).distinct()
        self.fields["actor"].choices = [("", _("Anyone")), *((name, name) for name in sorted(actors))]
        self.fields["action"].choices = [
            ("", _("All")),
            *sorted(((k, str(v)) for k, v in ACTIONS.items()), key=lambda c: c[1]),
        ]

    def filter(self, events):
        data = self.cleaned_data
        if data.get("type"):
            events = events.filter(object_type=data["type"])
            if data.get("object"):
                events = events.filter(object_id=data["object"])
        if data.get("actor"):
            events = events.filter(actor_name=data["actor"])
        if data.get("action"):
            events = events.filter(action=data["action"])
        zone = timezone.get_current_timezone()
        if data.get("since"):
            events = events.filter(at__gte=datetime.combine(data["since"], time.min, tzinfo=zone))
        if data.get("until"):
            events = events.filter(at__lt=datetime.combine(data["until"] + timedelta(days=1), time.min, tzinfo=zone))
        return events


@require_GET
@permission_required("backupsite.view_auditevent", raise_exception=True)
def audit_list(request):
    form = AuditFilter(request.GET or None)
    events = AuditEvent.objects.all()
    if form.is_valid():
        events = form.filter(events)
    page = Paginator(events, EVENTS_PER_PAGE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "form": form,
        "page": page,
        "events": page.object_list,
        "query": query.urlencode(),
        "retention_days": settings.BACKUPSITE_AUDIT_RETENTION_DAYS,
        "filtered": bool(form.is_bound and form.is_valid() and any(form.cleaned_data.values())),
    }
    return render(request, "backupsite/audit_list.html", context)
