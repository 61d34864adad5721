"""One streaming pass over a stored archive, as tar members and their data (Django-free).

    stored bytes ─► sha256 + size ─► [age decrypt] ─► zstd ─► tar (stream mode) ─► members

Nothing is ever held whole: the stored file is read in 1 MiB chunks
(:mod:`jobs.engine.stored`), decrypted in a child process (:mod:`jobs.engine.decrypt`),
zstd is read through a bounded reader (a "zip bomb" costs time, never memory;
:mod:`jobs.engine.zstdframes`), tar is parsed with ``tarfile`` in stream mode (``"r|"``)
and each member's data is handed out chunk by chunk.

:class:`ArchiveReader` is that pipeline; ``jobs.engine.verify`` uses it to compare every
member with the manifest, and ``jobs.engine.restore`` uses it to extract.
"""

from __future__ import annotations

import io
import sys
import tarfile
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

import zstandard

from jobs.engine.decrypt import ProcessDecryptor, ThreadDecryptor, identity_lines
from jobs.engine.stored import CHUNK, RawReader, SourceReadError
from jobs.engine.zstdframes import ZSTD_MAGIC, FrameSplitter, ZstdRaw

# tarfile's stream buffer: small on purpose. tarfile copies what is left of its buffer on
# every header read, so a large buffer costs O(buffer) per member.
TAR_BUFSIZE = 16 * 1024
AGE_MAGIC = b"age-encryption.org/v1\n"

#: Called with (stored bytes read so far, the archive's expected size).
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
        self.raw = RawReader(stream)
        self._encrypted = encrypted
        self._identities = list(identities) if identities is not None else None
        self._decrypt_in = decrypt_in
        self._decryptor: ProcessDecryptor | ThreadDecryptor | None = None
        self._tar: tarfile.TarFile | None = None
        self._zstd: ZstdRaw | None = None
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
            lines = identity_lines(self._identities or [])
            self._decryptor = None
            if self._decrypt_in == "process" and sys.executable:
                try:
                    self._decryptor = ProcessDecryptor(self.raw, lines)
                except OSError:  # no usable interpreter to start (embedded Python): stay in-process
                    self._decryptor = None
            if self._decryptor is None:
                self._decryptor = ThreadDecryptor(self.raw, lines)
            plain = self._decryptor.output
        source = FrameSplitter(plain)
        zreader = zstandard.ZstdDecompressor().stream_reader(
            source, read_size=CHUNK, read_across_frames=True, closefd=False
        )
        self._zstd = ZstdRaw(zreader, source)
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
