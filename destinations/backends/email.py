"""E-mail: each backup is one message with the archive, its manifest and (for encrypted
jobs) the key file attached, sent through the panel's own mail settings (``EMAIL_URL``,
Django's mail API: there is no second SMTP configuration to keep secret).

The kind is **write-only**: a mailbox cannot be listed, read back or cleaned up from
here, so it declares no capabilities and verify, drills, retention and downloads skip it
and say so. A backup above the attachment limit (the destination's own, else
``BACKUPSITE_EMAIL_ATTACHMENT_LIMIT_MB``) is refused **before anything is sent**, with a
message giving the size and the limit; the files are read (and their size and checksum
checked) before the message is handed to the mail server, so a damaged local copy is
never mailed. The attachments are held in memory while the message is built, which the
limit bounds (at most 100 MiB per destination).

Subject and body come from ``templates/emails/destination_*.txt``; the subject is folded
to one line whatever the job's name contains (no header injection), and Django refuses
any header with a line break.
"""

from __future__ import annotations

import contextlib
import re
import smtplib
import ssl
import time
from dataclasses import dataclass, field

from django import forms
from django.conf import settings as django_settings
from django.core.exceptions import ValidationError
from django.core.mail import BadHeaderError, EmailMessage, get_connection
from django.core.validators import validate_email
from django.template.loader import render_to_string
from django.utils.translation import gettext_lazy as _

from destinations.backends.base import (
    COPY_CHUNK,
    ROOT_FOLDER,
    Backend,
    Conf,
    ConfError,
    DestinationError,
    HashingReader,
    PermanentError,
    Session,
    TestResult,
    TransientError,
    UploadItem,
    check_folder,
    check_name,
    mapped_errors,
)
from destinations.kindforms import KindForm

MiB = 1024 * 1024
MAX_RECIPIENTS = 20
MAX_LIMIT_MB = 100
FOLDER_HEADER = "X-Backupsite-Folder"
_SPLIT = re.compile(r"[\s,;]+")


def split_addresses(text: str) -> list[str]:
    return [a for a in _SPLIT.split(text or "") if a]


def format_size(size: int) -> str:
    return f"{size / MiB:.1f} MB" if size >= MiB / 10 else f"{size} bytes"


@dataclass(frozen=True)
class EmailConf(Conf):
    recipients: list[str] = field(default_factory=list)
    #: MiB; None: ``BACKUPSITE_EMAIL_ATTACHMENT_LIMIT_MB``.
    attachment_limit_mb: int | None = None

    def __post_init__(self) -> None:
        recipients = self.recipients
        if isinstance(recipients, str):
            recipients = split_addresses(recipients)
        if not isinstance(recipients, (list, tuple)) or not all(isinstance(a, str) for a in recipients):
            raise ConfError("The recipients must be a list of e-mail addresses.", "recipients")
        cleaned: list[str] = []
        for address in (a.strip() for a in recipients):
            if not address:
                continue
            try:
                validate_email(address)
            except ValidationError:
                raise ConfError(f"“{address[:100]}” is not a valid e-mail address.", "recipients") from None
            if address.lower() not in (c.lower() for c in cleaned):
                cleaned.append(address)
        if not cleaned:
            raise ConfError("At least one recipient is required.", "recipients")
        if len(cleaned) > MAX_RECIPIENTS:
            raise ConfError(f"At most {MAX_RECIPIENTS} recipients.", "recipients")
        object.__setattr__(self, "recipients", cleaned)
        limit = self.attachment_limit_mb
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT_MB
        ):
            raise ConfError(f"The attachment limit is a number of MB from 1 to {MAX_LIMIT_MB}.", "attachment_limit_mb")

    @property
    def limit_mb(self) -> int:
        return self.attachment_limit_mb or django_settings.BACKUPSITE_EMAIL_ATTACHMENT_LIMIT_MB

    @property
    def limit_bytes(self) -> int:
        return self.limit_mb * MiB


