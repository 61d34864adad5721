"""S3-compatible object storage: Amazon S3, MinIO, Ceph RGW, Garage, Wasabi, … (boto3).

Objects are ``<prefix>/<folder>/<name>`` in one bucket; a "folder" is a key prefix and
listing is one level of it (``Delimiter="/"``: keys deeper down are not listed).

**Why boto3 directly, not django-storages' S3 backend.** django-storages' ``S3Storage``
is a Django ``Storage`` for media files: ``save()`` goes through boto3's managed transfer
(threads, its own part size, no per-part checksum of ours), names are chosen by
``get_available_name`` (a name that exists is renamed or overwritten depending on a
global setting), ``listdir`` returns names without sizes, and the client is built from
``AWS_*`` settings with no seam for connecting to an address we checked. Everything
the contract needs (our part loop with Content-MD5, an abort on every failure, the HEAD
check, cancel and progress between parts, pinned addresses, typed errors) would bypass
it, so it would be a dependency for a few lines of client construction.

**Nothing partial ever looks complete.** An S3 object appears only when its PUT (or
``CompleteMultipartUpload``) succeeded, and then it is complete and replaces any object
of that name atomically, so no temporary name is needed and ``replace`` is natural.
Files up to :attr:`S3Session.multipart_threshold` are one PUT; larger ones a multipart
upload whose parts are streamed from the file (:class:`_FileSlice`, constant memory);
the multipart upload is **aborted on any failure** (an error, a cut connection,
cancellation, a local checksum mismatch), so no invisible, billed parts stay behind.
:meth:`S3Session.remove_partials` aborts those a killed worker left.

**Checksums that work with non-AWS stores.** botocore 1.36 (January 2025) made
``request_checksum_calculation`` and ``response_checksum_validation`` default to
``when_supported``: every PutObject/UploadPart then carries a CRC trailer in an
``aws-chunked`` body (``x-amz-checksum-crc32``, ``x-amz-sdk-checksum-algorithm``), which
MinIO before 2025, Ceph RGW before Squid, Garage, Backblaze B2 and others reject or
mis-store. We set both to ``when_required`` and instead send ``Content-MD5`` with every
PUT and part, the one integrity header every S3 implementation verifies (a store that
received other bytes refuses the request with ``BadDigest``). The local file's SHA-256
is checked against the expected one *before* the object is committed (before the PUT,
or before ``CompleteMultipartUpload``). After completion a HEAD checks the size and the
ETag, which the store computes itself: the MD5 of the object for a single PUT,
``md5(md5(part 1) + … + md5(part n))-n`` for a multipart upload. Where the ETag is not an
MD5 (SSE-KMS, SSE-C) only the size is compared: the per-request Content-MD5 was then
the store's check. A mismatch deletes the object and raises :class:`TransientError`.
We never call ``DeleteObjects`` (it needs a checksum header some stores want as MD5 and
botocore now sends as CRC).

**Addresses.** The endpoint's host (and, for virtual-hosted addressing,
``<bucket>.<host>``) is resolved once per session through :func:`netguard.resolve`,
which refuses loopback, link-local and metadata addresses. boto3 connects by name, so
the session swaps the connection classes of the client's urllib3 pools for ones that
connect to the address netguard returned while TLS still checks the configured name
(:func:`_pin_client`; a name that rebinds after the check is never looked up again, and
any other host the client would connect to is resolved and checked the same way). The
residual risks: this uses a private seam of botocore (``client._endpoint.http_session``
and its ``_pool_classes_by_scheme``), so a botocore upgrade that moves it makes sessions
fail closed with a clear error (the tests pin the behaviour); and an HTTP(S) proxy set in
the environment is connected to (and checked) instead of the store, which then reaches
whatever the proxy connects to.

**Timeouts** come from botocore's Config: ``connect_timeout``, ``read_timeout`` (each
socket read and write) and at most one retry per request (``total_max_attempts=2``),
so an unreachable store fails within about twice the destination's timeout.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import logging
import math
import os
import re
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

from django import forms
from django.utils.translation import gettext_lazy as _

from destinations import netguard
from destinations.backends.base import (
    COPY_CHUNK,
    DELETE,
    LIST,
    READ,
    REPLACE,
    Backend,
    Cancelled,
    Conf,
    ConfError,
    DestinationError,
    HashingReader,
    MappedStream,
    NotFoundError,
    PermanentError,
    RemoteFile,
    Session,
    TestResult,
    TransientError,
    already_exists,
    check_folder,
    check_local_size,
    check_name,
    check_read,
    is_partial,
    mapped_errors,
)
from destinations.backends.net import check_port, is_certificate_error
from destinations.kindforms import KindForm

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MAX_PARTS = 10_000  # S3's limit on parts per multipart upload
MIN_PART = 5 * MiB  # S3's minimum size of every part but the last

_REGION = re.compile(r"\A[a-z0-9][a-z0-9-]{0,49}\Z")
_BUCKET = re.compile(r"\A[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
_IPV4 = re.compile(r"\A\d+\.\d+\.\d+\.\d+\Z")
_ACCESS_KEY = re.compile(r"\A[\x21-\x7e]{1,128}\Z")
_MD5_ETAG = re.compile(r"\A[0-9a-f]{32}(-\d+)?\Z")
_CODE = re.compile(r"\A[A-Za-z0-9.]{1,64}\Z")


# --- settings ------------------------------------------------------------------------
@dataclass(frozen=True)
class S3Conf(Conf):
    #: ``https://s3.example.com``, ``http://nas.local:9000``; blank is Amazon S3 in *region*.
    endpoint_url: str = ""
    region: str = ""
    bucket: str = ""
    #: Key prefix inside the bucket ("" or ``a/b``); backups go to ``<prefix>/backupsite/<job>/``.
    prefix: str = ""
    access_key: str = ""
    #: ``https://host/bucket/key`` instead of ``https://bucket.host/key`` (MinIO, Ceph, Garage).
    path_style: bool = False

    def __post_init__(self) -> None:
        for name in ("endpoint_url", "region", "bucket", "prefix", "access_key"):
            if not isinstance(getattr(self, name), str):
                raise ConfError("This value must be text.", name)
        if not isinstance(self.path_style, bool):
            raise ConfError("“Path-style addressing” must be true or false.", "path_style")
        region = self.region.strip()
        if region and not _REGION.match(region):
            raise ConfError("A region looks like eu-central-1 (lower-case letters, digits and “-”).", "region")
        object.__setattr__(self, "region", region)
        endpoint = self.endpoint_url.strip().rstrip("/")
        if endpoint:
            _split_endpoint(endpoint)  # raises ConfError
        object.__setattr__(self, "endpoint_url", endpoint)
        bucket = self.bucket.strip()
        if not bucket:
            raise ConfError("The bucket is required.", "bucket")
        if not _BUCKET.match(bucket) or ".." in bucket or _IPV4.match(bucket):
            raise ConfError(
                "A bucket name has 3–63 lower-case letters, digits, dots and hyphens, "
                "and starts and ends with a letter or digit.",
                "bucket",
            )
        object.__setattr__(self, "bucket", bucket)
        prefix = "/".join(p for p in self.prefix.strip().split("/") if p)
        if prefix:
            try:
                check_folder(prefix)
            except PermanentError:
                raise ConfError(
                    "The folder inside the bucket is made of plain names joined by “/” "
                    "(no “.”, “..”, hidden names or control characters).",
                    "prefix",
                ) from None
        object.__setattr__(self, "prefix", prefix)
        access_key = self.access_key.strip()
        if not access_key:
            raise ConfError("The access key is required.", "access_key")
        if not _ACCESS_KEY.match(access_key):
            raise ConfError("The access key contains characters that are not allowed.", "access_key")
        object.__setattr__(self, "access_key", access_key)

    # --- derived ------------------------------------------------------------------
    @property
    def effective_region(self) -> str:
        return self.region or "us-east-1"

    @property
    def effective_endpoint(self) -> str:
        return self.endpoint_url or f"https://s3.{self.effective_region}.amazonaws.com"

    @property
    def scheme_host_port(self) -> tuple[str, str, int]:
        return _split_endpoint(self.effective_endpoint)

    @property
    def bucket_host(self) -> str:
        """The host name requests go to (``<bucket>.<host>`` unless path-style)."""
        _, host, _ = self.scheme_host_port
        return host if self.path_style else f"{self.bucket}.{host}"


def _split_endpoint(endpoint: str) -> tuple[str, str, int]:
    field = "endpoint_url"
    if any(ord(c) < 32 or ord(c) == 127 or c.isspace() for c in endpoint):
        raise ConfError("The endpoint URL contains characters that are not allowed.", field)
    parts = urlsplit(endpoint)
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise ConfError("The endpoint URL starts with https:// (or http:// on a trusted network).", field)
    if parts.username or parts.password or "@" in parts.netloc:
        raise ConfError("Put the keys in their own fields, not in the endpoint URL.", field)
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfError("The endpoint URL is only the address (https://host:port), without a path.", field)
    try:
        port = parts.port
    except ValueError:
        raise ConfError("The port must be a number between 1 and 65535.", field) from None
    host = netguard.check_host(parts.hostname or "", field)
    return scheme, host, check_port(port, 443 if scheme == "https" else 80, field)


# --- connecting to checked addresses --------------------------------------------------
class _Pins:
    """Host name → the address netguard checked, resolved once per session."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._addresses: dict[tuple[str, int], str] = {}
        self._lock = threading.Lock()

    def address(self, host: str, port: int) -> str:
        key = (host.rstrip(".").lower(), int(port))
        with self._lock:
            if key not in self._addresses:
                self._addresses[key] = netguard.resolve(key[0], key[1], timeout=self.timeout).address
            return self._addresses[key]


