"""age decryption of a stored archive, streamed (Django-free).

Decryption (X25519) runs in a child Python process by default: pyrage holds the GIL
while it works, so in-process it would stall the decompressing and hashing thread. The
child gets the identities on its stdin (never on the command line or in the
environment), then the ciphertext; a feeder thread here writes the stored bytes (hashed
by :class:`~jobs.engine.stored.RawReader`) to the child, and its stdout is the
``.tar.zst`` plaintext. Pipes bound the memory; the child also uses the second core.
:class:`ThreadDecryptor` runs pyrage in a thread of this process instead (same result,
less parallel), for hosts where starting ``sys.executable`` is not possible.

Both offer ``output`` (the plaintext stream), ``finish()`` (wait; the error, if any) and
``abort()``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import threading
from collections.abc import Iterable
from typing import BinaryIO

from jobs.engine.stored import CHUNK, RawReader, SourceReadError

_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class DecryptionError(Exception):
    """No identity was given for an encrypted archive, or an identity is malformed."""


def identity_lines(identities: Iterable) -> list[str]:
    lines = []
    for identity in identities:
        text = str(identity).strip()
        if not text.startswith("AGE-SECRET-KEY-") or any(c.isspace() for c in text):
            raise DecryptionError("Not an age identity (it starts with “AGE-SECRET-KEY-”).")
        lines.append(text)
    if not lines:
        raise DecryptionError("The archive is encrypted: an age identity is needed to read it.")
    return lines


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


def grow_pipe(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETPIPE_SZ, CHUNK)


class ProcessDecryptor:
    """age in a child process; a feeder thread pumps the (hashed) stored bytes into it."""

    def __init__(self, raw: RawReader, identities: list[str]) -> None:
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
        grow_pipe(self._proc.stdin.fileno())
        grow_pipe(self._proc.stdout.fileno())
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


class ThreadDecryptor:
    """age with pyrage in a thread of this process, writing into a pipe we read."""

    def __init__(self, raw: RawReader, identities: list[str]) -> None:
        import pyrage

        objects = [pyrage.x25519.Identity.from_str(line) for line in identities]
        read_fd, write_fd = os.pipe()
        grow_pipe(write_fd)
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
