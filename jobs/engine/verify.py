"""Check a stored archive against its manifest in one streaming pass (Django-free).

    stored bytes ─► sha256 + size ─► [age decrypt] ─► zstd ─► tar (stream mode) ─► sha256 per file

Nothing is ever held whole: the stored file is read in 1 MiB chunks, zstd is read through
a bounded reader (a "zip bomb" costs time, never memory), tar is parsed with
``tarfile`` in stream mode (``"r|"``) and each member's data is hashed chunk by chunk.
What grows with the archive is only the manifest's member table, which the caller
already holds.

Decryption (age, X25519) runs in a child Python process by default: pyrage holds the GIL
while it works, so in-process it would stall the decompressing and hashing thread. The
child gets the identities on its stdin (never on the command line or in the
environment), then the ciphertext; a feeder thread here hashes the stored bytes and
writes them to the child, and its stdout is the ``.tar.zst`` plaintext. Pipes bound the
memory; the child also uses the second core. ``decrypt_in="thread"`` runs pyrage in a
thread of this process instead (same result, less parallel), for hosts where starting
``sys.executable`` is not possible.

:class:`ArchiveReader` is that pipeline; :func:`verify_archive` uses it to compare every
member with the manifest, and ``jobs.engine.restore`` uses it to extract.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import zstandard

CHUNK = 1 << 20
# tarfile's stream buffer: small on purpose. tarfile copies what is left of its buffer on
# every header read, so a large buffer costs O(buffer) per member.
TAR_BUFSIZE = 16 * 1024
MAX_PROBLEMS = 50
AGE_MAGIC = b"age-encryption.org/v1\n"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

ProgressCallback = Callable[[int, int], None]


class StreamError(Exception):
    """The archive cannot be read past some point (damaged, truncated, wrong key).

    ``member`` is the member being read when it happened ("" between members)."""

    def __init__(self, message: str, member: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.member = member

    def __str__(self) -> str:
        return self.message


class SourceReadError(Exception):
    """Reading the stored archive itself failed (disk, network): no verdict on the
    archive. ``__cause__`` is the original exception."""


class DecryptionError(Exception):
    """No identity was given for an encrypted archive, or an identity is malformed."""


# --- the stored bytes ----------------------------------------------------------------
class _RawReader:
    """Reads the stored stream in large chunks, hashing and counting every byte once."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._hash = hashlib.sha256()
        self._pending = b""
        self.size = 0
        self.eof = False

    def _pull(self, n: int) -> bytes:
        try:
            data = self._stream.read(n)
        except Exception as exc:  # any backend error: no verdict on the archive
            raise SourceReadError(f"Reading the archive failed: {exc}") from exc
        if not data:
            self.eof = True
            return b""
        if not isinstance(data, bytes):
            data = bytes(data)
        self._hash.update(data)
        self.size += len(data)
        return data

    def peek(self, n: int) -> bytes:
        """The first *n* bytes, kept for the next read (used to sniff the format)."""
        while len(self._pending) < n and not self.eof:
            chunk = self._pull(n - len(self._pending))
            self._pending += chunk
        return self._pending[:n]

    def read(self, n: int = -1) -> bytes:
        if self._pending:
            if n < 0 or n >= len(self._pending):
                data, self._pending = self._pending, b""
            else:
                data, self._pending = self._pending[:n], self._pending[n:]
            return data
        if self.eof:
            return b""
        if n is None or n < 0:
            n = CHUNK
        data = self._pull(max(n, CHUNK))  # large reads from the backend, even for small asks
        if len(data) > n:
            data, self._pending = data[:n], data[n:]
        return data

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        """Read (and hash) whatever is left."""
        self._pending = b""
        while not self.eof:
            self._pull(CHUNK)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _identity_lines(identities: Iterable) -> list[str]:
    lines = []
    for identity in identities:
        text = str(identity).strip()
        if not text.startswith("AGE-SECRET-KEY-") or any(c.isspace() for c in text):
            raise DecryptionError("Not an age identity (it starts with “AGE-SECRET-KEY-”).")
        lines.append(text)
    if not lines:
        raise DecryptionError("The archive is encrypted: an age identity is needed to read it.")
    return lines