class _PinnedConnection:
    """Mixed into botocore's urllib3 connection classes: open the TCP connection to the
    checked address; everything after (TLS server name and certificate check, the
    Host header) still uses the configured name."""

    _pins: _Pins

    def _new_conn(self):
        name = self._dns_host
        self._dns_host = self._pins.address(name, self.port)
        try:
            return super()._new_conn()
        finally:
            self._dns_host = name


def _pin_client(client, pins: _Pins) -> None:
    try:
        http_session = client._endpoint.http_session
        classes = http_session._pool_classes_by_scheme
        manager = http_session._manager
    except AttributeError:
        raise PermanentError(
            "This version of botocore cannot be made to connect to the checked address; "
            "S3 destinations are disabled until backupsite supports it."
        ) from None
    for scheme, pool_class in list(classes.items()):
        connection = type(
            f"Pinned{pool_class.ConnectionCls.__name__}", (_PinnedConnection, pool_class.ConnectionCls), {"_pins": pins}
        )
        classes[scheme] = type(f"Pinned{pool_class.__name__}", (pool_class,), {"ConnectionCls": connection})
    manager.pool_classes_by_scheme = classes


# --- errors ---------------------------------------------------------------------------
_AUTH_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "InvalidSecurity",
    "AccountProblem",
}
_DENIED_CODES = {"AccessDenied", "AllAccessDisabled", "403", "Forbidden"}
_FULL_CODES = {"QuotaExceeded", "XMinioStorageFull", "StorageFull", "InsufficientStorage", "EntityTooLarge"}
_DIGEST_CODES = {"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch", "IncompleteBody"}
_BUSY_CODES = {
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "OperationAborted",
    "XMinioServerNotInitialized",
    "500",
    "502",
    "503",
    "504",
}


