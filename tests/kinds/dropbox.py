"""A local HTTPS **stand-in for the Dropbox API — not Dropbox.** Dropbox's cloud cannot be
reached from the test machines, so the Dropbox kind is tested against this server, which
implements exactly the calls the backend makes, with the semantics it relies on:

* ``POST /oauth2/token``: ``refresh_token`` grants (client id checked, a client secret,
  if sent, checked; unknown refresh tokens → ``invalid_grant``) and the PKCE
  ``authorization_code`` grant (the S256 challenge of the authorize URL checked against
  the verifier);
* ``files/upload_session/start``, ``append_v2``, ``finish`` on the *content* host: the
  offset must match (``incorrect_offset``), closed sessions take no data, each call's
  ``content_hash`` is checked against its body (``content_hash_mismatch``), bodies above
  150 MiB are refused, ``finish`` honours ``add`` (``path/conflict/file``) and
  ``overwrite`` and the quota (``path/insufficient_space``), and returns the file's
  content hash computed here, independently of the backend's code;
* ``files/list_folder`` (+ ``/continue``, three entries per page), ``files/get_metadata``,
  ``files/delete_v2`` (a folder path deletes the folder, as Dropbox does),
  ``files/download`` (Range → 206) and ``users/get_space_usage`` on the *api* host;
* access tokens that expire on demand (``expire_tokens_after(n)``: the next requests
  get ``401 expired_access_token``), as Dropbox's four-hour tokens do mid-upload.

Request bodies are streamed to disk (zero blocks left as holes, so multi-GB sparse
uploads stay cheap) and hashed as they arrive. Responses are encoded with the SDK's own
Stone serializers, so they have Dropbox's wire format.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import secrets
import shutil
import ssl
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.kinds import KindUnderTest

MiB = 1024 * 1024
BLOCK = 4 * MiB
MAX_BODY = 150 * MiB
PAGE = 3
_ZERO = bytes(MiB)


class BlockHasher:
    """Dropbox's content hash, written independently of the backend's ContentHasher."""

    def __init__(self) -> None:
        self.blocks: list[bytes] = []
        self.current = hashlib.sha256()
        self.filled = 0

    def update(self, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            n = min(BLOCK - self.filled, len(data) - pos)
            self.current.update(data[pos : pos + n])
            self.filled += n
            pos += n
            if self.filled == BLOCK:
                self.blocks.append(self.current.digest())
                self.current, self.filled = hashlib.sha256(), 0

    def hexdigest(self) -> str:
        blocks = self.blocks + ([self.current.digest()] if self.filled else [])
        return hashlib.sha256(b"".join(blocks)).hexdigest()


@dataclass
class StoredFile:
    path_display: str
    disk: Path
    size: int
    content_hash: str
    rev: str
    modified: datetime.datetime


@dataclass
class UploadSession:
    disk: Path
    offset: int = 0
    closed: bool = False
    hasher: BlockHasher = field(default_factory=BlockHasher)


def _certificate(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for localhost / 127.0.0.1 (files: ca, cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Dropbox stand-in test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


class DropboxStandin:
    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.hosts = {"api": f"localhost:{port}", "content": f"127.0.0.1:{port}", "www": f"localhost:{port}"}
        self.app_key = "standinappkey1"
        self.app_secret = "app-secret-" + secrets.token_hex(8)
        self.lock = threading.RLock()
        self.files: dict[str, StoredFile] = {}
        self.sessions: dict[str, UploadSession] = {}
        self.refresh_tokens: set[str] = set()
        self.access_tokens: dict[str, bool] = {}  # token → still valid
        self.codes: dict[str, str] = {}  # authorization code → PKCE challenge
        self.allocated = 50 * 1024 * MiB
        self.calls: list[str] = []  # route names, in order
        self.refreshes = 0
        self._expire_after: int | None = None
        self.ca_path: Path | None = None

    # --- the test's handles ---------------------------------------------------------
    def issue_refresh_token(self) -> str:
        token = "refresh-" + secrets.token_urlsafe(24)
        with self.lock:
            self.refresh_tokens.add(token)
        return token

    def approve(self, authorize_url: str) -> str:
        """What the administrator's browser does: approve the app, get the code."""
        parts = urlsplit(authorize_url)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        assert parts.netloc == self.hosts["www"] and parts.path == "/oauth2/authorize"
        assert query["client_id"] == self.app_key and query["response_type"] == "code"
        assert query["token_access_type"] == "offline" and query["code_challenge_method"] == "S256"
        code = "code-" + secrets.token_urlsafe(16)
        with self.lock:
            self.codes[code] = query["code_challenge"]
        return code

    def expire_tokens_after(self, requests: int) -> None:
        """Every access token handed out so far expires after *requests* more API calls."""
        with self.lock:
            self._expire_after = requests

    def used(self) -> int:
        with self.lock:
            return sum(f.size for f in self.files.values())

    def names(self, folder: str) -> list[str]:
        prefix = f"/{folder}/".lower() if folder else "/"
        with self.lock:
            return sorted(
                f.path_display.rsplit("/", 1)[1]
                for p, f in self.files.items()
                if p.startswith(prefix) and "/" not in p[len(prefix) :]
            )

    def read(self, folder: str, name: str) -> bytes:
        return self.files[f"/{folder}/{name}".lower()].disk.read_bytes()

    def write(self, folder: str, name: str, data: bytes) -> None:
        disk = self.directory / f"file-{secrets.token_hex(8)}"
        disk.write_bytes(data)
        hasher = BlockHasher()
        hasher.update(data)
        self._store(f"/{folder}/{name}", disk, len(data), hasher.hexdigest())

    def _store(self, path: str, disk: Path, size: int, content_hash: str) -> StoredFile:
        stored = StoredFile(
            path, disk, size, content_hash, secrets.token_hex(8) + "0", datetime.datetime.now(datetime.UTC)
        )
        with self.lock:
            old = self.files.get(path.lower())
            self.files[path.lower()] = stored
        if old is not None:
            old.disk.unlink(missing_ok=True)
        return stored

    # --- tokens ---------------------------------------------------------------------
    def new_access_token(self) -> str:
        token = "access-" + secrets.token_urlsafe(24)
        with self.lock:
            self.access_tokens[token] = True
            self.refreshes += 1
        return token

    def check_access(self, token: str) -> str | None:
        """None if valid, else the AuthError tag."""
        with self.lock:
            if self._expire_after is not None:
                if self._expire_after <= 0:
                    for t in self.access_tokens:
                        self.access_tokens[t] = False
                    self._expire_after = None
                else:
                    self._expire_after -= 1
            if token not in self.access_tokens:
                return "invalid_access_token"
            return None if self.access_tokens[token] else "expired_access_token"

    def folder_exists(self, path: str) -> bool:
        prefix = path.lower().rstrip("/") + "/"
        with self.lock:
            return path == "" or any(p.startswith(prefix) for p in self.files)


