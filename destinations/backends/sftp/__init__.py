"""SFTP: an SSH server (a NAS, a Linux server, a hosting provider's backup space).

* **Host key pinned by fingerprint.** The first test shows the server's host key
  (``SHA256:…`` as ``ssh-keygen -l`` prints it, and its type) and stops *before any
  credential is sent*; the administrator confirms it, it is stored in
  ``host_key_fingerprint``, and from then on any other key is refused with a message
  naming both. There is no "accept unknown keys" policy anywhere: paramiko's
  ``Transport`` is used directly, and the key is compared by us after the key exchange.
* **Timeouts everywhere**: connect (netguard), banner, handshake, login, channel
  requests (a watchdog closes the connection where paramiko would wait forever), every
  read and write (the channel timeout), and a stalled bulk transfer.
* **Uploads** go to ``.<name>.partial`` and are renamed after the size check; with the
  server's ``posix-rename@openssh.com`` the rename replaces an existing file atomically,
  else FileTreeSession's replace swap is used. The bulk is pipelined with large requests
  (:mod:`.stream`), AES-GCM preferred; for key logins it runs through OpenSSH's client
  where that is faster (:mod:`.openssh`, :data:`KEY_UPLOADS_VIA_OPENSSH`).
* **Downloads** (``open(offset)``, for Range requests) stream from a channel of their own
  with read requests pipelined ahead, in memory bounded by the channel window.
* **Free space** via ``statvfs@openssh.com`` where the server offers it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import posixpath
import socket
import stat as stat_module
import threading
import time
from dataclasses import dataclass

import paramiko
from django.utils.translation import gettext_lazy as _
from paramiko.sftp import CMD_EXTENDED, CMD_EXTENDED_REPLY, CMD_INIT, CMD_VERSION, SFTPError

from destinations import netguard
from destinations.backends.base import (
    Backend,
    Cancelled,
    Conf,
    ConfError,
    DestinationError,
    FileTreeSession,
    Fingerprint,
    FingerprintError,
    NotFoundError,
    PermanentError,
    RemoteFile,
    TestResult,
    TransientError,
    mapped_errors,
)
from destinations.backends.net import check_port
from destinations.backends.sftp import openssh, stream
from destinations.backends.sftp.keys import (
    KeyProblem,
    describe_host_key,
    fingerprint_of,
    key_type_label,
    load_private_key,
    normalize_fingerprint,
)

log = logging.getLogger(__name__)

FINGERPRINT_SETTING = "host_key_fingerprint"
DEFAULT_PORT = 22
#: Ciphers in our order of preference: AES-GCM first (hardware AES, no separate MAC),
#: then paramiko's defaults without 3DES.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
#: Key logins send the bulk of large uploads through OpenSSH's ``sftp`` client when it
#: is installed. Why: ``bench/destinations.py`` measures both in the same run (README,
#: "Performance → Destinations"): 133 % of OpenSSH's default ``sftp put`` through the
#: client with AES-GCM, 105 % with paramiko and this package's pipelined writes; the
#: client does its per-packet work in C, where paramiko pays Python for each of the
#: ~16,000 32-KiB channel packets of a 500 MB file. Password logins cannot use it
#: (``sftp -b`` is batch mode) and stay with paramiko. False: paramiko only.
KEY_UPLOADS_VIA_OPENSSH = True
#: Smaller files go through paramiko: a second login costs more than it saves.
OPENSSH_MIN_SIZE = 32 * 1024 * 1024


# --- settings -------------------------------------------------------------------------
def normalize_remote_path(value) -> str:
    """``/srv/backups`` (absolute) or ``backups/x`` / ``.`` (relative to the login
    directory); no ``..``, no control characters or backslashes."""
    if value in (None, ""):
        return "."
    if not isinstance(value, str):
        raise ConfError("The folder must be text.", "path")
    text = value.strip()
    if any(ord(c) < 32 or ord(c) == 127 for c in text) or "\\" in text:
        raise ConfError("The folder contains characters that are not allowed.", "path")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ConfError("The folder must not contain “..”.", "path")
    if len(text) > 1000:
        raise ConfError("The folder is too long.", "path")
    if text.startswith("/"):
        return "/" + "/".join(parts)
    return "/".join(parts) or "."


@dataclass(frozen=True)
class SftpConf(Conf):
    host: str = ""
    port: int = DEFAULT_PORT
    #: Absolute, or relative to the login directory ("." is the login directory).
    path: str = "."
    user: str = ""
    #: The confirmed host key (``SHA256:…``); "" until an administrator confirms one.
    host_key_fingerprint: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host.strip():
            raise ConfError("The server is required.", "host")
        object.__setattr__(self, "host", netguard.check_host(self.host, "host"))
        object.__setattr__(self, "port", check_port(self.port, DEFAULT_PORT))
        object.__setattr__(self, "path", normalize_remote_path(self.path))
        if not isinstance(self.user, str) or not self.user.strip():
            raise ConfError("The user name is required.", "user")
        user = self.user.strip()
        if any(ord(c) < 32 or ord(c) == 127 for c in user) or len(user) > 100:
            raise ConfError("The user name contains characters that are not allowed.", "user")
        object.__setattr__(self, "user", user)
        if not isinstance(self.host_key_fingerprint, str):
            raise ConfError("The host-key fingerprint must be text.", FINGERPRINT_SETTING)
        try:
            fingerprint = normalize_fingerprint(self.host_key_fingerprint)
        except ValueError as exc:
            raise ConfError(str(exc), FINGERPRINT_SETTING) from None
        object.__setattr__(self, "host_key_fingerprint", fingerprint)


# --- errors ---------------------------------------------------------------------------
def _status_error(code: int | None, what: str) -> DestinationError:
    if code == stream.FX_NO_SUCH_FILE:
        return NotFoundError(f"Not found while {what}.")
    if code == stream.FX_PERMISSION_DENIED:
        return PermanentError(f"Permission denied while {what}.")
    if code == stream.FX_OP_UNSUPPORTED:
        return PermanentError(f"The server does not support this while {what}.")
    if code in (stream.FX_NO_CONNECTION, stream.FX_CONNECTION_LOST):
        return TransientError(f"The connection to the server was lost while {what}.")
    return PermanentError(f"The server refused {what}.")


def map_error(exc: BaseException, what: str, timeout: float) -> DestinationError | None:
    """A library's exception as a typed error with our own words (never the library's
    text: it can quote the server or its configuration)."""
    if isinstance(exc, DestinationError):
        return exc
    if isinstance(exc, socket.timeout | TimeoutError | stream.PipeTimeout):
        return TransientError(f"The server did not answer within {timeout:g} seconds while {what}.")
    if isinstance(exc, stream.SftpStatus):
        return _status_error(exc.code, what)
    if isinstance(exc, stream.ProtocolError | SFTPError):
        return TransientError(f"The server sent an unexpected reply while {what}.")
    if isinstance(exc, EOFError | ConnectionError | paramiko.SSHException):
        return TransientError(f"The connection to the server was lost while {what}.")
    if isinstance(exc, OSError):
        if exc.errno == errno.ENOENT:
            return NotFoundError(f"Not found while {what}.")
        if exc.errno in (errno.EACCES, errno.EPERM):
            return PermanentError(f"Permission denied while {what}.")
        if exc.errno is None and str(exc) == "Socket is closed":
            # paramiko's channel after the connection dropped (Channel.send/recv): not a
            # refusal, whatever moment of a read the cut hit.
            return TransientError(f"The connection to the server was lost while {what}.")
        if exc.errno is None:  # paramiko's IOError(text) for SFTP failure statuses
            return PermanentError(f"The server refused {what}.")
        return TransientError(f"A network error occurred while {what}.")
    return None


class _Watchdog:
    """Closes the connection when a step makes no progress for *timeout* seconds: some
    of paramiko's waits have no timeout (a channel request the server never answers, a
    write into a connection that went silent)."""

    def __init__(self, transport: paramiko.Transport, timeout: float, progress=None) -> None:
        self.transport = transport
        self.timeout = timeout
        self.progress = progress or (lambda: 0)
        self.fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sftp-watchdog", daemon=True)

    def __enter__(self) -> _Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        last, since = self.progress(), time.monotonic()
        while not self._stop.wait(min(1.0, self.timeout / 4)):
            now = self.progress()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since > self.timeout:
                self.fired = True
                self.transport.close()
                return


# --- the SFTP client with the server's extensions ---------------------------------------
class _Client(paramiko.SFTPClient):
    """paramiko's client, keeping the extensions the server announced in its VERSION
    reply (paramiko reads and drops them): ``posix-rename@openssh.com``,
    ``statvfs@openssh.com``, ``limits@openssh.com``."""

    extensions: dict[str, bytes]

    def _send_version(self):
        msg = paramiko.Message()
        msg.add_int(3)
        self._send_packet(CMD_INIT, msg)
        kind, data = self._read_packet()
        if kind != CMD_VERSION:
            raise SFTPError("Incompatible sftp protocol")
        reply = paramiko.Message(data)
        version = reply.get_int()
        extensions: dict[str, bytes] = {}
        while len(extensions) < 100 and len(reply.get_remainder()) >= 8:
            name = reply.get_string().decode("utf-8", "replace")
            extensions[name] = reply.get_string()
        self.extensions = extensions
        return version

    def extended(self, name: str, *args):
        kind, msg = self._request(CMD_EXTENDED, name, *args)
        if kind != CMD_EXTENDED_REPLY:
            raise SFTPError("unexpected reply")
        return msg


# --- the session ------------------------------------------------------------------------
class SftpSession(FileTreeSession):
    rename_replaces = False  # set per server: True with posix-rename@openssh.com

    def __init__(self, backend: SftpBackend) -> None:
        super().__init__(backend)
        self.conf: SftpConf = backend.conf
        self.timeout = backend.timeout
        self.transport: paramiko.Transport | None = None
        self.client: _Client | None = None
        self.fingerprint: Fingerprint | None = None
        self.base = ""
        self.login_method = ""
        self.cipher = ""
        self.write_size = stream.SAFE_REQUEST_SIZE
        self.read_size = stream.SAFE_REQUEST_SIZE
        self._key = None
        self._address = ""
        self._host_key: paramiko.PKey | None = None
        self._greeting_is_ssh = True
        self.bulk_via = "paramiko"  # how the last upload's bulk went ("paramiko" | "openssh")

    # --- connecting ---
    def connect(self) -> SftpSession:
        try:
            self._connect()
        except BaseException:
            self.close()
            raise
        return self

    def _mapped(self, what: str):
        """Library exceptions inside become typed errors (unknown ones propagate)."""
        return mapped_errors(what, lambda exc: self._map(exc, what))

    def _map(self, exc: BaseException, what: str) -> DestinationError | None:
        error = map_error(exc, what, self.timeout)
        if isinstance(error, PermanentError) and not isinstance(error, NotFoundError) and not self._alive():
            # paramiko raises the same bare IOError for "socket closed" as for a refusal.
            return TransientError(f"The connection to the server was lost while {what}.")
        return error

    def _alive(self) -> bool:
        transport = self.transport
        return transport is not None and transport.is_active()

    def _connect(self) -> None:
        conf, timeout = self.conf, self.timeout
        secrets = self.backend._secrets
        if secrets.get("private_key"):
            try:
                self._key = load_private_key(secrets["private_key"], secrets.get("passphrase") or None)
            except KeyProblem as exc:
                raise PermanentError(f"The private key cannot be used: {exc}") from None
        elif not secrets.get("password"):
            raise PermanentError("Enter a password or a private key for this SFTP destination.")
        target = netguard.resolve(conf.host, conf.port, timeout=timeout)
        self._address = target.address
        sock = netguard.connect(target, timeout)
        self._peek_greeting(sock)
        with self._mapped("starting SSH"):
            try:
                transport = paramiko.Transport(sock)
            except BaseException:
                sock.close()
                raise
        self.transport = transport
        transport.banner_timeout = timeout
        transport.handshake_timeout = timeout
        transport.auth_timeout = timeout
        transport.channel_timeout = timeout
        transport.clear_to_send_timeout = timeout
        options = transport.get_security_options()
        ciphers = [c for c in PREFERRED_CIPHERS if c in options.ciphers]
        options.ciphers = ciphers + [c for c in options.ciphers if c not in ciphers and c != "3des-cbc"]
        started = time.monotonic()
        with mapped_errors("connecting", lambda exc: self._handshake_error(exc, time.monotonic() - started)):
            # The banner and the key exchange each have their own timeout (above); this
            # wait returns quietly when it runs out, so check that the handshake finished.
            transport.start_client(timeout=2 * timeout + 1)
        if not transport.is_active() or transport.host_key is None:
            raise TransientError(f"The SSH handshake with {conf.host} did not finish within {timeout:g} seconds.")
        self._check_host_key(transport)
        self._login(transport)
        self.cipher = transport.remote_cipher or ""
        self._open_sftp(transport)

    def _peek_greeting(self, sock: socket.socket) -> None:
        """Wait (at most the timeout) for the server's first bytes, without consuming
        them: a server that accepts and stays silent fails here, and one whose greeting
        is not SSH's is remembered for the error message (RFC 4253 allows other lines
        before the version line, so paramiko still gets its chance)."""
        host, timeout = self.conf.host, self.timeout
        try:
            first = sock.recv(8, socket.MSG_PEEK)
        except TimeoutError:
            sock.close()
            raise TransientError(
                f"The server {host} accepted the connection but sent no SSH greeting within {timeout:g} seconds."
            ) from None
        except OSError:
            sock.close()
            raise TransientError(f"The server {host} closed the connection before greeting.") from None
        if not first:
            sock.close()
            raise TransientError(f"The server {host} closed the connection before greeting.")
        self._greeting_is_ssh = first[:4] == b"SSH-"[: len(first[:4])]

    def _handshake_error(self, exc: BaseException, elapsed: float) -> DestinationError | None:
        if not isinstance(exc, paramiko.SSHException | EOFError | OSError):
            return None
        host, timeout = self.conf.host, self.timeout
        text = str(exc)
        if not self._greeting_is_ssh or "Indecipherable protocol version" in text or "Incompatible version" in text:
            return PermanentError(
                f"The server {host} does not speak SSH on port {self.conf.port} (is it the right port?)."
            )
        if "Incompatible ssh" in text or "no acceptable" in text:
            return PermanentError(
                f"The server {host} and backupsite have no SSH encryption or key-exchange method in common."
            )
        if "banner" in text and elapsed >= timeout * 0.8:
            return TransientError(
                f"The server {host} accepted the connection but sent no SSH greeting within {timeout:g} seconds."
            )
        if elapsed >= timeout * 0.8:
            return TransientError(f"The SSH handshake with {host} did not finish within {timeout:g} seconds.")
        return TransientError(f"The SSH handshake with {host} failed (the connection was closed).")

    def _check_host_key(self, transport: paramiko.Transport) -> None:
        key = transport.get_remote_server_key()
        seen = fingerprint_of(key)
        pinned = self.conf.host_key_fingerprint
        fingerprint = Fingerprint(
            kind="ssh-host-key",
            value=seen,
            setting=FINGERPRINT_SETTING,
            description=describe_host_key(key),
            trusted=bool(pinned) and pinned == seen,
        )
        label = key_type_label(key)
        if not pinned:
            raise FingerprintError(
                f"Confirm the server's host key before backupsite logs in: {label} {seen}. Compare it with "
                "what the server's administrator reads (ssh-keygen -l -f /etc/ssh/ssh_host_*_key.pub).",
                fingerprint,
            )
        if pinned != seen:
            raise FingerprintError(
                f"The server's host key has changed: the confirmed key is {pinned}, the server now shows "
                f"{label} {seen}. backupsite did not log in. If the server was reinstalled, confirm the new "
                "key after checking it with its administrator; otherwise someone may be intercepting the "
                "connection.",
                fingerprint,
            )
        self.fingerprint = fingerprint
        self._host_key = key

    def _login(self, transport: paramiko.Transport) -> None:
        user = self.conf.user
        started = time.monotonic()
        with self._mapped("logging in"):
            self._authenticate(transport, user, started)
        if not transport.is_authenticated():
            raise PermanentError(f"The server refused the login for {user}.")

    def _authenticate(self, transport: paramiko.Transport, user: str, started: float) -> None:
        try:
            if self._key is not None:
                self.login_method = f"key ({self._key.type_label})"
                transport.auth_publickey(user, self._key.pkey)
            else:
                self.login_method = "password"
                transport.auth_password(user, self.backend._secrets["password"])
        except paramiko.BadAuthenticationType as exc:
            offered = ", ".join(str(t) for t in (exc.allowed_types or [])[:5]) or "none"
            method = "key" if self._key is not None else "password"
            raise PermanentError(
                f"The server does not accept {method} logins for {user} (it offers: {offered})."
            ) from None
        except paramiko.AuthenticationException:
            if time.monotonic() - started >= self.timeout * 0.8:  # paramiko's "Authentication timeout."
                raise TransientError(f"The server did not answer the login within {self.timeout:g} seconds.") from None
            if self._key is not None:
                raise PermanentError(
                    f"The server refused the key for {user} (is its public key in that user's authorized_keys?)."
                ) from None
            raise PermanentError(f"The server refused the login: wrong user name or password for {user}.") from None

    def _open_channel(self, transport: paramiko.Transport, **sizes) -> paramiko.Channel:
        """A channel running the sftp subsystem, with our fast receive buffer."""
        what = "opening the SFTP channel"
        with _Watchdog(transport, self.timeout) as dog:

            def mapper(exc: BaseException) -> DestinationError | None:
                if dog.fired:
                    return TransientError(f"The server did not open an SFTP channel within {self.timeout:g} seconds.")
                return self._map(exc, what)

            with mapped_errors(what, mapper):
                channel = transport.open_session(timeout=self.timeout, **sizes)
                stream.install_fast_pipe(channel)
                channel.settimeout(self.timeout)
                channel.invoke_subsystem("sftp")
        return channel

    def _open_sftp(self, transport: paramiko.Transport) -> None:
        channel = self._open_channel(transport)
        with self._mapped("starting SFTP"):
            try:
                self.client = _Client(channel)
            except BaseException:
                channel.close()
                raise
        client = self.client
        extensions = client.extensions
        self.rename_replaces = "posix-rename@openssh.com" in extensions
        if "limits@openssh.com" in extensions:
            with contextlib.suppress(Exception):
                reply = client.extended("limits@openssh.com")
                _packet, read_len, write_len, _handles = (reply.get_int64() for _ in range(4))
                if write_len:
                    self.write_size = max(stream.SAFE_REQUEST_SIZE, min(write_len, stream.MAX_REQUEST_SIZE))
                if read_len:
                    self.read_size = max(stream.SAFE_REQUEST_SIZE, min(read_len, stream.MAX_REQUEST_SIZE))
        path = self.conf.path
        try:
            with self._mapped("opening the folder"):
                base = client.normalize(path)
                attrs = client.stat(base)
        except NotFoundError:
            raise NotFoundError(f"The folder {path} does not exist on the server.") from None
        if not stat_module.S_ISDIR(attrs.st_mode or 0):
            raise PermanentError(f"{path} on the server is not a folder.")
        self.base = base

    def close(self) -> None:
        for thing in (self.client, self.transport):
            if thing is not None:
                with contextlib.suppress(Exception):
                    thing.close()
        self.client = None
        self.transport = None

    # --- helpers ---
    def _call(self, what: str, func, *args):
        if self.client is None:
            raise TransientError("The SFTP session is closed.")
        with self._mapped(what):
            return func(*args)

    def describe_folder(self, folder: str) -> str:
        conf = self.conf
        host = f"[{conf.host}]" if ":" in conf.host else conf.host
        port = f":{conf.port}" if conf.port != DEFAULT_PORT else ""
        return f"sftp://{host}{port}{self.path(folder) if self.base else ''}"

    # --- FileTreeSession primitives ---
    def path(self, folder, name=None):
        path = posixpath.join(self.base, folder) if folder else self.base
        return posixpath.join(path, name) if name is not None else path

    def _makedirs(self, folder_path):
        if folder_path == self.base:
            return
        relative = posixpath.relpath(folder_path, self.base)
        current = self.base
        for part in relative.split("/"):
            current = posixpath.join(current, part)
            attrs = self._lstat(current, "creating the folder")
            if attrs is None:
                try:
                    self._call("creating the folder", self.client.mkdir, current)
                except PermanentError:
                    if self._lstat(current, "creating the folder") is None:  # not a race with another worker
                        raise
                continue
            if not stat_module.S_ISDIR(attrs.st_mode or 0):
                raise PermanentError(f"{part} on the server is not a folder.")

    def _lstat(self, path: str, what: str):
        try:
            return self._call(what, self.client.lstat, path)
        except NotFoundError:
            return None

    def _size(self, remote_path):
        attrs = self._lstat(remote_path, "reading a file's size")
        if attrs is None or not stat_module.S_ISREG(attrs.st_mode or 0):
            return None
        return attrs.st_size

    def _rename(self, src, dst):
        rename = self.client.posix_rename if self.rename_replaces else self.client.rename
        self._call("renaming the uploaded file", rename, src, dst)

    def _remove(self, remote_path):
        try:
            self._call(f"deleting {posixpath.basename(remote_path)}", self.client.remove, remote_path)
        except NotFoundError:
            pass

    def _listdir(self, folder_path):
        try:
            entries = self._call("listing the folder", self.client.listdir_attr, folder_path)
        except NotFoundError:
            return []
        files = [
            RemoteFile(e.filename, e.st_size or 0, float(e.st_mtime) if e.st_mtime is not None else None)
            for e in entries
            if stat_module.S_ISREG(e.st_mode or 0)
        ]
        return sorted(files, key=lambda f: f.name)

    def _write(self, source, remote_path):
        name = posixpath.basename(remote_path).removeprefix(".").removesuffix(".partial")
        size = source.path.stat().st_size
        if self._use_openssh(size):
            try:
                self._write_openssh(source, remote_path, name)
                self.bulk_via = "openssh"
                return
            except openssh.ClientFailed as exc:
                if exc.started or self.client is None:
                    raise self._write_failed(name, exc) from None
                log.warning(
                    "OpenSSH's sftp client could not start the upload (status %s); using paramiko", exc.returncode
                )
                self._remove(remote_path)
            except FileNotFoundError:
                log.warning("OpenSSH's sftp client is not installed; uploading with paramiko")
        self.bulk_via = "paramiko"
        self._write_paramiko(source, remote_path, name)

    def _use_openssh(self, size: int) -> bool:
        return (
            KEY_UPLOADS_VIA_OPENSSH
            and self._key is not None
            and size >= OPENSSH_MIN_SIZE
            and self._host_key is not None
            and openssh.find_client() is not None
        )

    def _write_paramiko(self, source, remote_path: str, name: str) -> None:
        what = f"writing {name}"
        raw = stream.RawSftp(self.client.sock, self.timeout)
        with self._mapped(what):
            handle = raw.open(remote_path.encode(), stream.OPEN_WRITE | stream.OPEN_CREAT | stream.OPEN_EXCL)
        with _Watchdog(self.transport, self.timeout, lambda: source.size) as dog:

            def mapper(exc: BaseException) -> DestinationError | None:
                if isinstance(exc, stream.SftpStatus):
                    with contextlib.suppress(Exception):
                        raw.close_handle(handle)
                    return self._write_failed(name, exc)
                if dog.fired:
                    return TransientError(
                        f"The upload of {name} stalled: nothing was sent for {self.timeout:g} seconds."
                    )
                return self._map(exc, what)

            with mapped_errors(what, mapper):
                try:
                    stream.write_stream(raw, handle, source, request_size=self.write_size)
                except Cancelled:
                    with contextlib.suppress(Exception):
                        raw.close_handle(handle)
                    raise
                raw.close_handle(handle)

    def _write_failed(self, name: str, exc: BaseException) -> DestinationError:
        """A write the server refused: say "disk full" when its free space says so."""
        code = getattr(exc, "code", None)
        if code in (None, stream.FX_FAILURE):
            free = None
            with contextlib.suppress(Exception):
                free = self.free_space()
            if free is not None and free < 4 * self.write_size:
                return PermanentError(f"No space left on the destination while writing {name}.")
            if code is None:
                return TransientError(f"The upload of {name} through OpenSSH's sftp client failed.")
            return PermanentError(f"The server refused to write {name} (its disk or quota may be full).")
        return _status_error(code, f"writing {name}")

    def _write_openssh(self, source, remote_path: str, name: str) -> None:
        key = self._host_key
        login = openssh.Login(
            address=self._address,
            port=self.conf.port,
            user=self.conf.user,
            host_key_type=self.transport.host_key_type or key.get_name(),
            host_key_line=f"{key.get_name()} {key.get_base64()}",
            private_key=self._key.openssh_unencrypted(),
        )

        def remote_size() -> int | None:
            try:
                return self.client.stat(remote_path).st_size
            except Exception:  # noqa: BLE001 - not there yet
                return None

        def on_progress(remote: int) -> None:
            # Hash the local file as far as the server has it (progress + cancel).
            while source.size + stream.MAX_REQUEST_SIZE <= remote:
                if not source.read(min(remote - source.size, 1 << 20)):
                    break

        try:
            openssh.upload(
                login, source.path, remote_path, timeout=self.timeout, remote_size=remote_size, on_progress=on_progress
            )
        except openssh.Stalled:
            raise TransientError(
                f"The upload of {name} stalled: nothing arrived for {self.timeout:g} seconds."
            ) from None

    def _open(self, remote_path, offset):
        name = posixpath.basename(remote_path)
        what = f"reading {name}"
        channel = self._open_channel(
            self.transport, window_size=stream.DOWNLOAD_WINDOW, max_packet_size=stream.DOWNLOAD_MAX_PACKET
        )
        try:
            with self._mapped(what):
                raw = stream.RawSftp(channel, self.timeout)
                raw.init()
                handle = raw.open(remote_path.encode(), stream.OPEN_READ)
                try:
                    size = raw.fstat_size(handle)
                except stream.SftpStatus:
                    size = None  # the stream reads ahead without it
        except NotFoundError:
            channel.close()
            raise NotFoundError(f"{name} is not at this destination.") from None
        except BaseException:
            channel.close()
            raise

        def close_channel() -> None:
            with contextlib.suppress(Exception):  # closing never raises, even on a dead connection
                channel.close()

        reader = stream.ReadStream(
            raw, handle, offset=offset, size=size, request_size=self.read_size, on_close=close_channel
        )
        return _MappedReader(reader, what, self.timeout)

    def free_space(self):
        if self.client is None or "statvfs@openssh.com" not in self.client.extensions:
            return None
        try:
            reply = self.client.extended("statvfs@openssh.com", self.base)
            values = [reply.get_int64() for _ in range(5)]
        except Exception:  # noqa: BLE001 - free space is a nicety
            return None
        _bsize, frsize, _blocks, _bfree, bavail = values
        return bavail * frsize


class _MappedReader:
    """The download stream, with errors typed like every other destination error."""

    def __init__(self, reader: stream.ReadStream, what: str, timeout: float) -> None:
        self._reader = reader
        self._what = what
        self._timeout = timeout

    def _mapped(self):
        return mapped_errors(self._what, lambda exc: map_error(exc, self._what, self._timeout))

    def readinto(self, buffer) -> int:
        with self._mapped():
            return self._reader.readinto(buffer)

    def read(self, size: int = -1) -> bytes:
        with self._mapped():
            if size is None or size < 0:
                chunks = []
                while chunk := self._reader.read(1 << 20):
                    chunks.append(chunk)
                return b"".join(chunks)
            return self._reader.read(size)

    def readable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return self._reader.closed

    def close(self) -> None:
        self._reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self):
        while chunk := self.read(1 << 20):
            yield chunk


# --- the backend ------------------------------------------------------------------------
class SftpBackend(Backend):
    kind = "sftp"
    label = "SFTP"
    help_text = _(
        "An SSH server: a NAS, a Linux server, a hosting provider's backup space (user and password, or a key)."
    )
    conf_class = SftpConf
    secret_fields = ("password", "private_key", "passphrase")
    form_class_path = "destinations.backends.sftp.form.SftpForm"

    @classmethod
    def describe_conf(cls, conf: SftpConf) -> str:
        host = f"[{conf.host}]" if ":" in conf.host else conf.host
        port = f":{conf.port}" if conf.port != DEFAULT_PORT else ""
        path = conf.path if conf.path.startswith("/") else ("~" if conf.path == "." else f"~/{conf.path}")
        return f"SFTP: {conf.user}@{host}{port} {path}"

    def describe_folder(self, folder: str) -> str:
        return f"{self.describe_conf(self.conf)} → {folder or '(base folder)'}"

    def session(self) -> SftpSession:
        return SftpSession(self).connect()

    def _probe(self, session: SftpSession, folder: str) -> TestResult:
        result = super()._probe(session, folder)
        if session.fingerprint is not None:
            result.details.append(("Host key", f"{session.fingerprint.value} ({session.fingerprint.description})"))
        result.details.append(("Login", session.login_method))
        if session.cipher:
            result.details.append(("Encryption", session.cipher))
        if session.rename_replaces:
            result.details.append(("Replacing files", "atomic (posix-rename)"))
        else:
            result.details.append(("Replacing files", "swap (the server cannot rename over a file)"))
        if session._use_openssh(OPENSSH_MIN_SIZE):
            result.details.append(("Large uploads", "through OpenSSH's sftp client"))
        return result


__all__ = ["SftpBackend", "SftpConf", "SftpSession"]
