"""Progress and liveness of work on a row: throttled progress writes, heartbeat threads,
rate and time left.

Every stage that moves bytes (archive, upload, verify, restore, drill) reports progress
through a callback; the callback keeps the numbers on the object and writes them to the
database at most once per ``interval`` (about one write per second per run: the cost is
measured by ``bench/scheduling.py``, ``progress_overhead``). A :class:`Heartbeat` thread
keeps the row's ``heartbeat_at`` fresh through stretches without progress (a long
database dump, a stalled destination), so the reconcile and the sweep only ever take
work whose worker is really gone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import close_old_connections, connection
from django.template.defaultfilters import filesizeformat
from django.utils import timezone

from jobs.engine import Cancelled

log = logging.getLogger(__name__)


class LostRun(Exception):
    """This worker no longer owns the row: it was ended elsewhere (the reconcile found
    its heartbeat stale, the sweep took the upload back, or a user cancelled it as
    abandoned). Stop working on it."""


# --- rate and time left ---------------------------------------------------------------
@dataclass(frozen=True)
class Speed:
    rate: float  # bytes per second, averaged over the phase so far
    left: float | None  # seconds, or None when the total is unknown

    @property
    def rate_display(self) -> str:
        return f"{filesizeformat(int(self.rate))}/s".replace("\xa0", " ")

    @property
    def left_display(self) -> str:
        if self.left is None:
            return ""
        seconds = int(self.left)
        if seconds < 60:
            return "less than a minute" if seconds >= 10 else "a few seconds"
        minutes = round(seconds / 60)
        if minutes < 60:
            return f"about {minutes} min"
        hours, minutes = divmod(minutes, 60)
        return f"about {hours} h {minutes:02d} min"


def speed(done: int, total: int, since: datetime | None, now: datetime | None = None) -> Speed | None:
    """Rate (bytes/s) and time left for *done* of *total* bytes since *since*; None
    until there is something to measure (under a second, nothing done yet)."""
    if since is None or not done or done < 0:
        return None
    elapsed = ((now or timezone.now()) - since).total_seconds()
    if elapsed < 1:
        return None
    rate = done / elapsed
    left = (total - done) / rate if total and total > done and rate > 0 else (0.0 if total else None)
    return Speed(rate=rate, left=left)


# --- throttled writes -----------------------------------------------------------------
class Throttle:
    """``due()`` is true at most once per *interval* seconds (and always when forced)."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._last = 0.0

    def due(self, force: bool = False) -> bool:
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return False
        self._last = now
        return True


class RunProgress:
    """Writes a run's phase and progress to its row, throttled, and checks for
    cancellation; raises :class:`LostRun` once the run is no longer this worker's."""

    def __init__(self, run, interval: float = 1.0, listener: Callable | None = None) -> None:
        self.run = run
        self.interval = interval
        self.listener = listener
        self._throttle = Throttle(interval)

    def __call__(
        self,
        *,
        phase: str | None = None,
        done: int | None = None,
        total: int | None = None,
        files: int | None = None,
        force: bool = False,
    ) -> None:
        from jobs.models import Run

        run = self.run
        if phase is not None and phase != run.phase:
            run.phase = phase
            run.phase_started_at = timezone.now()
        if done is not None:
            run.bytes_done = done
        if total is not None:
            run.bytes_total = total
        if files is not None:
            run.files_done = files
        self._throttle.interval = self.interval
        if not self._throttle.due(force):
            return
        run.heartbeat_at = timezone.now()
        # One statement in the usual case: written only while the run is this worker's
        # and nobody asked to cancel it; when nothing was written, find out which.
        written = Run.objects.filter(pk=run.pk, state__in=Run.HELD_STATES, cancel_requested=False).update(
            phase=run.phase,
            phase_started_at=run.phase_started_at,
            bytes_done=run.bytes_done,
            bytes_total=run.bytes_total,
            files_done=run.files_done,
            heartbeat_at=run.heartbeat_at,
        )
        if not written:
            row = Run.objects.filter(pk=run.pk).values("state", "cancel_requested").first()
            if row is None or row["state"] not in Run.HELD_STATES:
                raise LostRun(run.pk)
            raise Cancelled()
        if self.listener:
            self.listener(run)


