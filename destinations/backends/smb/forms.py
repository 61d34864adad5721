"""The Windows share's form: server, share (and folders), user, password,
authentication, encryption; mapped onto :class:`SmbConf`."""

from __future__ import annotations

from django import forms
from django.utils.translation import gettext_lazy as _

from destinations.backends.base import ConfError
from destinations.backends.smb.backend import SmbBackend
from destinations.backends.smb.conf import DEFAULT_PORT, KERBEROS, NEGOTIATE, NTLM, split_server, split_share
from destinations.kindforms import KindForm

AUTH_CHOICES = [
    (NEGOTIATE, _("Automatic (Kerberos where it is set up, else NTLM)")),
    (NTLM, _("NTLM (user name and password)")),
    (KERBEROS, _("Kerberos (domain accounts)")),
]


class SmbForm(KindForm):
    backend_class = SmbBackend
    secret_fields = ("password",)

    server = forms.CharField(
        label=_("Server"),
        max_length=300,
        help_text=_(
            "Name or address of the Windows server or NAS, e.g. “nas.office.lan” or “192.168.1.20” "
            "(a port as “nas:4455”). A path like \\\\nas\\backups\\office is split for you."
        ),
    )
    share = forms.CharField(
        label=_("Share and folder"),
        max_length=500,
        required=False,
        help_text=_(
            "The shared folder, then sub-folders, joined with “/”: “backups” or “backups/office”. "
            "The folders must exist; backups go into backupsite/<job> inside."
        ),
    )
    user = forms.CharField(
        label=_("User"),
        max_length=256,
        help_text=_("“user”, “DOMAIN\\user” or “user@domain.example”. Guest access is never used."),
    )
    password = forms.CharField(
        label=_("Password"),
        max_length=256,
        required=False,
        strip=False,
        help_text=_("Required for NTLM; for Kerberos, blank uses this server's ticket (kinit)."),
    )
    auth = forms.ChoiceField(label=_("Authentication"), choices=AUTH_CHOICES, initial=NEGOTIATE, required=False)
    encrypt = forms.BooleanField(
        label=_("Require encryption"),
        required=False,
        help_text=_("Refuse to connect unless the server encrypts the whole session (SMB 3)."),
    )

    def initial_from_settings(self, settings: dict) -> dict:
        if not settings:
            return {}
        host = settings.get("host", "")
        port = settings.get("port", DEFAULT_PORT)
        server = f"[{host}]" if ":" in host else host
        if port and port != DEFAULT_PORT:
            server = f"{server}:{port}"
        share = "/".join(p for p in (settings.get("share", ""), settings.get("path", "")) if p)
        return {
            "server": server,
            "share": share,
            "user": settings.get("user", ""),
            "auth": settings.get("auth", NEGOTIATE),
            "encrypt": settings.get("encrypt", False),
        }

    def settings_from_cleaned(self, cleaned: dict) -> dict:
        host, port, typed_share = split_server(cleaned.get("server", ""))
        share_text = (cleaned.get("share") or "").strip()
        if typed_share and share_text and split_share(typed_share) != split_share(share_text):
            raise ConfError(_("The server field names another share than the share field; keep one."), "share")
        share, path = split_share(share_text or typed_share)
        return {
            "host": host,
            "port": port or DEFAULT_PORT,
            "share": share,
            "path": path,
            "user": cleaned.get("user", ""),
            "auth": cleaned.get("auth") or NEGOTIATE,
            "encrypt": bool(cleaned.get("encrypt")),
        }

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        auth = cleaned.get("auth")
        if auth != KERBEROS and not (cleaned.get("password") or self.stored_secrets.get("password")):
            self.add_error("password", _("A password is required for this authentication."))
        return cleaned
