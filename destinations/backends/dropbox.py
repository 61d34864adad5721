"""Dropbox (the official ``dropbox`` SDK): app key, app secret and a refresh token.

Backups go to ``/backupsite/<job>/`` in the app's folder (or the Dropbox root, for apps
with full access).

* **Tokens.** Dropbox access tokens live four hours; the session holds only the refresh
  token and the SDK exchanges it for short-lived access tokens, before they expire and
  again when the API answers ``expired_access_token`` in the middle of an upload (the
  request is then repeated with the new token and the upload goes on). The refresh
  token comes from the PKCE no-redirect flow (:class:`PkceAuthorization`: open the link,
  approve, paste the code), which needs no app secret; the app secret is only needed
  for refresh tokens obtained otherwise.
* **No 150 MB limit.** Every file goes up in an upload session (``upload_session/start``,
  ``append_v2`` in :attr:`DropboxSession.chunk_size` chunks, ``finish``), never with
  ``files/upload`` (limited to 150 MB): a chunk is the only part of a file in memory.
  Each call carries the content hash of its chunk (the SDK adds it), so Dropbox refuses
  a damaged chunk.
* **Nothing partial ever looks complete.** A file appears only when ``finish`` commits
  the session (``add`` without autorename, or ``overwrite`` to replace: atomic, and the
  old version stays in Dropbox's version history). The whole local file is read (size
  and SHA-256 checked against the expected ones) before ``finish`` is called, with an
  empty body; then Dropbox's content hash of the committed file (SHA-256 over the
  SHA-256 of each 4 MiB block, :class:`ContentHasher`) and its size are compared with
  ours, and a mismatch deletes it.
* **Hosts.** Dropbox's API hosts are fixed (not configured by users), so there is no
  netguard step; TLS is verified as requests does (certifi's bundle, or the one named
  by ``REQUESTS_CA_BUNDLE``). The hosts and a CA file are class attributes
  (:attr:`DropboxBackend.hosts`, ``ca_certs``) only so the tests can point the SDK at a
  local stand-in.

**Tested against a stand-in.** Dropbox's cloud cannot be reached from the test
machines: ``tests/kinds/dropbox.py`` is a local HTTPS stand-in of exactly the API calls
used here (token refresh and the PKCE code exchange, upload sessions, list, metadata,
download with Range, delete, space usage) with the semantics relied on (content hashes,
``expired_access_token``, offsets, conflicts, quota). It is not Dropbox.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import re
import secrets
from dataclasses import dataclass
from datetime import UTC
from urllib.parse import urlencode

from django import forms
from django.utils.translation import gettext_lazy as _

from destinations.backends.base import (
    ALL_CAPABILITIES,
    COPY_CHUNK,
    Backend,
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
from destinations.backends.net import is_certificate_error
from destinations.kindforms import KindForm

MiB = 1024 * 1024
BLOCK = 4 * MiB  # Dropbox's content-hash block
MAX_REQUEST = 150 * MiB  # Dropbox's limit per upload request
_APP_KEY = re.compile(r"\A[A-Za-z0-9]{4,64}\Z")

#: Dropbox's hosts (the tests point these at a stand-in).
HOSTS = {"api": "api.dropboxapi.com", "content": "content.dropboxapi.com", "www": "www.dropbox.com"}


class ContentHasher:
    """Dropbox's content hash: SHA-256 of the concatenated SHA-256 digests of every
    4 MiB block (https://www.dropbox.com/developers/reference/content-hash)."""

    def __init__(self) -> None:
        self._overall = hashlib.sha256()
        self._block = hashlib.sha256()
        self._in_block = 0

    def update(self, data) -> None:
        view = memoryview(data)
        while view:
            take = min(BLOCK - self._in_block, len(view))
            self._block.update(view[:take])
            self._in_block += take
            view = view[take:]
            if self._in_block == BLOCK:
                self._overall.update(self._block.digest())
                self._block, self._in_block = hashlib.sha256(), 0

    def hexdigest(self) -> str:
        overall = self._overall.copy()
        if self._in_block:
            overall.update(self._block.digest())
        return overall.hexdigest()


@dataclass(frozen=True)
class DropboxConf(Conf):
    app_key: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.app_key, str):
            raise ConfError("The app key must be text.", "app_key")
        key = self.app_key.strip()
        if not key:
            raise ConfError("The app key is required (from the app's page in Dropbox's App Console).", "app_key")
        if not _APP_KEY.match(key):
            raise ConfError("An app key is made of letters and digits only.", "app_key")
        object.__setattr__(self, "app_key", key)


