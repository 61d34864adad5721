"""A real SMTP server for the tests: aiosmtpd on a free loopback port (session scope),
in a thread of the test process.

``smtp_server`` starts it once for the session. It keeps every message it received as a
:class:`Received` (envelope, raw bytes, the parsed message and its attachments), refuses
recipients at ``@refused.example`` (a partly refused delivery), and can point Django's
SMTP backend at itself (:meth:`SmtpServer.use`, as ``EMAIL_URL=smtp://127.0.0.1:<port>``
would). ``smtp`` (per test) empties the mailbox, points the panel at the server and
returns the mailbox (``messages``, ``wait_for(count)``). Use it with
``pytest_plugins = ["tests.mailserver"]``.
"""

from __future__ import annotations

import email
import email.policy
import socket
import threading
import time
from dataclasses import dataclass, field

import pytest


def free_port() -> int:
    # Not imported from tests.servers: a module that imports it before it is registered as
    # a plugin makes pytest warn that it cannot rewrite its asserts.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def sender(self) -> str:
        return self.mail_from

    @property
    def recipients(self) -> list[str]:
        return self.rcpt_tos

    @property
    def message(self) -> email.message.EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def body(self) -> str:
        part = self.message.get_body(preferencelist=("plain",))
        return part.get_content() if part is not None else ""

    def attachments(self) -> dict[str, bytes]:
        return {part.get_filename(): part.get_content() for part in self.message.iter_attachments()}


@dataclass
class SmtpServer:
    port: int
    host: str = "127.0.0.1"
    messages: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    user: str = ""
    password: str = ""

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    @property
    def mailbox(self) -> SmtpServer:
        return self

    def to(self, address: str) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if address in m.rcpt_tos]

    def clear(self) -> None:
        with self.lock:
            self.messages.clear()

    def wait_for(self, count: int, timeout: float = 10) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.02)
        with self.lock:
            return list(self.messages)

    def use(self, settings, *, user: str = "", password: str = "", timeout: float = 10) -> None:
        """Point the panel's mail settings (Django's SMTP backend) at this server."""
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST = self.host
        settings.EMAIL_PORT = self.port
        settings.EMAIL_USE_TLS = False
        settings.EMAIL_USE_SSL = False
        settings.EMAIL_HOST_USER = user
        settings.EMAIL_HOST_PASSWORD = password
        settings.EMAIL_TIMEOUT = timeout


class _Handler:
    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.endswith("@refused.example"):
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.server.lock:
            self.server.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.content)))
        return "250 Message accepted for delivery"


def start(server: SmtpServer, **kwargs):
    """Start aiosmtpd for *server* (its port); returns the controller to stop."""
    pytest.importorskip("aiosmtpd", reason="aiosmtpd is not installed (requirements-dev.txt)")
    from aiosmtpd.controller import Controller

    controller = Controller(
        _Handler(server), hostname=server.host, port=server.port, data_size_limit=64 * 1024 * 1024, **kwargs
    )
    controller.start()
    return controller


@pytest.fixture(scope="session")
def smtp_server():
    server = SmtpServer(free_port())
    controller = start(server)
    try:
        yield server
    finally:
        controller.stop()


@pytest.fixture
def smtp(smtp_server, settings):
    smtp_server.use(settings, timeout=5)
    smtp_server.clear()
    return smtp_server
