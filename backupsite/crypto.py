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


def _is_token(value: str) -> bool:
    # Every Fernet token starts with version byte 0x80 and a 64-bit timestamp: "gAAAAA".
    return value.startswith("gAAAAA")


class EncryptedTextField(models.TextField):
    """A secret string (a ping URL with its token in the path), stored as a Fernet token;
    the model sees the clear text. An empty value is stored as "" (so "is one set?" is a
    plain query); any other lookup on the field cannot match (every encryption differs)."""

    description = "Encrypted text"

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("default", "")
        kwargs.setdefault("blank", True)
        super().__init__(*args, **kwargs)

    def from_db_value(self, value, expression, connection):
        return decrypt_text(value) if value else ""

    def to_python(self, value):
        if value in (None, ""):
            return ""
        value = str(value)
        # loaddata hands back what value_to_string wrote (ciphertext); forms hand clear text.
        return decrypt_text(value) if _is_token(value) else value

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        return encrypt_text(value) if value else ""

    def value_to_string(self, obj):
        # Serialisation (dumpdata) keeps the ciphertext, never the clear text.
        return self.get_prep_value(self.value_from_object(obj))


class TokenTextField(models.TextField):
    """A text column the model itself fills with :func:`encrypt_text` tokens (and
    decrypts where it needs the value). Only a marker: ``rotatekeys`` re-encrypts it."""

    description = "Fernet token"


#: Fields whose stored values are Fernet tokens: ``manage.py rotatekeys`` re-encrypts them.
ENCRYPTED_FIELDS: tuple[type[models.Field], ...] = (EncryptedJSONField, EncryptedTextField, TokenTextField)
