"""State a test must leave as it found it, checked around every test (tests/conftest.py).

A test that disconnects a product receiver (``signal.receivers.clear()`` in a
``finally``, say) silences it for every later test in the process: the audit log's
``config_changed`` receiver gone, later tests saw no AuditEvent at all and failed far
from the cause, only in some test orders. :func:`receivers_kept` puts lost receivers
back after the test and names them, so the test that removed them fails, not the next
one.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db.models.signals import m2m_changed, post_delete, post_migrate, post_save, pre_delete, pre_save
from django.dispatch import Signal

from backupsite import configwrite


class ReceiversLost(AssertionError):
    """A test disconnected receivers it had not connected itself."""


def guarded_signals() -> dict[str, Signal]:
    """The signals the product connects receivers to (audit, languages, models)."""
    from axes.signals import user_locked_out

    return {
        "configwrite.config_changed": configwrite.config_changed,
        "user_logged_in": user_logged_in,
        "user_logged_out": user_logged_out,
        "user_login_failed": user_login_failed,
        "axes.user_locked_out": user_locked_out,
        "pre_save": pre_save,
        "post_save": post_save,
        "pre_delete": pre_delete,
        "post_delete": post_delete,
        "m2m_changed": m2m_changed,
        "post_migrate": post_migrate,
    }


def _target(entry):
    receiver = entry[1]
    return receiver() if isinstance(receiver, weakref.ReferenceType) else receiver


def _name(entry) -> str:
    uid = entry[0][0]
    if isinstance(uid, str):
        return uid  # the dispatch_uid
    target = _target(entry)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', repr(target))}"


@contextmanager
def receivers_kept(signals: dict[str, Signal] | None = None) -> Iterator[None]:
    """Run the block; afterwards put back every receiver (alive before it) that it
    disconnected and raise :class:`ReceiversLost` naming them. Receivers the block added
    are left alone (a module first imported inside a test connects its own)."""
    signals = guarded_signals() if signals is None else signals
    before = {}
    for label, signal in signals.items():
        with signal.lock:
            signal._clear_dead_receivers()
            before[label] = list(signal.receivers)
    yield
    lost = []
    for label, signal in signals.items():
        with signal.lock:
            present = {entry[0] for entry in signal.receivers}
            missing = [entry for entry in before[label] if entry[0] not in present and not _dead(entry)]
            if missing:
                signal.receivers.extend(missing)
                signal.sender_receivers_cache.clear()
                lost += [f"{label}: {_name(entry)}" for entry in missing]
    if lost:
        raise ReceiversLost(
            "The test disconnected receivers it did not connect (put back now; disconnect only your own): "
            + ", ".join(lost)
        )


def _dead(entry) -> bool:
    return _target(entry) is None  # a weak reference whose function is gone