# --- obtaining a refresh token -----------------------------------------------------------
class PkceAuthorization:
    """The PKCE "no redirect" flow, for the page that obtains a refresh token:

    1. ``auth = PkceAuthorization(app_key)``; show ``auth.authorize_url()`` as a link and
       keep ``auth.code_verifier`` server-side (the session) until step 2: it is the
       proof that the code was asked for here, never shown, never logged;
    2. the administrator approves the app at Dropbox and pastes the code Dropbox shows;
       ``PkceAuthorization(app_key, code_verifier=kept).finish(code)`` returns the
       refresh token (a secret: store it as the destination's ``refresh_token``).
    """

    def __init__(self, app_key: str, code_verifier: str | None = None) -> None:
        self.app_key = DropboxConf(app_key=app_key).app_key
        self.code_verifier = code_verifier or secrets.token_urlsafe(64)[:128]

    def __repr__(self) -> str:
        return f"<PkceAuthorization app_key={self.app_key}>"

    @property
    def code_challenge(self) -> str:
        digest = hashlib.sha256(self.code_verifier.encode("ascii")).digest()
        return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")

    def authorize_url(self) -> str:
        params = {
            "client_id": self.app_key,
            "response_type": "code",
            "token_access_type": "offline",  # a refresh token, not only a 4-hour access token
            "code_challenge": self.code_challenge,
            "code_challenge_method": "S256",
        }
        return f"https://{DropboxBackend.hosts['www']}/oauth2/authorize?{urlencode(params)}"

    def finish(self, code: str, *, timeout: float = 30) -> str:
        import requests

        code = (code or "").strip()
        if not code or len(code) > 200 or any(c.isspace() for c in code):
            raise PermanentError("Paste the code Dropbox showed after you allowed access.")
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "client_id": self.app_key,
            "code_verifier": self.code_verifier,
        }
        session = _http_session()
        try:
            response = session.post(f"https://{DropboxBackend.hosts['api']}/oauth2/token", data=data, timeout=timeout)
        except requests.exceptions.Timeout:
            raise TransientError(f"Dropbox did not answer within {timeout:g} seconds.") from None
        except requests.exceptions.RequestException:
            raise TransientError("Could not reach Dropbox.") from None
        finally:
            session.close()
        if response.status_code >= 500:
            raise TransientError("Dropbox failed to answer; try again.")
        try:
            token = response.json().get("refresh_token") if response.status_code == 200 else None
        except ValueError:
            token = None
        if not token:
            raise PermanentError(
                "Dropbox did not accept this code (it is valid once, for a few minutes, and only with the "
                "link it came from): open the link again and paste the new code."
            )
        return token


def _read_chunk(reader: HashingReader, size: int) -> bytes:
    """*size* bytes (fewer at the end), read in pieces so cancellation is polled often."""
    buffer = bytearray()
    while len(buffer) < size and (piece := reader.read(min(COPY_CHUNK, size - len(buffer)))):
        buffer += piece
    return bytes(buffer)


def _http_session():
    import requests

    session = requests.Session()
    if DropboxBackend.ca_certs:  # the tests' stand-in: its CA only, whatever the environment says
        session.verify = DropboxBackend.ca_certs
        session.trust_env = False
    return session


# --- errors ------------------------------------------------------------------------------
def _tags(error) -> list[str]:
    """The nested union tags of a Dropbox API error: ``["path", "conflict", "file"]``."""
    tags = []
    for _depth in range(5):
        tag = getattr(error, "_tag", None)
        if not isinstance(tag, str):
            break
        tags.append(tag)
        error = getattr(error, "_value", None)
    return tags