# --- the HTTP side -----------------------------------------------------------------------------
def _encode(data_type, value):
    from dropbox import stone_serializers

    return stone_serializers.json_compat_obj_encode(data_type, value)


class ApiFailure(Exception):
    def __init__(self, status: int, body: dict) -> None:
        super().__init__(status)
        self.status, self.body = status, body


def route_error(route, error) -> ApiFailure:
    encoded = _encode(route.error_type, error)
    summary = json.dumps(encoded)
    return ApiFailure(409, {"error_summary": summary, "error": encoded})


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "DropboxStandin/1"
    standin: DropboxStandin  # set on the server's subclass

    def log_message(self, format, *args):
        pass

    # --- plumbing -------------------------------------------------------------------
    def _length(self) -> int:
        return int(self.headers.get("Content-Length") or 0)

    def _body(self) -> bytes:
        return self.rfile.read(self._length())

    def _drain(self) -> None:
        left = self._length()
        while left > 0:
            chunk = self.rfile.read(min(left, MiB))
            if not chunk:
                break
            left -= len(chunk)

    def _send(self, status: int, body: bytes, content_type: str = "application/json", headers=None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, value) -> None:
        self._send(status, json.dumps(value).encode())

    def do_POST(self):
        standin = self.standin
        path = urlsplit(self.path).path
        try:
            if path == "/oauth2/token":
                return self._token(parse_qs(self._body().decode()))
            route_name = path.removeprefix("/2/")
            spec = ROUTES.get(route_name)
            if spec is None:
                self._drain()
                return self._send(404, b"unknown route", "text/plain")
            route, host_kind, handler = spec
            if self.headers.get("Host") != standin.hosts[host_kind]:
                self._drain()
                return self._send(400, f"{route_name} is served on the {host_kind} host".encode(), "text/plain")
            auth = self.headers.get("Authorization", "")
            problem = standin.check_access(auth.removeprefix("Bearer ")) if auth.startswith("Bearer ") else "invalid"
            if problem:
                self._drain()
                return self._json(401, {"error_summary": f"{problem}/", "error": {".tag": problem}})
            style = route.attrs.get("style") or "rpc"
            rpc = style == "rpc"
            arg = json.loads(self._body() or b"null") if rpc else json.loads(self.headers["Dropbox-API-Arg"])
            with standin.lock:
                standin.calls.append(route_name)
            handler(self, route, arg)
        except ApiFailure as failure:
            self._json(failure.status, failure.body)

    def _token(self, form: dict) -> None:
        standin = self.standin
        values = {k: v[0] for k, v in form.items()}
        if values.get("client_id") != standin.app_key:
            return self._json(400, {"error": "invalid_client", "error_description": "unknown client"})
        if "client_secret" in values and values["client_secret"] != standin.app_secret:
            return self._json(400, {"error": "invalid_client", "error_description": "bad client secret"})
        grant = values.get("grant_type")
        if grant == "refresh_token":
            if values.get("refresh_token") not in standin.refresh_tokens:
                return self._json(400, {"error": "invalid_grant", "error_description": "refresh token is invalid"})
            return self._json(
                200, {"access_token": standin.new_access_token(), "token_type": "bearer", "expires_in": 14400}
            )
        if grant == "authorization_code":
            with standin.lock:
                challenge = standin.codes.pop(values.get("code", ""), None)
            verifier = values.get("code_verifier", "")
            expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
            if challenge is None or challenge != expected:
                return self._json(400, {"error": "invalid_grant", "error_description": "code doesn't exist"})
            return self._json(
                200,
                {
                    "access_token": standin.new_access_token(),
                    "token_type": "bearer",
                    "expires_in": 14400,
                    "refresh_token": standin.issue_refresh_token(),
                    "scope": "files.content.read files.content.write files.metadata.read",
                    "uid": "1234",
                    "account_id": "dbid:standin",
                },
            )
        return self._json(400, {"error": "unsupported_grant_type"})

    # --- helpers for the routes -----------------------------------------------------
    def _receive(self, session: UploadSession) -> tuple[int, str]:
        """Stream the body into the session's file; return (bytes, content hash of it)."""
        length = self._length()
        if length > MAX_BODY:
            raise ApiFailure(400, {"error": "request body too large"})
        call_hash = BlockHasher()
        with open(session.disk, "r+b") as out:
            position, left = session.offset, length
            while left > 0:
                chunk = self.rfile.read(min(left, MiB))
                if not chunk:
                    raise ConnectionError("the client went away")
                if chunk != _ZERO[: len(chunk)]:
                    os.pwrite(out.fileno(), chunk, position)
                call_hash.update(chunk)
                session.hasher.update(chunk)
                position += len(chunk)
                left -= len(chunk)
        return length, call_hash.hexdigest()

    def _metadata(self, stored: StoredFile):
        from dropbox import files

        naive = stored.modified.replace(tzinfo=None, microsecond=0)
        return files.FileMetadata(
            name=stored.path_display.rsplit("/", 1)[1],
            id="id:" + hashlib.sha1(stored.path_display.lower().encode(), usedforsecurity=False).hexdigest()[:16],
            client_modified=naive,
            server_modified=naive,
            rev=stored.rev,
            size=stored.size,
            path_lower=stored.path_display.lower(),
            path_display=stored.path_display,
            content_hash=stored.content_hash,
            is_downloadable=True,
        )

    def _folder_metadata(self, path: str):
        from dropbox import files

        return files.FolderMetadata(
            name=path.rsplit("/", 1)[1], id="id:folder", path_lower=path.lower(), path_display=path
        )

    def _session(self, route, cursor: dict, errors) -> UploadSession:
        with self.standin.lock:
            session = self.standin.sessions.get(cursor["session_id"])
        if session is None:
            self._drain()
            raise route_error(route, errors.not_found)
        if session.closed and self._length():
            self._drain()
            raise route_error(route, errors.closed)
        if cursor["offset"] != session.offset:
            from dropbox import files

            self._drain()
            raise route_error(route, errors.incorrect_offset(files.UploadSessionOffsetError(session.offset)))
        return session

    def _append(self, route, session: UploadSession, arg: dict, mismatch) -> None:
        before = session.offset
        length, call_hash = self._receive(session)
        if arg.get("content_hash") and arg["content_hash"] != call_hash:
            os.truncate(session.disk, before)
            session.hasher = _rehash(session.disk, before)
            raise route_error(route, mismatch)
        session.offset += length


