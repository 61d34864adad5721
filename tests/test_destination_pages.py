"""The destination pages: list, details, create/edit with every kind's form, test
connection inline with fingerprint confirmation, delete; roles, rate limits, secrets.

Besides the real kinds (local, USB), the pages are driven with ``tests.kinds.pinned``, a
kind made for these tests with a pretend host key and a password, registered through
the registry like any kind (SFTP and FTPS are built on other branches)."""

from __future__ import annotations

import logging
import os
import re

import pytest
from django.core.cache import cache
from django.urls import reverse

from destinations import services
from destinations.models import Destination
from tests.conftest import grant_sudo
from tests.kinds import pinned

pytestmark = pytest.mark.django_db
FETCH = {"HTTP_X_REQUESTED_WITH": "fetch"}


@pytest.fixture(autouse=True)
def clean_cache():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def pinned_kind(monkeypatch):
    yield pinned.register(monkeypatch)
    pinned.LOGINS.clear()


def local_post(folders, **extra) -> dict:
    data = {"name": "Second disk", "enabled": "on", "kind": "local", "local-path": str(folders["backups"])}
    data.update(extra)
    return data


def pinned_post(folders, **extra) -> dict:
    return {
        "name": "Office server",
        "enabled": "on",
        "kind": "pinned",
        **pinned.typed(folders["backups"] / "server"),
        **extra,
    }


def hidden(html: str, name: str) -> list[str]:
    return re.findall(rf'<input type="hidden" name="{name}" value="([^"]*)"', html)


# --- list ----------------------------------------------------------------------------------
def test_empty_list_says_so_and_offers_the_button_to_administrators(client, alice, charlie):
    client.force_login(alice)
    page = client.get(reverse("destinations:list")).content.decode()
    assert "No destinations yet." in page and reverse("destinations:create") in page
    client.force_login(charlie)
    page = client.get(reverse("destinations:list")).content.decode()
    assert "No destinations yet." in page and "An administrator sets them up." in page
    assert reverse("destinations:create") not in page


def test_list_shows_kind_last_test_last_upload_and_state(client, bob, job, folders):
    from jobs import services as job_services

    destination = job.destinations.get()
    run = job_services.execute_run(job_services.create_run(job).pk)
    destination.record_test(destination.backend().test())
    usb = Destination.objects.create(
        name="USB rotation",
        kind="usb",
        settings={"path": "/media/x"},
        status={"usb_disks": {"BACKUP-A": "2026-01-05T10:00:00+00:00"}},
    )
    client.force_login(bob)
    page = client.get(reverse("destinations:list")).content.decode()
    assert "Server hard drive" in page and str(folders["backups"]) in page
    assert "state-succeeded" in page and "never tested" in page  # the local one tested, the USB one not
    assert reverse("jobs:run_detail", args=[run.pk]) in page  # last upload, linked to its run
    assert "nothing uploaded yet" in page
    assert "free (" in page  # free space learned by the test
    assert "USB disk “BACKUP-A” last seen" in page
    assert "used by 1 job" in page and "used by 0 jobs" in page
    # A test and an upload of a moment ago read "now" / "12 seconds ago", not "0 minutes ago".
    assert "0 minutes" not in page and ("seconds ago" in page or "now" in page)
    assert usb.name in page


def test_the_list_makes_no_query_per_row(client, bob, django_assert_num_queries, folders):
    def make(n):
        for i in range(n):
            Destination.objects.create(
                name=f"Disk {Destination.objects.count()}-{i}", kind="local", settings={"path": "/x"}
            )

    client.force_login(bob)
    make(1)
    client.get(reverse("destinations:list"))  # warm the session and permission caches
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as one:
        client.get(reverse("destinations:list"))
    make(6)
    with CaptureQueriesContext(connection) as seven:
        assert client.get(reverse("destinations:list")).content.count(b'scope="row"') == 7
    assert len(seven) == len(one)


