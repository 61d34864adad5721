"""The backup wizard, step by step, through Django's test client: each step's rules,
Back and Next, two wizards at once, tampered posts, secrets kept out of the session,
the connection test run once, a fingerprint confirmed (with the destination pages'
parts: ``tests/kinds/pinned.py``), and the three ways to finish.

The browser tests (tests/test_wizard_browser.py) drive the same pages in Chromium."""

from __future__ import annotations

import json
import re
import time
from datetime import timedelta

import pyrage
import pytest
from django.contrib.sessions.models import Session
from django.urls import reverse
from django.utils import timezone

from backupsite import configwrite
from destinations.backends import REGISTRY
from destinations.backends.local import LocalBackend
from destinations.models import Destination
from jobs.engine import agekeys
from jobs.models import Job, Run, Source
from jobs.wizard import storage as wizard_storage
from tests.kinds import pinned
from tests.wizard_helpers import GOOD_PASSWORD, Wizard, content, general

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client, alice):
    client.force_login(alice)
    return client


def errors_at(html: str, field_id: str) -> list[str]:
    """The error messages rendered next to the field with this id (``id_general-name``)."""
    match = re.search(rf'<div id="{re.escape(field_id)}_error">(.*?)</div>', html, re.S)
    return re.findall(r'<p class="error" role="alert">(.*?)</p>', match.group(1), re.S) if match else []


def to_step(wizard: Wizard, step: str, job, **overrides):
    """Walk a fresh wizard up to *step* with valid entries."""
    order = ["general", "content", "destination", "summary"]
    data = {
        "general": general(**overrides.get("general", {})),
        "content": content(job.sources.all(), **overrides.get("content", {})),
        "destination": {"target": str(job.destinations.get().pk), **overrides.get("destination", {})},
    }
    for name in order[: order.index(step)]:
        wizard.post(name, data[name])
        assert wizard.current_step() == order[order.index(name) + 1], wizard.html
    return wizard


# --- step 1 ---------------------------------------------------------------------------
def test_step_one_shows_the_folder_the_next_runs_and_defaults(admin_client, settings):
    settings.TIME_ZONE = "Europe/Berlin"
    wizard = Wizard(admin_client)
    html = wizard.html
    assert 'value="Europe/Berlin" selected' in html  # the site's TIME_ZONE, not UTC
    assert 'name="general-keep_last" value="7"' in html
    # the first start defaults to the next full hour
    assert re.search(r'name="general-first_time" value="\d\d:00"', html)
    wizard.post("general", general(name="Büro & Lager"), wizard_preview="1", fetch=True)
    assert "backupsite/buro-lager/" in wizard.html and "<form" not in wizard.html  # a fragment
    assert wizard.html.count("<li><time") == 3
    assert "Every day at 02:30 (Europe/Berlin)" in wizard.html
    wizard.post("general", general(name="Büro & Lager", interval="weekly"), wizard_preview="1")  # no JavaScript
    assert wizard.current_step() == "general" and "backupsite/buro-lager/" in wizard.html
    assert re.search(r"Every \w+day at 02:30 \(Europe/Berlin\)", wizard.html)


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"name": "office BACKUP"}, "name", "A job with this name exists already"),
        ({"name": "x" * 101}, "name", "at most 100 characters"),
        ({"report_to": "ops@example.com, not-an-address"}, "report_to", "“not-an-address” is not an e-mail address"),
        ({"report_to": ""}, "report_to", "This field is required"),
        ({"interval": "cron", "cron": "0 0 30 2 *"}, "cron", "Bad day-of-month"),  # 30 February: never
        ({"interval": "cron", "cron": "every day"}, "cron", "five fields"),
        ({"first_date": "2020-01-01"}, "first_date", "The first start is in the past"),
        ({"first_date": ""}, "first_date", "needs the date of its first start"),
        ({"keep_last": "0"}, "keep_last", "greater than or equal to 1"),
    ],
)
def test_step_one_refuses_bad_entries_next_to_their_field(admin_client, job, overrides, field, message):
    wizard = Wizard(admin_client)
    wizard.post("general", general(**overrides))
    assert wizard.current_step() == "general"
    assert any(message in error for error in errors_at(wizard.html, f"id_general-{field}")), wizard.html


def test_manual_jobs_need_no_first_start(admin_client):
    wizard = Wizard(admin_client)
    wizard.post("general", general(interval="manual", first_date="", first_time=""))
    assert wizard.current_step() == "content"


