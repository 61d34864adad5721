"""Create the first administrator if there is no user yet; print its password once."""

from __future__ import annotations

import secrets

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand
from django.db import transaction

from backupsite.roles import ADMINISTRATORS


class Command(BaseCommand):
    help = "Create an administrator with a random password if no user exists yet."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")
        parser.add_argument("--email", default="admin@example.com")

    @transaction.atomic
    def handle(self, *args, username, email, **options):
        User = get_user_model()
        if User.objects.exists():
            self.stdout.write("Users exist already; no administrator created.")
            return
        password = secrets.token_urlsafe(12)
        user = User.objects.create_user(username=username, email=email, password=password)
        user.groups.add(Group.objects.get(name=ADMINISTRATORS))
        bar = "=" * 64
        self.stdout.write(
            f"\n{bar}\n  First administrator created (shown only this once):\n"
            f"    user:     {username}\n    password: {password}\n"
            f"  Change it under “Password” after logging in.\n{bar}\n"
        )
