"""Celery beat's schedule file, made 0600 like everything else under the data dir."""

from __future__ import annotations

import dbm
import shelve

from celery.beat import PersistentScheduler

from backupsite.private import FILE_MODE


class _PrivateShelve:
    """``shelve.open()`` as celery calls it, with the dbm files created 0600 (shelve
    itself always asks dbm for 0666, which the umask turns into 0644)."""

    @staticmethod
    def open(filename: str, writeback: bool = False) -> shelve.Shelf:
        return shelve.Shelf(dbm.open(filename, "c", FILE_MODE), writeback=writeback)


class PrivateScheduler(PersistentScheduler):
    """Celery's default scheduler (``celery beat --schedule FILE`` works as usual)."""

    persistence = _PrivateShelve