# --- errors -----------------------------------------------------------------------------
def _mapper(timeout: float):
    def map_error(exc: BaseException) -> DestinationError | None:
        # Only codes and our own words: a mail server's reply text is not echoed.
        if isinstance(exc, smtplib.SMTPAuthenticationError):
            return PermanentError(
                "The panel's mail server refused its login (check the user and password in EMAIL_URL)."
            )
        if isinstance(exc, smtplib.SMTPRecipientsRefused):
            refused = ", ".join(sorted(str(a) for a in exc.recipients))
            return PermanentError(f"The mail server refused the recipient(s): {refused}.")
        if isinstance(exc, smtplib.SMTPSenderRefused):
            return PermanentError(
                f"The mail server refused the sender address ({exc.smtp_code}); check DEFAULT_FROM_EMAIL."
            )
        if isinstance(exc, smtplib.SMTPNotSupportedError):
            return PermanentError("The mail server does not support what EMAIL_URL asks for (STARTTLS or login).")
        if isinstance(exc, smtplib.SMTPResponseException):
            code = exc.smtp_code
            if code == 552 or (isinstance(exc, smtplib.SMTPDataError) and code in (523, 534)):
                return PermanentError(
                    f"The mail server refused the message as too large ({code}); lower this destination's "
                    "attachment limit to what the mail server accepts."
                )
            if isinstance(code, int) and 400 <= code < 500:
                return TransientError(f"The mail server is busy or refused the message for now ({code}).")
            return PermanentError(f"The mail server refused the message ({code}).")
        if isinstance(exc, ssl.SSLError):
            return PermanentError("TLS with the panel's mail server failed (certificate not trusted?).")
        if isinstance(exc, (TimeoutError, smtplib.SMTPServerDisconnected)) and "timed out" in str(exc).lower():
            return TransientError(f"The panel's mail server did not answer within {timeout:g} seconds.")
        if isinstance(exc, TimeoutError):
            return TransientError(f"The panel's mail server did not answer within {timeout:g} seconds.")
        if isinstance(exc, (smtplib.SMTPServerDisconnected, ConnectionError)):
            return TransientError("The connection to the panel's mail server was lost.")
        if isinstance(exc, smtplib.SMTPConnectError):
            return TransientError("The panel's mail server refused the connection.")
        if isinstance(exc, smtplib.SMTPException):
            return TransientError("Sending the e-mail failed.")
        if isinstance(exc, BadHeaderError):
            return PermanentError("The e-mail could not be built (a header contained a line break).")
        if isinstance(exc, OSError):
            return TransientError(f"Could not reach the panel's mail server ({exc.strerror or type(exc).__name__}).")
        return None

    return map_error


# --- the session ---------------------------------------------------------------------------
class EmailSession(Session):
    def __init__(self, backend: EmailBackend) -> None:
        super().__init__(backend)
        self.conf: EmailConf = backend.conf
        self.timeout = getattr(django_settings, "EMAIL_TIMEOUT", None) or backend.timeout

    def _upload(self, item, folder, *, progress, cancel, replace):
        self.upload_files(folder, [item], progress=progress, cancel=cancel, replace=replace)

    def upload_files(self, folder, items, *, progress=None, cancel=None, replace=False):
        """One message for the whole backup. *replace* has no meaning for e-mail."""
        check_folder(folder)
        items = list(items)
        if not items:
            raise PermanentError("Nothing to send.")
        for item in items:
            check_name(item.name)
        total = sum(item.size for item in items)
        if total > self.conf.limit_bytes:
            raise PermanentError(
                f"This backup is {format_size(total)}, above the e-mail attachment limit of "
                f"{self.conf.limit_mb} MB of this destination; nothing was sent. Use another "
                "destination for backups this large (or raise the limit, if the mail server accepts it)."
            )
        attachments = [(item, self._read(item, cancel)) for item in items]
        context = {
            "job_name": job_name(folder),
            "folder": folder,
            "files": [{"name": item.name, "size": format_size(item.size), "sha256": item.sha256} for item in items],
            "total": format_size(total),
            "archive": _archive_of(items),
            "site_url": django_settings.BACKUPSITE_SITE_URL.rstrip("/"),
        }
        message = self._message("destination_backup", context, folder)
        for item, data in attachments:
            mimetype = "application/json" if item.name.endswith(".json") else "application/octet-stream"
            message.attach(item.name, data, mimetype)
        self._send(message)
        if progress:
            progress(total)

    def _read(self, item: UploadItem, cancel) -> bytes:
        chunks = []
        try:
            with HashingReader(item.local_path, cancel=cancel) as reader:
                while chunk := reader.read(COPY_CHUNK):
                    chunks.append(chunk)
        except OSError as exc:
            raise PermanentError(f"The local copy of {item.name} cannot be read ({exc.strerror}).") from None
        if reader.size != item.size:
            raise PermanentError(f"The local copy of {item.name} has {reader.size} bytes instead of {item.size}.")
        if item.sha256 and reader.sha256 != item.sha256:
            raise PermanentError(f"The local copy of {item.name} does not match its checksum.")
        return b"".join(chunks)

    def _message(self, template: str, context: dict, folder: str) -> EmailMessage:
        # One line, whatever the template renders (a job name with CR/LF adds no header).
        subject = " ".join(render_to_string(f"emails/{template}_subject.txt", context).split())
        body = render_to_string(f"emails/{template}.txt", context)
        headers = {FOLDER_HEADER: folder} if folder else {}
        return EmailMessage(subject, body, None, list(self.conf.recipients), headers=headers)

    def _send(self, message: EmailMessage) -> int:
        with mapped_errors("sending", _mapper(self.timeout)):
            connection = get_connection(timeout=self.timeout)
            try:
                return connection.send_messages([message]) or 0
            finally:
                with contextlib.suppress(Exception):
                    connection.close()

    def send_test(self) -> int:
        """A short test message; returns its size in bytes."""
        context = {
            "recipients": ", ".join(self.conf.recipients),
            "limit_mb": self.conf.limit_mb,
            "site_url": django_settings.BACKUPSITE_SITE_URL.rstrip("/"),
        }
        message = self._message("destination_test", context, ROOT_FOLDER)
        self._send(message)
        return len(message.message().as_bytes())

    def describe_folder(self, folder: str) -> str:
        return f"e-mail to {', '.join(self.conf.recipients)}"