def _mapper(conf: S3Conf, timeout: float, what: str):
    from botocore import exceptions as bx

    host = conf.scheme_host_port[1]

    def map_error(exc: BaseException) -> DestinationError | None:
        if isinstance(exc, bx.ClientError):
            error = exc.response.get("Error", {}) if isinstance(exc.response, dict) else {}
            code = str(error.get("Code") or "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") if exc.response else None
            code = code if _CODE.match(code) else str(status or "error")
            if code in _AUTH_CODES:
                return PermanentError(f"The S3 store refused the access key or the secret key ({code}) while {what}.")
            if code in _DENIED_CODES:
                return PermanentError(
                    f"Access denied while {what}: the access key or the secret key is wrong, "
                    f"or this key may not use the bucket {conf.bucket}."
                )
            if code in ("NoSuchBucket",):
                return NotFoundError(f"The bucket {conf.bucket} does not exist at {host}.")
            if code in ("NoSuchKey", "404", "NotFound"):
                return NotFoundError(f"Not found while {what}.")
            if code == "NoSuchUpload":
                return TransientError(f"The multipart upload was cancelled at the store while {what}.")
            if code in _FULL_CODES:
                return PermanentError(f"The S3 store is full or the quota is exceeded ({code}) while {what}.")
            if code in _DIGEST_CODES:
                return TransientError(f"The S3 store received damaged data ({code}) while {what}; it refused it.")
            if code in ("PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"):
                return PermanentError(f"The bucket {conf.bucket} is in another region than “{conf.effective_region}”.")
            if code in ("RequestTimeTooSkewed",):
                return PermanentError("This server's clock differs too much from the S3 store's: fix the time.")
            if code in _BUSY_CODES or (isinstance(status, int) and status >= 500):
                return TransientError(f"The S3 store is busy or failed ({code}) while {what}; retrying may help.")
            return PermanentError(f"The S3 store refused the request ({code}) while {what}.")
        if isinstance(exc, (bx.ConnectTimeoutError, bx.ReadTimeoutError)):
            return TransientError(f"The S3 store at {host} did not answer within {timeout:g} seconds while {what}.")
        if isinstance(exc, bx.SSLError) and is_certificate_error(exc):
            return PermanentError(f"The TLS certificate of {host} is not trusted (or TLS failed) while {what}.")
        if isinstance(exc, bx.EndpointConnectionError):
            return TransientError(f"Could not connect to the S3 store at {host} while {what}.")
        if isinstance(exc, (bx.ConnectionError, bx.HTTPClientError, bx.ResponseStreamingError, bx.IncompleteReadError)):
            return TransientError(f"The connection to the S3 store at {host} was lost while {what}.")
        if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
            return PermanentError("The access key or the secret key is missing.")
        if isinstance(exc, bx.ParamValidationError):
            return PermanentError(f"backupsite built an invalid S3 request while {what}.")
        if isinstance(exc, bx.BotoCoreError):
            return TransientError(f"The S3 request failed ({type(exc).__name__}) while {what}.")
        if isinstance(exc, OSError):
            return TransientError(f"{exc.strerror or type(exc).__name__} while {what}.")
        return None

    return map_error