def test_an_old_first_start_is_accepted_when_editing_but_not_when_changed(admin_client, job):
    job.interval, job.first_run_at, job.timezone = "daily", timezone.now() - timedelta(days=30), "UTC"
    job.save()
    local = job.first_run_at.astimezone(timezone.get_fixed_timezone(0))
    wizard = Wizard(admin_client, reverse("jobs:job_edit", args=[job.pk]))
    assert f'value="{local:%Y-%m-%d}"' in wizard.html
    same = {"name": job.name, "timezone": "UTC", "first_date": f"{local:%Y-%m-%d}", "first_time": f"{local:%H:%M}"}
    wizard.post("general", general(**same))
    assert wizard.current_step() == "content", wizard.html
    wizard = Wizard(admin_client, reverse("jobs:job_edit", args=[job.pk]))
    wizard.post("general", general(**{**same, "first_date": f"{local - timedelta(days=1):%Y-%m-%d}"}))
    assert any("in the past" in e for e in errors_at(wizard.html, "id_general-first_date"))


# --- step 2 ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"sources": []}, "sources", "Choose at least one thing to back up"),
        ({"sources": ["999999"]}, "sources", "Select a valid choice"),
        ({"password1": "short", "password2": "short"}, "password1", "at least 12 characters"),
        ({"password1": "aaaaaaaaaaaaaaaa", "password2": "aaaaaaaaaaaaaaaa"}, "password1", "Not one character"),
        ({"password1": "qwertyqwerty", "password2": "qwertyqwerty"}, "password1", "common passwords"),
        ({"password2": GOOD_PASSWORD + "!"}, "password2", "The two passwords differ"),
        ({"password1": "", "password2": ""}, "password1", "Type a backup password"),
        ({"encryption": "recipient", "age_recipient": "age1notakey"}, "age_recipient", "not an age public key"),
    ],
)
def test_step_two_refuses_bad_entries_next_to_their_field(admin_client, job, overrides, field, message):
    wizard = to_step(Wizard(admin_client), "content", job)
    wizard.post("content", {**content(job.sources.all()), **overrides})
    assert wizard.current_step() == "content"
    assert any(message in error for error in errors_at(wizard.html, f"id_content-{field}")), wizard.html
    assert GOOD_PASSWORD not in wizard.html  # passwords are never rendered back


def test_step_two_lists_each_source_with_size_and_measures_now(admin_client, job):
    source = job.sources.get()
    assert source.size_bytes is None
    wizard = to_step(Wizard(admin_client), "content", job)
    assert "not measured" in wizard.html
    wizard.post("content", content([source]), wizard_measure=str(source.pk), fetch=True)
    source.refresh_from_db()
    assert source.size_bytes and source.size_bytes > 3 * 1024 * 1024
    assert "Measured “Office files”" in wizard.html and "3.0\xa0MB" in wizard.html
    assert f'value="{source.pk}" id="id_content-sources_0" checked' in wizard.html  # the checkbox stays ticked
    # what was typed was kept: the password needs no second typing
    wizard.post("content", content([source], password1="", password2=""))
    assert wizard.current_step() == "destination", wizard.html


def test_a_valid_age_key_and_no_encryption_pass(admin_client, job):
    identity = pyrage.x25519.Identity.generate()
    wizard = to_step(Wizard(admin_client), "content", job)
    wizard.post("content", content(job.sources.all(), encryption="recipient", age_recipient=str(identity.to_public())))
    assert wizard.current_step() == "destination"
    wizard = to_step(Wizard(admin_client), "content", job)
    wizard.post("content", content(job.sources.all(), encryption="none", password1="", password2=""))
    assert wizard.current_step() == "destination"


def test_the_panel_database_without_encryption_is_warned_about(admin_client, job):
    panel = Source.panel_database()  # made by a migration; there is only one
    wizard = to_step(Wizard(admin_client), "content", job)
    wizard.post("content", content([panel], encryption="none"), wizard_measure=str(panel.pk))
    assert 'id="sensitive-warning"' in wizard.html
    wizard.post("content", content([panel], encryption="none"))
    wizard.post("destination", {"target": str(job.destinations.get().pk)})
    assert 'id="sensitive-in-clear"' in wizard.html and 'id="not-encrypted"' in wizard.html


def test_size_warnings_name_the_destination_that_may_not_take_it(admin_client, job, monkeypatch):
    source = job.sources.get()
    source.measure()
    destination = job.destinations.get()
    destination.status = {"free_bytes": 1000}
    destination.save()
    monkeypatch.setattr(LocalBackend, "size_limit", lambda self: 2048)
    wizard = to_step(Wizard(admin_client), "content", job)
    wizard.post("content", content([source]), wizard_measure=str(source.pk))
    assert "Local disk takes archives of at most 2.0\xa0KB" in wizard.html
    assert "Local disk had 1000\xa0bytes free" in wizard.html
    wizard.post("content", content([source]))  # and again in step 3, for the chosen one
    assert wizard.current_step() == "destination"
    assert "Local disk had 1000\xa0bytes free" in wizard.html