def test_the_list_is_paginated_by_name(client, bob, folders):
    from destinations.views import DESTINATIONS_PER_PAGE

    total = DESTINATIONS_PER_PAGE + 3
    for i in range(total):
        Destination.objects.create(name=f"Disk {i:02d}", kind="local", settings={"path": "/x"})
    client.force_login(bob)
    first = client.get(reverse("destinations:list")).content.decode()
    assert first.count('scope="row"') == DESTINATIONS_PER_PAGE
    assert f"Page 1 of 2 ({total} destinations)" in first and 'rel="next"' in first
    assert "Disk 00" in first and f"Disk {total - 1}" not in first
    second = client.get(reverse("destinations:list") + "?page=2").content.decode()
    assert second.count('scope="row"') == 3 and f"Disk {total - 1}" in second and 'rel="prev"' in second
    # A page number past the end shows the last page, not an error.
    assert client.get(reverse("destinations:list") + "?page=99").content.decode().count('scope="row"') == 3


# --- create --------------------------------------------------------------------------------
def test_create_page_has_every_kind_fieldset_a_chooser_and_no_inline_script(client, alice, folders):
    client.force_login(alice)
    page = client.get(reverse("destinations:create")).content.decode()
    for kind in ("local", "usb"):
        assert f'data-kind="{kind}"' in page
        assert f'id="kind-{kind}"' in page and f'for="kind-{kind}"' in page
    assert "Settings: Server hard drive" in page and "Settings: USB storage" in page
    assert 'value="local" checked' in page
    # every input of a kind has its label; no required attribute (only the chosen kind is checked)
    for field_id in ("id_local-path", "id_usb-path", "id_usb-label", "id_name"):
        assert f'for="{field_id}"' in page and f'id="{field_id}"' in page
    for tag in re.findall(r"<input[^>]*>", page):
        if 'name="local-' in tag or 'name="usb-' in tag:
            assert " required" not in tag, tag
    # progressive enhancement with our own file; no inline script, handler or style
    assert "js/destination-form.js" in page
    assert re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page) is None
    assert re.search(r"\son[a-z]+=", page) is None and " style=" not in page


def test_create_a_local_destination_through_configwrite(client, alice, folders, config_changes):
    client.force_login(alice)
    response = client.post(reverse("destinations:create"), local_post(folders, **{"usb-path": "not checked"}))
    destination = Destination.objects.get(name="Second disk")
    assert response.status_code == 302 and response["Location"] == destination.get_absolute_url()
    assert destination.kind == "local" and destination.settings == {"path": str(folders["backups"]), "create": False}
    assert [c.action for c in config_changes] == ["created"] and config_changes[0].actor == alice
    assert destination.last_test_at is None


def test_only_the_chosen_kind_is_validated_and_errors_sit_by_their_field(client, alice, folders):
    client.force_login(alice)
    response = client.post(
        reverse("destinations:create"), {"name": "", "kind": "usb", "local-path": "", "usb-path": ""}
    )
    page = response.content.decode()
    assert response.status_code == 200
    assert page.count('class="error"') == 2  # the name and the USB mount point, not the local folder
    assert re.search(r'id_usb-path_error"><p class="error"', page)
    assert 'id="id_local-path_error"' not in page
    assert not Destination.objects.exists()


def test_no_kind_chosen_is_an_error(client, alice, folders):
    client.force_login(alice)
    response = client.post(reverse("destinations:create"), {"name": "X", "local-path": str(folders["backups"])})
    assert response.status_code == 200 and "This field is required." in response.content.decode()
    assert not Destination.objects.exists()


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("{root}/../../etc", "must not contain"),
        ("/etc", "must be inside one of the allowed folders"),
        ("{root}/escape", "must be inside one of the allowed folders"),  # a symlink to /etc
        ("{root}/a\x00b", "Null characters are not allowed"),
        ("{root}\\..\\..\\etc", "characters that are not allowed"),
        ("relative/path", "must be absolute"),
    ],
)
def test_dangerous_paths_are_form_errors(client, alice, folders, path, message):
    """RELIABILITY 18, through the create form."""
    os.symlink("/etc", folders["backups"] / "escape")
    client.force_login(alice)
    data = local_post(folders, **{"local-path": path.format(root=folders["backups"])})
    response = client.post(reverse("destinations:create"), data)
    page = response.content.decode()
    assert response.status_code == 200
    assert message in page
    assert re.search(r'id_local-path_error"><p class="error"', page), "the error must sit next to the folder field"
    assert not Destination.objects.exists()