# --- decryption ------------------------------------------------------------------------
_CHILD = r"""
import io, sys
import pyrage
src = io.BufferedReader(io.FileIO(0, "rb", closefd=False), 1 << 20)
ids = []
while True:
    line = src.readline().strip()
    if not line:
        break
    ids.append(pyrage.x25519.Identity.from_str(line.decode("ascii")))
out = io.BufferedWriter(io.FileIO(1, "wb", closefd=False), 1 << 20)
try:
    pyrage.decrypt_io(src, out, ids)
    out.flush()
except BrokenPipeError:
    sys.exit(3)
except Exception as exc:
    sys.stderr.write(f"{type(exc).__name__}: {exc}"[:300].replace("\n", " ") + "\n")
    sys.exit(2)
"""


def _grow_pipe(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETPIPE_SZ, CHUNK)


class _ProcessDecryptor:
    """age in a child process; a feeder thread pumps the (hashed) stored bytes into it."""

    def __init__(self, raw: _RawReader, identities: list[str]) -> None:
        self._raw = raw
        self._feed_error: BaseException | None = None
        self._proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
            close_fds=True,
        )
        _grow_pipe(self._proc.stdin.fileno())
        _grow_pipe(self._proc.stdout.fileno())
        self.output: BinaryIO = self._proc.stdout
        self._secret = ("\n".join(identities) + "\n\n").encode("ascii")
        self._thread = threading.Thread(target=self._feed, name="verify-feeder", daemon=True)
        self._thread.start()

    def _write(self, data) -> None:
        view = memoryview(data)
        while view:
            written = self._proc.stdin.write(view)
            view = view[written:]

    def _feed(self) -> None:
        try:
            self._write(self._secret)
            self._secret = b""
            while chunk := self._raw.read(CHUNK):
                self._write(chunk)
        except (BrokenPipeError, ValueError):
            pass  # the child stopped reading (finished, failed or was stopped): not ours to report
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self._feed_error = exc
        finally:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()

    def finish(self) -> str | None:
        """Wait for the child; return its error message, if any. Raises SourceReadError
        if reading the stored archive failed."""
        # Read what the child still writes first (nobody else will), so that it can end
        # and the feeder, which may be blocked writing to it, can finish too.
        with contextlib.suppress(OSError):
            while self.output.read(CHUNK):
                pass
        self._thread.join()
        err = self._proc.stderr.read().decode("utf-8", "replace").strip()
        code = self._proc.wait()
        self._close_pipes()
        if self._feed_error is not None:
            raise self._feed_error
        if code == 0:
            return None
        return err.splitlines()[-1] if err else f"the decryption process exited with status {code}"

    def _close_pipes(self) -> None:
        for pipe in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
            with contextlib.suppress(OSError):
                pipe.close()

    def abort(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._close_pipes()
        self._proc.wait()
        self._thread.join(timeout=60)


class _ThreadDecryptor:
    """age with pyrage in a thread of this process, writing into a pipe we read."""

    def __init__(self, raw: _RawReader, identities: list[str]) -> None:
        import pyrage

        objects = [pyrage.x25519.Identity.from_str(line) for line in identities]
        read_fd, write_fd = os.pipe()
        _grow_pipe(write_fd)
        self.output: BinaryIO = open(read_fd, "rb", buffering=0)  # noqa: SIM115 - closed in finish/abort
        self._writer = open(write_fd, "wb", buffering=CHUNK)  # noqa: SIM115
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(pyrage, raw, objects), name="verify-decrypt", daemon=True
        )
        self._thread.start()

    def _run(self, pyrage, raw, objects) -> None:
        try:
            pyrage.decrypt_io(raw, self._writer, objects)
            self._writer.flush()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self._error = exc
        finally:
            with contextlib.suppress(OSError, ValueError):
                self._writer.close()

    def finish(self) -> str | None:
        with contextlib.suppress(OSError):
            while self.output.read(CHUNK):
                pass
        self._thread.join()
        self.output.close()
        exc = self._error
        if exc is None:
            return None
        if isinstance(exc, SourceReadError):
            raise exc
        if isinstance(exc.__cause__, SourceReadError) or isinstance(exc.__context__, SourceReadError):
            raise exc.__cause__ or exc.__context__
        if isinstance(exc, BrokenPipeError):
            return None
        return f"{type(exc).__name__}: {exc}"[:300].replace("\n", " ")

    def abort(self) -> None:
        self.output.close()
        self._thread.join(timeout=60)


