"""Destination secrets are encrypted at rest, never shown, and keys rotate."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.db import connection

from backupsite.crypto import Secrets
from destinations.models import Destination

SECRET = "hunter2-very-secret-password"


@pytest.fixture
def destination(db, folders):
    return Destination.objects.create(
        name="Share", kind="local", settings={"path": str(folders["backups"])}, secrets={"password": SECRET}
    )


def raw_secrets(pk) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT secrets FROM destinations_destination WHERE id = %s", [pk])
        return cursor.fetchone()[0]


def test_the_database_holds_only_ciphertext(destination):
    raw = raw_secrets(destination.pk)
    assert SECRET not in raw and "password" not in raw
    assert Destination.objects.get(pk=destination.pk).secrets["password"] == SECRET


def test_no_clear_secret_anywhere_in_the_database_file(destination, settings):
    with connection.cursor() as cursor:
        tables = connection.introspection.table_names(cursor)
        for table in tables:
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608
            for row in cursor.fetchall():
                assert all(SECRET not in str(value) for value in row), table


def test_secrets_never_show_in_repr_or_pages(client, alice, destination):
    assert SECRET not in repr(destination.secrets) and SECRET not in str(destination.secrets)
    assert SECRET not in repr(destination.backend())
    client.force_login(alice)
    for url in (destination.get_absolute_url(), "/destinations/"):
        assert SECRET not in client.get(url).content.decode()
    assert isinstance(destination.secrets, Secrets)


def test_rotatekeys_reencrypts_with_the_first_key(destination, settings):
    old_key = settings.FIELD_ENCRYPTION_KEYS[0]
    before = raw_secrets(destination.pk)
    new_key = Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [new_key, old_key]
    call_command("rotatekeys", stdout=open("/dev/null", "w"))  # noqa: SIM115
    after = raw_secrets(destination.pk)
    assert after != before
    assert Fernet(new_key.encode()).decrypt(after.encode())  # readable with the new key alone
    settings.FIELD_ENCRYPTION_KEYS = [new_key]
    assert Destination.objects.get(pk=destination.pk).secrets["password"] == SECRET


def test_a_removed_key_gives_a_clear_error_without_the_token(destination, settings):
    from django.core.exceptions import ImproperlyConfigured

    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(ImproperlyConfigured, match="rotatekeys") as info:
        Destination.objects.get(pk=destination.pk)
    assert raw_secrets(destination.pk) not in str(info.value)