def test_usb_paths_are_checked_the_same_way(client, alice, folders):
    client.force_login(alice)
    data = {"name": "USB", "kind": "usb", "usb-path": "/etc"}
    page = client.post(reverse("destinations:create"), data).content.decode()
    assert "must be inside one of the allowed folders" in page and not Destination.objects.exists()


# --- testing on the form -------------------------------------------------------------------------
def test_test_on_the_create_form_shows_the_result_inline_and_saves_nothing(client, alice, folders):
    client.force_login(alice)
    response = client.post(reverse("destinations:create"), local_post(folders, action="test"))
    page = response.content.decode()
    assert response.status_code == 200
    assert "Test passed" in page and "a test file was written" in page
    assert "Writes to" in page and "Free space" in page and "/s</dd>" in page  # folder, space, throughput
    assert "These settings are not saved yet." in page
    assert not Destination.objects.exists()
    assert 'value="Second disk"' in page  # what was typed is kept


def test_a_test_result_made_on_the_form_is_recorded_when_the_same_settings_are_saved(client, alice, folders):
    client.force_login(alice)
    page = client.post(reverse("destinations:create"), local_post(folders, action="test")).content.decode()
    [tested] = hidden(page, "tested")
    client.post(reverse("destinations:create"), local_post(folders, tested=tested))
    destination = Destination.objects.get()
    assert destination.last_test_ok is True and "a test file was written" in destination.last_test_message
    # the same token does not vouch for other settings
    other = folders["backups"] / "other"
    other.mkdir()
    client.post(
        reverse("destinations:create"), local_post(folders, name="Other", tested=tested, **{"local-path": str(other)})
    )
    assert Destination.objects.get(name="Other").last_test_at is None


def test_fetch_test_answers_with_the_fragment_only(client, alice, folders):
    client.force_login(alice)
    response = client.post(reverse("destinations:create"), local_post(folders, action="test"), **FETCH)
    body = response.content.decode()
    assert response.status_code == 200
    assert "Test passed" in body and "<html" not in body and 'name="tested"' in body


def test_fetch_test_of_invalid_settings_asks_for_the_full_page(client, alice, folders):
    client.force_login(alice)
    data = local_post(folders, action="test", **{"local-path": "/etc"})
    assert client.post(reverse("destinations:create"), data, **FETCH).status_code == 422
    page = client.post(reverse("destinations:create"), data).content.decode()
    assert "Correct the settings marked below" in page and "must be inside one of the allowed folders" in page


def test_a_failed_test_explains_why(client, alice, folders):
    client.force_login(alice)
    data = local_post(folders, action="test", **{"local-path": str(folders["backups"] / "missing")})
    page = client.post(reverse("destinations:create"), data).content.decode()
    assert "Test failed" in page and "does not exist" in page


# --- fingerprints ---------------------------------------------------------------------------------
def test_fingerprint_confirmation_on_the_create_form(client, alice, folders, pinned_kind):
    client.force_login(alice)
    url = reverse("destinations:create")
    page = client.post(url, pinned_post(folders, action="test")).content.decode()
    assert "SSH host key" in page and pinned.SERVER_KEY in page and "ssh-ed25519" in page
    assert "I have checked this fingerprint: trust it" in page
    assert pinned.LOGINS == []  # the password was not sent to an unconfirmed server
    assert pinned.PASSWORD not in page
    assert "A value was typed; leave blank to keep it." in page  # the page says it kept the password
    token = re.search(r'name="trust" value="([^"]+)"', page).group(1)
    [pending] = hidden(page, "pending_secrets")

    # Without JavaScript the page reloaded: the password comes back encrypted, not in clear.
    data = pinned_post(folders, trust=token, pending_secrets=pending, **{"pinned-password": ""})
    page = client.post(url, data).content.decode()
    assert "Test passed" in page and "This is the confirmed identity of the server." in page
    assert pinned.LOGINS == [pinned.PASSWORD]
    assert pinned.PASSWORD not in page
    [trusted] = hidden(page, "trusted")
    [tested] = hidden(page, "tested")
    [pending] = hidden(page, "pending_secrets")

    data = pinned_post(folders, trusted=trusted, tested=tested, pending_secrets=pending, **{"pinned-password": ""})
    response = client.post(url, data)
    assert response.status_code == 302
    destination = Destination.objects.get()
    assert destination.settings["host_key"] == pinned.SERVER_KEY
    assert destination.secrets == {"password": pinned.PASSWORD}
    assert destination.last_test_ok is True