# --- step 3 ---------------------------------------------------------------------------
def new_destination(folders, **overrides) -> dict:
    data = {
        "target": "new",
        "name": "NAS",
        "kind": "local",
        "local-path": str(folders["backups"] / "nas"),
        "local-create": "on",
    }
    data.update(overrides)
    return data


def test_a_new_destination_is_tested_once_not_again_on_finish(admin_client, job, folders, monkeypatch):
    calls = []
    real = LocalBackend.test

    def counting(self):
        calls.append(self.conf.path)
        return real(self)

    monkeypatch.setattr(LocalBackend, "test", counting)
    wizard = to_step(Wizard(admin_client), "destination", job)
    wizard.post("destination", new_destination(folders))
    assert wizard.current_step() == "summary", wizard.html
    assert len(calls) == 1
    wizard.post("summary", {"action": "save"})
    assert wizard.page.status_code == 302
    assert len(calls) == 1  # Finish validated every step again, without a second test
    created = Destination.objects.get(name="NAS")
    assert created.settings == {"path": str(folders["backups"] / "nas"), "create": True}
    assert created.last_test_ok is True
    assert list(Job.objects.get(name="Office files").destinations.all()) == [created]


def test_an_unreachable_destination_stops_step_three(admin_client, job, folders):
    wizard = to_step(Wizard(admin_client), "destination", job)
    wizard.post("destination", new_destination(folders, **{"local-create": ""}))
    assert wizard.current_step() == "destination"
    assert "The connection test failed" in wizard.html
    assert not Destination.objects.filter(name="NAS").exists()


def test_bad_destination_settings_show_at_their_field(admin_client, job, folders):
    wizard = to_step(Wizard(admin_client), "destination", job)
    wizard.post("destination", new_destination(folders, name="", **{"local-path": "/etc/../root"}))
    assert "Give the new destination a name" in " ".join(errors_at(wizard.html, "id_destination-name"))
    assert "must not contain" in " ".join(errors_at(wizard.html, "id_destination-local-path"))


def test_the_test_button_tests_before_going_on_and_keeps_the_password(admin_client, job, folders):
    wizard = to_step(Wizard(admin_client), "destination", job)
    wizard.post("destination", new_destination(folders), wizard_test="1", fetch=True)
    assert wizard.page.status_code == 200
    assert "Test passed" in wizard.html and "free" in wizard.html.lower()
    wizard.post("destination", {"target": str(job.destinations.get().pk)}, wizard_test="1", fetch=True)
    assert "Test passed" in wizard.html
    # Without JavaScript the button sends the step and shows it again, with the result.
    wizard.post("destination", new_destination(folders), wizard_test="1")
    assert wizard.current_step() == "destination" and "Test passed" in wizard.html
    assert 'value="NAS"' in wizard.html and 'id="new-destination"' in wizard.html
    assert Destination.objects.get(pk=job.destinations.get().pk).last_test_ok is True


def test_step_three_is_built_from_the_destination_pages_parts(admin_client, job, folders):
    """The same partials, script and form behaviour as the destination pages: every
    kind's fieldset, only the chosen kind validated (no errors in the others' fieldsets
    without JavaScript), the same result region."""
    wizard = to_step(Wizard(admin_client), "destination", job)
    html = wizard.html
    assert "js/destination-form.js" in html and "js/fragments.js" in html and "data-destination-form" in html
    for kind in REGISTRY:
        assert f'id="settings-{kind}"' in html and f'id="id_destination-kind-{kind}"' in html
    wizard.post("destination", new_destination(folders, **{"local-create": ""}), wizard_test="1")
    html = wizard.html
    assert '<p class="test-outcome" role="status">' in html and "Test failed" in html
    assert "A new destination must pass the test before you can go on." in html
    sftp = html[html.index('id="settings-sftp"') : html.index('id="settings-ftp"')]
    assert 'class="error"' not in sftp  # the other kinds are not validated
    wizard.post("destination", {"target": ""})  # no choice: the step again, with its error
    assert wizard.current_step() == "destination" and errors_at(wizard.html, "id_destination-target")
    html = wizard.html
    assert 'class="error"' not in html[html.index('id="new-destination"') : html.index('id="connection-title"')]


def test_step_three_names_each_choices_folder_on_its_radio_button(admin_client, job, folders):
    """One "written to" line for the chosen destination; every other choice carries its
    folder on its radio button (static/js/wizard.js shows it when chosen) instead of a
    hidden block of its own (a hundred saved destinations were a hundred blocks)."""
    other = Destination.objects.create(name="Other disk", kind="local", settings={"path": str(folders["backups"])})
    wizard = to_step(Wizard(admin_client), "destination", job)
    html = wizard.html
    assert html.count("Backups are written to") == 1 and html.count('id="remote-folder"') == 1
    chosen = job.destinations.get()
    line = html[html.index('id="remote-folder"') :].split("</code>")[0]
    assert "backupsite/" in line
    for destination in (chosen, other):
        radio = re.search(rf'<input type="radio" name="destination-target" value="{destination.pk}"[^>]*>', html)
        assert radio and f'data-folder="{folders["backups"]}' in radio.group(0)
    new = re.search(r'<input type="radio" name="destination-target" value="new"[^>]*>', html).group(0)
    assert "in the new destination" in new
    assert "data-for-target" not in html  # no size warnings: no per-choice blocks at all


