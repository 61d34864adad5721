"""Driving the backup wizard with Django's test client, as a browser would: one
:class:`Wizard` per tab (its own wizard id), steps sent with their prefixes."""

from __future__ import annotations

import re
from datetime import timedelta

from django.urls import reverse
from django.utils import timezone

GOOD_PASSWORD = "correct horse battery staple"


def wizard_id(html: str) -> str:
    match = re.search(r'name="wizard_id" value="([^"]+)"', html)
    assert match, "no wizard id in the page"
    return match.group(1)


class Wizard:
    def __init__(self, client, url: str | None = None):
        self.client = client
        self.url = url or reverse("jobs:job_create")
        self.page = client.get(self.url)
        assert self.page.status_code == 200, self.page.status_code
        self.id = wizard_id(self.page.content.decode())
        self.prefix = f"job_wizard_{self.id}"

    def post(self, step: str, data: dict | None = None, *, fetch: bool = False, **extra):
        payload = {"wizard_id": self.id, f"{self.prefix}-current_step": step}
        for key, value in (data or {}).items():
            payload[f"{step}-{key}"] = value
        payload.update(extra)
        headers = {"HTTP_X_REQUESTED_WITH": "fetch"} if fetch else {}
        self.page = self.client.post(self.url, payload, **headers)
        return self.page

    @property
    def html(self) -> str:
        return self.page.content.decode()

    def current_step(self) -> str:
        match = re.search(rf'name="{self.prefix}-current_step" value="(\w+)"', self.html)
        return match.group(1) if match else ""


def general(**overrides) -> dict:
    start = (timezone.now() + timedelta(days=1)).astimezone(timezone.get_current_timezone())
    data = {
        "name": "Office files",
        "report_to": "ops@example.com",
        "interval": "daily",
        "cron": "",
        "first_date": start.strftime("%Y-%m-%d"),
        "first_time": "02:30",
        "timezone": "Europe/Berlin",
        "keep_last": "7",
        "max_age_days": "",
    }
    data.update(overrides)
    return data


def content(sources, **overrides) -> dict:
    data = {
        "sources": [str(s.pk) for s in sources],
        "encryption": "password",
        "password1": GOOD_PASSWORD,
        "password2": GOOD_PASSWORD,
        "age_recipient": "",
    }
    data.update(overrides)
    return data
