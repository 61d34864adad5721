"""The FTP / FTPS destination form: server (host and folder as users type it), port,
user, password, plain FTP (off by default), the pinned certificate fingerprint.

Here rather than in ``backend.py``: ``destinations.forms`` imports the registry, which
imports the backend, so the backend must not import the forms (``form_class_path``
imports this module when a form is needed)."""

from __future__ import annotations

from django import forms
from django.utils.translation import gettext_lazy as _

from destinations.backends.base import ConfError
from destinations.backends.ftp.backend import DEFAULT_PORT, FtpBackend
from destinations.backends.net import parse_server
from destinations.kindforms import KindForm


class FtpForm(KindForm):
    backend_class = FtpBackend
    secret_fields = ("password",)

    server = forms.CharField(
        label=_("Server"),
        max_length=600,
        help_text=_(
            "The server name, optionally followed by a folder that must exist there: "
            "backup.example.net/branch1 or ftp://backup.example.net/branch1. Backups go into a "
            "folder “backupsite” there, one sub-folder per job."
        ),
    )
    port = forms.IntegerField(
        label=_("Port"),
        required=False,
        min_value=1,
        max_value=65535,
        initial=DEFAULT_PORT,
        help_text=_("Usually 21, for FTPS with explicit TLS too. A port typed in the server field wins."),
    )
    user = forms.CharField(label=_("User name"), max_length=255)
    password = forms.CharField(label=_("Password"), max_length=1000, strip=False)
    plain_ftp = forms.BooleanField(
        label=_("Plain FTP without encryption"),
        required=False,
        help_text=_(
            "Only for servers that cannot do FTPS. Warning: the password and the backups then travel "
            "unencrypted, readable by anyone on the network path. Unticked, the connection is encrypted "
            "(explicit TLS) or refused, never silently unencrypted."
        ),
    )
    tls_fingerprint = forms.CharField(
        label=_("Confirmed TLS certificate (SHA-256)"),
        required=False,
        max_length=200,
        help_text=_(
            "Filled in when you confirm the server's certificate after a connection test; needed for "
            "self-signed certificates. Any other certificate is then refused. Leave blank to trust "
            "certificates from the authorities this server trusts."
        ),
    )

    field_order = ["server", "port", "user", "password", "plain_ftp", "tls_fingerprint"]

    def clean_password(self):
        password = self.cleaned_data.get("password") or ""
        if "\r" in password or "\n" in password:
            raise forms.ValidationError(_("The password must not contain line breaks."))
        return password

    def initial_from_settings(self, settings: dict) -> dict:
        if not settings:
            return {"port": DEFAULT_PORT}
        host = str(settings.get("host") or "")
        if ":" in host:
            host = f"[{host}]"
        folder = str(settings.get("folder") or "")
        return {
            "server": f"{host}/{folder}" if folder else host,
            "port": settings.get("port", DEFAULT_PORT),
            "user": settings.get("user", ""),
            "plain_ftp": bool(settings.get("plain_ftp", False)),
            "tls_fingerprint": settings.get("tls_fingerprint", ""),
        }

    def settings_from_cleaned(self, cleaned: dict) -> dict:
        raw = (cleaned.get("server") or "").strip()
        if raw.lower().startswith("ftps://"):
            raise ConfError(
                str(
                    _(
                        "Implicit FTPS (ftps://, usually port 990) is not supported. Type ftp://… or just the "
                        "server name: the connection is encrypted with explicit TLS unless plain FTP is ticked."
                    )
                ),
                "server",
            )
        server = parse_server(raw, schemes=("ftp", "ftpes"), field="server")
        typed_port = cleaned.get("port")
        if server.port and typed_port and typed_port not in (server.port, DEFAULT_PORT):
            raise ConfError(
                str(_("The server says port %(a)s, the port field %(b)s.") % {"a": server.port, "b": typed_port}),
                "port",
            )
        return {
            "host": server.host,
            "port": server.port or typed_port or DEFAULT_PORT,
            "folder": server.folder,
            "user": cleaned.get("user") or "",
            "plain_ftp": bool(cleaned.get("plain_ftp")),
            "tls_fingerprint": cleaned.get("tls_fingerprint") or "",
        }
