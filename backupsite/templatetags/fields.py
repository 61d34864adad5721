"""``{% field_row field %}``: one form field as every page shows it (``templates/_field.html``
includes it; loops over many fields call it directly).

The markup: ``<div class="field">`` with the label, the widget, the help text (its id is
the one Django's widgets name in ``aria-describedby``) and the errors (announced with
``role="alert"``); a checkbox comes before its label. Built in Python rather than in a
template: a form of 36 fields (step 3 of the wizard holds every destination kind's) cost
about 10 ms in template lookups per request (bench/pages.py)."""

from __future__ import annotations

from django import template
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

register = template.Library()


@register.simple_tag
def field_row(field) -> SafeString:
    checkbox = field.widget_type == "checkbox"
    errors = field.errors
    label = format_html('<label for="{}">{}</label>', field.id_for_label, field.label)
    widget = field.as_widget()
    head = format_html("{} {}", widget, label) if checkbox else format_html("{}\n  {}", label, widget)
    help_text = (
        format_html('<p class="help" id="{}_helptext">{}</p>', field.auto_id, mark_safe(field.help_text))  # noqa: S308 - help texts are ours (|safe in the template before)
        if field.help_text
        else ""
    )
    error_html = (
        format_html(
            '<div id="{}_error">{}</div>',
            field.auto_id,
            format_html_join("", '<p class="error" role="alert">{}</p>', ((error,) for error in errors)),
        )
        if errors
        else ""
    )
    classes = "field" + (" check" if checkbox else "") + (" has-error" if errors else "")
    return format_html('<div class="{}">\n  {}\n  {}\n  {}\n</div>', classes, head, help_text, error_html)
