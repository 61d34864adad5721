"""The FTP protocol client: ftplib's command/reply layer, with our own connection,
TLS, passive-mode and transfer handling.

Why ftplib, and why not django-storages' ``FTPStorage``
--------------------------------------------------------
django-storages' FTP backend was read and is not wrapped: its configuration is one URL
with the password in it (older releases put ``repr()`` of that configuration into the
exception raised on a failed login: RELIABILITY 22), it writes straight to the final
name with ``storbinary`` (no temporary name, no size check), reads whole files into a
``BytesIO`` (a 20 GB download would need 20 GB of memory), parses ``LIST`` only, sets
no timeouts of its own, and on a broken connection silently reconnects. Everything the
contract asks for would have to be written around it. ``ftplib`` itself gets the
protocol details right (multi-line replies, ``parse227``/``parse229``/``parse257``,
CR/LF injection refused in ``putline``) and is in the standard library, so its
command/reply layer is kept and the parts that matter here are ours:

* **Connection**: the control connection goes to the address :mod:`destinations.netguard`
  checked (the host name is resolved once), with the timeout on every read and write.
* **TLS** (explicit, ``AUTH TLS``): verified against the system's trusted authorities, or
  pinned by the certificate's SHA-256 (see :mod:`destinations.backends.ftp.tls`).
* **Data connections** are TLS too (``PBSZ 0`` + ``PROT P``) and **reuse the control
  connection's TLS session**: many servers (vsftpd's ``require_ssl_reuse``, ProFTPD's
  ``TLSOptions`` default, FileZilla Server) refuse a data connection that starts a new
  session, so that a third party cannot hijack the data port. ``ftplib.FTP_TLS`` wraps
  the data socket without ``session=`` (CPython issue 63699, open for years); the usual
  workaround, used here, is ``context.wrap_socket(conn, session=control.session)``.
* **Passive mode only**, and the data connection goes to the **control connection's
  address**, never to the one a ``227`` reply announces (a NAT-ed server announcing its
  private address, or a hostile reply pointing at another host, must not make us connect
  elsewhere). ``EPSV`` is tried first (it announces a port only), then ``PASV``.
* **Transfers** stream through one reused buffer; a broken data connection is explained
  by the server's final reply where there is one (``452 No space``, ``426``, ``522``).

The password is sent with one ``PASS`` command (``FtpBackend._login``) and kept nowhere
(ftplib's ``FTP`` object never stores it either), so no ``repr`` or ``vars()`` of this
client can show it. The server's greeting is not kept either (``welcome`` stays None).
"""

from __future__ import annotations

import contextlib
import ftplib
import io
import logging
import queue
import socket
import ssl
import threading
from collections.abc import Iterator

from destinations import netguard
from destinations.backends.base import COPY_CHUNK, Cancelled, DestinationError, HashingReader, TransientError

log = logging.getLogger(__name__)

#: Longest reply or listing line accepted (ftplib's own limit is 8192).
MAXLINE = 8192
#: Most entries read from one directory listing (a hostile server cannot exhaust memory).
MAX_LISTING = 200_000
#: Buffers of COPY_CHUNK bytes an upload has in flight (read and hashed ahead of the send).
SEND_BUFFERS = 3
#: Seconds at most spent on a TLS close_notify exchange at the end of a transfer.
TLS_CLOSE_TIMEOUT = 5.0

FtpReplyError = (ftplib.error_reply, ftplib.error_temp, ftplib.error_perm, ftplib.error_proto)


def reply_code(exc: BaseException) -> str:
    """The three-digit code of an ftplib reply error ("" when there is none)."""
    text = str(exc.args[0]) if exc.args else ""
    code = text[:3]
    return code if code.isdigit() else ""


def reply_text(exc: BaseException) -> str:
    """The reply's text, only ever *inspected* (never shown: servers put banners,
    paths and versions into it)."""
    return str(exc.args[0])[4:] if exc.args else ""


