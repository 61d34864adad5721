"""The Celery app the real-worker tests start (``celery -A tests.worker_app worker``).

It is the production app (``backupsite.celery``) plus two test-only kinds:

* the source kind ``sleepy``, whose "dump" is a real ``sleep`` program run through
  ``run_tool`` like a database dump. It keeps a run in its archive phase, with its
  temporary files in the staging folder and its heartbeat going, for as long as a test
  needs: no real source can be made slow on demand without writing gigabytes first;
* the destination kind ``relay``: a local folder (the "server hard drive" kind) whose
  every upload also streams each byte over a real TCP connection to a receiver the test
  runs (``tests/stack.py``, usually behind ``tests/tcpproxy.py``), which confirms the
  byte count at the end. The test slows that connection down, cuts it mid-transfer or
  refuses it, and the upload sees what a network destination sees (a reset, a refused
  connection: TransientError). It stands in for SFTP until that kind is on main.

``chatty`` (a sleepy source that logs from two threads) feeds the structured-log tests.

Claiming, heartbeats, the reaper, the sweep, uploads, retries and cancellation are the
production code.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "backupsite.settings")
django.setup()

import socket  # noqa: E402
from dataclasses import dataclass  # noqa: E402

from backupsite.celery import app  # noqa: E402
from destinations.backends import REGISTRY as DESTINATION_KINDS  # noqa: E402
from destinations.backends.base import TransientError  # noqa: E402
from destinations.backends.local import LocalBackend, LocalConf, LocalSession, oserror  # noqa: E402
from jobs.sources import REGISTRY  # noqa: E402
from jobs.sources.dbtools import DumpSource, run_tool  # noqa: E402


class SleepySource(DumpSource):
    kind = "sleepy"
    label = "Sleepy (tests only)"
    title = "Sleepy"
    temp_prefix = "sleepy"

    @property
    def conf(self):
        return None

    def describe(self) -> str:
        return "sleep"

    def dump_name(self) -> str:
        return "sleepy.bin"

    def size(self) -> int:
        return 1

    def write_dump(self, target: Path, staging: Path) -> None:
        run_tool(["sleep", str(int(self.settings.get("seconds", 120)))])
        target.write_bytes(b"z")


REGISTRY[SleepySource.kind] = SleepySource


@dataclass(frozen=True)
class RelayConf(LocalConf):
    relay_host: str = "127.0.0.1"
    relay_port: int = 0


class RelaySession(LocalSession):
    def _write(self, source, remote_path):
        conf = self.backend.conf
        try:
            sock = socket.create_connection((conf.relay_host, conf.relay_port), timeout=self.backend.timeout)
        except OSError as exc:
            raise TransientError(f"Could not connect to the relay ({exc.strerror or type(exc).__name__}).") from None
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        try:
            with sock, os.fdopen(os.open(remote_path, flags, 0o666), "wb") as out:
                buf = bytearray(64 * 1024)
                view = memoryview(buf)
                while n := source.readinto(buf):
                    sock.sendall(view[:n])
                    out.write(view[:n])
                sock.shutdown(socket.SHUT_WR)
                answer = sock.recv(64)
                if not answer.startswith(b"OK "):
                    raise TransientError("The relay did not confirm the upload (the connection was cut).")
        except TransientError:
            raise
        except (ConnectionError, TimeoutError) as exc:
            raise TransientError(f"The connection to the relay was cut ({type(exc).__name__}).") from None
        except OSError as exc:
            raise oserror(exc, "writing through the relay") from None


class RelayBackend(LocalBackend):
    kind = "relay"
    label = "Relay (tests only)"
    conf_class = RelayConf

    def session(self):
        return RelaySession(self, self.base_dir(), file_mode=self.file_mode)


DESTINATION_KINDS[RelayBackend.kind] = RelayBackend


class ChattySource(SleepySource):
    """Logs from the task's thread and from a thread of its own while it "dumps" (the
    structured-log tests: every line of a run carries the run's id)."""

    kind = "chatty"
    label = "Chatty (tests only)"
    title = "Chatty"
    temp_prefix = "chatty"

    def write_dump(self, target: Path, staging: Path) -> None:
        log = logging.getLogger("tests.chatty")
        log.info("chatty: dumping in the task's thread")
        helper = threading.Thread(target=log.info, args=("chatty: from a helper thread",))
        helper.start()
        helper.join()
        log.warning("chatty: a line with\na newline and “quotes”")
        target.write_bytes(b"z")


REGISTRY[ChattySource.kind] = ChattySource

__all__ = ["app"]
