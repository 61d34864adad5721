"""Every page needs login; every role can do exactly what it should."""

from __future__ import annotations

import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse

PUBLIC = {
    "login",
    "password_reset",
    "password_reset_done",
    "password_reset_confirm",
    "password_reset_complete",
    # the language selector: also on the login page (anonymous: only the cookie is set)
    "set_language",
}
# Called by machines with a job's secret instead of a login (tests/test_triggers.py): an
# anonymous call without the right secret finds nothing.
TOKEN_AUTHENTICATED = {"jobs:job_trigger", "jobs:job_trigger_token"}
# For monitoring machines, token-authenticated too (tests/test_health.py, tests/test_metrics.py):
# /healthz answers anyone with the status only (200 or 503; details need its token);
# /metrics is not there while BACKUPSITE_METRICS_TOKEN is unset (404), and 401 without it.
MONITORING = {"healthz": {"get": {200, 503}, "post": {405}}, "metrics": {"get": {401, 404}, "post": {405}}}


def iter_patterns(resolver=None, prefix="", namespace=""):
    resolver = resolver or get_resolver()
    for pattern in resolver.url_patterns:
        if isinstance(pattern, URLResolver):
            ns = pattern.namespace or namespace
            yield from iter_patterns(pattern, prefix + str(pattern.pattern), ns)
        elif isinstance(pattern, URLPattern):
            name = f"{namespace}:{pattern.name}" if namespace and pattern.name else pattern.name
            yield name, prefix + str(pattern.pattern)


def concrete(route: str) -> str:
    """Turn a route like 'runs/<int:pk>/' into a URL with made-up values."""
    return "/" + re.sub(r"<(?:\w+:)?\w+>", "1", route).lstrip("^").rstrip("$")


def all_urls():
    return sorted({(name, concrete(route)) for name, route in iter_patterns()})


def test_the_url_walk_finds_the_pages():
    names = {name for name, _ in all_urls()}
    assert {"dashboard", "jobs:run_download", "destinations:test", "logout"} <= names


@pytest.mark.django_db
@pytest.mark.parametrize(("name", "url"), all_urls())
def test_anonymous_access_is_redirected_to_login_or_refused(client, name, url):
    if name in MONITORING:  # a stale job the monitoring pages must not name without a token
        from datetime import timedelta

        from django.utils import timezone

        from backupsite import health
        from jobs.models import Job

        days_ago = timezone.now() - timedelta(days=3)
        stale = Job.objects.create(name="Payroll of ACME", interval=Job.Interval.DAILY, first_run_at=days_ago)
        Job.objects.filter(pk=stale.pk).update(created_at=days_ago)
        health.clear_cache()
    for method in ("get", "post"):
        response = getattr(client, method)(url)
        if name in PUBLIC:
            assert response.status_code in (200, 302, 403, 405)
            continue
        if name in MONITORING:
            assert response.status_code in MONITORING[name][method], (url, method, response.status_code)
            assert b"ACME" not in response.content
            continue
        if name in TOKEN_AUTHENTICATED:
            assert response.status_code in (404, 405), (url, method, response.status_code)
            continue
        if response.status_code == 302:
            assert response["Location"].startswith(reverse("login")), (url, response["Location"])
        else:
            assert response.status_code in (403, 405), (url, method, response.status_code)


def test_login_page_is_styled_and_logs_in(client, alice):
    page = client.get(reverse("login"))
    assert page.status_code == 200
    assert b"css/app.css" in page.content
    response = client.post(reverse("login"), {"username": "alice", "password": "alice-password"})
    assert response.status_code == 302 and response["Location"] == reverse("dashboard")
    assert client.get(reverse("dashboard")).status_code == 200


def test_wrong_password_shows_an_error_next_to_the_form(client, alice):
    response = client.post(reverse("login"), {"username": "alice", "password": "nope"})
    assert response.status_code == 200
    assert b"Please enter a correct username and password" in response.content


def test_logout_needs_post_and_ends_the_session(client, alice):
    client.force_login(alice)
    assert client.get(reverse("logout")).status_code == 405
    client.post(reverse("logout"))
    assert client.get(reverse("dashboard")).status_code == 302


def test_password_change_page(client, bob):
    client.force_login(bob)
    assert client.get(reverse("password_change")).status_code == 200
    response = client.post(
        reverse("password_change"),
        {
            "old_password": "bob-password",
            "new_password1": "A-much-longer-one-42",
            "new_password2": "A-much-longer-one-42",
        },
    )
    assert response.status_code == 302
    bob.refresh_from_db()
    assert bob.check_password("A-much-longer-one-42")


# --- roles -------------------------------------------------------------------
READ_PAGES = ["dashboard", "jobs:job_list", "jobs:run_list", "jobs:source_list", "destinations:list"]


@pytest.mark.parametrize("user", ["alice", "bob", "charlie"])
@pytest.mark.parametrize("page", READ_PAGES)
def test_every_role_can_read(client, request, user, page):
    client.force_login(request.getfixturevalue(user))
    assert client.get(reverse(page)).status_code == 200