# --- streams ----------------------------------------------------------------------------
class _FileSlice(io.RawIOBase):
    """A seekable, read-only view of ``[start, start + length)`` of an open file (one
    part of a multipart upload), read with ``pread`` so parts share one descriptor.
    botocore reads it to sign the payload (plain HTTP), seeks back, then sends it."""

    def __init__(self, fd: int, start: int, length: int) -> None:
        super().__init__()
        self._fd, self._start, self._length, self._pos = fd, start, length, 0

    def __repr__(self) -> str:
        return f"<part of {self._length} bytes at {self._start}>"

    def __len__(self) -> int:
        return self._length

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, min(self._length, base + offset))
        return self._pos

    def read(self, n: int = -1) -> bytes:
        left = self._length - self._pos
        n = left if n is None or n < 0 else min(n, left)
        if n <= 0:
            return b""
        data = os.pread(self._fd, n, self._start + self._pos)
        self._pos += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


# --- the session --------------------------------------------------------------------------
class S3Session(Session):
    #: Files up to this size are one PUT; larger ones a multipart upload of parts this size
    #: (bigger when a file would need more than 10,000 parts).
    multipart_threshold = 32 * MiB
    part_size = 32 * MiB

    def __init__(self, backend: S3Backend) -> None:
        super().__init__(backend)
        import boto3
        from botocore.config import Config

        conf: S3Conf = backend.conf
        secret = backend._secrets.get("secret_key") or ""
        if not secret:
            raise PermanentError("The secret key is missing: enter it in the destination's settings.")
        self.conf = conf
        self.timeout = backend.timeout
        scheme, host, port = conf.scheme_host_port
        self._pins = _Pins(self.timeout)
        self._map = lambda what: _mapper(conf, self.timeout, what)
        # Resolve (and check) before anything is sent, so a forbidden address fails here.
        self._pins.address(conf.bucket_host, port)
        config = Config(
            region_name=conf.effective_region,
            signature_version="s3v4",
            s3={"addressing_style": "path" if conf.path_style else "virtual"},
            connect_timeout=self.timeout,
            read_timeout=self.timeout,
            retries={"mode": "standard", "total_max_attempts": 2},
            tcp_keepalive=True,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        with mapped_errors("connecting", self._map("connecting")):
            self.client = boto3.session.Session().client(
                "s3",
                endpoint_url=f"{scheme}://{_host_for_url(host)}:{port}",
                aws_access_key_id=conf.access_key,
                aws_secret_access_key=secret,
                config=config,
            )
        _pin_client(self.client, self._pins)

    def __repr__(self) -> str:
        return f"<S3Session {self.backend.describe_conf(self.conf)}>"

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()

    # --- keys -----------------------------------------------------------------------
    def key(self, folder: str, name: str | None = None) -> str:
        parts = [p for p in (self.conf.prefix, check_folder(folder)) if p]
        if name is not None:
            parts.append(name)
        return "/".join(parts)

    def folder_prefix(self, folder: str) -> str:
        key = self.key(folder)
        return f"{key}/" if key else ""

    def _head(self, key: str, what: str) -> dict | None:
        try:
            with mapped_errors(what, self._map(what)):
                return self.client.head_object(Bucket=self.conf.bucket, Key=key)
        except NotFoundError:
            return None

    # --- writing --------------------------------------------------------------------
    def _upload(self, item, folder, *, progress, cancel, replace):
        name, expected_size, expected_sha256, path = item.name, item.size, item.sha256, item.local_path
        key = self.key(folder, name)
        check_local_size(item)
        if not replace and self._head(key, f"checking whether {name} exists") is not None:
            raise already_exists(name)
        metadata = {"backupsite-sha256": expected_sha256} if expected_sha256 else {}
        fd = os.open(path, os.O_RDONLY)
        try:
            if expected_size <= self.multipart_threshold:
                etag = self._put(fd, path, key, name, expected_size, expected_sha256, metadata, cancel)
            else:
                etag = self._multipart(fd, path, key, name, expected_size, expected_sha256, metadata, progress, cancel)
        finally:
            os.close(fd)
        self._verify(key, name, expected_size, etag)
        if progress:
            progress(expected_size)

    def _put(self, fd, path, key, name, size, expected_sha256, metadata, cancel) -> str:
        md5 = hashlib.md5(usedforsecurity=False)
        with HashingReader(path, cancel=cancel) as reader:
            while chunk := reader.read(COPY_CHUNK):
                md5.update(chunk)
        check_read(reader, name, size, expected_sha256)
        what = f"uploading {name}"
        with mapped_errors(what, self._map(what)):
            self.client.put_object(
                Bucket=self.conf.bucket,
                Key=key,
                Body=_FileSlice(fd, 0, size),
                ContentLength=size,
                ContentMD5=_b64(md5.digest()),
                ContentType="application/octet-stream",
                Metadata=metadata,
            )
        return md5.hexdigest()

    def _part_size(self, size: int) -> int:
        needed = math.ceil(size / MAX_PARTS / MiB) * MiB
        return max(self.part_size, needed, MIN_PART)

    def _multipart(self, fd, path, key, name, size, expected_sha256, metadata, progress, cancel) -> str:
        what = f"uploading {name}"
        bucket = self.conf.bucket
        with mapped_errors(what, self._map(what)):
            upload_id = self.client.create_multipart_upload(
                Bucket=bucket, Key=key, ContentType="application/octet-stream", Metadata=metadata
            )["UploadId"]
        try:
            part_size = self._part_size(size)
            parts, digests, offset, number = [], [], 0, 1
            with HashingReader(path, cancel=cancel) as reader:
                while offset < size:
                    length = min(part_size, size - offset)
                    md5 = hashlib.md5(usedforsecurity=False)
                    got = 0
                    while got < length and (chunk := reader.read(min(COPY_CHUNK, length - got))):
                        md5.update(chunk)
                        got += len(chunk)
                    if got < length:
                        break  # the file shrank: the size check below says so
                    with mapped_errors(what, self._map(what)):
                        self.client.upload_part(
                            Bucket=bucket,
                            Key=key,
                            UploadId=upload_id,
                            PartNumber=number,
                            Body=_FileSlice(fd, offset, length),
                            ContentLength=length,
                            ContentMD5=_b64(md5.digest()),
                        )
                    parts.append({"PartNumber": number, "ETag": f'"{md5.hexdigest()}"'})
                    digests.append(md5.digest())
                    offset += length
                    number += 1
                    if progress:
                        progress(offset)
                    if cancel is not None and cancel():
                        raise Cancelled()
                reader.finish()
            # Commit only what matches: the whole local file was read and hashed by now.
            check_read(reader, name, size, expected_sha256)
            with mapped_errors(what, self._map(what)):
                self.client.complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
        except BaseException:
            self._abort(key, upload_id)
            raise
        return f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{len(digests)}"

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.conf.bucket, Key=key, UploadId=upload_id)
        except Exception as exc:  # noqa: BLE001 - the original error matters more; remove_partials retries
            log.warning("Could not abort an incomplete S3 multipart upload (%s); retried later.", type(exc).__name__)

    def _verify(self, key: str, name: str, size: int, etag: str) -> None:
        """HEAD after completion: the size, and the ETag where it is an MD5 (the store
        computed it from what it stored)."""
        head = self._head(key, f"checking {name} after the upload")
        problem = None
        if head is None:
            problem = f"{name} is not at the destination after its upload."
        elif int(head.get("ContentLength", -1)) != size:
            problem = f"Size mismatch after uploading {name}: {head.get('ContentLength')} bytes instead of {size}."
        elif _etag_comparable(head) and head["ETag"].strip('"').lower() != etag:
            problem = f"Checksum mismatch after uploading {name}: the store holds other bytes than were sent."
        if problem:
            if head is not None:
                with contextlib.suppress(DestinationError), mapped_errors("deleting", self._map("deleting")):
                    self.client.delete_object(Bucket=self.conf.bucket, Key=key)
            raise TransientError(problem)

    def delete(self, folder, name):
        check_name(name)
        what = f"deleting {name}"
        with mapped_errors(what, self._map(what)):
            self.client.delete_object(Bucket=self.conf.bucket, Key=self.key(folder, name))

    def remove_partials(self, folder):
        """Abort incomplete multipart uploads of keys directly in *folder* (a killed
        worker's; they are invisible but billed), and delete leftover temporary objects."""
        prefix = self.folder_prefix(folder)
        removed = []
        what = "cleaning up incomplete uploads"
        try:
            with mapped_errors(what, self._map(what)):
                paginator = self.client.get_paginator("list_multipart_uploads")
                for page in paginator.paginate(Bucket=self.conf.bucket, Prefix=prefix, Delimiter="/"):
                    for upload in page.get("Uploads", []) or []:
                        name = upload["Key"][len(prefix) :]
                        if name and "/" not in name:
                            self.client.abort_multipart_upload(
                                Bucket=self.conf.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                            )
                            removed.append(f"{name} (incomplete upload)")
        except PermanentError as exc:
            # Housekeeping only: a key without s3:ListBucketMultipartUploads can still back up.
            if isinstance(exc, NotFoundError):
                raise
            log.info("Incomplete multipart uploads were not cleaned up: %s", exc.message)
        for remote in self._list(folder, hidden=True):
            if is_partial(remote.name):
                with mapped_errors(what, self._map(what)):
                    self.client.delete_object(Bucket=self.conf.bucket, Key=self.key(folder, remote.name))
                removed.append(remote.name)
        return removed

    # --- reading --------------------------------------------------------------------
    def _list(self, folder: str, *, hidden: bool) -> list[RemoteFile]:
        prefix = self.folder_prefix(folder)
        files = []
        with mapped_errors("listing the folder", self._map("listing the folder")):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.conf.bucket, Prefix=prefix, Delimiter="/"):
                for item in page.get("Contents", []) or []:
                    name = item["Key"][len(prefix) :]
                    if not name or "/" in name or (name.startswith(".") and not hidden):
                        continue
                    modified = item.get("LastModified")
                    files.append(RemoteFile(name, int(item["Size"]), modified.timestamp() if modified else None))
        return sorted(files, key=lambda f: f.name)

    def list(self, folder):
        check_folder(folder)
        return self._list(folder, hidden=False)

    def stat(self, folder, name):
        check_name(name)
        head = self._head(self.key(folder, name), f"reading the size of {name}")
        if head is None:
            raise NotFoundError(f"{name} is not at this destination.")
        modified = head.get("LastModified")
        return RemoteFile(name, int(head["ContentLength"]), modified.timestamp() if modified else None)

    def open(self, folder, name, offset=0):
        check_name(name)
        if not isinstance(offset, int) or offset < 0:
            raise PermanentError("Invalid offset.")
        kwargs = {"Bucket": self.conf.bucket, "Key": self.key(folder, name)}
        if offset:
            kwargs["Range"] = f"bytes={offset}-"
        what = f"reading {name}"
        try:
            with mapped_errors(what, self._map(what)):
                response = self.client.get_object(**kwargs)
        except NotFoundError:
            raise NotFoundError(f"{name} is not at this destination.") from None
        except PermanentError as exc:
            if offset and "InvalidRange" in exc.message and self.stat(folder, name).size == offset:
                return io.BytesIO(b"")
            raise
        return MappedStream(response["Body"], self._map(what))  # botocore's StreamingBody


