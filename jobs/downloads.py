"""Downloads of a run's archive (and manifest), from wherever a copy is.

The local copy on this server comes first; when it is gone, or when the web process runs
on another machine than the worker that made it, the file is streamed from a
destination that holds it: the run's succeeded uploads in order, skipping kinds that
cannot read back (e-mail) and copies that are not there or have the wrong size.

Every answer has ``Content-Length``, ``Accept-Ranges: bytes``, a strong ``ETag`` (the
archive's SHA-256) and an RFC 6266 ``Content-Disposition``. One HTTP range is honoured
(``bytes=a-b``, ``bytes=a-``, ``bytes=-n``: 206 with ``Content-Range``), so browsers and
``curl -C -`` resume; a range that cannot be satisfied, or is not a valid byte range,
is answered with 416 and ``Content-Range: bytes */SIZE``. A range in another unit, or
several ranges, get the whole file (RFC 9110 lets a server ignore them); so does an
``If-Range`` that names another version.

Memory stays constant whatever the size: the local copy is a :class:`FileResponse`
(gunicorn sends it with ``sendfile``; a bounded range is read in 1 MiB blocks), and a
destination's stream is read 1 MiB at a time by a :class:`StreamingHttpResponse` that
closes the stream, and with it the destination's session, when the response ends or
the client goes away.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from django.http import FileResponse, Http404, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.utils.http import content_disposition_header, http_date, parse_http_date_safe
from django.utils.translation import gettext as _

from backupsite import audit
from destinations.backends.base import (
    READ,
    DestinationError,
    NotFoundError,
    Session,
    StreamOwningSession,
    UnsupportedError,
    job_folder,
)
from jobs.models import Run, Upload
from jobs.naming import MANIFEST_SUFFIX

log = logging.getLogger(__name__)

ARCHIVE, MANIFEST = "archive", "manifest"
CHUNK = 1 << 20


class NotAvailable(Http404):
    """No copy of the file is anywhere any more (a 404)."""


class DownloadUnavailable(Exception):
    """Copies exist, but none could be read right now (destinations unreachable). The
    message is meant for users."""


class RangeNotSatisfiable(Exception):
    pass


# --- where the file is ------------------------------------------------------------------
@dataclass
class Source:
    """One readable copy of the file: the local copy (``path``) or a destination's (an
    open ``session`` that :meth:`open` streams from; :meth:`close` when not used)."""

    where: str
    name: str
    size: int | None
    path: Path | None = None
    session: Session | None = None
    folder: str = ""
    remote_name: str = ""
    _used: bool = field(default=False, repr=False)

    def open(self, offset: int) -> BinaryIO:
        if self.path is not None:
            fh = open(self.path, "rb")  # noqa: SIM115 - the response closes it
            fh.seek(offset)
            return fh
        assert self.session is not None
        stream = self.session.open(self.folder, self.remote_name, offset)
        self._used = True
        return StreamOwningSession(stream, self.session)  # type: ignore[return-value]

    def close(self) -> None:
        if self.session is not None and not self._used:
            self.session.close()


def readable_uploads(run: Run) -> list[Upload]:
    """The run's succeeded uploads whose destination can read back, oldest first."""
    uploads = run.uploads.filter(state=Upload.State.SUCCEEDED, destination__isnull=False).select_related("destination")
    return [u for u in uploads.order_by("pk") if u.destination.can(READ)]


def _local_path(run: Run, what: str) -> Path | None:
    path = run.local_file
    if path is None:
        return None
    if what == MANIFEST:
        path = path.with_name(path.name + MANIFEST_SUFFIX)
    return path if path.is_file() else None


def _finished(run: Run) -> bool:
    return run.state in (Run.State.SUCCEEDED, Run.State.PARTIAL) and bool(run.archive_name)


def available(run: Run) -> bool:
    """Whether the archive can be offered for download (no network: a destination that
    holds it may still be unreachable when the download starts)."""
    if not _finished(run):
        return False
    return _local_path(run, ARCHIVE) is not None or bool(run.job_slug and readable_uploads(run))


def find_source(run: Run, what: str = ARCHIVE) -> Source:
    """The first readable copy of the archive (or manifest); raises
    :class:`NotAvailable` when there is none and :class:`DownloadUnavailable` when
    copies exist but could not be read."""
    if what not in (ARCHIVE, MANIFEST) or not _finished(run):
        raise NotAvailable(_("This run has no archive to download."))
    path = _local_path(run, what)
    if path is not None:
        return Source("this server", path.name, path.stat().st_size, path=path)
    problems = []
    for upload in readable_uploads(run) if run.job_slug else []:
        remote = upload.remote_name or run.archive_name
        name = remote + MANIFEST_SUFFIX if what == MANIFEST else remote
        where = f"destination “{upload.destination.name}”"
        try:
            folder = job_folder(run.job_slug)
            session = upload.destination.backend().session()
        except DestinationError as exc:
            problems.append(f"{where}: {exc}")
            continue
        try:
            size = _remote_size(session, folder, name, run, what)
        except NotFoundError:
            session.close()  # not there (any more): not a problem of reaching it
            continue
        except DestinationError as exc:
            session.close()
            problems.append(f"{where}: {exc}")
            continue
        if what == ARCHIVE and size is not None and run.archive_size is not None and size != run.archive_size:
            session.close()
            log.warning("Run %s: the copy at %s has %s bytes instead of %s", run.pk, where, size, run.archive_size)
            continue
        return Source(where, name, size, session=session, folder=folder, remote_name=name)
    if problems:
        raise DownloadUnavailable("; ".join(problems))
    raise NotAvailable(_("This backup is no longer on this server, and no destination that can be read holds it."))


