"""FTP / FTPS destinations: explicit TLS by default (``AUTH TLS``, data connections
encrypted too), plain FTP only when the administrator ticks it.

The protocol details (TLS session reuse on data connections, passive mode to the
control connection's address, timeouts) are in :mod:`.client`; certificate trust in
:mod:`.tls`; listings in :mod:`.listing`. This module is the contract: the typed
settings, the session (the :class:`~destinations.backends.base.FileTreeSession`
primitives) and the backend with its connection test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ftplib
import posixpath
import ssl
from dataclasses import dataclass

from django.utils.translation import gettext_lazy as _

from destinations import netguard
from destinations.backends.base import (
    ALL_CAPABILITIES,
    FREE_SPACE,
    Backend,
    Conf,
    ConfError,
    FileTreeSession,
    Fingerprint,
    FingerprintError,
    NotFoundError,
    PermanentError,
    TestResult,
    TransientError,
    mapped_errors,
)
from destinations.backends.ftp import tls
from destinations.backends.ftp.client import FtpClient, FtpReplyError, reply_code
from destinations.backends.ftp.errors import ftp_error, not_found, reply_error
from destinations.backends.ftp.listing import parse_list, parse_mlsd

DEFAULT_PORT = 21
PLAIN_WARNING = (
    "Warning: plain FTP sends the password and the backups unencrypted; anyone on the network path can read them."
)
_NOT_UNDERSTOOD = ("500", "501", "502", "504")


def check_remote_folder(value, field: str = "server") -> str:
    """The folder part of the server field: plain names joined by ``/`` (no ``.``/``..``,
    no control characters), relative to the login directory; "" is the login directory."""
    if not isinstance(value, str):
        raise ConfError("The folder must be text.", field)
    if any(ord(c) < 32 or ord(c) == 127 for c in value) or "\\" in value or len(value) > 1000:
        raise ConfError("The folder contains characters that are not allowed.", field)
    parts = [p for p in value.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ConfError("The folder must not contain “.” or “..”.", field)
    return "/".join(parts)


@dataclass(frozen=True)
class FtpConf(Conf):
    host: str = ""
    port: int = DEFAULT_PORT
    #: Below the login directory ("branch1" from ``backup.example.net/branch1``); must exist.
    folder: str = ""
    user: str = ""
    #: Plain FTP, no TLS at all (the password travels in clear). Never a silent fallback.
    plain_ftp: bool = False
    #: SHA-256 of the confirmed certificate (``AB:CD:…``); "" trusts the system's authorities.
    tls_fingerprint: str = ""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "host", netguard.check_host(self.host, "server"))
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise ConfError("The port must be a number between 1 and 65535.", "port")
        set_(self, "folder", check_remote_folder(self.folder))
        if not isinstance(self.user, str) or not self.user.strip():
            raise ConfError("The user name is required.", "user")
        if any(ord(c) < 32 or ord(c) == 127 for c in self.user) or len(self.user) > 255:
            raise ConfError("The user name contains characters that are not allowed.", "user")
        if not isinstance(self.plain_ftp, bool):
            raise ConfError("“Plain FTP” must be true or false.", "plain_ftp")
        set_(self, "tls_fingerprint", tls.normalize_fingerprint(self.tls_fingerprint))


class FtpSession(FileTreeSession):
    """One logged-in FTP control connection. Paths are absolute: the login directory
    (``PWD``) joined with the configured folder is the base."""

    #: Most servers cannot rename over an existing file (and those that can do not say
    #: so), so ``replace=True`` keeps the old file until the new one is complete.
    rename_replaces = False

    def __init__(self, backend: FtpBackend, client: FtpClient, base: str, fingerprint: Fingerprint | None) -> None:
        super().__init__(backend)
        self.client = client
        self.base = base
        self.fingerprint = fingerprint
        self._dirs = {base}
        features = client.features
        # FEAT, where the server has it, tells; else try and remember a refusal.
        self._use_mlsd = not features or "MLST" in features
        self._use_size = not features or "SIZE" in features
        self.listing_command = "MLSD" if self._use_mlsd else "LIST"

    def __repr__(self) -> str:
        return f"<FtpSession {self.client.host}:{self.client.port}>"

    def _errors(self, what: str):
        host, timeout = self.client.host, self.client.timeout
        return mapped_errors(what, lambda exc: ftp_error(exc, what, host, timeout))

    def close(self) -> None:
        self.client.quit_quietly()

    def describe_folder(self, folder: str) -> str:
        return self.backend.url(self.path(folder))

    # --- primitives ---------------------------------------------------------------------
    def path(self, folder, name=None):
        folder_path = posixpath.join(self.base, folder) if folder else self.base
        return posixpath.join(folder_path, name) if name is not None else folder_path

    def _is_dir(self, path: str) -> bool:
        try:
            self.client.voidcmd("CWD " + path)
        except ftplib.error_perm:
            return False
        return True

    def _makedirs(self, folder_path):
        if folder_path in self._dirs:
            return
        with self._errors("creating the folder"):
            if not self._is_dir(folder_path):
                current = self.base
                for part in folder_path[len(self.base) :].strip("/").split("/"):
                    current = posixpath.join(current, part)
                    if current in self._dirs:
                        continue
                    try:
                        self.client.voidcmd("MKD " + current)
                    except ftplib.error_perm:
                        if not self._is_dir(current):  # (not "it exists already")
                            raise
                    self._dirs.add(current)
        self._dirs.add(folder_path)

    def _write(self, source, remote_path):
        with self._errors(f"uploading {_display(remote_path)}"):
            self.client.store("STOR " + remote_path, source)

    def _size(self, remote_path):
        with self._errors("checking a file's size"):
            if self._use_size:
                try:
                    resp = self.client.sendcmd("SIZE " + remote_path)
                except ftplib.error_perm as exc:
                    code = reply_code(exc)
                    if code == "550":
                        return None  # missing, or not a regular file
                    if code not in _NOT_UNDERSTOOD:
                        raise
                    self._use_size = False
                else:
                    with contextlib.suppress(ValueError):
                        if resp.startswith("213"):
                            return int(resp[3:].strip())
                    self._use_size = False  # an odd reply: trust the listing instead
            folder_path, name = posixpath.split(remote_path)
            for remote in self._listdir(folder_path):
                if remote.name == name:
                    return remote.size
            return None

    def _rename(self, src, dst):
        with self._errors("renaming the uploaded file"):
            resp = self.client.sendcmd("RNFR " + src)
            if resp[:1] != "3":
                raise ftplib.error_reply(resp)
            self.client.voidcmd("RNTO " + dst)

    def _remove(self, remote_path):
        with self._errors(f"deleting {_display(remote_path)}"):
            try:
                self.client.voidcmd("DELE " + remote_path)
            except ftplib.error_perm as exc:
                if reply_code(exc) == "550" and self._size(remote_path) is None:
                    return  # it was not there
                raise

    def _listdir(self, folder_path):
        with self._errors("listing the folder"):
            if self._use_mlsd:
                try:
                    return parse_mlsd(list(self.client.lines("MLSD " + folder_path)))
                except ftplib.error_perm as exc:
                    code = reply_code(exc)
                    if code in ("550", "450") and not self._is_dir(folder_path):
                        return []
                    if code not in _NOT_UNDERSTOOD:
                        raise
                    self._use_mlsd = False
                    self.listing_command = "LIST"
            # LIST takes no reliable path argument next to options: change into the
            # folder, then "LIST -a" (hidden files too: our partials), else plain LIST.
            if not self._is_dir(folder_path):
                return []
            try:
                files = parse_list(list(self.client.lines("LIST -a")))
            except ftplib.error_perm as exc:
                if reply_code(exc) not in (*_NOT_UNDERSTOOD, "550"):
                    raise
                files = []
            # A server that takes "-a" for a file name lists nothing: ask once more plainly.
            return files or parse_list(list(self.client.lines("LIST")))

    def _open(self, remote_path, offset):
        name = _display(remote_path)
        with self._errors(f"reading {name}"):
            try:
                return self.client.retrieve(remote_path, offset)
            except ftplib.error_perm as exc:
                if reply_code(exc) == "550" and self._size(remote_path) is None:
                    raise not_found(name) from None
                raise

    # --- what the test reports -------------------------------------------------------
    def facts(self) -> list[tuple[str, str]]:
        client = self.client
        facts = []
        if client.tls_context is not None:
            facts.append(("Encryption", f"{client.tls_description()}; data connections encrypted too (PROT P)"))
            if client.session_reused is not None:
                reused = "yes" if client.session_reused else "no (the server did not resume it)"
                facts.append(("TLS session reuse", reused))
        facts.append(("Passive mode", "EPSV" if client.epsv else "PASV (connecting to the control address only)"))
        facts.append(("Listings", self.listing_command))
        return facts


def _display(remote_path: str) -> str:
    """The file name people know: ``.x.tar.zst.partial`` → ``x.tar.zst``."""
    name = posixpath.basename(remote_path)
    if name.startswith(".") and name.endswith(".partial"):
        return name[1 : -len(".partial")]
    return name


class FtpBackend(Backend):
    kind = "ftp"
    label = "FTP / FTPS"
    conf_class = FtpConf
    secret_fields = ("password",)
    capabilities = ALL_CAPABILITIES - {FREE_SPACE}  # FTP has no standard way to tell
    form_class_path = "destinations.backends.ftp.forms.FtpForm"
    help_text = _("An FTP server, encrypted with TLS (FTPS, explicit TLS) unless you choose plain FTP.")

    conf: FtpConf

    @classmethod
    def describe_conf(cls, conf: FtpConf) -> str:
        mode = "FTP, unencrypted" if conf.plain_ftp else "FTPS"
        return f"{cls.label}: {conf.user} at {_hostport(conf)}/{conf.folder} ({mode})"

    def describe_folder(self, folder: str) -> str:
        path = "/".join(p for p in (self.conf.folder, folder) if p)
        return self.url(path)

    def url(self, path: str) -> str:
        mode = "plain FTP, unencrypted" if self.conf.plain_ftp else "explicit TLS"
        return f"ftp://{_hostport(self.conf)}/{path.lstrip('/')} ({mode})"

    def _errors(self, what: str):
        host, timeout = self.conf.host, self.timeout
        return mapped_errors(what, lambda exc: ftp_error(exc, what, host, timeout))

    # --- the session ---------------------------------------------------------------------
    def session(self) -> FtpSession:
        conf = self.conf
        password = str(self._secrets.get("password", "") or "")
        if "\r" in password or "\n" in password:
            raise PermanentError("The password contains a line break, which FTP cannot send.")
        target = netguard.resolve(conf.host, conf.port, timeout=self.timeout)
        client = FtpClient(target, timeout=self.timeout)
        try:
            with self._errors("waiting for the server's greeting"):
                client.open()
            fingerprint = None if conf.plain_ftp else self._start_tls(client, target)
            self._login(client, password)
            with self._errors("setting up the session"):
                if not conf.plain_ftp:
                    self._protect_data(client)
                client.voidcmd("TYPE I")  # binary: sizes are exact, SIZE is allowed
                features = client.read_features()
                if "UTF8" in features:
                    with contextlib.suppress(*FtpReplyError):
                        client.sendcmd("OPTS UTF8 ON")
                home = client.pwd() or "/"
            base = posixpath.join(home, conf.folder) if conf.folder else home
            session = FtpSession(self, client, base, fingerprint)
            if conf.folder:
                with self._errors(f"opening the folder {conf.folder}"):
                    if not session._is_dir(base):
                        raise NotFoundError(
                            f"The folder {conf.folder} does not exist on {conf.host} (or this user may not open it)."
                        )
        except BaseException:
            client.quit_quietly()
            raise
        return session

    def _start_tls(self, client: FtpClient, target: netguard.Target) -> Fingerprint:
        """``AUTH TLS`` and the certificate check, before any credential is sent."""
        host = self.conf.host
        pin = self.conf.tls_fingerprint
        try:
            client.start_tls(tls.pinning_context() if pin else tls.verified_context())
        except ssl.SSLCertVerificationError as exc:
            client.close()
            der = self._fetch_certificate(target)
            seen = tls.certificate_fingerprint(der, trusted=False)
            raise FingerprintError(
                f"The TLS certificate of {host} {tls.why_untrusted(exc, host, der)}, so the connection was "
                f"refused before logging in. Its SHA-256 fingerprint is {seen.value}: compare it with the one "
                "the server's administrator gives you, and confirm it to trust this certificate from now on.",
                seen,
            ) from None
        except FtpReplyError as exc:
            if reply_code(exc).startswith("4"):
                raise reply_error(exc, "starting TLS", host) from None
            raise PermanentError(
                f"The FTP server {host} does not offer TLS (AUTH TLS refused, FTP reply {reply_code(exc) or '?'}). "
                "Ask for FTPS, or tick “plain FTP” if you accept that the password travels unencrypted."
            ) from None
        except Exception as exc:
            mapped = ftp_error(exc, "starting TLS", host, self.timeout)
            if mapped is None:
                raise
            raise mapped from None
        der = client.peer_certificate or b""
        if not pin:
            return tls.certificate_fingerprint(der, trusted=True)
        seen = tls.certificate_fingerprint(der, trusted=False)
        if seen.value != pin:
            raise FingerprintError(
                f"The TLS certificate of {host} has changed: the server presents {seen.value}, but the confirmed "
                f"certificate is {pin}. The connection was refused before logging in. If the certificate was "
                "replaced on purpose, test the connection and confirm the new fingerprint.",
                seen,
            )

        def check_data_certificate(data_der: bytes | None) -> None:
            # A resumed session carries the control connection's certificate; a full
            # handshake on a data connection must show the same one.
            if data_der and tls.sha256_fingerprint(data_der) != pin:
                raise PermanentError(
                    f"The data connection to {host} presented another TLS certificate than the confirmed one; refused."
                )

        client.data_certificate_check = check_data_certificate
        return dataclasses.replace(seen, trusted=True)

    def _fetch_certificate(self, target: netguard.Target) -> bytes:
        """The certificate of a server that failed verification, for the administrator
        to compare: a second connection that starts TLS without checking and leaves
        before logging in."""
        probe = FtpClient(target, timeout=self.timeout)
        try:
            with self._errors("reading the server's TLS certificate"):
                probe.open()
                probe.start_tls(tls.pinning_context())
            return probe.peer_certificate or b""
        finally:
            probe.quit_quietly()

    def _login(self, client: FtpClient, password: str) -> None:
        host = self.conf.host
        hint = " If the server requires encryption, untick “plain FTP”." if self.conf.plain_ftp else ""
        with self._errors("logging in"):
            try:
                resp = client.sendcmd("USER " + self.conf.user)
            except FtpReplyError as exc:
                code = reply_code(exc)
                if code.startswith("4"):
                    raise reply_error(exc, "logging in", host) from None
                raise PermanentError(
                    f"The FTP server {host} refused the user name (FTP reply {code or '?'}).{hint}"
                ) from None
            if resp[:1] == "3":
                try:
                    resp = client.sendcmd("PASS " + password)
                except FtpReplyError as exc:
                    code = reply_code(exc)
                    if code.startswith("4"):
                        raise reply_error(exc, "logging in", host) from None
                    raise PermanentError(
                        f"The FTP server {host} refused the user name or password (FTP reply {code or '?'}).{hint}"
                    ) from None
            if resp[:1] == "3":
                raise PermanentError(f"The FTP server {host} asks for an account (ACCT), which is not supported.")
            if resp[:1] != "2":
                raise TransientError(f"The FTP server {host} sent an unexpected reply while logging in.")

    def _protect_data(self, client: FtpClient) -> None:
        try:
            client.protect_data()
        except FtpReplyError as exc:
            if reply_code(exc).startswith("4"):
                raise
            raise PermanentError(
                f"The FTP server {self.conf.host} refuses encrypted data connections (PROT P, FTP reply "
                f"{reply_code(exc) or '?'}); backups would travel unencrypted, so the connection was refused."
            ) from None

    # --- the test button ---------------------------------------------------------------
    def test(self) -> TestResult:
        result = super().test()
        if self.conf.plain_ftp:
            result.message = f"{result.message} {PLAIN_WARNING}"
            result.details.insert(0, ("Encryption", "none: plain FTP"))
        return result

    def _probe(self, session, folder):
        result = super()._probe(session, folder)
        result.details.extend(session.facts())
        if self.conf.plain_ftp and "AUTH" in session.client.features:
            result.details.append(("Hint", "The server offers TLS: untick “plain FTP” to encrypt."))
        return result


def _hostport(conf: FtpConf) -> str:
    host = f"[{conf.host}]" if ":" in conf.host else conf.host
    return host if conf.port == DEFAULT_PORT else f"{host}:{conf.port}"
