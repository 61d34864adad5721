"""The SFTP destination's form (a module of its own: ``destinations.forms`` imports the
registry, which imports the backend)."""

from __future__ import annotations

from django import forms
from django.utils.translation import gettext_lazy as _

from destinations.backends.base import ConfError
from destinations.backends.net import parse_server
from destinations.backends.sftp import DEFAULT_PORT, FINGERPRINT_SETTING, SftpBackend
from destinations.backends.sftp.keys import KeyProblem, load_private_key
from destinations.kindforms import KindForm


class SecretTextarea(forms.Textarea):
    """A textarea that never renders its value back (a pasted private key)."""

    def format_value(self, value):
        return None


class SftpForm(KindForm):
    managed_settings = (FINGERPRINT_SETTING,)
    backend_class = SftpBackend
    secret_fields = ("password", "private_key", "passphrase")

    server = forms.CharField(
        label=_("Server"),
        max_length=300,
        help_text=_(
            "Host name or address, as your provider gives it: backup.example.net, "
            "backup.example.net/branch1 or sftp://backup.example.net:2222/branch1."
        ),
    )
    port = forms.IntegerField(
        label=_("Port"),
        min_value=1,
        max_value=65535,
        required=False,
        initial=DEFAULT_PORT,
        help_text=_("22 unless your provider says otherwise (a port in the server field counts too)."),
    )
    path = forms.CharField(
        label=_("Folder"),
        max_length=1000,
        required=False,
        initial=".",
        help_text=_(
            "An absolute path such as /srv/backups, or a folder relative to the login directory; “.” is the "
            "login directory itself. It must exist; backups go to backupsite/<job> below it."
        ),
    )
    user = forms.CharField(label=_("User name"), max_length=100)
    password = forms.CharField(
        label=_("Password"),
        required=False,
        strip=False,
        help_text=_("Leave empty when logging in with a private key."),
    )
    private_key = forms.CharField(
        label=_("Private key"),
        required=False,
        strip=False,
        help_text=_(
            "Instead of a password: paste an OpenSSH or PEM private key (-----BEGIN … PRIVATE KEY-----). "
            "Its public key must be in the user's authorized_keys on the server. Large uploads with a key "
            "are faster."
        ),
    )
    passphrase = forms.CharField(
        label=_("Key passphrase"),
        required=False,
        strip=False,
        help_text=_("Only if the private key is protected by one."),
    )

    def __init__(self, data=None, *, settings: dict | None = None, secrets: dict | None = None, **kwargs):
        self.stored_settings = dict(settings or {})
        super().__init__(data, settings=settings, secrets=secrets, **kwargs)
        key = self.fields["private_key"]
        key.widget = SecretTextarea(attrs={"rows": 6, "autocomplete": "off", "spellcheck": "false"})

    # --- the stored settings <-> the form ---
    def initial_from_settings(self, settings: dict) -> dict:
        if not settings:
            return {}
        host = settings.get("host", "")
        return {
            "server": f"[{host}]" if ":" in host else host,
            "port": settings.get("port", DEFAULT_PORT),
            "path": settings.get("path", "."),
            "user": settings.get("user", ""),
        }

    def settings_from_cleaned(self, cleaned: dict) -> dict:
        server = parse_server(cleaned.get("server") or "", schemes=("sftp",), field="server")
        port = cleaned.get("port")
        if server.port is not None:
            if port not in (None, DEFAULT_PORT, server.port):
                raise ConfError(_("The server and the port field name different ports."), "port")
            port = server.port
        path = (cleaned.get("path") or "").strip() or "."
        if server.folder:
            if path.startswith("/"):
                raise ConfError(_("Give the folder either in the server field or in Folder, not in both."), "path")
            path = server.folder if path in (".", "./") else f"{server.folder}/{path}"
        settings = {"host": server.host, "port": port or DEFAULT_PORT, "path": path, "user": cleaned.get("user", "")}
        # The confirmed host key belongs to a server: kept while the server stays the same.
        stored = self.stored_settings
        if (
            stored.get(FINGERPRINT_SETTING)
            and stored.get("host") == settings["host"]
            and int(stored.get("port") or DEFAULT_PORT) == int(settings["port"])
        ):
            settings[FINGERPRINT_SETTING] = stored[FINGERPRINT_SETTING]
        return settings

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        secrets = self.secrets_from_cleaned(cleaned)
        if not secrets.get("password") and not secrets.get("private_key"):
            self.add_error("password", _("Enter a password or paste a private key."))
            return cleaned
        if cleaned.get("private_key") or (cleaned.get("passphrase") and secrets.get("private_key")):
            try:
                load_private_key(secrets["private_key"], secrets.get("passphrase") or None)
            except KeyProblem as exc:
                self.add_error(exc.field if exc.field in self.fields else "private_key", str(exc))
        return cleaned
