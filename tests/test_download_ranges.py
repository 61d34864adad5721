"""Downloads from the local copy and, when it is gone, from a destination: one HTTP range
(206, 416, resume), byte-identical, constant memory (RELIABILITY 24), write-only kinds
skipped."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
from django.urls import reverse

from destinations.backends import REGISTRY
from destinations.backends.base import ALL_CAPABILITIES, READ
from destinations.backends.local import LocalBackend, LocalSession
from jobs import downloads
from jobs import services as job_services
from jobs.models import Run, Upload

pytestmark = pytest.mark.django_db


@pytest.fixture
def finished_run(job) -> Run:
    run = job_services.execute_run(job_services.create_run(job).pk)
    assert run.state == Run.State.SUCCEEDED
    return run


@pytest.fixture
def archive(finished_run) -> bytes:
    return finished_run.local_file.read_bytes()


@pytest.fixture(params=["local copy", "destination"])
def where(request, finished_run, archive) -> str:
    """Run each case against the local copy and against the destination (local copy gone)."""
    if request.param == "destination":
        manifest = finished_run.local_file.with_name(finished_run.archive_name + ".manifest.json")
        finished_run.local_file.unlink()
        manifest.unlink()
    return request.param


def get(client, run, range_=None, what="archive", method="get", **headers):
    name = "jobs:run_manifest" if what == "manifest" else "jobs:run_download"
    if range_ is not None:
        headers["HTTP_RANGE"] = range_
    return getattr(client, method)(reverse(name, args=[run.pk]), **headers)


def body(response) -> bytes:
    try:
        return b"".join(response.streaming_content) if response.streaming else response.content
    finally:
        response.close()


def test_whole_file_with_length_etag_and_ranges_advertised(client, bob, finished_run, archive, where):
    client.force_login(bob)
    response = get(client, finished_run)
    assert response.status_code == 200
    assert response["Accept-Ranges"] == "bytes"
    assert int(response["Content-Length"]) == len(archive) == finished_run.archive_size
    assert response["ETag"] == f'"{finished_run.archive_sha256[:40]}"'
    assert response["Content-Type"] == "application/zstd"
    assert response["Content-Disposition"] == f'attachment; filename="{finished_run.archive_name}"'
    assert "Last-Modified" in response
    assert body(response) == archive


@pytest.mark.parametrize(
    ("header", "span"),
    [
        ("bytes=0-99", lambda n: (0, 99)),  # the first bytes
        ("bytes=1000-1999", lambda n: (1000, 1999)),  # the middle
        ("bytes=-500", lambda n: (n - 500, n - 1)),  # the last 500 (suffix)
        ("bytes=4096-", lambda n: (4096, n - 1)),  # open-ended: a resume
        ("bytes=10-99999999999", lambda n: (10, n - 1)),  # past the end: clipped
        ("bytes=-99999999999", lambda n: (0, n - 1)),  # a suffix longer than the file
    ],
)
def test_single_ranges(client, bob, finished_run, archive, where, header, span):
    client.force_login(bob)
    first, last = span(len(archive))
    response = get(client, finished_run, header)
    assert response.status_code == 206, header
    assert response["Content-Range"] == f"bytes {first}-{last}/{len(archive)}"
    assert int(response["Content-Length"]) == last - first + 1
    assert body(response) == archive[first : last + 1]


@pytest.mark.parametrize("header", ["bytes=99999999999-", "bytes=5-2", "bytes=abc", "bytes=-0", "bytes=-", "bytes=1-x"])
def test_ranges_that_cannot_be_satisfied_get_416(client, bob, finished_run, archive, where, header):
    client.force_login(bob)
    response = get(client, finished_run, header)
    assert response.status_code == 416, header
    assert response["Content-Range"] == f"bytes */{len(archive)}"


@pytest.mark.parametrize("header", ["items=0-5", "bytes=0-1,5-9"])
def test_other_units_and_several_ranges_get_the_whole_file(client, bob, finished_run, archive, where, header):
    client.force_login(bob)
    response = get(client, finished_run, header)
    assert response.status_code == 200 and body(response) == archive


def test_if_range_resumes_only_the_same_version(client, bob, finished_run, archive, where):
    client.force_login(bob)
    etag = get(client, finished_run, method="head")["ETag"]
    assert get(client, finished_run, "bytes=100-", HTTP_IF_RANGE=etag).status_code == 206
    other = get(client, finished_run, "bytes=100-", HTTP_IF_RANGE='"another-version"')
    assert other.status_code == 200 and body(other) == archive


def test_an_interrupted_download_resumes_byte_identical(client, bob, finished_run, archive, where):
    client.force_login(bob)
    response = get(client, finished_run)
    received = bytearray()
    for chunk in response.streaming_content:  # the connection drops after the first part
        received += chunk
        if len(received) >= len(archive) // 3:
            break
    response.close()
    received = bytes(received[: len(archive) // 3])
    rest = get(client, finished_run, f"bytes={len(received)}-", HTTP_IF_RANGE=response["ETag"])
    assert rest.status_code == 206
    whole = received + body(rest)
    assert whole == archive
    assert hashlib.sha256(whole).hexdigest() == finished_run.archive_sha256


def test_head_tells_the_size_without_a_body(client, bob, finished_run, archive, where):
    client.force_login(bob)
    response = get(client, finished_run, method="head")
    assert response.status_code == 200 and int(response["Content-Length"]) == len(archive)
    assert get(client, finished_run, "bytes=0-9", method="head")["Content-Range"] == f"bytes 0-9/{len(archive)}"


def test_the_manifest_comes_from_the_same_place_with_ranges(client, bob, finished_run, where, folders):
    manifest = (folders["backups"] / "backupsite" / finished_run.job_slug / finished_run.archive_name).with_name(
        finished_run.archive_name + ".manifest.json"
    )
    data = manifest.read_bytes()
    client.force_login(bob)
    response = get(client, finished_run, what="manifest")
    assert response["Content-Type"] == "application/json" and body(response) == data
    assert body(get(client, finished_run, "bytes=0-29", what="manifest")) == data[:30]


def test_a_destination_download_closes_its_session(client, bob, finished_run, monkeypatch):
    finished_run.local_file.unlink()
    closed = []
    original = LocalSession.close
    monkeypatch.setattr(LocalSession, "close", lambda self: (closed.append(self), original(self)))
    client.force_login(bob)
    response = get(client, finished_run, "bytes=0-9")
    assert len(body(response)) == 10
    assert len(closed) == 1
    get(client, finished_run, "bytes=99999999999-")  # 416: the session is closed too
    assert len(closed) == 2


def test_nowhere_left_is_404_and_unreachable_is_a_readable_503(client, bob, finished_run, folders):
    finished_run.local_file.unlink()
    client.force_login(bob)
    (folders["backups"] / "backupsite" / finished_run.job_slug / finished_run.archive_name).rename(
        folders["root"] / "x"
    )
    assert get(client, finished_run).status_code == 404
    os.rename(folders["backups"], folders["root"] / "unplugged")  # the destination's folder is gone
    response = get(client, finished_run)
    assert response.status_code == 503 and response["Retry-After"]
    page = response.content.decode()
    assert "cannot be downloaded right now" in page and "does not exist" in page


def test_a_copy_of_the_wrong_size_is_not_served(client, bob, finished_run, folders):
    finished_run.local_file.unlink()
    remote = folders["backups"] / "backupsite" / finished_run.job_slug / finished_run.archive_name
    remote.write_bytes(remote.read_bytes()[:-1])
    client.force_login(bob)
    assert get(client, finished_run).status_code == 404


class WriteOnlyBackend(LocalBackend):
    """A kind that cannot read back (like e-mail), for the tests below."""

    kind = "writeonly"
    label = "Write-only test kind"
    capabilities = ALL_CAPABILITIES - {READ}


def test_write_only_destinations_are_not_offered_for_download_or_verify(client, bob, finished_run, monkeypatch):
    monkeypatch.setitem(REGISTRY, WriteOnlyBackend.kind, WriteOnlyBackend)
    upload = finished_run.uploads.get()
    upload.destination.kind = "writeonly"
    upload.destination.save()
    finished_run.local_file.unlink()
    client.force_login(bob)
    assert not finished_run.downloadable
    assert get(client, finished_run).status_code == 404
    page = client.get(finished_run.get_absolute_url()).content.decode()
    assert "Download" not in page and f'value="{upload.destination_id}"' not in page
    verify = client.get(reverse("jobs:run_verify", args=[finished_run.pk])).content.decode()
    assert "No copy of this archive is available" in verify


def test_the_run_page_offers_the_download_from_a_destination(client, bob, finished_run):
    finished_run.local_file.unlink()
    client.force_login(bob)
    page = client.get(finished_run.get_absolute_url()).content.decode()
    assert reverse("jobs:run_download", args=[finished_run.pk]) in page
    assert finished_run.downloadable


def test_verify_from_the_destination_through_the_command_and_the_form(
    client, bob, finished_run, django_capture_on_commit_callbacks
):
    import io

    from django.core.management import call_command

    finished_run.local_file.unlink()
    out = io.StringIO()
    call_command("verifybackup", str(finished_run.pk), "--destination", "Local disk", stdout=out)
    assert f"Run #{finished_run.pk} (destination “Local disk”)" in out.getvalue()
    upload = finished_run.uploads.get()
    upload.refresh_from_db()
    assert upload.verify_ok is True
    client.force_login(bob)
    verify = client.get(reverse("jobs:run_verify", args=[finished_run.pk])).content.decode()
    assert f'value="{upload.destination_id}"' in verify


# --- constant memory (RELIABILITY 24) -----------------------------------------------------------
def rss() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


BIG = 4 << 30  # 4 GiB, sparse: no disk space used, read at memory speed


@pytest.fixture
def big_run(job, folders) -> Run:
    """A finished run whose 4 GiB (sparse) archive is only at the destination."""
    job.save()
    name = "office-backup-big.tar.zst"
    remote = folders["backups"] / "backupsite" / job.slug / name
    remote.parent.mkdir(parents=True)
    with open(remote, "wb") as fh:
        fh.truncate(BIG)
    run = Run.objects.create(
        job=job,
        job_name=job.name,
        config={"job": {"slug": job.slug, "name": job.name}},
        state=Run.State.SUCCEEDED,
        archive_name=name,
        archive_size=BIG,
        archive_sha256="0" * 64,
        local_path=f"{job.slug}/{name}",
    )
    Upload.objects.create(run=run, destination=job.destinations.get(), destination_name="Local disk", state="succeeded")
    yield run
    remote.unlink(missing_ok=True)


@pytest.mark.parametrize("copy", ["destination", "local copy"])
def test_a_big_download_streams_in_constant_memory(client, bob, big_run, folders, copy):
    if copy == "local copy":
        local = Path(folders["archives"]) / big_run.local_path
        local.parent.mkdir(parents=True, exist_ok=True)
        os.rename(folders["backups"] / "backupsite" / big_run.job_slug / big_run.archive_name, local)
    client.force_login(bob)
    response = get(client, big_run)
    assert int(response["Content-Length"]) == BIG
    before = rss()
    peak, total, started = before, 0, time.monotonic()
    for n, chunk in enumerate(response.streaming_content):
        total += len(chunk)
        if n % 256 == 0:
            peak = max(peak, rss())
    response.close()
    assert total == BIG
    growth = peak - before
    assert growth < 64 << 20, f"RSS grew by {growth / 2**20:.0f} MiB while streaming {BIG / 2**30:.0f} GiB"
    assert time.monotonic() - started < 120


def test_parse_range_rules():
    assert downloads.parse_range(None, 100) is None
    assert downloads.parse_range("bytes=0-0", 100) == (0, 0)
    assert downloads.parse_range(" bytes = 5 - 9 ", 100) == (5, 9)
    assert downloads.parse_range("bytes=-1", 100) == (99, 99)
    assert downloads.parse_range("BYTES=90-", 100) == (90, 99)
    with pytest.raises(downloads.RangeNotSatisfiable):
        downloads.parse_range("bytes=0-", 0)  # nothing to send from an empty file
    with pytest.raises(downloads.RangeNotSatisfiable):
        downloads.parse_range("bytes=100-", 100)