def _rehash(disk: Path, size: int) -> BlockHasher:
    hasher = BlockHasher()
    with open(disk, "rb") as fh:
        while size > 0 and (chunk := fh.read(min(size, MiB))):
            hasher.update(chunk)
            size -= len(chunk)
    return hasher


# --- the routes --------------------------------------------------------------------------------
def _start(handler: Handler, route, arg) -> None:
    from dropbox import files

    standin = handler.standin
    disk = standin.directory / f"session-{secrets.token_hex(8)}"
    disk.touch()
    session = UploadSession(disk)
    handler._append(route, session, arg, files.UploadSessionStartError.content_hash_mismatch)
    session.closed = bool(arg.get("close"))
    session_id = "sid:" + secrets.token_hex(12)
    with standin.lock:
        standin.sessions[session_id] = session
    handler._json(200, _encode(route.result_type, files.UploadSessionStartResult(session_id)))


def _append_v2(handler: Handler, route, arg) -> None:
    from dropbox import files

    session = handler._session(route, arg["cursor"], files.UploadSessionAppendError)
    handler._append(route, session, arg, files.UploadSessionAppendError.content_hash_mismatch)
    session.closed = session.closed or bool(arg.get("close"))
    handler._send(200, b"null")


def _finish(handler: Handler, route, arg) -> None:
    from dropbox import files

    standin = handler.standin
    errors = files.UploadSessionFinishError
    lookup = files.UploadSessionLookupError
    with standin.lock:
        session = standin.sessions.get(arg["cursor"]["session_id"])
    if session is None:
        handler._drain()
        raise route_error(route, errors.lookup_failed(lookup.not_found))
    if arg["cursor"]["offset"] != session.offset:
        handler._drain()
        raise route_error(
            route, errors.lookup_failed(lookup.incorrect_offset(files.UploadSessionOffsetError(session.offset)))
        )
    handler._append(route, session, arg, errors.content_hash_mismatch)
    commit = arg["commit"]
    path = commit["path"]
    if not path.startswith("/") or path.endswith("/") or "//" in path:
        raise route_error(route, errors.path(files.WriteError.malformed_path(None)))
    mode = commit.get("mode", {".tag": "add"})
    mode = mode.get(".tag") if isinstance(mode, dict) else mode
    with standin.lock:
        existing = standin.files.get(path.lower())
        if existing is not None and mode == "add":
            raise route_error(route, errors.path(files.WriteError.conflict(files.WriteConflictError.file)))
        if standin.folder_exists(path) and path.lower() not in standin.files and path != "":
            raise route_error(route, errors.path(files.WriteError.conflict(files.WriteConflictError.folder)))
        used = standin.used() - (existing.size if existing else 0)
        if used + session.offset > standin.allocated:
            raise route_error(route, errors.path(files.WriteError.insufficient_space))
        standin.sessions.pop(arg["cursor"]["session_id"], None)
    os.truncate(session.disk, session.offset)  # trailing holes
    stored = standin._store(path, session.disk, session.offset, session.hasher.hexdigest())
    handler._json(200, _encode(route.result_type, handler._metadata(stored)))