# --- the pipeline ---------------------------------------------------------------------
class _FrameSplitter:
    """Passes a zstd stream through unchanged, but ends a read just before each frame's
    content checksum and hands the checksum over in a read of its own.

    python-zstandard raises on a bad content checksum and drops the output of that same
    call, which can be the frame's last block of data. With the checksum read on its own
    (and ``readinto1``: one source read per call), every byte of data reaches tar before
    the error, so the member checksums still say which file is damaged.

    Only frame and block headers are looked at (a few bytes per 128 KiB block). If they
    do not parse (a damaged or foreign stream) the splitter stops splitting: it never
    changes the bytes, only where reads end."""

    def __init__(self, source) -> None:
        self._source = source
        self._buf = b""
        self._off = 0  # next byte to hand out, in _buf
        self._base = 0  # stream offset of _buf[0]
        self._eof = False
        self._at = 0  # stream offset of the next header to parse
        self._in_frame = False
        self._checksum = False
        self._dead = False
        self._cuts: list[int] = []  # stream offsets where a read must end

    @property
    def exhausted(self) -> bool:
        return self._eof and self._off >= len(self._buf)

    def _fill(self, keep: bool) -> bool:
        chunk = self._source.read(CHUNK)
        if not chunk:
            self._eof = True
            return False
        if keep and self._off < len(self._buf):
            self._base += self._off
            self._buf = self._buf[self._off :] + chunk
        else:
            self._base += len(self._buf)
            self._buf = chunk
        self._off = 0
        return True

    def _parse(self) -> bool:
        """Parse the headers lying in the buffer. Returns True when a header is cut by
        the end of the buffer (more data is needed to go on)."""
        buf, base = self._buf, self._base
        while not self._dead:
            rel = self._at - base
            avail = len(buf) - rel
            if avail <= 0:
                return False
            if not self._in_frame:
                if avail < 8:
                    return True
                magic = buf[rel : rel + 4]
                if magic == ZSTD_MAGIC:
                    fhd = buf[rel + 4]
                    single = (fhd >> 5) & 1
                    fcs = (1 if single else 0, 2, 4, 8)[fhd >> 6]
                    did = (0, 1, 2, 4)[fhd & 3]
                    self._at += 5 + (0 if single else 1) + did + fcs
                    self._checksum = bool(fhd & 4)
                    self._in_frame = True
                elif magic[1:] == b"\x2a\x4d\x18" and magic[0] & 0xF0 == 0x50:  # a skippable frame
                    self._at += 8 + int.from_bytes(buf[rel + 4 : rel + 8], "little")
                else:
                    self._dead = True
            else:
                if avail < 3:
                    return True
                header = int.from_bytes(buf[rel : rel + 3], "little")
                kind, size = (header >> 1) & 3, header >> 3
                if kind == 3:
                    self._dead = True
                    break
                self._at += 3 + (1 if kind == 1 else size)
                if header & 1:  # the last block of the frame
                    self._in_frame = False
                    if self._checksum:
                        self._cuts += [self._at, self._at + 4]
                        self._at += 4
        return False

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = CHUNK
        if self._off >= len(self._buf) and (self._eof or not self._fill(keep=False)):
            return b""
        while self._parse() and not self._eof:
            self._fill(keep=True)
        pos = self._base + self._off
        end = self._base + len(self._buf)
        while self._cuts and self._cuts[0] <= pos:
            del self._cuts[0]
        if self._cuts and self._cuts[0] < end:
            end = self._cuts[0]
        k = min(n, end - pos)
        whole = self._off == 0 and k == len(self._buf)
        data = self._buf if whole else self._buf[self._off : self._off + k]
        self._off += k
        return data


