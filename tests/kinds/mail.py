"""The e-mail kind against a real SMTP server: aiosmtpd on a free loopback port (a thread
in the test process, stopped at the end of the session). The panel's own mail settings
are pointed at it (Django's SMTP backend), as EMAIL_URL=smtp://127.0.0.1:<port> would.

``smtp_server.messages`` holds every message received (envelope and raw bytes), so the
tests read attachments exactly as a mailbox would get them. ``smtp_auth_server``
requires a login (user ``mailer``), to prove a wrong panel password fails clearly.
"""

from __future__ import annotations

import email
import email.policy
import secrets
import socket
import threading
from dataclasses import dataclass, field

import pytest

from tests.kinds import KindUnderTest


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self):
        return email.message_from_bytes(self.data, policy=email.policy.default)

    def attachments(self) -> dict[str, bytes]:
        return {part.get_filename(): part.get_content() for part in self.message.iter_attachments()}


@dataclass
class SmtpServer:
    port: int
    messages: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    user: str = ""
    password: str = ""

    def to(self, address: str) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if address in m.rcpt_tos]

    def use(self, settings, *, user: str = "", password: str = "", timeout: float = 10) -> None:
        """Point the panel's mail settings (Django's SMTP backend) at this server."""
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST = "127.0.0.1"
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(server: SmtpServer, **kwargs):
    pytest.importorskip("aiosmtpd", reason="aiosmtpd is not installed (requirements-dev.txt)")
    from aiosmtpd.controller import Controller

    controller = Controller(
        _Handler(server), hostname="127.0.0.1", port=server.port, data_size_limit=64 * 1024 * 1024, **kwargs
    )
    controller.start()
    return controller


@pytest.fixture(scope="session")
def smtp_server():
    server = SmtpServer(_free_port())
    controller = _start(server)
    yield server
    controller.stop()


@pytest.fixture(scope="session")
def smtp_auth_server():
    from aiosmtpd.smtp import AuthResult

    server = SmtpServer(_free_port(), user="mailer", password="mail-" + secrets.token_hex(8))

    def authenticator(smtp, session, envelope, mechanism, auth_data):
        ok = auth_data.login == server.user.encode() and auth_data.password == server.password.encode()
        return AuthResult(success=ok, handled=False)

    controller = _start(server, authenticator=authenticator, auth_required=True, auth_require_tls=False)
    yield server
    controller.stop()


@pytest.fixture
def email_kind(smtp_server, settings) -> KindUnderTest:
    smtp_server.use(settings)
    recipient = f"backups-{secrets.token_hex(4)}@example.com"  # this test's own mailbox

    def messages(folder: str) -> list[Received]:
        return [m for m in smtp_server.to(recipient) if m.message.get("X-Backupsite-Folder") == folder]

    def raw_names(folder: str) -> list[str]:
        return sorted(name for m in messages(folder) for name in m.attachments())

    def raw_read(folder: str, name: str) -> bytes:
        for m in messages(folder):
            attachments = m.attachments()
            if name in attachments:
                return attachments[name]
        raise FileNotFoundError(name)

    return KindUnderTest(
        kind="email",
        settings={"recipients": [recipient]},
        raw_names=raw_names,
        raw_read=raw_read,
    )