def _entries(standin: DropboxStandin, path: str) -> list:
    prefix = path.lower().rstrip("/") + "/"
    files_here, folders = [], {}
    with standin.lock:
        for lower, stored in sorted(standin.files.items()):
            if not lower.startswith(prefix):
                continue
            rest = lower[len(prefix) :]
            if "/" in rest:
                display = stored.path_display[: len(prefix) + rest.index("/")]
                folders[display.lower()] = display
            else:
                files_here.append(stored)
    return files_here, sorted(folders.values())


def _list_page(handler: Handler, route, path: str, start: int) -> None:
    from dropbox import files

    standin = handler.standin
    if path and not standin.folder_exists(path):
        raise route_error(route, files.ListFolderError.path(files.LookupError.not_found))
    stored, folders = _entries(standin, path)
    entries = [handler._metadata(s) for s in stored] + [handler._folder_metadata(f) for f in folders]
    page = entries[start : start + PAGE]
    cursor = base64.urlsafe_b64encode(json.dumps([path, start + PAGE]).encode()).decode()
    result = files.ListFolderResult(entries=page, cursor=cursor, has_more=start + PAGE < len(entries))
    handler._json(200, _encode(files.list_folder.result_type, result))


def _list_folder(handler: Handler, route, arg) -> None:
    assert arg.get("recursive") in (False, None), "the backend lists one level only"
    _list_page(handler, route, arg["path"], 0)