def test_a_forged_trust_token_is_refused(client, alice, folders, pinned_kind):
    from django.core import signing

    client.force_login(alice)
    forged = signing.dumps({"k": "pinned", "s": "path", "v": "/etc", "d": None}, salt="wrong salt")
    page = client.post(reverse("destinations:create"), pinned_post(folders, trust=forged)).content.decode()
    assert "expired or is invalid" in page and pinned.LOGINS == []
    other_setting = services.trust_token("pinned", pinned.pinned_fingerprint("path"))
    with pytest.raises(services.TokenError):
        services.read_trust_token(other_setting, "local")
    with pytest.raises(services.TokenError):
        services.read_trust_token(services.trust_token("pinned", pinned.pinned_fingerprint("nope")), "pinned")


def test_fingerprint_confirmation_on_the_detail_page_and_a_changed_key(
    client, alice, folders, pinned_kind, config_changes
):
    destination = Destination.objects.create(
        name="Server",
        kind="pinned",
        settings={"path": str(folders["backups"]), "user": "u"},
        secrets={"password": pinned.PASSWORD},
    )
    client.force_login(alice)
    client.post(reverse("destinations:test", args=[destination.pk]))
    page = client.get(destination.get_absolute_url()).content.decode()
    assert pinned.SERVER_KEY in page and "I have checked this fingerprint: trust it" in page
    assert pinned.LOGINS == []
    token = re.search(r'name="trust" value="([^"]+)"', page).group(1)

    response = client.post(reverse("destinations:trust", args=[destination.pk]), {"trust": token})
    assert response.status_code == 302
    destination.refresh_from_db()
    assert destination.settings["host_key"] == pinned.SERVER_KEY and destination.last_test_ok
    assert [c.action for c in config_changes] == ["changed"]
    assert [f.field for f in config_changes[0].changes] == ["settings.host_key"]

    # The server shows another key: refused, naming both; the old token cannot pin it.
    pinned.SHOWN["key"] = pinned.OTHER_KEY
    client.post(reverse("destinations:test", args=[destination.pk]))
    destination.refresh_from_db()
    assert not destination.last_test_ok
    assert pinned.OTHER_KEY in destination.last_test_message and pinned.SERVER_KEY in destination.last_test_message
    client.post(reverse("destinations:trust", args=[destination.pk]), {"trust": token})
    destination.refresh_from_db()
    assert destination.settings["host_key"] == pinned.SERVER_KEY  # unchanged


def test_editing_keeps_a_confirmed_fingerprint_the_form_has_no_field_for(client, alice, folders, pinned_kind):
    destination = Destination.objects.create(
        name="Server",
        kind="pinned",
        settings={"path": str(folders["backups"]), "user": "u", "host_key": pinned.SERVER_KEY},
        secrets={"password": pinned.PASSWORD},
    )
    client.force_login(alice)
    data = {
        "name": "Server",
        "enabled": "on",
        "pinned-path": str(folders["backups"]),
        "pinned-user": "v",
        "pinned-password": "",
    }
    assert client.post(reverse("destinations:edit", args=[destination.pk]), data).status_code == 302
    destination.refresh_from_db()
    assert destination.settings["host_key"] == pinned.SERVER_KEY and destination.settings["user"] == "v"
    assert destination.secrets == {"password": pinned.PASSWORD}  # blank = keep


