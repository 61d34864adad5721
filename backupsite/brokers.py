"""What ``/healthz`` and ``/metrics`` ask the Celery broker: is it there, and how many
messages wait in each queue. One class per kombu transport (a registry, by the scheme of
``CELERY_BROKER_URL``); a transport without a class of its own gets a connection check
and no queue lengths.

* ``filesystem://`` (the embedded default): the broker is the queue folder; a message is
  one file ``<time>_<uuid>.<queue>.msg`` in it, so a queue's length is a count of files.
  Nothing is written, nothing is connected.
* ``redis://`` / ``rediss://``: one connection through Celery's own (kombu) connection,
  with short socket timeouts and a single connection attempt, then ``PING`` or one
  ``LLEN`` per queue and priority (kombu keeps priorities in lists of their own).

Every call gives up after ``timeout`` seconds; errors are raised to the caller, which
turns them into a failed check (never into a page with the error text: a broker URL
holds a password).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

#: Seconds a broker may take to answer a health check or a scrape.
TIMEOUT = 2.0


def _app():
    from backupsite.celery import app

    return app


class KombuBroker:
    """Any kombu transport: one connection attempt within the timeout."""

    def __init__(self, url: str, timeout: float = TIMEOUT) -> None:
        self.url = url
        self.timeout = timeout

    def connection(self):
        app = _app()
        options = dict(app.conf.broker_transport_options or {})
        options.update(self.transport_options())
        return app.connection_for_read(url=self.url, connect_timeout=self.timeout, transport_options=options)

    def transport_options(self) -> dict:
        return {}

    def ping(self) -> None:
        with self.connection() as conn:
            # One attempt (kombu's default retries forever), within the timeout.
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=self.timeout)

    def queue_lengths(self, queues: list[str]) -> dict[str, int] | None:
        """Messages waiting per queue, or None when this transport cannot say cheaply."""
        return None


class RedisBroker(KombuBroker):
    def transport_options(self) -> dict:
        return {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
            # The failover options default_channel reads: a single attempt.
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0,
        }

    def ping(self) -> None:
        with self.connection() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=self.timeout)
            conn.default_channel.client.ping()

    def queue_lengths(self, queues: list[str]) -> dict[str, int]:
        with self.connection() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=self.timeout)
            channel = conn.default_channel
            names = [(queue, channel._q_for_pri(queue, pri)) for queue in queues for pri in channel.priority_steps]
            with channel.client.pipeline() as pipe:
                for _, key in names:
                    pipe.llen(key)
                sizes = pipe.execute()
        lengths = dict.fromkeys(queues, 0)
        for (queue, _), size in zip(names, sizes, strict=True):
            lengths[queue] += int(size or 0)
        return lengths


class FilesystemBroker(KombuBroker):
    """kombu's ``filesystem://`` transport, configured in ``backupsite/celery.py``."""

    @property
    def folder(self) -> Path:
        options = _app().conf.broker_transport_options or {}
        return Path(options.get("data_folder_in", "data_in"))

    def ping(self) -> None:
        folder = self.folder
        if not folder.is_dir() or not os.access(folder, os.R_OK | os.W_OK | os.X_OK):
            raise OSError("the broker's queue folder is missing or not writable")

    def queue_lengths(self, queues: list[str]) -> dict[str, int]:
        lengths = dict.fromkeys(queues, 0)
        suffixes = {f".{queue}.msg": queue for queue in queues}
        with os.scandir(self.folder) as entries:
            for entry in entries:
                # "<monotonic ms>_<uuid>.<queue>.msg": the queue is everything after the first dot.
                _, dot, rest = entry.name.partition(".")
                queue = suffixes.get(dot + rest)
                if queue is not None:
                    lengths[queue] += 1
        return lengths


BROKERS: dict[str, type[KombuBroker]] = {
    "filesystem": FilesystemBroker,
    "redis": RedisBroker,
    "rediss": RedisBroker,
}


def broker(url: str | None = None, timeout: float = TIMEOUT) -> KombuBroker:
    """The broker of ``CELERY_BROKER_URL`` (or *url*)."""
    if url is None:
        from django.conf import settings

        url = settings.CELERY_BROKER_URL
    scheme = urlsplit(url).scheme.lower().split("+")[0]
    return BROKERS.get(scheme, KombuBroker)(url, timeout)


def known_queues() -> list[str]:
    """The queues the workers consume: the configured ones, this host's, and every
    queue a worker's heartbeat row says it consumes (``host.<name>`` of each machine)."""
    from django.conf import settings

    from jobs.enqueue import host_queue
    from jobs.models import ServiceHeartbeat

    names = {queue.name for queue in _app().conf.task_queues or []}
    names.add(host_queue(settings.BACKUPSITE_HOST))
    for details in ServiceHeartbeat.objects.filter(role=ServiceHeartbeat.Role.WORKER).values_list("details", flat=True):
        names.update(str(q) for q in (details or {}).get("queues", []) if q)
    return sorted(names)
