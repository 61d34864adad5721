"""zstd stream helpers for reading archives (Django-free): a splitter that keeps every
byte of data ahead of a frame's content checksum, and a raw-stream adapter.
"""

from __future__ import annotations

import io

import zstandard

from jobs.engine.stored import CHUNK

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class FrameSplitter:
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


class ZstdRaw(io.RawIOBase):
    """zstd's stream reader as a raw stream for ``io.BufferedReader``: one source read
    per call (``readinto1``), 0 only at the real end, and a content-checksum mismatch
    turned into a flag (all the data was delivered before it; see :class:`FrameSplitter`)."""

    def __init__(self, reader, source: FrameSplitter) -> None:
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