class RowProgress:
    """Throttled ``bytes_done`` (and ``bytes_total``) writes to any row (an Upload, an
    Activity) through *write(done, total)*; *cancelled()* is polled with each write."""

    def __init__(self, write: Callable[[int, int], None], *, interval: float = 1.0, cancelled=None) -> None:
        self.write = write
        self.cancelled = cancelled
        self.done = 0
        self.total = 0
        self._throttle = Throttle(interval)

    def __call__(self, done: int, total: int | None = None, *, force: bool = False) -> None:
        self.done = done
        if total is not None:
            self.total = total
        if not self._throttle.due(force):
            return
        self.write(self.done, self.total)
        if self.cancelled is not None and self.cancelled():
            raise Cancelled()


# --- heartbeats -------------------------------------------------------------------------
class Heartbeat(threading.Thread):
    """Keeps a row's ``heartbeat_at`` fresh while this process works on it. Writes every
    *interval* seconds (``BACKUPSITE_HEARTBEAT_SECONDS``) and looks at the cancel flag
    every ``CANCEL_POLL`` seconds. Subclasses say how to beat and how to see a cancel."""

    CANCEL_POLL = 2.0  # seconds between looks at the cancel flag

    def __init__(self, name: str, interval: float | None = None) -> None:
        super().__init__(name=name, daemon=True)
        self.interval = float(interval if interval is not None else settings.BACKUPSITE_HEARTBEAT_SECONDS)
        self._stopped = threading.Event()
        #: Set once a user asked to cancel, or the work was ended elsewhere; long client
        #: programs poll it (cancel_check) and stop.
        self.cancelled = threading.Event()
        #: Set when the row is no longer this worker's.
        self.lost = threading.Event()

    def beat(self) -> bool:  # pragma: no cover - abstract
        """Write the heartbeat; False when the row is no longer this worker's."""
        raise NotImplementedError

    def cancel_asked(self) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def run(self) -> None:
        last_beat = time.monotonic()
        try:
            while not self._stopped.wait(min(self.interval, self.CANCEL_POLL)):
                try:
                    if time.monotonic() - last_beat >= self.interval:
                        beat = self.beat()
                        last_beat = time.monotonic()
                        if not beat and not self._stopped.is_set():
                            self.lost.set()
                            self.cancelled.set()
                    if self.cancel_asked():
                        self.cancelled.set()
                except Exception:  # a database blip must not kill the thread
                    log.warning("%s failed; retrying", self.name, exc_info=True)
                    close_old_connections()
        finally:
            connection.close()

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=10)


class RunHeartbeat(Heartbeat):
    """The archive stage's heartbeat (the reconcile reads it)."""

    def __init__(self, run_id: int, interval: float | None = None) -> None:
        super().__init__(f"heartbeat-run-{run_id}", interval)
        self.run_id = run_id

    def beat(self) -> bool:
        from jobs.models import Run

        return bool(Run.objects.filter(pk=self.run_id, state__in=Run.HELD_STATES).update(heartbeat_at=timezone.now()))

    def cancel_asked(self) -> bool:
        from jobs.models import Run

        return Run.objects.filter(pk=self.run_id, cancel_requested=True).exists()


class UploadHeartbeat(Heartbeat):
    """An upload's heartbeat (the sweep reads it); a cancel of its run stops it."""

    def __init__(self, upload_id: int, run_id: int, interval: float | None = None) -> None:
        super().__init__(f"heartbeat-upload-{upload_id}", interval)
        self.upload_id = upload_id
        self.run_id = run_id

    def beat(self) -> bool:
        from jobs.models import Upload

        return bool(
            Upload.objects.filter(pk=self.upload_id, state=Upload.State.UPLOADING).update(heartbeat_at=timezone.now())
        )

    def cancel_asked(self) -> bool:
        from jobs.models import Run

        return Run.objects.filter(pk=self.run_id, cancel_requested=True).exists()