# --- secrets ------------------------------------------------------------------------------------
def test_secrets_are_never_rendered_and_blank_keeps_them(client, alice, folders, pinned_kind, caplog):
    caplog.set_level(logging.DEBUG)
    destination = Destination.objects.create(
        name="Server",
        kind="pinned",
        settings={"path": str(folders["backups"]), "user": "u", "host_key": pinned.SERVER_KEY},
        secrets={"password": pinned.PASSWORD},
    )
    client.force_login(alice)
    pages = [
        client.get(reverse("destinations:edit", args=[destination.pk])),
        client.get(destination.get_absolute_url()),
        client.get(reverse("destinations:list")),
        client.post(reverse("destinations:test", args=[destination.pk]), follow=True),
        client.post(
            reverse("destinations:edit", args=[destination.pk]),
            {"name": "Server", "pinned-path": str(folders["backups"]), "pinned-user": "u", "action": "test"},
        ),
        client.post(
            reverse("destinations:edit", args=[destination.pk]),
            {"name": "Server", "pinned-path": str(folders["backups"]), "pinned-user": "u", "action": "test"},
            **FETCH,
        ),
    ]
    edit = pages[0].content.decode()
    assert "A value is stored; leave blank to keep it." in edit
    assert re.search(r'<input type="password" name="pinned-password"[^>]*>', edit)
    assert 'name="pinned-password" value' not in edit
    assert "Test passed" in pages[4].content.decode() and "Test passed" in pages[5].content.decode()
    for response in pages:
        assert pinned.PASSWORD.encode() not in response.content
    assert pinned.PASSWORD not in caplog.text
    assert "Password: stored encrypted, never shown" in pages[1].content.decode()

    grant_sudo(client)  # replacing a stored secret needs sudo mode (tests/test_sudo.py)
    client.post(
        reverse("destinations:edit", args=[destination.pk]),
        {
            "name": "Server",
            "pinned-path": str(folders["backups"]),
            "pinned-user": "u",
            "pinned-password": "new-one-typed",
        },
    )
    destination.refresh_from_db()
    assert destination.secrets == {"password": "new-one-typed"}
    assert destination.last_test_at is None  # changed since the last test


def test_a_pending_secret_is_bound_to_its_user_and_kind(alice, bob):
    token = services.pending_token(alice, "pinned", {"password": "s3cret"})
    assert "s3cret" not in token
    assert services.read_pending(token, alice, "pinned") == {"password": "s3cret"}
    assert services.read_pending(token, bob, "pinned") == {}
    assert services.read_pending(token, alice, "local") == {}
    assert services.read_pending("garbage", alice, "pinned") == {}


@pytest.mark.parametrize("host", ["127.0.0.1", "169.254.169.254", "::1", "localhost"])
def test_the_test_button_refuses_local_and_metadata_addresses(client, alice, folders, pinned_kind, settings, host):
    """RELIABILITY 19 through the page: netguard refuses before anything is sent."""
    settings.BACKUPSITE_ALLOW_LOCAL_DESTINATIONS = False
    client.force_login(alice)
    data = pinned_post(folders, action="test", **{"pinned-host": host})
    page = client.post(reverse("destinations:create"), data).content.decode()
    assert "This server address is not allowed for a destination" in page
    assert pinned.LOGINS == [] and "SSH host key" not in page
    settings.BACKUPSITE_ALLOW_LOCAL_DESTINATIONS = True
    page = client.post(reverse("destinations:create"), data).content.decode()
    assert "not allowed" not in page and "SSH host key" in page  # the test goes on to the server


# --- rate limit and roles ------------------------------------------------------------------------------
def test_tests_are_rate_limited_with_a_readable_429(client, alice, job, settings):
    settings.BACKUPSITE_RATE_LIMITS = {"destination-test": (2, 60)}
    destination = job.destinations.get()
    client.force_login(alice)
    url = reverse("destinations:test", args=[destination.pk])
    assert client.post(url).status_code == 302
    assert client.post(url).status_code == 302
    response = client.post(url)
    assert response.status_code == 429 and int(response["Retry-After"]) > 0
    assert re.search(r"Too many connection tests; try again in \d+ seconds", response.content.decode())
    # the form's test counts too
    response = client.post(
        reverse("destinations:edit", args=[destination.pk]),
        {"name": "x", "local-path": destination.settings["path"], "action": "test"},
    )
    assert response.status_code == 429 and "Too many connection tests" in response.content.decode()
    assert int(response["Retry-After"]) > 0