def _list_folder_continue(handler: Handler, route, arg) -> None:
    path, start = json.loads(base64.urlsafe_b64decode(arg["cursor"]))
    _list_page(handler, route, path, start)


def _get_metadata(handler: Handler, route, arg) -> None:
    from dropbox import files

    standin = handler.standin
    with standin.lock:
        stored = standin.files.get(arg["path"].lower())
    if stored is not None:
        return handler._json(200, _encode(route.result_type, handler._metadata(stored)))
    if arg["path"] and standin.folder_exists(arg["path"]):
        return handler._json(200, _encode(route.result_type, handler._folder_metadata(arg["path"])))
    raise route_error(route, files.GetMetadataError.path(files.LookupError.not_found))


def _delete_v2(handler: Handler, route, arg) -> None:
    from dropbox import files

    standin = handler.standin
    path = arg["path"].lower()
    with standin.lock:
        stored = standin.files.get(path)
        if stored is not None:
            if arg.get("parent_rev") and arg["parent_rev"] != stored.rev:
                raise route_error(route, files.DeleteError.path_lookup(files.LookupError.not_found))
            del standin.files[path]
            stored.disk.unlink(missing_ok=True)
            return handler._json(200, _encode(route.result_type, files.DeleteResult(handler._metadata(stored))))
        if path and standin.folder_exists(path):  # Dropbox deletes a whole folder
            for lower in [p for p in standin.files if p.startswith(path + "/")]:
                standin.files.pop(lower).disk.unlink(missing_ok=True)
            return handler._json(
                200, _encode(route.result_type, files.DeleteResult(handler._folder_metadata(arg["path"])))
            )
    raise route_error(route, files.DeleteError.path_lookup(files.LookupError.not_found))


