"""Archive file names from a per-job template: ``{job}``, ``{date}``, ``{time}``,
``{weekday}``, ``{run}``. ``{job}-{weekday}`` overwrites weekly."""

from __future__ import annotations

import re
import string
from datetime import datetime

from django.utils.translation import gettext as _

PLACEHOLDERS = {"job", "date", "time", "weekday", "run"}
_SAFE = re.compile(r"^[A-Za-z0-9._+@-]+$")
ARCHIVE_SUFFIX = ".tar.zst"
MANIFEST_SUFFIX = ".manifest.json"


def validate_template(template: str) -> None:
    if not template:
        raise ValueError(_("The file name template must not be empty."))
    try:
        fields = [f for _literal, f, _spec, _conversion in string.Formatter().parse(template) if f is not None]
    except ValueError:
        raise ValueError(_("Unbalanced braces in the file name template.")) from None
    unknown = set(fields) - PLACEHOLDERS
    if unknown:
        names = ", ".join(sorted("{" + u + "}" for u in unknown))
        raise ValueError(_("Unknown placeholder(s): %(names)s.") % {"names": names})
    literal = "".join(text for text, _field, _spec, _conversion in string.Formatter().parse(template))
    if "/" in literal or "\\" in literal or ".." in literal or (literal and not _SAFE.match(literal)):
        raise ValueError(_("Use only letters, digits, '.', '-', '_', '+' and '@' around the placeholders."))
    if template.startswith("."):
        raise ValueError(_("The file name must not start with a dot."))


def render(template: str, *, job_slug: str, when: datetime, run_id: int) -> str:
    validate_template(template)
    name = template.format(
        job=job_slug,
        date=when.strftime("%Y-%m-%d"),
        time=when.strftime("%H%M%S"),
        weekday=when.strftime("%A").lower(),
        run=run_id,
    )
    if not _SAFE.match(name) or ".." in name:
        raise ValueError("The rendered file name is not safe.")
    return name
