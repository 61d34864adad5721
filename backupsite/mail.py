"""E-mail to files (``EMAIL_URL=file://…``, the development default) that only the
panel's user can read: failure alerts name jobs, hosts and errors."""

from __future__ import annotations

import os

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.mail.backends.filebased import EmailBackend

from backupsite.private import open_private, private_dir


class PrivateFileEmailBackend(EmailBackend):
    """Django's file backend, with the folder made 0700 and every message file 0600."""

    def __init__(self, *args, file_path=None, **kwargs):
        folder = file_path if file_path is not None else getattr(settings, "EMAIL_FILE_PATH", None)
        if folder:
            try:
                # Before Django's os.makedirs(), which would make it with the umask's mode.
                private_dir(os.path.abspath(folder))
            except OSError as exc:
                raise ImproperlyConfigured(f"Could not create the e-mail folder {folder}: {exc.strerror}.") from None
        super().__init__(*args, file_path=file_path, **kwargs)

    def open(self):
        if self.stream is None:
            self.stream = open_private(self._get_filename(), "ab")
            return True
        return False