def _mapper(timeout: float, what: str):
    def map_error(exc: BaseException) -> DestinationError | None:
        import requests
        from dropbox import exceptions as dx
        from dropbox.oauth import BadInputException

        if isinstance(exc, dx.ApiError):
            tags = _tags(exc.error)
            if (tags and tags[0] == "lookup_failed") or {"incorrect_offset", "closed", "not_closed"} & set(tags):
                return TransientError(f"The Dropbox upload session was lost while {what}; retrying starts again.")
            if "not_found" in tags or "not_file" in tags:
                return NotFoundError(f"Not found in Dropbox while {what}.")
            if {"insufficient_space", "team_folder_insufficient_space", "member_folder_insufficient_space"} & set(tags):
                return PermanentError(f"The Dropbox is full while {what}: free some space or upgrade the plan.")
            if "conflict" in tags:
                return PermanentError(
                    f"A file of that name already exists in Dropbox ({what}); it was not overwritten."
                )
            if "no_write_permission" in tags or "access_restricted" in tags:
                return PermanentError(f"The Dropbox app may not write there ({what}).")
            if "content_hash_mismatch" in tags:
                return TransientError(f"Dropbox received damaged data while {what} and refused it.")
            if {"too_many_write_operations", "upload_traffic_limit_reached"} & set(tags):
                return TransientError(f"Dropbox asks to slow down ({what}); retrying later may help.")
            return PermanentError(f"Dropbox refused the request ({'/'.join(tags) or 'error'}) while {what}.")
        if isinstance(exc, dx.AuthError):
            tags = _tags(exc.error)
            if "missing_scope" in tags:
                return PermanentError(
                    "The Dropbox app lacks a permission: tick files.content.write, files.content.read and "
                    "files.metadata.read in the App Console, then get a new refresh token."
                )
            if "expired_access_token" in tags:
                return TransientError("Dropbox refused the refreshed access token; retrying may help.")
            return PermanentError(
                "Dropbox refused the refresh token (revoked, or the app was disconnected): get a new refresh token."
            )
        if isinstance(exc, dx.BadInputError):
            if what == "logging in":
                return PermanentError("Dropbox refused the app key, the app secret or the refresh token.")
            return PermanentError(f"Dropbox refused the request as invalid while {what}.")
        if isinstance(exc, (dx.RateLimitError, dx.InternalServerError)):
            return TransientError(f"Dropbox is busy or failed while {what}; retrying may help.")
        if isinstance(exc, dx.PathRootError):
            return PermanentError("The Dropbox path root is not valid for this account.")
        if isinstance(exc, dx.HttpError):
            status = getattr(exc, "status_code", 0) or 0
            if status >= 500:
                return TransientError(f"Dropbox failed ({status}) while {what}.")
            return PermanentError(f"Dropbox refused the request ({status}) while {what}.")
        if isinstance(exc, requests.exceptions.SSLError) and is_certificate_error(exc):
            return PermanentError("The TLS certificate of Dropbox is not trusted (a proxy intercepting TLS?).")
        if isinstance(exc, requests.exceptions.Timeout):
            return TransientError(f"Dropbox did not answer within {timeout:g} seconds while {what}.")
        if isinstance(exc, requests.exceptions.RequestException):
            return TransientError(f"The connection to Dropbox was lost while {what}.")
        if isinstance(exc, BadInputException):
            return PermanentError("The Dropbox settings are incomplete (app key and refresh token).")
        return None

    return map_error


class _ResponseStream(MappedStream):
    """A download's body (``requests`` response, streamed) with typed errors."""

    what = "downloading"

    def __init__(self, response, map_error) -> None:
        super().__init__(response.raw, map_error)
        self._response = response

    def _read(self, n: int | None) -> bytes:
        try:
            return self._body.read(n)
        except Exception as exc:
            import requests

            raise requests.exceptions.ConnectionError() from exc

    def _close_body(self) -> None:
        self._response.close()