def trust_token_in(html: str) -> str:
    match = re.search(r'name="trust" value="([^"]+)"', html)
    assert match, "no trust button in the page"
    return match.group(1)


def pinned_destination(folders, **overrides) -> dict:
    return {"target": "new", "name": "Pinned", "kind": "pinned", **pinned.typed(folders["backups"] / "p"), **overrides}


def test_a_fingerprint_is_confirmed_inline_then_stored_with_the_destination(admin_client, job, folders, pinned_kind):
    wizard = to_step(Wizard(admin_client), "destination", job)
    data = pinned_destination(folders)
    wizard.post("destination", data)  # Next: the test stops at the server's identity
    assert wizard.current_step() == "destination"
    assert pinned.SERVER_KEY in wizard.html and "Check the server&#x27;s fingerprint below" in wizard.html
    assert pinned.LOGINS == []  # nothing was sent to the unconfirmed server
    assert pinned.PASSWORD not in wizard.html
    token = trust_token_in(wizard.html)
    # Trust, in the background: the password need not be typed again (kept encrypted
    # in the wizard, given to the kind's form as a pending secret).
    wizard.post("destination", {**data, "pinned-password": ""}, trust=token, fetch=True)
    assert wizard.page.status_code == 200 and "Test passed" in wizard.html, wizard.html
    assert pinned.LOGINS == [pinned.PASSWORD]
    wizard.post("destination", {**data, "pinned-password": ""})
    assert wizard.current_step() == "summary", wizard.html
    assert pinned.LOGINS == [pinned.PASSWORD]  # Next did not test again
    wizard.post("summary", {"action": "save"})
    assert pinned.LOGINS == [pinned.PASSWORD]  # nor did Finish
    created = Destination.objects.get(name="Pinned")
    assert created.settings["host_key"] == pinned.SERVER_KEY
    assert created.secrets == {"password": pinned.PASSWORD}
    assert created.last_test_ok is True  # the test it passed, recorded


def test_without_javascript_test_trust_and_next_reload_the_step(admin_client, job, folders, pinned_kind):
    wizard = to_step(Wizard(admin_client), "destination", job)
    data = pinned_destination(folders)
    wizard.post("destination", data, wizard_test="1")
    assert wizard.current_step() == "destination" and pinned.SERVER_KEY in wizard.html
    assert "A value was typed; leave blank to keep it." in wizard.html  # the password, kept
    wizard.post("destination", {**data, "pinned-password": ""}, trust=trust_token_in(wizard.html))
    assert wizard.current_step() == "destination" and "Test passed" in wizard.html
    assert "This is the confirmed identity of the server." in wizard.html
    wizard.post("destination", {**data, "pinned-password": ""})
    assert wizard.current_step() == "summary", wizard.html
    assert pinned.LOGINS == [pinned.PASSWORD]


def test_a_forged_or_foreign_trust_token_pins_nothing(admin_client, job, folders, pinned_kind):
    from destinations import services

    wizard = to_step(Wizard(admin_client), "destination", job)
    data = pinned_destination(folders)
    wizard.post("destination", data, trust="not-a-token", fetch=True)
    assert "expired or is invalid" in wizard.html and "Test passed" not in wizard.html
    other_kind = services.trust_token("sftp", pinned.pinned_fingerprint("host_key_fingerprint"), None)
    wizard.post("destination", data, trust=other_kind, fetch=True)
    assert "belongs to another destination" in wizard.html
    saved = services.trust_token("pinned", pinned.pinned_fingerprint(), job.destinations.get().pk)
    wizard.post("destination", data, trust=saved, fetch=True)
    assert "belongs to another destination" in wizard.html
    assert pinned.LOGINS == []
    session = admin_client.session[f"wizard_job_wizard_{wizard.id}"]
    assert "pinned" not in json.dumps(session.get("extra_data", {}))