class _ZstdRaw(io.RawIOBase):
    """zstd's stream reader as a raw stream for ``io.BufferedReader``: one source read
    per call (``readinto1``), 0 only at the real end, and a content-checksum mismatch
    turned into a flag (all the data was delivered before it; see :class:`_FrameSplitter`)."""

    def __init__(self, reader, source: _FrameSplitter) -> None:
        super().__init__()
        self._reader = reader
        self._source = source
        self.checksum_failed = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.checksum_failed:
            return 0
        while True:
            try:
                n = self._reader.readinto1(buffer)
            except zstandard.ZstdError as exc:
                if "checksum" not in str(exc):
                    raise
                self.checksum_failed = True
                return 0
            if n or self._source.exhausted:
                return n


class ArchiveReader:
    """One pass over a stored archive, as tar members and their data.

    Use as a context manager; iterate :meth:`members`, read file data with
    :meth:`member_chunks` (or skip it: the next member is found anyway), then call
    :meth:`finish` to read the rest, which returns the problems found after the last
    member. ``raw_size`` / ``raw_sha256`` describe the stored bytes once finished.

    *encrypted*: ``True``/``False``, or ``None`` to tell from the first bytes.
    """

    def __init__(
        self,
        stream: BinaryIO,
        *,
        encrypted: bool | None = None,
        identities: Iterable | None = None,
        decrypt_in: str = "process",
    ) -> None:
        if decrypt_in not in ("process", "thread"):
            raise ValueError("decrypt_in must be 'process' or 'thread'.")
        self.raw = _RawReader(stream)
        self._encrypted = encrypted
        self._identities = list(identities) if identities is not None else None
        self._decrypt_in = decrypt_in
        self._decryptor: _ProcessDecryptor | _ThreadDecryptor | None = None
        self._tar: tarfile.TarFile | None = None
        self._zstd: _ZstdRaw | None = None
        self._finished = False
        self.last = ""  # the last member reached

    # context management
    def __enter__(self) -> ArchiveReader:
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def encrypted(self) -> bool:
        return bool(self._encrypted)

    def _open(self) -> None:
        self._start_error = None
        head = self.raw.peek(len(AGE_MAGIC))
        looks_encrypted = head == AGE_MAGIC
        if self._encrypted is None:
            self._encrypted = looks_encrypted
        elif self._encrypted != looks_encrypted and (looks_encrypted or head.startswith(ZSTD_MAGIC)):
            said = "encrypted" if self._encrypted else "not encrypted"
            found = "age-encrypted" if looks_encrypted else "a plain zstd stream"
            self._start_error = f"the archive is {found}, but its manifest says it is {said}"
            return
        plain: BinaryIO = self.raw  # type: ignore[assignment]
        if self._encrypted:
            lines = _identity_lines(self._identities or [])
            self._decryptor = None
            if self._decrypt_in == "process" and sys.executable:
                try:
                    self._decryptor = _ProcessDecryptor(self.raw, lines)
                except OSError:  # no usable interpreter to start (embedded Python): stay in-process
                    self._decryptor = None
            if self._decryptor is None:
                self._decryptor = _ThreadDecryptor(self.raw, lines)
            plain = self._decryptor.output
        source = _FrameSplitter(plain)
        zreader = zstandard.ZstdDecompressor().stream_reader(
            source, read_size=CHUNK, read_across_frames=True, closefd=False
        )
        self._zstd = _ZstdRaw(zreader, source)
        self._buffer = io.BufferedReader(self._zstd, CHUNK)
        try:
            self._tar = tarfile.open(fileobj=self._buffer, mode="r|", bufsize=TAR_BUFSIZE)  # noqa: SIM115
        except (tarfile.TarError, zstandard.ZstdError, OSError, EOFError) as exc:
            self._tar = None
            self._start_error = self._describe(exc)

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, SourceReadError):
            raise exc
        if isinstance(exc, zstandard.ZstdError):
            return f"zstd: {str(exc).removeprefix('zstd decompress error: ')}"
        if isinstance(exc, tarfile.ReadError) and str(exc) in ("empty file", "unexpected end of data"):
            return "unexpected end of data"
        return f"{type(exc).__name__}: {exc}" if not isinstance(exc, tarfile.TarError) else f"tar: {exc}"

    def members(self) -> Iterator[tarfile.TarInfo]:
        """Yield each member (a TarInfo). Raises :class:`StreamError` when the stream
        cannot be read further. tarfile's list of members is emptied as we go, so memory
        does not grow with the number of members."""
        if self._start_error is not None:
            raise StreamError(self._start_error)
        tar = self._tar
        while True:
            try:
                info = tar.next()
            except (tarfile.TarError, zstandard.ZstdError, OSError, EOFError) as exc:
                raise StreamError(self._describe(exc)) from None
            tar.members.clear()
            if info is None:
                return
            yield info
            self.last = info.name

    def member_chunks(self, info: tarfile.TarInfo) -> Iterator[bytes]:
        """The data of the current member, in chunks of at most 1 MiB.

        Reads the tar stream directly (what ``extractfile`` does, without its two extra
        buffering layers); tarfile skips the padding when asked for the next member."""
        read = self._tar.fileobj.read
        remaining = info.size
        try:
            while remaining:
                chunk = read(CHUNK if remaining > CHUNK else remaining)
                if not chunk:
                    raise StreamError("unexpected end of data", info.name)
                remaining -= len(chunk)
                yield chunk
        except (tarfile.TarError, zstandard.ZstdError, OSError, EOFError) as exc:
            raise StreamError(self._describe(exc), info.name) from None

    def finish(self) -> list[str]:
        """Read everything that is left (hashing the stored bytes to the end) and return
        problems found there: data after the end of the tar, zstd or age errors."""
        problems: list[str] = []
        if self._finished:
            return problems
        self._finished = True
        if self._tar is not None:
            try:
                read = self._tar.fileobj.read
                while chunk := read(CHUNK):
                    if chunk.count(0) != len(chunk):
                        after = f" after {self.last}" if self.last else ""
                        problems.append(f"archive damaged{after}: unreadable tar header, the rest cannot be read")
                        break
                while self._buffer.read(CHUNK):  # also reaches zstd's checksum at the end
                    pass
            except (zstandard.ZstdError, OSError, EOFError, tarfile.TarError) as exc:
                problems.append(f"archive damaged near its end ({self._describe(exc)})")
            if self._zstd is not None and self._zstd.checksum_failed:
                problems.append("archive damaged: zstd's checksum of the decompressed data does not match")
        if self._decryptor is not None:
            decryptor, self._decryptor = self._decryptor, None
            error = decryptor.finish()
            if error:
                problems.append(f"decryption failed ({error})")
        self.raw.drain()
        return problems

    def close(self) -> None:
        if self._decryptor is not None:
            decryptor, self._decryptor = self._decryptor, None
            decryptor.abort()

    @property
    def raw_size(self) -> int:
        return self.raw.size

    @property
    def raw_sha256(self) -> str:
        return self.raw.hexdigest()

    def failure_cause(self) -> str | None:
        """After a StreamError: the underlying cause, if known: the decryptor's error
        (it is let finish first) or zstd's content checksum."""
        if self._decryptor is not None:
            decryptor, self._decryptor = self._decryptor, None
            error = decryptor.finish()
            if error:
                return f"decryption failed: {error}"
        if self._zstd is not None and self._zstd.checksum_failed:
            return "zstd: the decompressed data does not match its checksum"
        return None