# --- the session ---------------------------------------------------------------------------
class DropboxSession(Session):
    #: Bytes per upload request (a multiple of 4 MiB, below Dropbox's 150 MiB limit); the
    #: only part of a file held in memory.
    chunk_size = 32 * MiB

    def __init__(self, backend: DropboxBackend) -> None:
        super().__init__(backend)
        import dropbox
        from dropbox.session import HOST_API, HOST_CONTENT, HOST_NOTIFY

        refresh_token = backend._secrets.get("refresh_token") or ""
        if not refresh_token:
            raise PermanentError("The refresh token is missing: obtain one with the link on the destination's page.")
        self.timeout = backend.timeout
        self._map = lambda what: _mapper(self.timeout, what)
        hosts = backend.hosts

        class Client(dropbox.Dropbox):
            # The SDK binds the token host as a default argument at import time.
            def refresh_access_token(self, host=None, scope=None):
                return super().refresh_access_token(host=host or hosts["api"], scope=scope)

        self._http = _http_session()
        self.client = Client(
            oauth2_refresh_token=refresh_token,
            app_key=backend.conf.app_key,
            app_secret=backend._secrets.get("app_secret") or None,
            session=self._http,
            timeout=self.timeout,
            max_retries_on_error=2,
            max_retries_on_rate_limit=3,
            user_agent="backupsite",
        )
        self.client._host_map = {HOST_API: hosts["api"], HOST_CONTENT: hosts["content"], HOST_NOTIFY: hosts["api"]}
        try:
            with mapped_errors("logging in", self._map("logging in")):
                self.client.refresh_access_token()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"<DropboxSession app_key={self.backend.conf.app_key}>"

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._http.close()

    @staticmethod
    def path(folder: str, name: str | None = None) -> str:
        parts = [p for p in (check_folder(folder), name) if p]
        return "/" + "/".join(parts) if parts else ""

    def _file(self, path: str, what: str):
        from dropbox.files import FileMetadata

        try:
            with mapped_errors(what, self._map(what)):
                metadata = self.client.files_get_metadata(path)
        except NotFoundError:
            return None
        return metadata if isinstance(metadata, FileMetadata) else None

    # --- writing --------------------------------------------------------------------
    def _upload(self, item, folder, *, progress, cancel, replace):
        from dropbox.files import CommitInfo, UploadSessionCursor, WriteMode

        name, expected_size, expected_sha256, local = item.name, item.size, item.sha256, item.local_path
        path = self.path(folder, name)
        check_local_size(item)
        if not replace and self._file(path, f"checking whether {name} exists") is not None:
            raise already_exists(name)
        chunk_size = min(self.chunk_size, MAX_REQUEST)
        hasher = ContentHasher()
        what = f"uploading {name}"
        with mapped_errors(what, self._map(what)), HashingReader(local, cancel=cancel) as reader:
            chunk = _read_chunk(reader, chunk_size)
            hasher.update(chunk)
            offset = len(chunk)
            session_id = self.client.files_upload_session_start(chunk, close=offset >= expected_size).session_id
            if progress:
                progress(offset)
            while offset < expected_size:
                chunk = _read_chunk(reader, min(chunk_size, expected_size - offset))
                if not chunk:
                    break
                hasher.update(chunk)
                last = offset + len(chunk) >= expected_size
                self.client.files_upload_session_append_v2(chunk, UploadSessionCursor(session_id, offset), close=last)
                offset += len(chunk)
                if progress:
                    progress(offset)
            del chunk
            reader.finish()
            # The whole file was read and hashed: commit only what matches.
            check_read(reader, name, expected_size, expected_sha256)
            commit = CommitInfo(
                path=path,
                mode=WriteMode.overwrite if replace else WriteMode.add,
                autorename=False,
                mute=True,
                strict_conflict=True,
            )
            metadata = self.client.files_upload_session_finish(b"", UploadSessionCursor(session_id, offset), commit)
        problem = None
        if metadata.size != expected_size:
            problem = f"Size mismatch after uploading {name}: {metadata.size} bytes arrived instead of {expected_size}."
        elif metadata.content_hash != hasher.hexdigest():
            problem = f"Checksum mismatch after uploading {name}: Dropbox holds other bytes than were sent."
        if problem:
            with contextlib.suppress(DestinationError), mapped_errors("deleting", self._map("deleting")):
                self.client.files_delete_v2(metadata.path_lower, parent_rev=metadata.rev)
            raise TransientError(problem)

    def delete(self, folder, name):
        check_name(name)
        path = self.path(folder, name)
        metadata = self._file(path, f"deleting {name}")
        if metadata is None:
            return  # missing (or a folder: never deleted here)
        try:
            with mapped_errors(f"deleting {name}", self._map(f"deleting {name}")):
                self.client.files_delete_v2(path, parent_rev=metadata.rev)
        except NotFoundError:
            pass

    # --- reading --------------------------------------------------------------------
    def remove_partials(self, folder):
        """Upload sessions leave nothing visible (Dropbox drops unfinished ones after a
        week); only temporary files of another tool's making are removed here."""
        removed = []
        for remote in self._list(folder, hidden=True):
            if is_partial(remote.name):
                path = self.path(folder, remote.name)
                with mapped_errors("cleaning up", self._map("cleaning up")):
                    self.client.files_delete_v2(path)
                removed.append(remote.name)
        return removed

    def list(self, folder):
        return self._list(folder, hidden=False)

    def _list(self, folder: str, *, hidden: bool) -> list[RemoteFile]:
        from dropbox.files import FileMetadata

        path = self.path(folder)
        files = []
        try:
            with mapped_errors("listing the folder", self._map("listing the folder")):
                result = self.client.files_list_folder(path, recursive=False, include_deleted=False)
                while True:
                    for entry in result.entries:
                        if isinstance(entry, FileMetadata) and (hidden or not entry.name.startswith(".")):
                            modified = entry.server_modified.replace(tzinfo=UTC).timestamp()
                            files.append(RemoteFile(entry.name, entry.size, modified))
                    if not result.has_more:
                        break
                    result = self.client.files_list_folder_continue(result.cursor)
        except NotFoundError:
            return []
        return sorted(files, key=lambda f: f.name)

    def stat(self, folder, name):
        check_name(name)
        metadata = self._file(self.path(folder, name), f"reading the size of {name}")
        if metadata is None:
            raise NotFoundError(f"{name} is not at this destination.")
        return RemoteFile(name, metadata.size, metadata.server_modified.replace(tzinfo=UTC).timestamp())

    def open(self, folder, name, offset=0):
        check_name(name)
        if not isinstance(offset, int) or offset < 0:
            raise PermanentError("Invalid offset.")
        path = self.path(folder, name)
        what = f"reading {name}"
        if offset and offset >= self.stat(folder, name).size:
            return io.BytesIO(b"")
        headers = {"Range": f"bytes={offset}-"} if offset else None
        try:
            with mapped_errors(what, self._map(what)):
                _, response = self.client.files_download(path, extra_headers=headers)
        except NotFoundError:
            raise NotFoundError(f"{name} is not at this destination.") from None
        if offset and response.status_code != 206:
            response.close()
            raise PermanentError("Dropbox ignored the byte range of a resumed download.")
        return _ResponseStream(response, self._map(what))

    def free_space(self):
        with mapped_errors("reading the free space", self._map("reading the free space")):
            usage = self.client.users_get_space_usage()
        allocation = usage.allocation
        if allocation.is_individual():
            return max(allocation.get_individual().allocated - usage.used, 0)
        if allocation.is_team():
            team = allocation.get_team()
            return max(team.allocated - team.used, 0)
        return None


