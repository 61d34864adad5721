"""Bulk SFTP transfers on a paramiko channel: pipelined, large requests, few copies.

Why not ``SFTPFile.write`` / ``prefetch``
-----------------------------------------
Measured on a loopback OpenSSH 9.2 sshd (PERF-NOTES, and ``bench/destinations.py``):
paramiko's ``putfo`` reaches about half of OpenSSH's ``sftp put``, its ``getfo`` about
half of ``sftp get``. Where the time goes:

* **Request size.** ``SFTPFile`` sends 32 KiB write requests (a class attribute); every
  request is a round of Python work and a status reply. OpenSSH's server accepts 255 KiB
  and says so in its ``limits@openssh.com`` extension; we use the server's announced
  ``max-write-length`` / ``max-read-length`` (capped at 255 KiB), else 32 KiB, which every
  server accepts.
* **Copies.** ``BaseSFTP._write_all`` re-slices the rest of a packet after every channel
  send (quadratic in the request size) and the request is copied into a ``Message``
  first. Here a request is its small header glued to the first piece of data, then
  ``memoryview`` slices of one reused buffer: no per-request allocation of the payload.
* **The receive buffer.** ``Channel.in_buffer`` (``BufferedPipe``) keeps received bytes
  in one ``array`` and deletes every read from its front, so each read costs time
  proportional to what is buffered: a bigger window makes downloads *slower* (a 64 MiB
  window collapsed to 2 MB/s). :class:`FastPipe` keeps the received chunks in a deque
  and reads them out with an offset, so a read costs what it returns, and a bigger
  window (and larger channel packets from the server) can be used for downloads.
* **Pipelining.** Up to :data:`MAX_OUTSTANDING` requests are in flight; the replies to
  writes are collected as they arrive, reads are re-issued for short replies.

What stays paramiko's: the SSH transport (key exchange, ciphers, packets), channels,
and every metadata request (``SFTPClient``). The raw requests here run on a channel
that nothing else reads while they do (an upload uses the session's own channel, which
is idle meanwhile; every download stream opens its own channel), with request ids in a
range paramiko's counter never reaches.

This module imports no Django (the bench uses it directly).
"""

from __future__ import annotations

import collections
import io
import struct
import threading
import time

from paramiko.buffered_pipe import BufferedPipe, PipeTimeout

# SFTP v3 packet types and status codes (draft-ietf-secsh-filexfer-02).
FXP_INIT = 1
FXP_VERSION = 2
FXP_OPEN = 3
FXP_CLOSE = 4
FXP_READ = 5
FXP_WRITE = 6
FXP_FSTAT = 8
FXP_STATUS = 101
FXP_HANDLE = 102
FXP_DATA = 103
FXP_ATTRS = 105

FX_OK = 0
FX_EOF = 1
FX_NO_SUCH_FILE = 2
FX_PERMISSION_DENIED = 3
FX_FAILURE = 4
FX_BAD_MESSAGE = 5
FX_NO_CONNECTION = 6
FX_CONNECTION_LOST = 7
FX_OP_UNSUPPORTED = 8

OPEN_READ = 0x01
OPEN_WRITE = 0x02
OPEN_CREAT = 0x08
OPEN_TRUNC = 0x10
OPEN_EXCL = 0x20

#: Request size every SFTP server accepts (paramiko's and OpenSSH's default).
SAFE_REQUEST_SIZE = 32 * 1024
#: Largest request we send even when a server announces more (OpenSSH: 255 KiB).
MAX_REQUEST_SIZE = 255 * 1024
#: Requests in flight at once (bytes in flight are bounded by the SSH window anyway).
MAX_OUTSTANDING = 64
#: Window and largest channel packet we grant a server on a download channel.
DOWNLOAD_WINDOW = 8 * 1024 * 1024
DOWNLOAD_MAX_PACKET = 256 * 1024
#: Longest SFTP reply accepted (a reply announcing more is a broken or hostile server).
MAX_REPLY = 2 * 1024 * 1024
#: Raw request ids start here; ``SFTPClient.request_number`` counts up from 1.
RAW_ID_BASE = 0x40000000

_U32 = struct.Struct(">I")
_HEAD = struct.Struct(">IBI")  # length, type, request id
_WRITE_TAIL = struct.Struct(">QI")  # offset, data length
_READ_TAIL = struct.Struct(">QI")  # offset, length