# --- verification ---------------------------------------------------------------------
@dataclass
class VerifyResult:
    ok: bool = False
    archive_sha256: str = ""
    problems: list[str] = field(default_factory=list)
    members_checked: int = 0  # file members whose size and sha256 were compared
    bytes: int = 0  # stored bytes read (and hashed)
    content_bytes: int = 0  # bytes of file data hashed
    problem_count: int = 0  # all problems, also those beyond MAX_PROBLEMS
    contents_checked: bool = True  # False: encrypted and no identity: only the stored bytes were checked
    seconds: float = 0.0
    where: str = ""  # set by callers: what was read ("the local copy", a destination)

    def add(self, problem: str) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)

    @property
    def message(self) -> str:
        """One line for logs, e-mails and the command's error."""
        if self.ok:
            if not self.contents_checked:
                return (
                    f"Archive checksum OK ({self.bytes} bytes); contents not checked (encrypted, and no key was given)."
                )
            return f"OK: {self.members_checked} files match the manifest (sha256 {self.archive_sha256})."
        if not self.problems:
            return "Verification failed."
        more = self.problem_count - 1
        return self.problems[0] + (f" (and {more} more problem{'s' if more != 1 else ''})" if more else "")


def _manifest_table(manifest: dict) -> dict[str, dict]:
    table = {}
    for member in manifest.get("members") or []:
        path = str(member.get("path", ""))
        key = path.rstrip("/") if member.get("type") == "dir" else path
        table[key] = member
    return table


