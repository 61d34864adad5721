"""Ping URLs are encrypted at rest (their token is a credential of the monitoring service).

The column becomes a text column of Fernet tokens; existing URLs are encrypted with the
first FIELD_ENCRYPTION_KEYS key, and the reverse decrypts them before the column is a
500-character URL column again. Raw SQL: the historical model's field would try to
decrypt the clear values. The trigger token and the queued pings' URL were tokens
already; they only change class so that ``rotatekeys`` re-encrypts them too.
"""

import django.core.validators
from django.db import migrations

import backupsite.crypto


def _convert(schema_editor, convert) -> None:
    connection = schema_editor.connection
    qn = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {qn('id')}, {qn('ping_url')} FROM {qn('jobs_job')}")  # noqa: S608
        for pk, value in cursor.fetchall():
            new = convert(value) if value else ""
            if new != value:
                cursor.execute(
                    f"UPDATE {qn('jobs_job')} SET {qn('ping_url')} = %s WHERE {qn('id')} = %s",  # noqa: S608
                    [new, pk],
                )


def encrypt_ping_urls(apps, schema_editor):
    from backupsite.crypto import _is_token, encrypt_text

    _convert(schema_editor, lambda value: value if _is_token(value) else encrypt_text(value))


def decrypt_ping_urls(apps, schema_editor):
    from backupsite.crypto import _is_token, decrypt_text

    _convert(schema_editor, lambda value: decrypt_text(value) if _is_token(value) else value)


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0018_exportrun_host"),
    ]

    operations = [
        migrations.AlterField(
            model_name="job",
            name="ping_url",
            field=backupsite.crypto.EncryptedTextField(
                blank=True,
                default="",
                help_text="Optional dead man's switch (healthchecks.io, Uptime Kuma): requested at the start, on success, and at <url>/fail with the error.",
                validators=[
                    django.core.validators.URLValidator(schemes=["http", "https"]),
                    django.core.validators.MaxLengthValidator(500),
                ],
            ),
        ),
        migrations.RunPython(encrypt_ping_urls, decrypt_ping_urls),
        migrations.AlterField(
            model_name="job",
            name="trigger_token_encrypted",
            field=backupsite.crypto.TokenTextField(blank=True),
        ),
        migrations.AlterField(
            model_name="notification",
            name="url_encrypted",
            field=backupsite.crypto.TokenTextField(blank=True),
        ),
    ]