def test_a_saved_destination_whose_identity_changed_is_confirmed_from_the_wizard(
    admin_client, job, folders, pinned_kind
):
    saved = Destination.objects.create(
        name="Office server",
        kind="pinned",
        settings={"path": str(folders["backups"] / "s"), "user": "backup", "host_key": pinned.SERVER_KEY},
        secrets={"password": pinned.PASSWORD},
    )
    pinned.SHOWN["key"] = pinned.OTHER_KEY  # the server was reinstalled
    wizard = to_step(Wizard(admin_client), "destination", job)
    wizard.post("destination", {"target": str(saved.pk)}, wizard_test="1", fetch=True)
    assert "host key changed" in wizard.html and pinned.OTHER_KEY in wizard.html
    seen = []

    def receiver(sender, change, **kw):
        seen.append(change)

    configwrite.config_changed.connect(receiver)
    try:
        wizard.post("destination", {"target": str(saved.pk)}, trust=trust_token_in(wizard.html), fetch=True)
    finally:
        configwrite.config_changed.disconnect(receiver)  # only this test's: the audit log's stays
    assert "Test passed" in wizard.html, wizard.html
    saved.refresh_from_db()
    assert saved.settings["host_key"] == pinned.OTHER_KEY and saved.last_test_ok is True
    assert [c.model for c in seen] == ["destinations.destination"]  # through configwrite, audited


def test_throttled_tests_say_when_to_try_again(admin_client, job, folders, settings):
    settings.BACKUPSITE_RATE_LIMITS = {"destination-test": (1, 60)}  # the destination pages' limiter
    wizard = to_step(Wizard(admin_client), "destination", job)
    wizard.post("destination", new_destination(folders), wizard_test="1", fetch=True)
    assert wizard.page.status_code == 200 and "Test passed" in wizard.html
    wizard.post("destination", new_destination(folders), wizard_test="1", fetch=True)
    assert wizard.page.status_code == 429 and int(wizard.page["Retry-After"]) > 0
    assert "Too many connection tests" in wizard.html
    wizard.post("destination", {"target": str(job.destinations.get().pk)}, wizard_test="1")
    assert wizard.page.status_code == 200 and "Too many connection tests" in wizard.html  # the whole step


@pytest.fixture
def pinned_kind(monkeypatch):
    pinned.register(monkeypatch)


# --- Back, Next and two tabs -------------------------------------------------------------
def test_back_from_step_three_to_one_and_forward_keeps_every_entry(admin_client, job, folders):
    wizard = to_step(
        Wizard(admin_client), "destination", job, general={"name": "Kept name", "report_to": "a@b.example"}
    )
    typed = new_destination(folders, name="Typed NAS")
    wizard.post("destination", typed, wizard_goto_step="content")
    assert wizard.current_step() == "content"
    assert "A value was typed; leave blank to keep it." in wizard.html
    assert f'value="{job.sources.get().pk}" id="id_content-sources_0" checked' in wizard.html
    wizard.post("content", {}, wizard_goto_step="general")
    # the Back of an empty post keeps nothing new, but keeps what was stored
    html = wizard.html
    assert wizard.current_step() == "general"
    assert 'value="Kept name"' in html and 'value="a@b.example"' in html
    wizard.post("general", general(name="Kept name", report_to="a@b.example"))
    assert "A value was typed" in wizard.html
    wizard.post("content", content(job.sources.all(), password1="", password2=""))
    assert wizard.current_step() == "destination", wizard.html
    assert 'value="Typed NAS"' in wizard.html and str(folders["backups"] / "nas") in wizard.html
    assert 'value="new" id="id_destination-target_1" checked' in wizard.html or 'value="new"' in wizard.html


def test_two_wizards_in_two_tabs_never_mix(admin_client, job):
    first, second = Wizard(admin_client), Wizard(admin_client)
    assert first.id != second.id
    first.post("general", general(name="First job"))
    second.post("general", general(name="Second job", interval="manual"))
    first.post("content", content(job.sources.all()))
    second.post("content", content(job.sources.all(), encryption="none"))
    target = {"target": str(job.destinations.get().pk)}
    second.post("destination", target)
    first.post("destination", target)
    assert "First job" in first.html and "Second job" not in first.html
    second.post("summary", {"action": "save"})
    first.post("summary", {"action": "save"})
    a, b = Job.objects.get(name="First job"), Job.objects.get(name="Second job")
    assert (a.interval, a.encryption) == ("daily", "password")
    assert (b.interval, b.encryption) == ("manual", "none")


# --- tampering -------------------------------------------------------------------------
def test_tampered_posts_are_refused(admin_client, job, alice):
    wizard = Wizard(admin_client)
    assert admin_client.post(wizard.url, {"wizard_id": "../../x"}).status_code == 400
    assert admin_client.post(wizard.url, {"wizard_id": wizard.id}).status_code == 400  # no management form
    bad_step = {"wizard_id": wizard.id, f"{wizard.prefix}-current_step": "nope", "wizard_goto_step": "general"}
    assert admin_client.post(wizard.url, bad_step).status_code == 400
    # a wizard id this session never started (another user's, or an expired one)
    stranger = {"wizard_id": "A" * 22, "job_wizard_" + "A" * 22 + "-current_step": "general"}
    response = admin_client.post(wizard.url, stranger)
    assert response.status_code == 410 and b"The wizard has ended" in response.content
    assert "wizard_job_wizard_" + "A" * 22 not in admin_client.session  # and leaves nothing behind
    # a create wizard posted to an edit page
    edit = {"wizard_id": wizard.id, f"{wizard.prefix}-current_step": "general"}
    assert admin_client.post(reverse("jobs:job_edit", args=[job.pk]), edit).status_code == 400


