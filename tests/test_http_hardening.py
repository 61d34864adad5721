"""Small HTTP hardening (issue 6, item 6): no caching of signed-in pages, and a POST to
a URL without its trailing slash is redirected with 308 instead of failing."""

from __future__ import annotations

import pytest
from django.templatetags.static import static
from django.urls import reverse

from jobs import services
from jobs.models import Run


def no_store(response) -> bool:
    return "no-store" in {part.strip() for part in response.get("Cache-Control", "").split(",")}


@pytest.fixture
def finished_run(job) -> Run:
    run = services.execute_run(services.create_run(job).pk)
    assert run.state == Run.State.SUCCEEDED, run.error
    return run


def test_pages_for_signed_in_users_are_never_stored(client, bob, finished_run):
    client.force_login(bob)
    urls = [
        reverse("dashboard"),
        reverse("jobs:job_list"),
        reverse("jobs:run_detail", args=[finished_run.pk]),
        reverse("jobs:run_progress", args=[finished_run.pk]),
        reverse("destinations:list"),
        reverse("jobs:run_download", args=[finished_run.pk]),
        reverse("jobs:run_manifest", args=[finished_run.pk]),
        "/no-such-page/",
    ]
    for url in urls:
        response = client.get(url)
        assert response.status_code in (200, 404), url
        assert no_store(response), f"{url}: Cache-Control {response.get('Cache-Control')!r}"
        assert "private" in response["Cache-Control"] and "public" not in response["Cache-Control"], url


def test_a_logged_out_back_button_finds_nothing_cached(client, bob):
    """The page seen before logging out said no-store; after logout the same URL only
    sends the visitor to the login page."""
    client.force_login(bob)
    assert no_store(client.get(reverse("jobs:run_list")))
    client.post(reverse("logout"))
    response = client.get(reverse("jobs:run_list"))
    assert response.status_code == 302 and reverse("login") in response["Location"]


def test_static_files_keep_their_own_caching(client, bob, settings):
    settings.WHITENOISE_USE_FINDERS = True  # serve from static/ without collectstatic
    settings.WHITENOISE_AUTOREFRESH = True
    client.force_login(bob)
    response = client.get(static("css/app.css"))
    assert response.status_code == 200
    assert not no_store(response), response.get("Cache-Control")


@pytest.mark.parametrize("debug", [True, False])
def test_post_without_the_trailing_slash_is_redirected_keeping_the_method(client, alice, settings, debug):
    settings.DEBUG = debug  # Django's own middleware raises a RuntimeError (500) here with DEBUG on
    client.force_login(alice)
    response = client.post("/jobs?page=2", {"x": "1"})
    assert response.status_code == 308
    assert response["Location"] == "/jobs/?page=2"
    # Safe methods keep Django's ordinary 301; unknown URLs stay 404.
    assert client.get("/jobs").status_code == 301
    assert client.post("/no-such-page").status_code == 404


@pytest.mark.parametrize("debug", [True, False])
def test_the_redirected_post_reaches_its_view(client, alice, job, settings, debug, django_capture_on_commit_callbacks):
    settings.DEBUG = debug
    client.force_login(alice)
    url = reverse("jobs:job_run_now", args=[job.pk]).rstrip("/")
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post(url, follow=True)
    assert response.redirect_chain[0] == (url + "/", 308)
    run = job.runs.get()
    assert response.request["PATH_INFO"] == reverse("jobs:run_detail", args=[run.pk])
