"""Archive file names from a job's template: safe, validated, predictable."""

from __future__ import annotations

from datetime import datetime

import pytest
from django.core.exceptions import ValidationError

from jobs.models import Job
from jobs.naming import render, validate_template

WHEN = datetime(2026, 11, 23, 18, 5, 9)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{job}-{date}-{time}", "office-2026-11-23-180509"),
        ("{job}-{weekday}", "office-monday"),
        ("backup_{run}", "backup_42"),
        ("{job}.{date}+{time}@pbx", "office.2026-11-23+180509@pbx"),
    ],
)
def test_templates_render(template, expected):
    assert render(template, job_slug="office", when=WHEN, run_id=42) == expected


@pytest.mark.parametrize(
    "template",
    [
        "",
        "{job}/{date}",
        "..{job}",
        "{job}\\x",
        "{nope}",
        "{job",
        ".hidden-{job}",
        "{job} {date}",
        "a\r\nb",
        "{job}\x00",
    ],
)
def test_unsafe_templates_are_refused(template):
    with pytest.raises(ValueError):
        validate_template(template)


def test_the_model_validates_the_template_and_time_zone(db):
    job = Job(name="x", archive_name_template="{job}/../{date}", timezone="Mars/Olympus")
    with pytest.raises(ValidationError) as info:
        job.full_clean()
    assert set(info.value.message_dict) >= {"archive_name_template", "timezone"}