def test_skipping_steps_by_a_forged_current_step_is_caught_on_finish(admin_client, job):
    wizard = Wizard(admin_client)
    wizard.post("general", general(name="Forged"))
    wizard.post("summary", {"action": "save"})  # straight to Finish, steps 2 and 3 never sent
    assert wizard.page.status_code == 200
    assert wizard.current_step() == "content"
    assert not Job.objects.filter(name="Forged").exists()


def test_finish_validates_every_step_again(admin_client, job):
    wizard = to_step(Wizard(admin_client), "summary", job, general={"name": "Raced"})
    Job.objects.create(name="raced")  # someone took the name meanwhile
    wizard.post("summary", {"action": "save"})
    assert wizard.current_step() == "general"
    assert "A job with this name exists already" in wizard.html
    assert not Job.objects.filter(name="Raced").exists()


# --- secrets ----------------------------------------------------------------------------
def session_text() -> str:
    """Every session row, decoded, as one string: what a reader of the table learns."""
    rows = [Session.objects.get(pk=s.pk) for s in Session.objects.all()]
    return json.dumps([row.get_decoded() for row in rows]) + "".join(row.session_data for row in rows)


def test_secrets_never_reach_the_session_in_clear(admin_client, job, folders, pinned_kind):
    wizard = to_step(Wizard(admin_client), "destination", job)
    wizard.post(
        "destination",
        {
            "target": "new",
            "name": "Pinned",
            "kind": "pinned",
            "pinned-path": str(folders["backups"] / "p"),
            "pinned-password": "s3cret-destination-pass",
        },
    )
    text = session_text()
    assert "job_wizard_" + wizard.id in text
    assert GOOD_PASSWORD not in text and "s3cret-destination-pass" not in text
    assert "csrfmiddlewaretoken" not in text  # only the steps' own fields are kept
    stored = admin_client.session[f"wizard_job_wizard_{wizard.id}"]
    assert set(stored["step_secrets"]["content"]) == {"content-password1", "content-password2"}
    assert set(stored["step_secrets"]["destination"]) == {"destination-pinned-password"}


def test_finish_and_cancel_remove_the_wizard_from_the_session(admin_client, job):
    wizard = to_step(Wizard(admin_client), "summary", job)
    wizard.post("summary", {"action": "save"})
    assert not [k for k in admin_client.session.keys() if k.startswith("wizard_")]  # noqa: SIM118 - no __iter__
    wizard = to_step(Wizard(admin_client), "destination", job, general={"name": "Other"})
    wizard.post("destination", {}, wizard_cancel="1")
    assert wizard.page.status_code == 302
    assert not [k for k in admin_client.session.keys() if k.startswith("wizard_")]  # noqa: SIM118 - no __iter__
    assert GOOD_PASSWORD not in session_text()


def test_an_abandoned_wizard_leaves_no_secret_in_the_session_table(admin_client, job, settings):
    settings.BACKUPSITE_WIZARD_TTL_MINUTES = 1
    wizard = to_step(Wizard(admin_client), "destination", job)
    assert f"wizard_job_wizard_{wizard.id}" in session_text()
    # Still there a moment later; gone once the TTL has passed and the beat task ran.
    assert wizard_storage.purge_abandoned() == 0
    assert wizard_storage.purge_abandoned(now=time.time() + 61) == 1
    text = session_text()
    assert "wizard_job_wizard_" not in text and "step_secrets" not in text
    assert "_auth_user_id" in text  # the login itself is kept
    response = wizard.post("destination", {"target": str(job.destinations.get().pk)})
    assert response.status_code == 410


def test_an_expired_wizard_is_dropped_by_the_next_request_of_its_session(admin_client, job, settings, monkeypatch):
    wizard = to_step(Wizard(admin_client), "content", job)
    later = time.time() + settings.BACKUPSITE_WIZARD_TTL_MINUTES * 60 + 1
    monkeypatch.setattr(wizard_storage.time, "time", lambda: later)
    Wizard(admin_client)  # any wizard page
    assert f"wizard_job_wizard_{wizard.id}" not in admin_client.session


def test_a_session_keeps_a_bounded_number_of_wizards(admin_client):
    first = Wizard(admin_client)
    for _ in range(wizard_storage.MAX_PER_SESSION + 5):
        Wizard(admin_client)
    keys = [k for k in admin_client.session.keys() if k.startswith("wizard_")]  # noqa: SIM118 - no __iter__
    assert len(keys) == wizard_storage.MAX_PER_SESSION
    assert f"wizard_job_wizard_{first.id}" not in keys  # the least recently used went first