def _download(handler: Handler, route, arg) -> None:
    from dropbox import files

    standin = handler.standin
    with standin.lock:
        stored = standin.files.get(arg["path"].lower())
    if stored is None:
        raise route_error(route, files.DownloadError.path(files.LookupError.not_found))
    start, status, headers = 0, 200, {}
    wanted = handler.headers.get("Range")
    if wanted:
        assert wanted.startswith("bytes=") and wanted.endswith("-"), wanted
        start = int(wanted[6:-1])
        if start >= stored.size:
            return handler._send(416, b"", "text/plain", {"Content-Range": f"bytes */{stored.size}"})
        status, headers["Content-Range"] = 206, f"bytes {start}-{stored.size - 1}/{stored.size}"
    headers["Dropbox-API-Result"] = json.dumps(_encode(route.result_type, handler._metadata(stored)))
    handler.send_response(status)
    handler.send_header("Content-Type", "application/octet-stream")
    handler.send_header("Content-Length", str(stored.size - start))
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.end_headers()
    with open(stored.disk, "rb") as fh:
        fh.seek(start)
        while chunk := fh.read(MiB):
            handler.wfile.write(chunk)


def _space_usage(handler: Handler, route, arg) -> None:
    from dropbox import users

    standin = handler.standin
    usage = users.SpaceUsage(
        used=standin.used(),
        allocation=users.SpaceAllocation.individual(users.IndividualSpaceAllocation(standin.allocated)),
    )
    handler._json(200, _encode(route.result_type, usage))


def _routes():
    from dropbox import files, users

    return {
        "files/upload_session/start": (files.upload_session_start, "content", _start),
        "files/upload_session/append_v2": (files.upload_session_append_v2, "content", _append_v2),
        "files/upload_session/finish": (files.upload_session_finish, "content", _finish),
        "files/download": (files.download, "content", _download),
        "files/list_folder": (files.list_folder, "api", _list_folder),
        "files/list_folder/continue": (files.list_folder_continue, "api", _list_folder_continue),
        "files/get_metadata": (files.get_metadata, "api", _get_metadata),
        "files/delete_v2": (files.delete_v2, "api", _delete_v2),
        "users/get_space_usage": (users.get_space_usage, "api", _space_usage),
    }


ROUTES: dict = {}


@pytest.fixture(scope="session")
def dropbox_standin():
    pytest.importorskip("dropbox", reason="the dropbox SDK is not installed (requirements.txt)")
    ROUTES.update(_routes())
    directory = Path(tempfile.mkdtemp(prefix="backupsite-dropbox-"))
    ca, cert, key = _certificate(directory)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    standin = DropboxStandin(directory, 0)
    handler = type("BoundHandler", (Handler,), {"standin": standin})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    port = server.server_address[1]
    standin.port = port
    standin.hosts = {"api": f"localhost:{port}", "content": f"127.0.0.1:{port}", "www": f"localhost:{port}"}
    standin.ca_path = ca
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    yield standin
    server.shutdown()
    server.server_close()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def dropbox_hosts(dropbox_standin, monkeypatch):
    """Point the Dropbox kind (and the PKCE helper) at the stand-in."""
    from destinations.backends.dropbox import DropboxBackend

    monkeypatch.setattr(DropboxBackend, "hosts", dropbox_standin.hosts)
    monkeypatch.setattr(DropboxBackend, "ca_certs", str(dropbox_standin.ca_path))
    return dropbox_standin


@pytest.fixture
def dropbox_kind(dropbox_hosts) -> KindUnderTest:
    standin = dropbox_hosts
    refresh = standin.issue_refresh_token()
    return KindUnderTest(
        kind="dropbox",
        settings={"app_key": standin.app_key},
        secrets={"app_secret": standin.app_secret, "refresh_token": refresh},
        raw_names=standin.names,
        raw_read=standin.read,
        raw_write=standin.write,
        wrong_secrets={"app_secret": "wrong-" + secrets.token_hex(6), "refresh_token": refresh},
        plain_secrets=[standin.app_secret, refresh],
    )