@pytest.mark.parametrize("page", READ_PAGES)
def test_a_user_without_role_is_refused(client, dave, page):
    client.force_login(dave)
    response = client.get(reverse(page))
    assert response.status_code == 403
    assert b"Not allowed" in response.content


@pytest.mark.parametrize(("user", "allowed"), [("alice", True), ("bob", True), ("charlie", False), ("dave", False)])
def test_run_now_needs_the_run_permission(client, request, job, user, allowed, django_capture_on_commit_callbacks):
    from jobs.models import Run

    client.force_login(request.getfixturevalue(user))
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post(reverse("jobs:job_run_now", args=[job.pk]))
    assert (response.status_code == 302) is allowed
    assert Run.objects.filter(job=job).exists() is allowed


@pytest.mark.parametrize(("user", "allowed"), [("alice", True), ("bob", False), ("charlie", False)])
def test_only_administrators_test_destinations_and_measure_sources(client, request, job, user, allowed):
    client.force_login(request.getfixturevalue(user))
    destination = job.destinations.get()
    source = job.sources.get()
    assert (client.post(reverse("destinations:test", args=[destination.pk])).status_code == 302) is allowed
    assert (client.post(reverse("jobs:source_measure", args=[source.pk])).status_code == 302) is allowed


def test_run_now_button_is_only_shown_to_those_who_may(client, job, bob, charlie):
    client.force_login(bob)
    assert b"Run now" in client.get(job.get_absolute_url()).content
    client.force_login(charlie)
    assert b"Run now" not in client.get(job.get_absolute_url()).content


def test_state_changing_views_refuse_get(client, alice, job):
    client.force_login(alice)
    assert client.get(reverse("jobs:job_run_now", args=[job.pk])).status_code == 405


def test_post_without_csrf_token_is_refused(alice, job):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(alice)
    assert strict.post(reverse("jobs:job_run_now", args=[job.pk])).status_code == 403


# --- every URL, every role (issue 11: "each role is refused what it may not do, on every URL") -----
A, B, C, D = "alice", "bob", "charlie", "dave"  # administrator, operator, viewer, no role
READERS, OPERATORS_UP, ADMINS, SIGNED_IN = {A, B, C}, {A, B}, {A}, {A, B, C, D}

#: Who may use each URL (by name): every other signed-in user is refused with 403, GET
#: and POST alike. A new URL must be added here, or this walk fails naming it.
ACCESS: dict[str, set[str]] = {
    "dashboard": READERS,
    "logout": SIGNED_IN,
    "password_change": SIGNED_IN,
    "password_change_done": SIGNED_IN,
    "sudo": SIGNED_IN,
    "audit": ADMINS,
    "users:list": ADMINS,
    "users:create": ADMINS,
    "users:edit": ADMINS,
    "users:set_active": ADMINS,
    "users:send_reset": ADMINS,
    "destinations:list": READERS,
    "destinations:detail": READERS,
    "destinations:create": ADMINS,
    "destinations:edit": ADMINS,
    "destinations:test": ADMINS,
    "destinations:trust": ADMINS,
    "destinations:delete": ADMINS,
    "jobs:exports": READERS,
    "jobs:export_detail": READERS,
    "jobs:export_run_list": READERS,
    "jobs:export_run_detail": READERS,
    "jobs:export_run_progress": READERS,
    "jobs:export_run_now": OPERATORS_UP,
    "jobs:export_run_cancel": OPERATORS_UP,
    "jobs:export_create": ADMINS,
    "jobs:export_edit": ADMINS,
    "jobs:export_delete": ADMINS,
    "jobs:export_preview": ADMINS,
    "jobs:export_test": ADMINS,
    "jobs:job_list": READERS,
    "jobs:job_detail": READERS,
    "jobs:job_create": ADMINS,
    "jobs:job_edit": ADMINS,
    "jobs:job_duplicate": ADMINS,
    "jobs:job_delete": ADMINS,
    "jobs:job_set_enabled": ADMINS,
    "jobs:job_destinations": ADMINS,
    "jobs:job_run_now": OPERATORS_UP,
    "jobs:job_trigger_show": ADMINS,
    "jobs:job_trigger_regenerate": ADMINS,
    "jobs:job_trigger_remove": ADMINS,
    "jobs:job_test_email": OPERATORS_UP,
    "jobs:job_alert_settings": ADMINS,
    "jobs:run_list": READERS,
    "jobs:run_detail": READERS,
    "jobs:run_progress": READERS,
    "jobs:run_download": OPERATORS_UP,
    "jobs:run_manifest": OPERATORS_UP,
    "jobs:run_key_file": OPERATORS_UP,
    "jobs:run_cancel": OPERATORS_UP,
    "jobs:run_keep_forever": ADMINS,
    "jobs:run_delete_backup": ADMINS,
    "jobs:run_verify": OPERATORS_UP,
    "jobs:run_restore": ADMINS,
    "jobs:restore_detail": ADMINS,
    "jobs:restore_progress": ADMINS,
    "jobs:source_list": READERS,
    "jobs:source_detail": READERS,
    "jobs:source_measure": ADMINS,
    "jobs:source_create": ADMINS,
    "jobs:source_edit": ADMINS,
    "jobs:source_test": ADMINS,
    "jobs:source_delete": ADMINS,
}
#: The archive of a run that holds the panel's own database: administrators only
#: (object level: the operator may download other runs, not this one).
SENSITIVE = {"jobs:run_download", "jobs:run_manifest", "jobs:run_key_file", "jobs:run_verify", "jobs:run_restore"}