# --- edit ---------------------------------------------------------------------------------
@pytest.fixture
def encrypted(job):
    job.set_backup_password("old backup password 1")
    job.save()
    return job


def test_edit_with_blank_secrets_keeps_the_backup_password(admin_client, encrypted):
    wrapped = encrypted.age_identity_wrapped
    wizard = Wizard(admin_client, reverse("jobs:job_edit", args=[encrypted.pk]))
    assert f'value="{encrypted.name}"' in wizard.html
    wizard.post("general", general(name=encrypted.name, report_to="new@example.com"))
    assert "Leave both blank to keep the current password" in wizard.html
    wizard.post("content", content(encrypted.sources.all(), password1="", password2=""))
    assert 'value="keep"' in wizard.html and "Keep the destinations of this job: Local disk" in wizard.html
    wizard.post("destination", {"target": "keep"})
    assert "(unchanged)" in wizard.html
    assert 'id="action-run-only"' not in wizard.html
    wizard.post("summary", {"action": "save"})
    encrypted.refresh_from_db()
    assert encrypted.report_to == "new@example.com"
    assert encrypted.age_identity_wrapped == wrapped and encrypted.encryption == "password"
    assert [d.name for d in encrypted.destinations.all()] == ["Local disk"]


def test_changing_the_backup_password_asks_for_the_old_one(admin_client, encrypted):
    identity = encrypted.identity("old backup password 1")
    wizard = Wizard(admin_client, reverse("jobs:job_edit", args=[encrypted.pk]))
    wizard.post("general", general(name=encrypted.name))
    wizard.post("content", content(encrypted.sources.all()))
    assert "Type the current backup password to change it" in " ".join(
        errors_at(wizard.html, "id_content-old_password")
    )
    wizard.post("content", content(encrypted.sources.all(), old_password="wrong one, surely"))
    assert "not the current backup password" in " ".join(errors_at(wizard.html, "id_content-old_password"))
    wizard.post("content", content(encrypted.sources.all(), old_password="old backup password 1"))
    wizard.post("destination", {"target": "keep"})
    wizard.post("summary", {"action": "save"})
    encrypted.refresh_from_db()
    assert encrypted.identity(GOOD_PASSWORD) == identity  # the same key, re-wrapped
    with pytest.raises(agekeys.KeyError_):
        encrypted.identity("old backup password 1")


def test_editing_can_add_a_destination_and_goes_through_configwrite(admin_client, job, folders):
    seen = []

    def receiver(sender, change, **kw):
        seen.append(change)

    configwrite.config_changed.connect(receiver)
    other = Destination.objects.create(name="Second disk", kind="local", settings={"path": str(folders["backups"])})
    wizard = Wizard(admin_client, reverse("jobs:job_edit", args=[job.pk]))
    wizard.post("general", general(name=job.name))
    wizard.post("content", content(job.sources.all(), encryption="none"))
    wizard.post("destination", {"target": str(other.pk)})
    assert "Local disk, Second disk" in wizard.html
    wizard.post("summary", {"action": "save"})
    assert sorted(d.name for d in job.destinations.all()) == ["Local disk", "Second disk"]
    change = next(c for c in seen if c.model == "jobs.job")
    assert {"destinations", "interval"} <= {f.field for f in change.changes}
    configwrite.config_changed.disconnect(receiver)  # only this test's: the audit log's stays


def test_duplicate_opens_the_wizard_prefilled_and_creates_a_copy(admin_client, job):
    job.keep_last, job.archive_name_template = 3, "{job}-{weekday}"
    job.save()
    wizard = Wizard(admin_client, reverse("jobs:job_duplicate", args=[job.pk]))
    assert 'value="Office backup (copy)"' in wizard.html
    wizard.post("general", general(name="Office backup (copy)", keep_last="3"))
    wizard.post("content", content(job.sources.all()))
    wizard.post("destination", {"target": "keep"})
    wizard.post("summary", {"action": "save"})
    copy = Job.objects.get(name="Office backup (copy)")
    assert copy.slug == "office-backup-copy" and copy.archive_name_template == "{job}-{weekday}"
    assert list(copy.destinations.all()) == list(job.destinations.all())
    assert copy.age_identity_wrapped and copy.age_identity_wrapped != job.age_identity_wrapped