def _etag_comparable(head: dict) -> bool:
    """Whether the ETag is the MD5 the store computed (not for SSE-KMS / SSE-C objects)."""
    if head.get("SSECustomerAlgorithm") or str(head.get("ServerSideEncryption", "")).startswith("aws:kms"):
        return False
    return bool(_MD5_ETAG.match(str(head.get("ETag", "")).strip('"').lower()))


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# --- the backend ----------------------------------------------------------------------------
class S3Backend(Backend):
    kind = "s3"
    label = _("S3-compatible storage")
    help_text = _("A bucket at Amazon S3 or an S3-compatible store (MinIO, Ceph, Garage, Wasabi, …).")
    conf_class = S3Conf
    secret_fields = ("secret_key",)
    # Free space: S3 has no notion of it.
    capabilities = frozenset({LIST, READ, DELETE, REPLACE})
    form_class_path = "destinations.backends.s3.S3Form"

    @classmethod
    def describe_conf(cls, conf: S3Conf) -> str:
        where = f"{conf.bucket}/{conf.prefix}" if conf.prefix else conf.bucket
        return f"S3: {where} at {conf.scheme_host_port[1]}"

    def describe_folder(self, folder: str) -> str:
        key = "/".join(p for p in (self.conf.prefix, folder) if p)
        return f"s3://{self.conf.bucket}/{key} ({self.conf.scheme_host_port[1]})"

    def session(self) -> S3Session:
        return S3Session(self)

    def test(self) -> TestResult:
        result = super().test()
        if result.ok:
            scheme, host, port = self.conf.scheme_host_port
            result.details += [
                ("Endpoint", f"{scheme}://{_host_for_url(host)}:{port}"),
                ("Bucket", self.conf.bucket),
                ("Addressing", "path-style" if self.conf.path_style else "virtual-hosted"),
                ("Integrity", "Content-MD5 on every request; size and ETag checked after each upload"),
                ("Free space", "not reported by S3 stores"),
            ]
        return result


