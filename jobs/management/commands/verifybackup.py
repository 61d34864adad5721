"""Verify a stored backup against its manifest: ``python manage.py verifybackup RUN``.

Reads the archive of run RUN (its id) from the local copy, or with ``--destination`` from
that destination, decrypts it when needed, and compares the archive and every member with
the manifest. The outcome is recorded on the run (or its upload) and a damaged backup is
e-mailed to the job's report-to addresses.

Encrypted backups: ``--password-file F`` (the job's backup password, first line of F;
``-`` reads standard input) or ``--identity-file F`` (an age identity file); on a terminal
the password is asked for. ``--checksum-only`` compares only the stored file's size and
sha256 (no key needed).

Exit codes: 0 the backup is intact; 1 it is damaged (the one-line error names the first
member concerned); 2 it could not be checked (unknown run, no copy, wrong password,
destination unreachable).
"""

from __future__ import annotations

import getpass
import sys

from django.core.management.base import BaseCommand, CommandError

from jobs.models import Run
from jobs.verification import VerificationError, verify_run


def find_run(ref: str) -> Run:
    run = Run.objects.filter(pk=int(ref)).first() if ref.isdigit() else None
    if run is None:
        run = Run.objects.filter(archive_name=ref).order_by("-pk").first()
    if run is None:
        raise CommandError(f"No run {ref!r} (give its number or archive name).", returncode=2)
    return run


def read_secret_file(path: str) -> str:
    """The first line of *path* (``-``: standard input), without its line ending."""
    try:
        if path == "-":
            line = sys.stdin.readline()
        else:
            with open(path, encoding="utf-8") as fh:
                line = fh.readline()
    except OSError as exc:
        raise CommandError(f"Cannot read {path}: {exc.strerror}", returncode=2) from None
    line = line.rstrip("\r\n")
    if not line:
        raise CommandError(f"{path} is empty.", returncode=2)
    return line


def read_identity_file(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as fh:
            lines = [line.strip() for line in fh if line.strip().startswith("AGE-SECRET-KEY-")]
    except OSError as exc:
        raise CommandError(f"Cannot read {path}: {exc.strerror}", returncode=2) from None
    if not lines:
        raise CommandError(f"{path} holds no age identity (AGE-SECRET-KEY-…).", returncode=2)
    return lines


def key_options(parser) -> None:
    parser.add_argument("--destination", help="Read the backup from this destination (name), not the local copy.")
    parser.add_argument("--password-file", help="File whose first line is the backup password ('-': stdin).")
    parser.add_argument("--identity-file", help="An age identity file (AGE-SECRET-KEY-…) instead of the password.")


def encrypted(run: Run) -> bool:
    encryption = run.config.get("job", {}).get("encryption")
    return run.archive_name.endswith(".age") or encryption not in (None, "", "none")


def secrets_from(options: dict, run: Run, *, may_skip: bool = False) -> tuple[str | None, list[str] | None]:
    password = identities = None
    if options.get("identity_file"):
        identities = read_identity_file(options["identity_file"])
    elif options.get("password_file"):
        password = read_secret_file(options["password_file"])
    elif encrypted(run) and not may_skip and sys.stdin.isatty():
        password = getpass.getpass("Backup password: ") or None
    return password, identities


class Command(BaseCommand):
    help = "Check a stored backup (local copy or destination) against its manifest."

    def add_arguments(self, parser):
        parser.add_argument("run", help="Run number (or archive name)")
        key_options(parser)
        parser.add_argument(
            "--checksum-only", action="store_true", help="Only compare the stored file's size and sha256."
        )

    def handle(self, *args, run: str, checksum_only: bool, **options):
        found = find_run(run)
        password, identities = secrets_from(options, found, may_skip=checksum_only)
        try:
            result = verify_run(
                found, options.get("destination"), password, identities=identities, checksum_only=checksum_only
            )
        except VerificationError as exc:
            raise CommandError(f"Run #{found.pk}: could not verify: {exc}", returncode=2) from None
        if not result.ok:
            raise CommandError(f"Run #{found.pk} ({result.where}) is damaged: {result.message}", returncode=1)
        self.stdout.write(self.style.SUCCESS(f"Run #{found.pk} ({result.where}): {result.message}"))