def _remote_size(session: Session, folder: str, name: str, run: Run, what: str) -> int | None:
    try:
        return session.stat(folder, name).size
    except UnsupportedError:  # a kind that reads but cannot list: trust the run's record
        return run.archive_size if what == ARCHIVE else None


# --- ranges ---------------------------------------------------------------------------------
def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(first, last)`` byte positions (inclusive) of one byte range, or None for the
    whole file; raises :class:`RangeNotSatisfiable` (see the module docstring)."""
    if not header:
        return None
    unit, sep, spec = header.partition("=")
    if unit.strip().lower() != "bytes":
        return None
    spec = spec.strip()
    if "," in spec:
        return None
    first, dash, last = (part.strip() for part in spec.partition("-"))
    if not sep or not dash or (first and not first.isdigit()) or (last and not last.isdigit()) or not (first or last):
        raise RangeNotSatisfiable()
    if size <= 0:
        raise RangeNotSatisfiable()
    if not first:  # the last N bytes
        n = int(last)
        if n == 0:
            raise RangeNotSatisfiable()
        return max(0, size - n), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        raise RangeNotSatisfiable()
    return start, end


def _if_range_matches(request, etag: str, last_modified: int | None) -> bool:
    value = request.headers.get("If-Range")
    if not value:
        return True
    value = value.strip()
    if value.startswith('"') or value.startswith("W/"):
        return value == etag  # a strong comparison: weak tags never match
    stamp = parse_http_date_safe(value)
    return stamp is not None and last_modified is not None and stamp == last_modified


def _etag(run: Run, what: str, size: int | None) -> str:
    tag = run.archive_sha256[:40] or f"run{run.pk}"
    return f'"{tag}-m{size}"' if what == MANIFEST else f'"{tag}"'


# --- the response ---------------------------------------------------------------------------
def _chunks(stream: BinaryIO, length: int | None) -> Iterator[bytes]:
    remaining = length
    while remaining is None or remaining > 0:
        data = stream.read(CHUNK if remaining is None else min(CHUNK, remaining))
        if not data:
            if remaining:
                # The copy ended early: cut the response, so the client sees an incomplete
                # download (Content-Length) instead of a complete-looking short file.
                raise OSError("The stored copy ended before its announced size.")
            return
        if remaining is not None:
            remaining -= len(data)
        yield data


class _Bounded:
    """The first *length* bytes of a file (a range that does not reach the end)."""

    def __init__(self, fh: BinaryIO, length: int) -> None:
        self._fh = fh
        self._left = length

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        n = self._left if n is None or n < 0 else min(n, self._left)
        data = self._fh.read(n)
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._fh.close()


def _content_type(name: str, what: str) -> str:
    if what == MANIFEST:
        return "application/json"
    return "application/octet-stream" if name.endswith(".age") else "application/zstd"


def serve(request, run: Run, what: str = ARCHIVE):
    """The response for a download of *run*'s archive (or manifest): 200, 206 or 416;
    404 when no copy is left, 503 (a page) when copies exist but cannot be read now."""
    try:
        source = find_source(run, what)
    except DownloadUnavailable as exc:
        log.warning("Run %s: no copy of the %s could be read: %s", run.pk, what, exc)
        response = render(request, "jobs/download_unavailable.html", {"run": run, "problem": str(exc)}, status=503)
        response["Retry-After"] = "60"
        return response
    try:
        return _response(request, run, what, source)
    except BaseException:
        source.close()
        raise


def _response(request, run: Run, what: str, source: Source):
    size = source.size
    etag = _etag(run, what, size)
    last_modified = int(run.finished_at.timestamp()) if run.finished_at else None
    span = None
    if size is not None and _if_range_matches(request, etag, last_modified):
        try:
            span = parse_range(request.headers.get("Range"), size)
        except RangeNotSatisfiable:
            source.close()
            response = HttpResponse(status=416)
            response["Content-Range"] = f"bytes */{size}"
            response["Accept-Ranges"] = "bytes"
            return response
    start, end = span if span else (0, (size - 1) if size is not None else None)
    length = (end - start + 1) if end is not None else None

    if request.method == "HEAD":
        source.close()
        response = HttpResponse(status=206 if span else 200)
    elif source.path is not None:
        fh = source.open(start)
        body = fh if end is None or size is None or end == size - 1 else _Bounded(fh, length)
        response = FileResponse(body, status=206 if span else 200)
        response.block_size = CHUNK
    else:
        stream = source.open(start)
        response = StreamingHttpResponse(_chunks(stream, length), status=206 if span else 200)
        response._resource_closers.append(stream.close)
    response["Content-Type"] = _content_type(source.name, what)
    response["Content-Disposition"] = content_disposition_header(True, source.name)
    response["Accept-Ranges"] = "bytes" if size is not None else "none"
    response["ETag"] = etag
    response["X-Content-Type-Options"] = "nosniff"
    if last_modified is not None:
        response["Last-Modified"] = http_date(last_modified)
    if length is not None:
        response["Content-Length"] = str(length)
    if span:
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
    if request.method != "HEAD":
        audit.record(
            request,
            audit.DOWNLOAD,
            run,
            file=what,
            copy=source.where,
            bytes=length,
            range=f"bytes {start}-{end}" if span else "whole file",
        )
        log.info(
            "Run %s: %s downloaded from %s by %s (%s)",
            run.pk,
            what,
            source.where,
            getattr(request.user, "get_username", lambda: "?")(),
            f"bytes {start}-{end}" if span else "whole file",
        )
    return response


__all__ = [
    "ARCHIVE",
    "MANIFEST",
    "DownloadUnavailable",
    "NotAvailable",
    "available",
    "find_source",
    "parse_range",
    "readable_uploads",
    "serve",
]