def test_tests_are_rate_limited_per_client_address(client, alice, job, settings):
    settings.BACKUPSITE_RATE_LIMITS = {"destination-test-ip": (1, 60)}
    url = reverse("destinations:test", args=[job.destinations.get().pk])
    client.force_login(alice)
    assert client.post(url, REMOTE_ADDR="10.0.0.1").status_code == 302
    assert client.post(url, REMOTE_ADDR="10.0.0.1").status_code == 429
    assert client.post(url, REMOTE_ADDR="10.0.0.2").status_code == 302


@pytest.mark.parametrize("user", ["bob", "charlie"])
def test_operators_and_viewers_see_but_cannot_change(client, request, user, job):
    destination = job.destinations.get()
    client.force_login(request.getfixturevalue(user))
    assert client.get(reverse("destinations:list")).status_code == 200
    page = client.get(destination.get_absolute_url())
    assert page.status_code == 200
    assert (
        b"Test connection" not in page.content
        and reverse("destinations:edit", args=[destination.pk]).encode() not in page.content
    )
    for name, method in [("create", "get"), ("create", "post")]:
        assert getattr(client, method)(reverse(f"destinations:{name}")).status_code == 403
    for name in ("edit", "delete"):
        assert client.get(reverse(f"destinations:{name}", args=[destination.pk])).status_code == 403
    for name in ("edit", "test", "trust", "delete"):
        assert client.post(reverse(f"destinations:{name}", args=[destination.pk])).status_code == 403
    assert Destination.objects.filter(pk=destination.pk).exists()


# --- delete ---------------------------------------------------------------------------------------
def test_delete_is_refused_while_jobs_use_it_naming_them(client, alice, job):
    destination = job.destinations.get()
    client.force_login(alice)
    grant_sudo(client)
    page = client.get(reverse("destinations:delete", args=[destination.pk])).content.decode()
    assert "cannot be deleted while jobs or planning exports use it" in page and job.name in page
    assert "Delete the destination" not in page
    response = client.post(reverse("destinations:delete", args=[destination.pk]))
    assert response.status_code == 409 and f"used by “{job.name}”" in response.content.decode()
    assert Destination.objects.filter(pk=destination.pk).exists()


def test_delete_after_confirmation_through_configwrite(client, alice, folders, config_changes):
    destination = Destination.objects.create(name="Old disk", kind="local", settings={"path": str(folders["backups"])})
    client.force_login(alice)
    grant_sudo(client)
    page = client.get(reverse("destinations:delete", args=[destination.pk])).content.decode()
    assert "not</strong> deleted" in page and "Delete the destination" in page
    response = client.post(reverse("destinations:delete", args=[destination.pk]), follow=True)
    assert response.redirect_chain[-1][0] == reverse("destinations:list")
    assert "Old disk" in response.content.decode() and "deleted" in response.content.decode()
    assert not Destination.objects.exists()
    assert [c.action for c in config_changes] == ["deleted"]


# --- details ----------------------------------------------------------------------------------------
def test_detail_shows_state_capabilities_uploads_and_the_last_test(client, charlie, job):
    from jobs import services as job_services

    destination = job.destinations.get()
    run = job_services.execute_run(job_services.create_run(job).pk)
    destination.record_test(destination.backend().test())
    client.force_login(charlie)
    page = client.get(destination.get_absolute_url()).content.decode()
    assert "Last connection test" in page and "Test passed" in page and "Throughput" in page
    assert "read files back" in page and "delete old backups" in page
    assert run.archive_name in page and reverse("jobs:run_detail", args=[run.pk]) in page
    assert job.name in page
    assert "free (" in page


def test_a_destination_of_an_unknown_kind_still_shows(client, alice):
    destination = Destination.objects.create(name="Gone", kind="carrier-pigeon", settings={})
    client.force_login(alice)
    assert client.get(destination.get_absolute_url()).status_code == 200
    assert client.get(reverse("destinations:list")).status_code == 200
    assert client.get(reverse("destinations:edit", args=[destination.pk])).status_code == 302