def test_every_url_has_an_access_rule():
    names = {name for name, _ in all_urls()} - PUBLIC - TOKEN_AUTHENTICATED - set(MONITORING)
    missing = sorted(names - set(ACCESS))
    assert missing == [], f"add these URL names to ACCESS in tests/test_auth.py with the roles allowed: {missing}"
    assert sorted(set(ACCESS) - names) == []  # no rule for a URL that is gone


def _kwargs(name: str, route: str, world: dict) -> dict:
    """Real objects for the URL's parameters (the run, job, source, destination, user)."""
    kwargs = {}
    for param in re.findall(r"<(?:\w+:)?(\w+)>", route):
        if param != "pk":
            kwargs[param] = "x"
        elif name.startswith(("destinations:", "users:")):
            kwargs["pk"] = world["destination" if name.startswith("destinations:") else "user"]
        elif name in ("jobs:export_run_detail", "jobs:export_run_progress", "jobs:export_run_cancel"):
            kwargs["pk"] = world["export_run"]
        else:  # jobs:run_…, jobs:job_…, jobs:source_…, jobs:export_…, jobs:restore_…
            kwargs["pk"] = world[name.split(":")[1].split("_")[0]]
    return kwargs


@pytest.fixture
def world(job, alice, bob, charlie, dave, tmp_path):
    from jobs import services
    from jobs.exports import service as exports
    from jobs.models import ExportDataset, ExportRun, PlanningExport, Restore, Run, Source

    run = services.execute_run(services.create_run(job).pk)
    assert run.state == Run.State.SUCCEEDED, run.error
    planning = Source.objects.create(name="Planning", kind="sqlite", settings={"path": str(tmp_path / "p.sqlite3")})
    export = PlanningExport.objects.create(name="Nightly plan", source=planning)
    export.destinations.set([job.destinations.get()])
    ExportDataset.objects.create(export=export, file_name="topics.xlsx", sheet_title="Topics", sql="SELECT 1")
    export_run = exports.create_run(export)
    ExportRun.objects.filter(pk=export_run.pk).update(state=ExportRun.State.FAILED)  # "Run now" may start one
    restore = Restore.objects.create(run=run, location="the local copy", target=str(tmp_path / "restored"))
    return {
        "job": job.pk,
        "run": run.pk,
        "source": job.sources.get().pk,
        "destination": job.destinations.get().pk,
        "user": bob.pk,
        "export": export.pk,
        "export_run": export_run.pk,
        "restore": restore.pk,
    }


def _status(client, method: str, url: str) -> int:
    return getattr(client, method)(url).status_code


@pytest.mark.parametrize(("name", "route"), sorted({(n, r) for n, r in iter_patterns() if n in ACCESS}))
def test_each_role_is_refused_what_it_may_not_do(
    client, request, world, name, route, django_capture_on_commit_callbacks
):
    from tests.conftest import grant_sudo

    url = reverse(name, kwargs=_kwargs(name, route, world))
    allowed = ACCESS[name]
    # The refused first (they must change nothing), the administrator last.
    for username in sorted(SIGNED_IN, key=lambda u: (u in allowed, u != A, u)):
        client.force_login(request.getfixturevalue(username))
        grant_sudo(client)  # sudo mode never replaces a permission
        with django_capture_on_commit_callbacks(execute=False):
            statuses = {method: _status(client, method, url) for method in ("get", "post")}
        if username in allowed:
            assert set(statuses.values()) - {403, 405}, (url, username, statuses)
        else:
            assert set(statuses.values()) <= {403, 405} and 403 in statuses.values(), (url, username, statuses)


@pytest.mark.parametrize("name", sorted(SENSITIVE))
def test_operators_are_refused_the_archive_of_a_sensitive_run(client, bob, job, name):
    from jobs import services
    from jobs.models import Run, Source

    panel = Source.panel_database()  # made by a migration; there is only one
    job.sources.add(panel)
    run = services.create_run(job)
    Run.objects.filter(pk=run.pk).update(
        state=Run.State.SUCCEEDED, archive_name="x.tar.zst", archive_size=1, archive_sha256="0" * 64
    )
    assert Run.objects.get(pk=run.pk).archive_allowed_for(bob) is False
    client.force_login(bob)
    url = reverse(name, args=[run.pk])
    assert {client.get(url).status_code, client.post(url).status_code} <= {403, 405}