class FtpClient(ftplib.FTP):
    """One FTP control connection (and its data connections), TLS optional.

    Only the command/reply layer of :class:`ftplib.FTP` is used (``sendcmd``,
    ``voidcmd``, ``getresp``, ``putline``); connecting, TLS, passive mode and
    transfers are done here.
    """

    maxline = MAXLINE

    def __init__(self, target: netguard.Target, *, timeout: float) -> None:
        super().__init__(timeout=timeout, encoding="utf-8")
        self.target = target
        self.host = target.host  # the configured name: TLS server name and messages
        self.port = target.port
        self.tls_context: ssl.SSLContext | None = None
        self.prot_p = False
        self.peer_certificate: bytes | None = None  # DER, of the control connection
        self.data_certificate_check = None  # callable(der) for pinned certificates
        self.features: dict[str, str] = {}
        self.epsv = True  # until the server says it does not know EPSV
        self.session_reused: bool | None = None  # of the last TLS data connection
        self.broken = False  # replies and commands out of step: no further command

    def __repr__(self) -> str:
        return f"<FtpClient {self.host}:{self.port}{' TLS' if self.tls_context else ''}>"

    # --- the control connection ---------------------------------------------------
    def open(self) -> None:
        """Connect to the checked address and read the greeting (kept nowhere: it is
        the server's banner)."""
        self.sock = netguard.connect(self.target, self.timeout)
        self.af = self.sock.family
        self.file = self.sock.makefile("r", encoding=self.encoding)
        resp = self.getresp()
        if not resp.startswith("220"):
            raise ftplib.error_reply(resp)

    def start_tls(self, context: ssl.SSLContext) -> None:
        """``AUTH TLS`` and the handshake (which raises ``ssl.SSLCertVerificationError``
        when *context* verifies and the certificate does not pass)."""
        self.voidcmd("AUTH TLS")
        self.sock = context.wrap_socket(self.sock, server_hostname=self.host)
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.tls_context = context
        self.peer_certificate = self.sock.getpeercert(binary_form=True)

    def tls_description(self) -> str:
        if not isinstance(self.sock, ssl.SSLSocket):
            return ""
        cipher = self.sock.cipher()
        return f"{self.sock.version()} ({cipher[0]})" if cipher else str(self.sock.version())

    def protect_data(self) -> None:
        """``PBSZ 0`` + ``PROT P``: data connections under TLS as well."""
        self.voidcmd("PBSZ 0")
        self.voidcmd("PROT P")
        self.prot_p = True

    def read_features(self) -> dict[str, str]:
        """``FEAT`` as {feature: parameters}; {} when the server does not know it."""
        try:
            resp = self.sendcmd("FEAT")
        except ftplib.error_perm:
            return {}
        features = {}
        for line in resp.splitlines()[1:-1]:
            name, _, params = line.strip().partition(" ")
            if name:
                features[name.upper()] = params
        self.features = features
        return features

    def putline(self, line: str) -> None:
        if self.broken or self.sock is None:
            raise EOFError("the control connection is closed")
        super().putline(line)

    def close(self) -> None:
        """Close without a word to the server; never raises."""
        with contextlib.suppress(Exception):
            super().close()
        self.sock = None
        self.file = None

    def quit_quietly(self, timeout: float = 2.0) -> None:
        """``QUIT`` (best effort, briefly) and close; never raises."""
        if self.sock is not None and not self.broken:
            with contextlib.suppress(Exception):
                self.sock.settimeout(min(timeout, self.timeout))
                self.voidcmd("QUIT")
        self.close()

    def mark_broken(self) -> None:
        """A reply went missing (a cut connection, a timeout mid-transfer): the control
        connection cannot be trusted to pair commands with replies any more."""
        self.broken = True
        with contextlib.suppress(Exception):
            if self.sock is not None:
                self.sock.close()

    # --- data connections ------------------------------------------------------------
    def makepasv(self) -> tuple[str, int]:
        """EPSV (or PASV): the port to connect to, at the control connection's address.
        The address a 227 reply announces is ignored: a NAT-ed server announces its
        private address, a hostile one any address; we connect only where we already
        are connected."""
        peer = self.sock.getpeername()[0]
        if self.epsv:
            try:
                _, port = ftplib.parse229(self.sendcmd("EPSV"), (peer, 0))
            except ftplib.error_perm as exc:
                if reply_code(exc) not in ("500", "501", "502", "504"):
                    raise
                self.epsv = False  # not understood: PASV from now on
            else:
                return peer, port
        if self.af != socket.AF_INET:
            raise ftplib.error_proto("500 EPSV is needed for IPv6 and the server does not offer it")
        _announced, port = ftplib.parse227(self.sendcmd("PASV"))
        return peer, port

    def transfer(self, cmd: str, rest: int | None = None) -> socket.socket:
        """Open a passive data connection and start *cmd* on it (``STOR``, ``RETR``,
        ``MLSD``, ``LIST``); returns the data socket, TLS-wrapped under ``PROT P``
        with the control connection's session. The final reply is pending until
        :meth:`end_transfer` (or :meth:`abandon_transfer`)."""
        address, port = self.makepasv()
        if not 0 < port < 65536:
            raise ftplib.error_proto("500 invalid passive port")
        try:
            conn = netguard.connect(netguard.Target(self.host, address, port), self.timeout)
        except DestinationError:
            raise TransientError(
                f"Could not open the data connection to {self.host} (passive mode, port {port}); "
                "a firewall may block the server's passive ports."
            ) from None
        try:
            if rest:
                self.sendcmd(f"REST {int(rest)}")
            resp = self.sendcmd(cmd)
            if resp[:1] == "2":  # some servers send a 200 before the 1xx
                resp = self.getresp()
            if resp[:1] != "1":
                raise ftplib.error_reply(resp)
        except BaseException:
            conn.close()
            raise
        if self.prot_p:
            assert self.tls_context is not None
            try:
                conn = self.tls_context.wrap_socket(conn, server_hostname=self.host, session=self.sock.session)
                self.session_reused = conn.session_reused
                if self.data_certificate_check is not None:
                    self.data_certificate_check(conn.getpeercert(binary_form=True))
            except BaseException as exc:
                _hard_close(conn)
                reply = self.abandon_transfer()
                if reply and reply[:1] in "45" and isinstance(exc, OSError):
                    raise _reply_exception(reply) from None  # "522 ...": the server's reason
                raise
            log.debug("FTP data connection to %s: TLS session reused: %s", self.host, self.session_reused)
        return conn

    def end_transfer(self, conn: socket.socket) -> str:
        """Close the data connection cleanly (TLS close_notify) and read the final
        reply, which must be 2xx (``226``)."""
        _close_data(conn)
        return self.voidresp()

    def abandon_transfer(self) -> str | None:
        """After a failed or cancelled transfer (data socket already closed): read the
        pending final reply, which explains what went wrong ("452 No space left"); the
        reply text is returned for inspection only. If it does not come, the control
        connection is out of step and is closed."""
        try:
            resp = self.getresp()
        except FtpReplyError as exc:
            return str(exc.args[0]) if exc.args else ""
        except (OSError, EOFError, ValueError):
            self.mark_broken()
            return None
        return resp

    def store(self, cmd: str, source: HashingReader) -> None:
        """``STOR``: stream *source* to the server.

        Reading, hashing, progress and the cancel check stay in this thread (the progress
        callback writes the run's row); sending (TLS encryption included) happens in a
        :class:`_Sender` thread, a few 1 MiB buffers behind. Both release the GIL, so the
        sha256 of the next chunk overlaps the encryption and sending of the last one:
        where the client is the limit (a TLS sink on loopback, a fast LAN) that sent about
        20 % faster than hashing and sending one after the other. The sha256 is what the
        contract checks the local copy with; it is most of what this client costs beyond
        curl's CPU time (``bench/dest_ftp.py --diagnose``).
        """
        conn = self.transfer(cmd)
        sender = _Sender(conn)
        try:
            while True:
                buf = sender.free_buffer()
                n = source.readinto(buf)
                if not n:
                    break
                sender.send(buf, n)
            sender.finish()
        except TimeoutError:
            # The network (or the server) went silent: give up now, not after a second
            # wait for a reply that will not come.
            sender.stop()
            _hard_close(conn)
            self.mark_broken()
            raise
        except Cancelled:
            # End the data connection normally: the server then answers for sure (a reset
            # right after the connection opened can leave a server without a reply, the
            # control connection out of step) and the partial file is deleted next.
            sender.stop()
            _close_data(conn)
            self.abandon_transfer()
            raise
        except BaseException as exc:
            sender.stop()
            _hard_close(conn)
            reply = self.abandon_transfer()
            if reply and reply[:1] in "45" and isinstance(exc, OSError):
                # The server closed the data connection and said why: that is the error.
                raise _reply_exception(reply) from None
            raise
        self.end_transfer(conn)

    def lines(self, cmd: str) -> Iterator[str]:
        """A listing command's lines (``MLSD``, ``LIST``), decoded as UTF-8 (bad bytes
        replaced: a foreign file's odd name must not break a listing)."""
        conn = self.transfer(cmd)
        count = 0
        try:
            reader = conn.makefile("rb")
            try:
                while raw := reader.readline(MAXLINE + 1):
                    if len(raw) > MAXLINE:
                        raise ftplib.error_proto("500 listing line too long")
                    count += 1
                    if count > MAX_LISTING:
                        raise ftplib.error_proto("500 listing too long")
                    yield raw.rstrip(b"\r\n").decode(self.encoding, errors="replace")
            finally:
                reader.close()
        except BaseException:
            _hard_close(conn)
            self.abandon_transfer()
            raise
        self.end_transfer(conn)

    def retrieve(self, path: str, offset: int = 0) -> FtpDownload:
        """``RETR`` (after ``REST offset``) as a streaming file object."""
        return FtpDownload(self, self.transfer("RETR " + path, rest=offset or None))


