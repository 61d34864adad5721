"""Celery beat's schedule file, made 0600 like everything else under the data dir, and a
sign of life for the container's health check.

Every tick of the scheduler touches ``<schedule file>.alive``; beat ticks at least every
:attr:`PrivateScheduler.max_interval` seconds, so a file older than a few of those means
the beat process hangs or is gone (``docker/healthcheck.py beat`` checks it).
"""

from __future__ import annotations

import dbm
import os
import shelve

from celery.beat import PersistentScheduler

from backupsite.private import FILE_MODE

ALIVE_SUFFIX = ".alive"


class _PrivateShelve:
    """``shelve.open()`` as celery calls it, with the dbm files created 0600 (shelve
    itself always asks dbm for 0666, which the umask turns into 0644)."""

    @staticmethod
    def open(filename: str, writeback: bool = False) -> shelve.Shelf:
        return shelve.Shelf(dbm.open(filename, "c", FILE_MODE), writeback=writeback)


def alive_file(schedule_filename: str) -> str:
    return f"{schedule_filename}{ALIVE_SUFFIX}"


def touch(path: str) -> None:
    """Create *path* (0600) or update its modification time."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE)
    try:
        os.utime(fd)
    finally:
        os.close(fd)


class PrivateScheduler(PersistentScheduler):
    """Celery's default scheduler (``celery beat --schedule FILE`` works as usual)."""

    persistence = _PrivateShelve
    #: The longest sleep between two ticks (Celery's own default is 300 s); the periodic
    #: tasks of backupsite are due more often than this anyway.
    max_interval = 30

    def tick(self, *args, **kwargs):
        try:
            touch(alive_file(self.schedule_filename))
        except OSError:
            pass  # the health check reports it; the schedule itself goes on
        return super().tick(*args, **kwargs)
