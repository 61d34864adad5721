"""The e-mail kind: one message per backup with every file attached byte-identical, the
attachment limit checked before anything is sent, the test message, header injection,
the panel's SMTP errors. Against aiosmtpd (``tests/kinds/mail.py``)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import time
from pathlib import Path

import pytest

from destinations.backends.base import (
    DELETE,
    FREE_SPACE,
    LIST,
    READ,
    REPLACE,
    ConfError,
    PermanentError,
    TransientError,
    UploadItem,
    job_folder,
)
from destinations.backends.email import EmailBackend, EmailConf, EmailForm
from destinations.models import Destination
from jobs import services
from jobs.engine.agekeys import KEY_FILE_NAME
from jobs.models import Job, Run
from tests.kinds import upload_in_thread
from tests.tcpproxy import TcpProxy

pytest_plugins = ["tests.mailserver", "tests.kinds.mail"]
pytestmark = [
    pytest.mark.django_db,
    # smtp_auth_server accepts a login without TLS on loopback, on purpose.
    pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning"),
]

MiB = 1024 * 1024


@pytest.fixture
def mailbox():
    return f"backups-{secrets.token_hex(4)}@example.com"


def destination(*recipients, **settings) -> Destination:
    return Destination(name="mail", kind="email", settings={"recipients": list(recipients), **settings})


def make_file(path: Path, size: int) -> tuple[Path, str]:
    data = os.urandom(size)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def test_write_only_capabilities():
    assert EmailBackend.capabilities.isdisjoint({LIST, READ, DELETE, FREE_SPACE, REPLACE})
    assert not destination("a@example.com").can(READ)


def test_conf_and_form():
    conf = EmailConf.parse({"recipients": ["a@example.com", "A@example.com", "b@example.com"]})
    assert conf.recipients == ["a@example.com", "b@example.com"]
    for bad in (["not an address"], [], ["a@example.com\r\nBcc: x@evil.example"]):
        with pytest.raises(ConfError) as info:
            EmailConf.parse({"recipients": bad})
        assert info.value.field == "recipients"
    with pytest.raises(ConfError) as info:
        EmailConf.parse({"recipients": ["a@example.com"], "attachment_limit_mb": 500})
    assert info.value.field == "attachment_limit_mb"
    form = EmailForm({"email-recipients": "a@example.com,\nb@example.com", "email-attachment_limit_mb": "10"})
    assert form.is_valid(), form.errors
    assert form.parsed_settings == {"recipients": ["a@example.com", "b@example.com"], "attachment_limit_mb": 10}
    assert "a@example.com, b@example.com" in str(EmailForm(settings=form.parsed_settings))
    bad = EmailForm({"email-recipients": "a@example.com, nope"})
    assert not bad.is_valid()
    assert "nope" in str(bad.errors["recipients"])


def test_the_test_sends_a_short_message_and_says_it_cannot_read_back(smtp_server, settings, mailbox):
    smtp_server.use(settings)
    result = destination(mailbox).backend().test()
    assert result.ok, result.message
    assert "test e-mail was sent" in result.message and "cannot be read back" in result.message
    received = smtp_server.to(mailbox)
    assert len(received) == 1
    assert received[0].message["Subject"] == "[backupsite] Test of an e-mail destination"
    assert list(received[0].message.iter_attachments()) == []


def test_one_backup_is_one_message_with_every_file_attached_byte_identical(smtp_server, settings, mailbox, tmp_path):
    smtp_server.use(settings)
    key, _ = make_file(tmp_path / KEY_FILE_NAME, 300)
    archive, sha = make_file(tmp_path / "office-2026.tar.zst.age", 2 * MiB + 1)
    manifest = tmp_path / "office-2026.tar.zst.age.manifest.json"
    manifest.write_text(json.dumps({"archive": {"sha256": sha}}))
    items = [
        UploadItem(key, KEY_FILE_NAME, 300),
        UploadItem(archive, archive.name, archive.stat().st_size, sha),
        UploadItem(manifest, manifest.name, manifest.stat().st_size),
    ]
    seen = []
    with destination(mailbox).backend().session() as session:
        session.upload_files("backupsite/office", items, progress=seen.append)
    received = smtp_server.to(mailbox)
    assert len(received) == 1
    message = received[0].message
    assert [p.get_filename() for p in message.iter_attachments()] == [KEY_FILE_NAME, archive.name, manifest.name]
    attachments = received[0].attachments()
    for path in (key, archive, manifest):
        assert attachments[path.name] == path.read_bytes()
    body = message.get_body(("plain",)).get_content()
    assert sha in body and "age -d -i backupsite-key.age office-2026.tar.zst.age" in body
    assert seen == [sum(i.size for i in items)]


def test_above_the_limit_nothing_is_sent_and_the_message_gives_size_and_limit(smtp_server, settings, mailbox, tmp_path):
    smtp_server.use(settings)
    settings.BACKUPSITE_EMAIL_ATTACHMENT_LIMIT_MB = 1  # the panel-wide default
    path, sha = make_file(tmp_path / "big.tar.zst", 3 * MiB)
    with pytest.raises(PermanentError) as info, destination(mailbox).backend().session() as session:
        session.upload(path, "backupsite/office", "big.tar.zst", expected_size=3 * MiB, expected_sha256=sha)
    assert "3.0 MB" in info.value.message and "limit of 1 MB" in info.value.message
    assert "nothing was sent" in info.value.message
    # The destination's own limit wins over the default.
    with destination(mailbox, attachment_limit_mb=4).backend().session() as session:
        session.upload(path, "backupsite/office", "big.tar.zst", expected_size=3 * MiB, expected_sha256=sha)
    small = destination(mailbox, attachment_limit_mb=2).backend()
    with pytest.raises(PermanentError, match="limit of 2 MB"), small.session() as session:
        session.upload(path, "backupsite/office", "big.tar.zst", expected_size=3 * MiB, expected_sha256=sha)
    assert len(smtp_server.to(mailbox)) == 1  # only the one within its limit


def test_a_job_name_with_a_line_break_adds_no_header(smtp_server, settings, mailbox, tmp_path):
    smtp_server.use(settings)
    job = Job.objects.create(name="Office\r\nBcc: evil@evil.example", report_to="ops@example.com")
    path, sha = make_file(tmp_path / "a.tar.zst", 100)
    with destination(mailbox).backend().session() as session:
        session.upload(path, job_folder(job.slug), "a.tar.zst", expected_size=100, expected_sha256=sha)
    (received,) = smtp_server.to(mailbox)
    assert received.rcpt_tos == [mailbox]
    message = received.message
    assert message["Bcc"] is None
    assert message["Subject"] == "[backupsite] Backup of Office Bcc: evil@evil.example: a.tar.zst"
    assert b"\r\nBcc:" not in received.data.split(b"\r\n\r\n", 1)[0]


def test_an_encrypted_run_mails_key_archive_and_manifest_in_one_message(smtp_server, settings, mailbox, job, folders):
    """The whole path: services inserts the key file first for write-only kinds."""
    smtp_server.use(settings)
    job.set_backup_password("correct horse battery staple")
    job.save()
    job.destinations.set([Destination.objects.create(name="Mail", kind="email", settings={"recipients": [mailbox]})])
    run = services.execute_run(services.create_run(job).pk)
    assert run.state == Run.State.SUCCEEDED, run.error
    (received,) = smtp_server.to(mailbox)
    attachments = received.attachments()
    assert list(attachments) == [KEY_FILE_NAME, run.archive_name, f"{run.archive_name}.manifest.json"]
    local = run.local_file
    assert attachments[run.archive_name] == local.read_bytes()
    assert attachments[f"{run.archive_name}.manifest.json"] == Path(f"{local}.manifest.json").read_bytes()
    assert hashlib.sha256(attachments[run.archive_name]).hexdigest() == run.archive_sha256


# --- the panel's mail server failing ---------------------------------------------------------
def test_a_wrong_panel_smtp_password_fails_clearly_without_showing_it(smtp_auth_server, settings, mailbox, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-" + secrets.token_hex(6)
    smtp_auth_server.use(settings, user="mailer", password=wrong)
    result = destination(mailbox).backend().test()
    assert not result.ok
    assert "refused its login" in result.message
    smtp_auth_server.use(settings, user="mailer", password=smtp_auth_server.password)
    assert destination(mailbox).backend().test().ok
    for text in [json.dumps(result.to_dict()), *(r.getMessage() for r in caplog.records)]:
        assert wrong not in text and smtp_auth_server.password not in text


def test_a_refused_recipient_is_named(smtp_server, settings):
    smtp_server.use(settings)
    result = destination("nobody@refused.example").backend().test()
    assert not result.ok
    assert result.message == "The mail server refused the recipient(s): nobody@refused.example."


def test_a_silent_mail_server_times_out_within_the_timeout(settings, mailbox):
    with TcpProxy(None) as hole:
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", hole.port, 1
        settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
        started = time.monotonic()
        result = destination(mailbox).backend().test()
        elapsed = time.monotonic() - started
    assert not result.ok
    assert result.message == "The panel's mail server did not answer within 1 seconds."
    assert elapsed < 3, elapsed


def test_a_connection_cut_mid_message_is_transient_and_delivers_nothing(smtp_server, settings, mailbox, tmp_path):
    path, sha = make_file(tmp_path / "a.tar.zst", 12 * MiB)
    with TcpProxy(("127.0.0.1", smtp_server.port)) as proxy:
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", proxy.port, 5
        settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
        backend = destination(mailbox, attachment_limit_mb=20).backend()
        thread, errors = upload_in_thread(backend, path, "backupsite/office", "a.tar.zst", 12 * MiB, sha)
        proxy.wait_for_upload(4 * MiB)
        proxy.cut()
        thread.join(30)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], TransientError), errors
    assert smtp_server.to(mailbox) == []


def test_the_attachment_limit_is_the_size_limit_the_wizard_warns_about(settings):
    from destinations.backends.email import EmailBackend, EmailConf

    settings.BACKUPSITE_EMAIL_ATTACHMENT_LIMIT_MB = 20
    assert EmailBackend(EmailConf(recipients="a@example.com")).size_limit() == 20 * 1024 * 1024
    assert EmailBackend(EmailConf(recipients="a@example.com", attachment_limit_mb=5)).size_limit() == 5 * 1024 * 1024
