"""Log output: plain text by default, one JSON object per line with ``LOG_FORMAT=json``.

Each JSON line holds ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``
and ``message``, plus ``run_id`` on every line logged while a run executes and
``exception`` (the formatted traceback) when there is one. Nothing else of the record
goes out: an ``extra={...}`` (``django.request`` passes the whole request) never reaches
the log, so what a line can carry is exactly what the plain format prints. The messages
themselves are what the code logs, which never holds a secret (tool errors are scrubbed
where they are made, ``jobs/sources/dbtools.py``; the chatty SMB library is held at
WARNING in ``settings.LOGGING``).

The run id comes from a context variable, set around a task whose first parameter is
``run_id`` (``execute_run``; the Celery signals below) or by :func:`run_context` wherever
code works on a run outside such a task. Threads do not inherit context variables in
Python 3.11, so a worker process that runs one task at a time (the prefork pool, the
task in its main thread) also remembers the run for the whole process: the heartbeat
thread, upload senders and the encryption thread of that run log with its id too. In
the web process (eager tasks, ``runbackup``) only the context variable is used, so other
requests' threads never pick up a run id.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import json
import logging
import logging.config
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

FORMATS = ("plain", "json")
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_run_id: contextvars.ContextVar[int | None] = contextvars.ContextVar("backupsite_run_id", default=None)
# The run of this worker process (see the module doc); None outside a worker's run task.
_process_run_id: int | None = None


def current_run_id() -> int | None:
    run_id = _run_id.get()
    return run_id if run_id is not None else _process_run_id


@contextlib.contextmanager
def run_context(run_id: int | None) -> Iterator[None]:
    """Every line logged inside (in this thread and its context) carries *run_id*."""
    token = _run_id.set(run_id)
    try:
        yield
    finally:
        _run_id.reset(token)


class RunIdFilter(logging.Filter):
    """Puts ``record.run_id`` (None outside a run) on every record a handler emits."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "run_id", None) is None:
            record.run_id = current_run_id()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line (newlines inside a message or traceback are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        run_id = getattr(record, "run_id", None)
        if run_id is not None:
            entry["run_id"] = run_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def logging_config(log_format: str, level: str) -> dict:
    """``settings.LOGGING`` for *log_format* (``plain`` or ``json``)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"run_id": {"()": "backupsite.logs.RunIdFilter"}},
        "formatters": {
            "plain": {"format": PLAIN_FORMAT},
            "json": {"()": "backupsite.logs.JsonFormatter"},
        },
        "handlers": {
            "console": {"class": "logging.StreamHandler", "formatter": log_format, "filters": ["run_id"]},
        },
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            "django.request": {"level": "ERROR"},
            # The SMB library logs every request (with user and file names) at INFO.
            "smbprotocol": {"level": "WARNING"},
            "spnego": {"level": "WARNING"},
            # django-axes logs every login at INFO; lockouts (WARNING) and the audit log stay.
            "axes": {"level": "WARNING"},
            # Celery's pool (billiard) logs here without propagating; with a handler of
            # ours Celery does not give it one in its own format.
            "multiprocessing": {"handlers": ["console"], "level": "WARNING", "propagate": False},
        },
    }


def configure(config: dict) -> None:
    """``settings.LOGGING_CONFIG``: Django's dictConfig, and Python warnings (Celery's
    "running as root", deprecations) through the same handler, so with ``json`` they
    are JSON lines too instead of free text on stderr."""
    logging.config.dictConfig(config)
    logging.captureWarnings(True)


# --- Celery: the run id around a run's task --------------------------------------------

_RUN_PARAMETER = "run_id"
_takes_run_id: dict[str, bool] = {}


def run_id_of_task(task, args, kwargs) -> int | None:
    """The run a task works on: its ``run_id`` argument, if it has one."""
    if kwargs and _RUN_PARAMETER in kwargs:
        return kwargs[_RUN_PARAMETER]
    name = getattr(task, "name", "")
    if name not in _takes_run_id:
        try:
            parameters = list(inspect.signature(task.run).parameters)
        except (TypeError, ValueError):
            parameters = []
        _takes_run_id[name] = bool(parameters) and parameters[0] == _RUN_PARAMETER
    if _takes_run_id[name] and args:
        return args[0]
    return None


_task_tokens: dict[str, contextvars.Token] = {}


def _task_started(task_id=None, task=None, args=None, kwargs=None, **_) -> None:
    global _process_run_id
    run_id = run_id_of_task(task, args or (), kwargs or {})
    if run_id is None:
        return
    _task_tokens[task_id] = _run_id.set(run_id)
    eager = bool(getattr(getattr(task, "request", None), "is_eager", False))
    if not eager and threading.current_thread() is threading.main_thread():
        _process_run_id = run_id


def _task_ended(task_id=None, **_) -> None:
    global _process_run_id
    token = _task_tokens.pop(task_id, None)
    if token is None:
        return
    try:
        _run_id.reset(token)
    except ValueError:  # set in another context (should not happen): just clear it
        _run_id.set(None)
    if threading.current_thread() is threading.main_thread():
        _process_run_id = None


def connect_celery() -> None:
    """Called by ``backupsite.celery``: tag the lines of every run task."""
    from celery.signals import task_postrun, task_prerun

    task_prerun.connect(_task_started, weak=False, dispatch_uid="backupsite.logs.task_started")
    task_postrun.connect(_task_ended, weak=False, dispatch_uid="backupsite.logs.task_ended")
