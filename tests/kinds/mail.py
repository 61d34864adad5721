"""The e-mail kind against a real SMTP server (``tests.mailserver``: aiosmtpd on a free
loopback port, a thread in the test process). The panel's own mail settings
are pointed at it (Django's SMTP backend), as EMAIL_URL=smtp://127.0.0.1:<port> would.

``smtp_server.messages`` holds every message received (envelope and raw bytes), so the
tests read attachments exactly as a mailbox would get them. ``smtp_auth_server``
requires a login (user ``mailer``), to prove a wrong panel password fails clearly.
"""

from __future__ import annotations

import secrets

import pytest

from tests.kinds import KindUnderTest
from tests.mailserver import Received, SmtpServer, free_port, start


@pytest.fixture(scope="session")
def smtp_auth_server():
    from aiosmtpd.smtp import AuthResult

    server = SmtpServer(free_port(), user="mailer", password="mail-" + secrets.token_hex(8))

    def authenticator(smtp, session, envelope, mechanism, auth_data):
        ok = auth_data.login == server.user.encode() and auth_data.password == server.password.encode()
        return AuthResult(success=ok, handled=False)

    controller = start(server, authenticator=authenticator, auth_required=True, auth_require_tls=False)
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