class _Sender:
    """Sends filled buffers on a data connection from its own thread.

    :meth:`free_buffer` hands out one of :data:`SEND_BUFFERS` buffers (waiting while all
    are queued or being sent), :meth:`send` queues a filled one, :meth:`finish` waits
    until all went out. An error of the sending thread (a timeout, a reset) is raised in
    the caller's thread by the next of these calls. Only the sending thread touches the
    socket until :meth:`finish` or :meth:`stop` returned.
    """

    def __init__(self, conn: socket.socket) -> None:
        self._conn = conn
        self._free: queue.Queue = queue.Queue()
        self._full: queue.Queue = queue.Queue()
        for _ in range(SEND_BUFFERS):
            self._free.put(bytearray(COPY_CHUNK))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ftp-sender", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while (item := self._full.get()) is not None:
                buf, n = item
                self._conn.sendall(memoryview(buf)[:n])
                self._free.put(buf)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            self._error = exc
        finally:
            self._free.put(None)  # wakes a caller waiting for a buffer

    def _raise(self) -> None:
        if self._error is not None:
            self._thread.join()
            error, self._error = self._error, None
            raise error

    def free_buffer(self) -> bytearray:
        buf = self._free.get()
        if buf is None:
            self._raise()
            raise EOFError("the data connection's sender stopped")
        return buf

    def send(self, buf: bytearray, n: int) -> None:
        self._raise()
        self._full.put((buf, n))

    def finish(self) -> None:
        self._full.put(None)
        self._thread.join()
        self._raise()

    def stop(self) -> None:
        """Let the thread end after the chunk it is sending (each send has the socket's
        timeout); queued chunks are dropped."""
        with contextlib.suppress(queue.Empty):
            while True:
                self._full.get_nowait()
        self._full.put(None)
        self._thread.join()
        self._error = None


