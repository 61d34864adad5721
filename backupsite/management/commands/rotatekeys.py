"""Re-encrypt every stored secret with the first key of FIELD_ENCRYPTION_KEYS: every field of a
kind in :data:`backupsite.crypto.ENCRYPTED_FIELDS` (destination and source secrets, ping URLs,
trigger tokens, queued ping requests)."""

from __future__ import annotations

from django.apps import apps
from django.core.management.base import BaseCommand
from django.db import connection, transaction

from backupsite.crypto import ENCRYPTED_FIELDS, rotate_token


class Command(BaseCommand):
    help = "Re-encrypt every encrypted field with the first FIELD_ENCRYPTION_KEYS key."

    def handle(self, *args, **options):
        total = 0
        qn = connection.ops.quote_name
        with transaction.atomic():
            for model in apps.get_models():
                fields = [f for f in model._meta.concrete_fields if isinstance(f, ENCRYPTED_FIELDS)]
                if not fields:
                    continue
                table, pk = model._meta.db_table, model._meta.pk.column
                for field in fields:
                    with connection.cursor() as cursor:
                        # Identifiers come from model meta and are quoted; values are parameters.
                        cursor.execute(f"SELECT {qn(pk)}, {qn(field.column)} FROM {qn(table)}")  # noqa: S608
                        rows = cursor.fetchall()
                        for row_pk, token in rows:
                            if not token:
                                continue
                            cursor.execute(
                                f"UPDATE {qn(table)} SET {qn(field.column)} = %s WHERE {qn(pk)} = %s",  # noqa: S608
                                [rotate_token(token), row_pk],
                            )
                            total += 1
        self.stdout.write(self.style.SUCCESS(f"Re-encrypted {total} secret value(s) with the first key."))
