"""Secrets at rest: a model field that stores a JSON object encrypted with MultiFernet.

The key list comes from ``FIELD_ENCRYPTION_KEYS`` (first key encrypts, every key
decrypts), so keys can be rotated: add the new key in front, run
``python manage.py rotatekeys``, then drop the old key.
"""

from __future__ import annotations

import json
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.db.models.query_utils import DeferredAttribute


@lru_cache(maxsize=4)
def _multifernet(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise ImproperlyConfigured("FIELD_ENCRYPTION_KEYS is empty.")
    return MultiFernet([Fernet(key.encode()) for key in keys])


def fernet() -> MultiFernet:
    return _multifernet(tuple(settings.FIELD_ENCRYPTION_KEYS))


def encrypt_text(value: str) -> str:
    return fernet().encrypt(value.encode()).decode()


def decrypt_text(token: str) -> str:
    try:
        return fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        # Never include the token or any key in the message.
        raise ImproperlyConfigured(
            "A stored secret cannot be decrypted with FIELD_ENCRYPTION_KEYS "
            "(was a key removed before `manage.py rotatekeys` ran?)."
        ) from None


def rotate_token(token: str) -> str:
    return fernet().rotate(token.encode()).decode()


class Secrets(dict):
    """A dict whose repr never shows values, so secrets stay out of logs and tracebacks."""

    def __repr__(self) -> str:
        return f"Secrets({', '.join(sorted(self))})"

    __str__ = __repr__


class _SecretsAttribute(DeferredAttribute):
    """Wraps whatever is assigned in :class:`Secrets`, so even an unsaved instance
    never shows its secrets in a repr, a log line or a traceback."""

    def __set__(self, instance, value):
        if not isinstance(value, Secrets):
            value = Secrets(value or {})
        instance.__dict__[self.field.attname] = value


class EncryptedJSONField(models.TextField):
    """A dict of secrets, stored as a Fernet token of its JSON. Empty dict = no secrets."""

    description = "Encrypted JSON object"
    descriptor_class = _SecretsAttribute

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("default", dict)
        kwargs.setdefault("blank", True)
        kwargs.setdefault("editable", False)
        super().__init__(*args, **kwargs)

    def from_db_value(self, value, expression, connection):
        if value in (None, ""):
            return Secrets()
        return Secrets(json.loads(decrypt_text(value)))

    def to_python(self, value):
        if isinstance(value, dict):
            return Secrets(value)
        if value in (None, ""):
            return Secrets()
        return Secrets(json.loads(decrypt_text(value)))

    def get_prep_value(self, value):
        if value is None:
            value = {}
        return encrypt_text(json.dumps(dict(value), sort_keys=True))

    def value_to_string(self, obj):
        # Serialisation (dumpdata) keeps the ciphertext, never the clear text.
        return self.get_prep_value(self.value_from_object(obj))
