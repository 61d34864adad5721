"""Small formatting filters of the destination pages."""

from __future__ import annotations

from django import template
from django.template.defaultfilters import filesizeformat

register = template.Library()


@register.filter
def per_second(value) -> str:
    """A throughput in bytes per second, as people read it: ``12.3 MB/s``."""
    try:
        rate = float(value)
    except (TypeError, ValueError):
        return ""
    return f"{filesizeformat(int(rate))}/s"
