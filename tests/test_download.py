"""Downloads: permission-checked, streamed, byte-identical, with safe headers."""

from __future__ import annotations

import pytest
from django.urls import reverse

from jobs import services
from jobs.models import Run


@pytest.fixture
def finished_run(job) -> Run:
    run = services.execute_run(services.create_run(job).pk)
    assert run.state == Run.State.SUCCEEDED
    return run


def test_download_is_byte_identical_with_correct_headers(client, bob, finished_run):
    client.force_login(bob)
    response = client.get(reverse("jobs:run_download", args=[finished_run.pk]))
    assert response.status_code == 200
    assert response.streaming
    body = b"".join(response.streaming_content)
    assert body == finished_run.local_file.read_bytes()
    assert response["Content-Type"] == "application/zstd"
    assert int(response["Content-Length"]) == finished_run.archive_size
    assert response["Content-Disposition"] == f'attachment; filename="{finished_run.archive_name}"'


def test_manifest_download(client, bob, finished_run):
    client.force_login(bob)
    response = client.get(reverse("jobs:run_manifest", args=[finished_run.pk]))
    assert response["Content-Type"] == "application/json"
    assert b'"backupsite-manifest/1"' in b"".join(response.streaming_content)


@pytest.mark.parametrize("user", ["charlie", "dave"])
def test_viewers_and_users_without_role_cannot_download(client, request, user, finished_run):
    client.force_login(request.getfixturevalue(user))
    assert client.get(reverse("jobs:run_download", args=[finished_run.pk])).status_code == 403


def test_anonymous_download_redirects_to_login(client, finished_run):
    response = client.get(reverse("jobs:run_download", args=[finished_run.pk]))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


def test_unknown_or_unfinished_runs_give_404(client, bob, job):
    client.force_login(bob)
    assert client.get(reverse("jobs:run_download", args=[9999])).status_code == 404
    run = services.create_run(job)
    assert client.get(reverse("jobs:run_download", args=[run.pk])).status_code == 404


def test_a_deleted_local_copy_gives_404_not_500(client, bob, finished_run, folders):
    finished_run.local_file.unlink()
    (folders["backups"] / "backupsite" / finished_run.job_slug / finished_run.archive_name).unlink()  # nowhere left
    client.force_login(bob)
    assert client.get(reverse("jobs:run_download", args=[finished_run.pk])).status_code == 404


def test_local_path_outside_the_archive_folder_is_never_served(client, bob, finished_run, folders):
    archive = finished_run.local_file.read_bytes()
    Run.objects.filter(pk=finished_run.pk).update(local_path="../../../../etc/passwd")
    client.force_login(bob)
    response = client.get(reverse("jobs:run_download", args=[finished_run.pk]))
    assert b"".join(response.streaming_content) == archive  # the destination's copy, never /etc/passwd


def test_odd_file_names_give_a_safe_content_disposition(client, bob, finished_run):
    odd = finished_run.local_file.with_name('we"ird\nname ü.tar.zst')
    finished_run.local_file.rename(odd)
    Run.objects.filter(pk=finished_run.pk).update(local_path=str(odd.relative_to(odd.parents[1])))
    client.force_login(bob)
    response = client.get(reverse("jobs:run_download", args=[finished_run.pk]))
    header = response["Content-Disposition"]
    assert "\n" not in header and "\r" not in header
    assert header.startswith("attachment; filename*=utf-8''")
    assert "%22" in header and "%0A" in header  # quote and newline percent-encoded