class FtpDownload(io.RawIOBase):
    """A ``RETR`` being read. EOF is only EOF when the server's final reply says the
    transfer completed (a cut TLS data connection can look like a clean end)."""

    def __init__(self, client: FtpClient, conn: socket.socket) -> None:
        super().__init__()
        self._client = client
        self._conn: socket.socket | None = conn
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._conn is None:
            return 0
        try:
            n = self._conn.recv_into(buffer)
        except TimeoutError:
            self._fail()
            raise TransientError(
                f"The FTP server {self._client.host} stopped sending within {self._client.timeout:g} seconds."
            ) from None
        except OSError:
            self._fail()
            raise TransientError(f"The connection to {self._client.host} was lost while reading a file.") from None
        if n == 0:
            conn, self._conn = self._conn, None
            try:
                self._client.end_transfer(conn)
            except FtpReplyError:
                raise TransientError(
                    f"The FTP server {self._client.host} did not confirm the end of the download; it may be incomplete."
                ) from None
            except (OSError, EOFError):
                self._client.mark_broken()
                raise TransientError(f"The connection to {self._client.host} was lost while reading a file.") from None
            self._done = True
        return n

    def _fail(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            _hard_close(conn)
        self._client.mark_broken()

    def close(self) -> None:
        if self._conn is not None:  # closed before the end: abort the transfer
            conn, self._conn = self._conn, None
            _hard_close(conn)
            self._client.abandon_transfer()
        super().close()


def _close_data(conn: socket.socket) -> None:
    """End a data connection: TLS close_notify (briefly waiting for the server's), then
    close. A server that skips its close_notify is not an error: the final reply and
    the size check decide."""
    if isinstance(conn, ssl.SSLSocket):
        with contextlib.suppress(OSError, ValueError):
            conn.settimeout(min(conn.gettimeout() or TLS_CLOSE_TIMEOUT, TLS_CLOSE_TIMEOUT))
            conn = conn.unwrap()
    with contextlib.suppress(OSError):
        conn.close()


def _hard_close(conn: socket.socket) -> None:
    """Abort a data connection with a reset, so the server cannot take the end of a
    cancelled or failed upload for a complete file."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with contextlib.suppress(OSError):
        conn.close()


def _reply_exception(reply: str) -> ftplib.Error:
    if reply[:1] == "4":
        return ftplib.error_temp(reply)
    return ftplib.error_perm(reply)