# --- finish -----------------------------------------------------------------------------------
def test_only_keep_settings_creates_the_job_and_opens_its_page(admin_client, job):
    wizard = to_step(Wizard(admin_client), "summary", job, general={"name": "New office"})
    assert "Every day at 02:30 (Europe/Berlin)" in wizard.html and "••••••••" in wizard.html
    assert GOOD_PASSWORD not in wizard.html
    response = wizard.post("summary", {"action": "save"})
    created = Job.objects.get(name="New office")
    assert response["Location"] == created.get_absolute_url()
    assert created.timezone == "Europe/Berlin" and created.keep_last == 7 and created.report_to == "ops@example.com"
    assert created.next_run_at == created.first_run_at
    assert created.identity(GOOD_PASSWORD).startswith("AGE-SECRET-KEY-")
    assert not Run.objects.filter(job=created).exists()


def test_keep_settings_and_execute_backup_runs_it(admin_client, job, folders, django_capture_on_commit_callbacks):
    wizard = to_step(Wizard(admin_client), "summary", job, general={"name": "Run me"})
    with django_capture_on_commit_callbacks(execute=True):
        response = wizard.post("summary", {"action": "save_run"})
    run = Run.objects.get(job__name="Run me")
    assert response["Location"] == run.get_absolute_url()
    run.refresh_from_db()
    assert (run.state, run.trigger) == ("succeeded", "wizard"), run.log
    assert (folders["backups"] / "backupsite" / "run-me" / run.archive_name).is_file()
    assert (folders["backups"] / "backupsite" / "run-me" / "backupsite-key.age").is_file()


def test_only_execute_backup_runs_once_without_a_job(admin_client, job, folders, django_capture_on_commit_callbacks):
    wizard = to_step(Wizard(admin_client), "summary", job, general={"name": "Just once"})
    with django_capture_on_commit_callbacks(execute=True):
        response = wizard.post("summary", {"action": "run_only"})
    assert not Job.objects.filter(name="Just once").exists()
    run = Run.objects.get(job_name="Just once")
    assert response["Location"] == run.get_absolute_url()
    run.refresh_from_db()
    assert run.job is None and run.state == "succeeded", run.log
    folder = folders["backups"] / "backupsite" / f"oneoff-{run.pk}"
    assert run.job_slug == f"oneoff-{run.pk}" and (folder / run.archive_name).is_file()
    assert run.local_file.parent.name == f"oneoff-{run.pk}"
    # Its own key, kept on the run and beside the archive: the typed password opens it.
    key_file = (folder / "backupsite-key.age").read_bytes()
    assert key_file == agekeys.from_text(run.age_identity_wrapped)
    identity = pyrage.x25519.Identity.from_str(agekeys.unwrap_identity(key_file, GOOD_PASSWORD))
    assert pyrage.decrypt((folder / run.archive_name).read_bytes(), [identity])[:4] == b"\x28\xb5\x2f\xfd"
    page = admin_client.get(run.get_absolute_url()).content.decode()
    assert "A one-off backup" in page and f"backupsite/oneoff-{run.pk}/" in page
    assert admin_client.get(reverse("jobs:run_download", args=[run.pk])).status_code == 200


def test_operators_and_viewers_cannot_open_the_wizard(client, bob, charlie, job):
    for user in (bob, charlie):
        client.force_login(user)
        assert client.get(reverse("jobs:job_create")).status_code == 403
        assert client.get(reverse("jobs:job_edit", args=[job.pk])).status_code == 403


@pytest.mark.django_db(transaction=True)
def test_migrate_creates_the_rate_limiters_table_the_connection_test_needs(settings):
    """The wizard's connection test counts in the database cache: ``migrate`` must make
    its table on a fresh install (post_migrate never reaches an app without models).
    (The database cache of the default, whatever cache the suite's stack uses.)"""
    from django.core.management.sql import emit_post_migrate_signal
    from django.db import connection

    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "backupsite_cache"}
    }
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS backupsite_cache")
    emit_post_migrate_signal(verbosity=0, interactive=False, db="default")  # as migrate ends
    assert "backupsite_cache" in connection.introspection.table_names()


@pytest.mark.parametrize("zone", ["", "Not/AZone", "../../etc"])
def test_a_step_link_never_jumps_past_a_step_with_errors(admin_client, job, zone):
    """The step list's links (wizard_goto_step) from step 1 with a bad time zone, and from
    the summary after step 1 was changed to one: step 1 comes back with its error, never
    a summary built from it (it was a 500)."""
    wizard = Wizard(admin_client)
    wizard.post("general", general(timezone=zone), wizard_goto_step="summary")
    assert wizard.page.status_code == 200 and wizard.current_step() == "general"
    assert errors_at(wizard.html, "id_general-timezone")
    wizard = to_step(Wizard(admin_client), "summary", job)
    wizard.post("summary", {}, wizard_goto_step="general")
    wizard.post("general", general(timezone=zone), wizard_goto_step="summary")
    assert wizard.page.status_code == 200 and wizard.current_step() == "general"
    wizard.post("general", general(), wizard_goto_step="summary")
    assert wizard.current_step() == "summary"