# --- the backend ------------------------------------------------------------------------------
class DropboxBackend(Backend):
    kind = "dropbox"
    label = "Dropbox"
    help_text = _("A Dropbox app folder: backups of any size (upload sessions), tokens refreshed automatically.")
    conf_class = DropboxConf
    secret_fields = ("app_secret", "refresh_token")
    capabilities = ALL_CAPABILITIES
    form_class_path = "destinations.backends.dropbox.DropboxForm"
    #: Dropbox's hosts and the CA bundle (None: the SDK's own). Tests point them at a stand-in.
    hosts = HOSTS
    ca_certs: str | None = None

    @classmethod
    def describe_conf(cls, conf: DropboxConf) -> str:
        return f"Dropbox (app {conf.app_key})"

    def describe_folder(self, folder: str) -> str:
        return f"Dropbox: /{folder}" if folder else "Dropbox: /"

    def session(self) -> DropboxSession:
        return DropboxSession(self)

    def test(self) -> TestResult:
        result = super().test()
        if result.ok:
            result.details.append(
                ("Uploads", f"upload sessions in {DropboxSession.chunk_size // MiB} MB chunks, content hash checked")
            )
        return result


class DropboxForm(KindForm):
    backend_class = DropboxBackend
    secret_fields = DropboxBackend.secret_fields

    app_key = forms.CharField(
        label=_("App key"),
        max_length=64,
        help_text=_(
            "Create an app in Dropbox's App Console (https://www.dropbox.com/developers/apps), "
            "with “App folder” access and the permissions files.content.write, files.content.read "
            "and files.metadata.read; its settings page shows the app key."
        ),
    )
    app_secret = forms.CharField(
        label=_("App secret"),
        required=False,
        max_length=128,
        help_text=_("Only needed for a refresh token not obtained with the link below. Stored encrypted."),
    )
    refresh_token = forms.CharField(
        label=_("Refresh token"),
        max_length=2000,
        help_text=_(
            "Obtain it with “Connect to Dropbox”: open the link, allow access, and paste the code "
            "Dropbox shows; the panel exchanges it for a refresh token (PKCE, no app secret needed). "
            "Stored encrypted, never shown again."
        ),
    )


__all__ = ["ContentHasher", "DropboxBackend", "DropboxConf", "DropboxForm", "DropboxSession", "PkceAuthorization"]