def _kind(info: tarfile.TarInfo) -> str:
    if info.isreg():
        return "file"
    if info.isdir():
        return "dir"
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hardlink"
    if info.ischr() or info.isblk():
        return "device"
    if info.isfifo():
        return "fifo"
    return "other"


def expected_archive(manifest: dict) -> tuple[int, str, bool]:
    """(size, sha256, encrypted) of the stored archive according to *manifest*."""
    archive = manifest.get("archive")
    if not isinstance(archive, dict) or not isinstance(archive.get("size"), int) or not archive.get("sha256"):
        raise ValueError("The manifest does not describe its archive (size and sha256).")
    return archive["size"], str(archive["sha256"]).lower(), bool(archive.get("encryption"))


def archive_problems(size: int, sha256: str, exp_size: int, exp_sha256: str) -> list[str]:
    if size < exp_size:
        return [f"archive truncated: {size} of {exp_size} bytes"]
    if size > exp_size:
        return [f"archive has {size - exp_size} bytes more than the manifest says ({size} instead of {exp_size})"]
    if sha256 != exp_sha256:
        return [f"archive checksum mismatch (sha256 {sha256}, the manifest says {exp_sha256})"]
    return []


def stream_problem(exc: StreamError, last: str, truncated: bool, cause: str | None) -> str:
    reason = cause or exc.message
    if exc.member:
        if truncated:
            return f"{exc.member}: archive truncated inside this member"
        return f"{exc.member}: archive damaged inside this member ({reason})"
    where = f" after {last}" if last else ""
    if truncated:
        return f"archive truncated{where}"
    return f"archive unreadable{where} ({reason})"


