"""The stored bytes of an archive, read once (Django-free).

:class:`RawReader` reads the stored stream (a local file or a destination's download) in
1 MiB chunks and hashes and counts every byte exactly once, whatever reads it next
(the decryptor, zstd): the archive's size and sha256 come from here. A failure to read
the stream itself (disk, network) is a :class:`SourceReadError`: it says nothing about
the archive.
"""

from __future__ import annotations

import hashlib
from typing import BinaryIO

CHUNK = 1 << 20


class SourceReadError(Exception):
    """Reading the stored archive itself failed (disk, network): no verdict on the
    archive. ``__cause__`` is the original exception."""


class RawReader:
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