class S3Form(KindForm):
    backend_class = S3Backend
    secret_fields = S3Backend.secret_fields

    endpoint_url = forms.CharField(
        label=_("Endpoint URL"),
        required=False,
        max_length=300,
        help_text=_(
            "The store's address, e.g. https://s3.example.com or http://nas.local:9000 (MinIO). "
            "Leave blank for Amazon S3. With http:// the backups travel unencrypted "
            "(unless the job encrypts them); the keys never do."
        ),
    )
    region = forms.CharField(
        label=_("Region"),
        required=False,
        max_length=50,
        help_text=_("e.g. eu-central-1. Self-hosted stores usually accept us-east-1, which is used when blank."),
    )
    bucket = forms.CharField(label=_("Bucket"), max_length=63, help_text=_("The bucket must exist already."))
    prefix = forms.CharField(
        label=_("Folder inside the bucket"),
        required=False,
        max_length=500,
        help_text=_("Optional, e.g. office/server1. Backups go to <folder>/backupsite/<job>/."),
    )
    access_key = forms.CharField(label=_("Access key"), max_length=128)
    secret_key = forms.CharField(
        label=_("Secret key"), max_length=256, help_text=_("Stored encrypted, never shown again.")
    )
    path_style = forms.BooleanField(
        label=_("Path-style addressing"),
        required=False,
        help_text=_(
            "Tick for MinIO, Ceph and Garage unless they serve buckets as sub-domains "
            "(https://host/bucket/… instead of https://bucket.host/…)."
        ),
    )


__all__ = ["S3Backend", "S3Conf", "S3Form", "S3Session"]