class SftpStatus(Exception):
    """The server answered a request with an error status. ``text`` is the server's own
    words: kept for logs at DEBUG only, never shown to users (callers map ``code``)."""

    def __init__(self, code: int, text: str = "") -> None:
        super().__init__(f"SFTP status {code}")
        self.code = code
        self.text = text


class ProtocolError(Exception):
    """The server sent something that is not SFTP (or not what was asked)."""


# --- the receive buffer ----------------------------------------------------------------
class FastPipe(BufferedPipe):
    """A drop-in for paramiko's ``BufferedPipe`` (``Channel.in_buffer``) whose reads cost
    what they return: received chunks are kept as they came and read out with an offset.
    Installed per channel (never patched into the class)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._event = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._offset = 0  # bytes of _chunks[0] already read
        self._size = 0
        self._closed = False

    def set_event(self, event) -> None:
        with self._lock:
            self._event = event
            if self._closed or self._size > 0:
                event.set()
            else:
                event.clear()

    def feed(self, data) -> None:
        if not data:
            return
        with self._lock:
            if self._event is not None:
                self._event.set()
            self._chunks.append(bytes(data))
            self._size += len(data)
            self._cv.notify_all()

    def read_ready(self) -> bool:
        with self._lock:
            return self._size > 0

    def _wait(self, timeout: float | None) -> bool:
        """Wait (holding the lock) until data or close; False when closed and empty."""
        if self._size:
            return True
        if self._closed:
            return False
        if timeout == 0.0:
            raise PipeTimeout()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._size and not self._closed:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise PipeTimeout()
            self._cv.wait(remaining)
        return bool(self._size)

    def _taken(self, n: int) -> None:
        self._size -= n
        if not self._size and self._event is not None and not self._closed:
            self._event.clear()

    def read(self, nbytes: int, timeout: float | None = None) -> bytes:
        with self._lock:
            if not self._wait(timeout):
                return b""
            first = self._chunks[0]
            start = self._offset
            if start == 0 and len(first) <= nbytes:
                self._chunks.popleft()  # the common case: a whole chunk, no copy
                self._taken(len(first))
                return first
            end = min(len(first), start + nbytes)
            out = first[start:end]
            if end == len(first):
                self._chunks.popleft()
                self._offset = 0
            else:
                self._offset = end
            self._taken(len(out))
            return out

    def readinto(self, view: memoryview, timeout: float | None = None) -> int:
        """Copy up to ``len(view)`` bytes into *view*; 0 when closed and empty."""
        with self._lock:
            if not self._wait(timeout):
                return 0
            done = 0
            want = len(view)
            while done < want and self._chunks:
                first = self._chunks[0]
                start = self._offset
                n = min(len(first) - start, want - done)
                view[done : done + n] = first[start : start + n] if start or n < len(first) else first
                done += n
                if start + n == len(first):
                    self._chunks.popleft()
                    self._offset = 0
                else:
                    self._offset = start + n
            self._taken(done)
            return done

    def empty(self) -> bytes:
        with self._lock:
            data = b"".join(self._chunks)[self._offset :]
            self._chunks.clear()
            self._offset = 0
            self._taken(len(data))
            return data

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._cv.notify_all()
            if self._event is not None:
                self._event.set()

    def __len__(self) -> int:
        with self._lock:
            return self._size


def install_fast_pipe(channel) -> bool:
    """Replace the channel's receive buffer before any data arrived. Returns False (and
    leaves paramiko's own buffer) if this paramiko's channel does not look as expected."""
    current = getattr(channel, "in_buffer", None)
    if type(current) is not BufferedPipe or len(current):
        return False
    channel.in_buffer = FastPipe()
    return True


# --- raw requests on a channel ------------------------------------------------------------
class RawSftp:
    """SFTP requests and replies written and read directly on *channel*.

    Only for a channel nothing else reads while this is in use. Every blocking step
    waits at most *timeout* seconds (``socket.timeout``)."""

    def __init__(self, channel, timeout: float) -> None:
        self.channel = channel
        self.timeout = timeout
        self._next_id = RAW_ID_BASE
        pipe = channel.in_buffer
        self._pipe = pipe if isinstance(pipe, FastPipe) else None
        # Room for SFTP bytes in one channel packet (Channel keeps 64 bytes for headers).
        self._packet_room = max(1024, int(getattr(channel, "out_max_packet_size", 32768)) - 64)

    def new_id(self) -> int:
        rid = self._next_id
        self._next_id = RAW_ID_BASE + ((rid + 1 - RAW_ID_BASE) & 0x3FFFFFFF)
        return rid

    # --- sending ---
    def _sendall(self, data) -> None:
        channel = self.channel
        view = memoryview(data) if not isinstance(data, memoryview) else data
        while view:
            n = channel.send(view)
            if n <= 0:
                raise EOFError("the SFTP channel closed")
            view = view[n:]

    def send(self, header: bytes, payload: memoryview | None = None) -> None:
        """One request: its header, then the payload (sent from the caller's buffer; the
        first piece rides in the header's channel packet)."""
        if payload is None or not len(payload):
            self._sendall(header)
            return
        room = self._packet_room - len(header)
        if room > 0:
            self._sendall(header + payload[:room])
            if len(payload) > room:
                self._sendall(payload[room:])
        else:
            self._sendall(header)
            self._sendall(payload)

    # --- receiving ---
    def ready(self) -> bool:
        return self.channel.recv_ready()

    def recv_into(self, view: memoryview) -> int:
        """Read up to ``len(view)`` bytes of the stream into *view* (blocking)."""
        if self._pipe is None:
            data = self.channel.recv(len(view))
            view[: len(data)] = data
            n = len(data)
        else:
            try:
                n = self._pipe.readinto(view, self.timeout)
            except PipeTimeout:
                raise TimeoutError() from None
            self._window_consumed(n)
        if n == 0:
            raise EOFError("the SFTP channel closed")
        return n

    def _window_consumed(self, n: int) -> None:
        # What Channel.recv does after reading: give the window back to the server.
        channel = self.channel
        ack = channel._check_add_window(n)
        if ack > 0:
            from paramiko.common import cMSG_CHANNEL_WINDOW_ADJUST
            from paramiko.message import Message

            m = Message()
            m.add_byte(cMSG_CHANNEL_WINDOW_ADJUST)
            m.add_int(channel.remote_chanid)
            m.add_int(ack)
            channel.transport._send_user_message(m)

    def recv_exact(self, n: int) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        done = 0
        while done < n:
            done += self.recv_into(view[done:])
        return bytes(buf)

    def read_head(self) -> tuple[int, int, int]:
        """The next reply's (type, request id, bytes of body left to read)."""
        head = self.recv_exact(9)
        length, kind, rid = _HEAD.unpack(head)
        if length < 5 or length > MAX_REPLY:
            raise ProtocolError("bad SFTP reply length")
        return kind, rid, length - 5

    def read_reply(self) -> tuple[int, int, bytes]:
        kind, rid, left = self.read_head()
        return kind, rid, self.recv_exact(left) if left else b""

    # --- simple requests ---
    def init(self) -> int:
        """INIT/VERSION on a fresh channel (protocol version 3); returns the server's."""
        self._sendall(_HEAD.pack(5, FXP_INIT, 3))  # length, type, version (no request id)
        kind, version, _extensions = self.read_reply()
        if kind != FXP_VERSION:
            raise ProtocolError("not an SFTP server")
        return version

    def request(self, kind: int, body: bytes) -> tuple[int, bytes]:
        """A request that waits for its reply (nothing else may be outstanding)."""
        rid = self.new_id()
        self.send(_HEAD.pack(len(body) + 5, kind, rid) + body)
        rkind, rrid, data = self.read_reply()
        if rrid != rid:
            raise ProtocolError("unexpected SFTP reply")
        return rkind, data

    def open(self, path: bytes, flags: int) -> bytes:
        kind, data = self.request(FXP_OPEN, _string(path) + _U32.pack(flags) + _U32.pack(0))
        if kind == FXP_STATUS:
            raise status_of(data)
        if kind != FXP_HANDLE:
            raise ProtocolError("unexpected reply to OPEN")
        return _unstring(data)

    def fstat_size(self, handle: bytes) -> int | None:
        kind, data = self.request(FXP_FSTAT, _string(handle))
        if kind == FXP_STATUS:
            raise status_of(data)
        if kind != FXP_ATTRS or len(data) < 4:
            raise ProtocolError("unexpected reply to FSTAT")
        flags = _U32.unpack_from(data)[0]
        if flags & 0x1 and len(data) >= 12:
            return struct.unpack_from(">Q", data, 4)[0]
        return None

    def close_handle(self, handle: bytes) -> None:
        kind, data = self.request(FXP_CLOSE, _string(handle))
        if kind != FXP_STATUS:
            raise ProtocolError("unexpected reply to CLOSE")
        status = status_of(data)
        if status.code != FX_OK:
            raise status


def _string(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def _unstring(data: bytes) -> bytes:
    n = _U32.unpack_from(data)[0]
    return bytes(data[4 : 4 + n])


def status_of(body: bytes) -> SftpStatus:
    code = _U32.unpack_from(body)[0] if len(body) >= 4 else FX_FAILURE
    text = ""
    if len(body) >= 8:
        n = _U32.unpack_from(body, 4)[0]
        text = bytes(body[8 : 8 + n]).decode("utf-8", "replace")[:200]
    return SftpStatus(code, text)


# --- upload --------------------------------------------------------------------------------
def write_stream(raw: RawSftp, handle: bytes, source, *, request_size: int, outstanding: int = MAX_OUTSTANDING) -> int:
    """Write everything *source* (``readinto``) gives into the open *handle*, pipelined:
    up to *outstanding* write requests in flight, their replies collected as they come.
    Returns the bytes written; raises :class:`SftpStatus` for the first failed write."""
    buf = bytearray(request_size)
    view = memoryview(buf)
    handle_part = _string(handle)
    in_flight: set[int] = set()
    offset = 0
    failure: SftpStatus | None = None
    try:
        while True:
            n = source.readinto(buf)
            if not n:
                break
            rid = raw.new_id()
            header = _HEAD.pack(5 + len(handle_part) + 12 + n, FXP_WRITE, rid) + handle_part
            raw.send(header + _WRITE_TAIL.pack(offset, n), view[:n])
            in_flight.add(rid)
            offset += n
            while in_flight and (len(in_flight) >= outstanding or raw.ready()):
                failure = _collect_write_reply(raw, in_flight) or failure
                if failure is not None:
                    raise failure
        while in_flight:
            failure = _collect_write_reply(raw, in_flight) or failure
        if failure is not None:
            raise failure
    except SftpStatus:
        _drain(raw, in_flight)
        raise
    return offset


def _collect_write_reply(raw: RawSftp, in_flight: set[int]) -> SftpStatus | None:
    kind, rid, data = raw.read_reply()
    if rid not in in_flight or kind != FXP_STATUS:
        raise ProtocolError("unexpected reply to WRITE")
    in_flight.discard(rid)
    status = status_of(data)
    return None if status.code == FX_OK else status


def _drain(raw: RawSftp, in_flight: set[int]) -> None:
    """Read the replies still due (so the channel can be used again); give up quietly
    if the connection is gone."""
    try:
        while in_flight:
            _, rid, _ = raw.read_reply()
            in_flight.discard(rid)
    except Exception:  # noqa: BLE001 - the original error is what matters
        in_flight.clear()


# --- download -------------------------------------------------------------------------------
class ReadStream(io.RawIOBase):
    """A readable, streaming file object over an open handle: read requests of
    *request_size* pipelined ahead of the reader, data copied once, from the channel's
    buffer into the caller's. Memory is bounded by the channel window."""

    def __init__(
        self,
        raw: RawSftp,
        handle: bytes,
        *,
        offset: int,
        size: int | None,
        request_size: int,
        outstanding: int = MAX_OUTSTANDING,
        on_close=None,
    ) -> None:
        super().__init__()
        self._raw = raw
        self._handle_part = _string(handle)
        self._handle = handle
        self._request_size = request_size
        self._outstanding = outstanding
        self._on_close = on_close
        self.position = offset
        self._next_offset = offset  # where the next read request starts
        # Read ahead up to the size seen at open; past it, one request at a time
        # finds the end (or more data, if the file is longer).
        self._size_known = size is not None
        self._limit = size if size is not None else offset + request_size * outstanding
        self._queue: collections.deque[tuple[int, int, int]] = collections.deque()  # id, offset, length
        self._early: dict[int, tuple[int, bytes]] = {}  # replies that came out of order
        self._left = 0  # data bytes of the current DATA reply still in the channel
        self._stash: memoryview | None = None  # data of an out-of-order reply being consumed
        self._eof = False
        self._error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def _request(self) -> None:
        while len(self._queue) < self._outstanding and self._next_offset < self._limit:
            length = min(self._request_size, self._limit - self._next_offset)
            self._send_read(self._next_offset, length)
            self._next_offset += length
        if not self._queue:
            # Past the size seen at open: ask once more; EOF ends, data extends.
            self._send_read(self._next_offset, self._request_size)
            self._next_offset += self._request_size

    def _send_read(self, offset: int, length: int, *, front: bool = False) -> None:
        rid = self._raw.new_id()
        part = self._handle_part
        self._raw.send(_HEAD.pack(5 + len(part) + 12, FXP_READ, rid) + part + _READ_TAIL.pack(offset, length))
        if front:
            self._queue.appendleft((rid, offset, length))
        else:
            self._queue.append((rid, offset, length))

    def _next_reply(self) -> None:
        """Start on the reply to the oldest request: sets ``_left`` (data still in the
        channel) or ``_stash`` (data already read), or ``_eof``; asks again for the rest
        of a short reply."""
        while True:
            rid, offset, length = self._queue[0]
            early = self._early.pop(rid, None)
            if early is None:
                kind, left = self._await(rid)
                if kind == FXP_DATA:
                    n = self._data_length(_U32.unpack(self._raw.recv_exact(4))[0], left - 4, offset, length)
                    if n:
                        self._left = n
                        return
                    continue
                data = self._raw.recv_exact(left) if left else b""
            else:
                kind, data = early
            if kind == FXP_DATA:
                n = self._data_length(
                    _U32.unpack_from(data)[0] if len(data) >= 4 else -1, len(data) - 4, offset, length
                )
                if n:
                    self._stash = memoryview(data)[4:]
                    return
                continue
            self._queue.popleft()
            if kind != FXP_STATUS:
                raise ProtocolError("unexpected reply to READ")
            status = status_of(data)
            if status.code == FX_EOF:
                self._eof = True
                return
            raise status

    def _await(self, rid: int) -> tuple[int, int]:
        """Read reply heads until the one for *rid*; keep others that came first."""
        while True:
            kind, got, left = self._raw.read_head()
            if got == rid:
                return kind, left
            if not any(q[0] == got for q in self._queue) or len(self._early) >= self._outstanding:
                raise ProtocolError("unexpected reply to READ")
            self._early[got] = (kind, self._raw.recv_exact(left) if left else b"")

    def _data_length(self, n: int, body: int, offset: int, length: int) -> int:
        """Check a DATA reply's length, pop its request, re-ask for what it lacked."""
        if n < 0 or n > length or n != body:
            raise ProtocolError("bad DATA reply")
        self._queue.popleft()
        if not self._size_known and n:
            # No size from the server: keep reading ahead while data comes.
            self._limit = max(self._limit, offset + n + self._request_size * self._outstanding)
        if n < length:
            self._send_read(offset + n, length - n, front=True)
            if n >= 4096 and offset + length < self._limit:
                # A server that caps reads below what we asked: ask for what it gives.
                self._request_size = min(self._request_size, n)
        return n

    def readinto(self, buffer) -> int:
        """Fill *buffer* (like a buffered file: fewer bytes only at the end)."""
        if self._error is not None:
            raise self._error
        view = memoryview(buffer).cast("B")
        total = 0
        while total < len(view):
            n = self._readinto_once(view[total:])
            if not n:
                break
            total += n
        return total

    def _readinto_once(self, view: memoryview) -> int:
        try:
            while True:
                if self._stash is not None:
                    n = min(len(view), len(self._stash))
                    view[:n] = self._stash[:n]
                    self._stash = self._stash[n:] if n < len(self._stash) else None
                    self.position += n
                    return n
                if self._left:
                    n = self._raw.recv_into(view[: min(len(view), self._left)])
                    self._left -= n
                    self.position += n
                    if not self._left:
                        self._request()  # keep the pipeline full
                    return n
                if self._eof:
                    return 0
                self._request()
                self._next_reply()
        except BaseException as exc:
            self._error = exc
            raise

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        buf = bytearray(size)
        n = self.readinto(buf)
        return bytes(buf[:n]) if n < size else bytes(buf)

    def close(self) -> None:
        """Close the stream. Replies still due are not read: the stream's channel is
        its own, and closing it (``on_close``) ends the server's handle too."""
        if self.closed:
            return
        try:
            super().close()
        finally:
            if self._on_close is not None:
                self._on_close()