def job_name(folder: str) -> str:
    """The job whose backups go to *folder* (``backupsite/<slug>``), for the subject;
    else the folder itself (a planning export)."""
    parts = folder.split("/")
    if len(parts) == 2 and parts[0] == ROOT_FOLDER:
        from django.apps import apps
        from django.db import DatabaseError

        try:
            name = apps.get_model("jobs", "Job").objects.filter(slug=parts[1]).values_list("name", flat=True).first()
        except (LookupError, DatabaseError):
            name = None
        return name or parts[1]
    return folder or "backupsite"


def _archive_of(items: list[UploadItem]) -> dict | None:
    for item in items:
        if item.name.endswith((".tar.zst", ".tar.zst.age")):
            return {"name": item.name, "encrypted": item.name.endswith(".age")}
    return None


def _mail_server() -> str:
    backend = getattr(django_settings, "EMAIL_BACKEND", "")
    if backend.endswith("smtp.EmailBackend"):
        return f"{django_settings.EMAIL_HOST}:{django_settings.EMAIL_PORT}"
    return backend.rsplit(".", 2)[-2] if "." in backend else backend


# --- the backend -------------------------------------------------------------------------------
class EmailBackend(Backend):
    kind = "email"
    label = _("E-mail")
    help_text = _("Each backup is e-mailed as attachments (small backups only; the mailbox cannot be read back).")
    conf_class = EmailConf
    secret_fields = ()
    capabilities = frozenset()  # write-only: no list, read, delete, free space or replace
    form_class_path = "destinations.backends.email.EmailForm"

    @classmethod
    def describe_conf(cls, conf: EmailConf) -> str:
        return f"E-mail to {', '.join(conf.recipients)}"

    def describe_folder(self, folder: str) -> str:
        return f"e-mail to {', '.join(self.conf.recipients)}"

    def size_limit(self) -> int | None:
        """The attachment limit: the wizard warns before a job whose content is larger."""
        return self.conf.limit_bytes

    def session(self) -> EmailSession:
        return EmailSession(self)

    def test(self) -> TestResult:
        """Send a short test message (an e-mail cannot be read back: no probe)."""
        started = time.monotonic()
        recipients = ", ".join(self.conf.recipients)
        try:
            with self.session() as session:
                size = session.send_test()
        except DestinationError as exc:
            return TestResult(ok=False, message=exc.message, duration=time.monotonic() - started)
        elapsed = max(time.monotonic() - started, 1e-6)
        return TestResult(
            ok=True,
            message=(
                f"A test e-mail was sent to {recipients} through the panel's mail server; check that it "
                "arrived. E-mail cannot be read back, so nothing else was checked, and verify, downloads "
                "and retention skip this destination."
            ),
            remote_folder=self.describe_folder(""),
            throughput=size / elapsed,
            duration=elapsed,
            details=[
                ("Recipients", recipients),
                ("Attachment limit", f"{self.conf.limit_mb} MB"),
                ("Mail server", _mail_server()),
            ],
        )


class EmailForm(KindForm):
    backend_class = EmailBackend

    recipients = forms.CharField(
        label=_("Recipients"),
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text=_("One or more e-mail addresses, separated by commas or new lines."),
    )
    attachment_limit_mb = forms.IntegerField(
        label=_("Attachment limit (MB)"),
        required=False,
        min_value=1,
        max_value=MAX_LIMIT_MB,
        help_text=_(
            "A backup whose files total more is refused before anything is sent (the mail server "
            "would bounce it). Most mail servers accept 10–25 MB. Blank: the panel's default."
        ),
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        field = self.fields["attachment_limit_mb"]
        field.widget.attrs.setdefault("placeholder", str(django_settings.BACKUPSITE_EMAIL_ATTACHMENT_LIMIT_MB))

    def initial_from_settings(self, settings: dict) -> dict:
        initial = dict(settings)
        if isinstance(initial.get("recipients"), list):
            initial["recipients"] = ", ".join(initial["recipients"])
        return initial

    def settings_from_cleaned(self, cleaned: dict) -> dict:
        return {
            "recipients": split_addresses(cleaned.get("recipients", "")),
            "attachment_limit_mb": cleaned.get("attachment_limit_mb"),
        }


__all__ = ["EmailBackend", "EmailConf", "EmailForm", "EmailSession"]