def verify_archive(
    stream: BinaryIO,
    manifest: dict,
    identities: Iterable | None = None,
    progress: ProgressCallback | None = None,
    *,
    decrypt_in: str = "process",
    progress_interval: float = 0.5,
) -> VerifyResult:
    """Check *stream* (the stored archive, read once) against *manifest*.

    Compares the stored bytes' size and sha256, decrypts (when the manifest says the
    archive is encrypted and *identities* are given: "AGE-SECRET-KEY-…" strings or
    pyrage identities), decompresses and parses the tar, and compares every member
    with the manifest: file sizes and sha256, directory and symlink entries, members
    missing or unexpected. Without identities an encrypted archive's stored bytes are
    still checked, and ``contents_checked`` is False.

    Problems name the member(s) concerned, first ones first. Raises
    :class:`SourceReadError` when the stored stream itself cannot be read (a network or
    disk error says nothing about the archive) and :class:`DecryptionError` for a
    malformed identity. *progress* is called with (stored bytes read, expected size).
    """
    started = time.monotonic()
    exp_size, exp_sha, encrypted = expected_archive(manifest)
    result = VerifyResult()
    last_report = time.monotonic()

    def report(force: bool = False) -> None:
        nonlocal last_report
        if progress is None:
            return
        now = time.monotonic()
        if force or now - last_report >= progress_interval:
            last_report = now
            progress(reader.raw_size, exp_size)

    if encrypted and identities is None:
        raw = _RawReader(stream)
        raw.drain()
        result.contents_checked = False
        for problem in archive_problems(raw.size, raw.hexdigest(), exp_size, exp_sha):
            result.add(problem)
        result.bytes, result.archive_sha256 = raw.size, raw.hexdigest()
        result.ok = result.problem_count == 0
        result.seconds = time.monotonic() - started
        return result

    table = _manifest_table(manifest)
    seen: set[str] = set()
    broken: StreamError | None = None
    with ArchiveReader(stream, encrypted=encrypted, identities=identities, decrypt_in=decrypt_in) as reader:
        try:
            for info in reader.members():
                name = info.name
                entry = table.get(name)
                if entry is None:
                    result.add(f"{name}: unexpected member (not in the manifest)")
                    continue
                if name in seen:
                    result.add(f"{name}: appears twice in the archive")
                    continue
                seen.add(name)
                kind, want = _kind(info), entry.get("type")
                if kind != want:
                    result.add(f"{name}: is a {kind} in the archive, a {want} in the manifest")
                    continue
                if kind == "symlink":
                    if info.linkname != entry.get("target"):
                        result.add(f"{name}: link target differs from the manifest")
                elif kind == "file":
                    if info.sparse is not None:
                        result.add(f"{name}: sparse member (the engine never writes these)")
                        continue
                    digest = hashlib.sha256()
                    for chunk in reader.member_chunks(info):
                        digest.update(chunk)
                        result.content_bytes += len(chunk)
                        report()
                    result.members_checked += 1
                    if info.size != entry.get("size"):
                        result.add(f"{name}: size mismatch ({info.size} bytes, the manifest says {entry.get('size')})")
                    elif digest.hexdigest() != entry.get("sha256"):
                        result.add(f"{name}: checksum mismatch")
                report()
        except StreamError as exc:
            broken = exc
            cause = reader.failure_cause()
            trailing: list[str] = []
        else:
            cause = None
            trailing = reader.finish()
        reader.raw.drain()
        size, sha = reader.raw_size, reader.raw_sha256

    raw_problems = archive_problems(size, sha, exp_size, exp_sha)
    if broken is not None:
        result.add(stream_problem(broken, reader.last, size < exp_size, cause))
    else:
        for problem in trailing:
            result.add(problem)
    missing = [member.get("path") for key, member in table.items() if key not in seen]
    if broken is not None or trailing:
        if missing:
            result.add(f"{len(missing)} member(s) of the manifest not checked: the archive cannot be read that far")
    else:
        for path in missing:
            result.add(f"{path}: missing from the archive")
    for problem in raw_problems:
        result.add(problem)
    result.bytes, result.archive_sha256 = size, sha
    result.ok = result.problem_count == 0
    result.seconds = time.monotonic() - started
    if progress is not None:
        progress(size, exp_size)
    return result
