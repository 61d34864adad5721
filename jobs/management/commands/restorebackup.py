"""Restore a backup into a folder: ``python manage.py restorebackup RUN --target DIR``.

The target must be empty or not exist yet (its parent must exist). Every member is
checked before it is written (no absolute paths, ``..``, links out of the target, hard
links, devices) and against the manifest; if anything is wrong nothing is restored.
Encrypted backups take ``--password-file`` or ``--identity-file`` like ``verifybackup``.

``--only PATH`` (repeatable) restores only that source's folder or that path inside the
archive (``--only office-files/docs/2026``), and checks only those members against the
manifest; the rest of the archive is read past (its checksum is still checked).
Symbolic links are restored as links, also those that lead outside the target
(``/etc/...``); they are made last and never followed.

Databases are loaded only when asked: ``--database-url URL`` (or ``--database-url-file F``,
which keeps the credentials out of the process list) restores the backup's database
dump into that existing database with the source kind's own tool; with several
database sources pick one with ``--source SLUG``. The panel's own live database is
refused unless ``--allow-panel-database`` is given as well.

Exit codes: 0 restored; 1 refused or damaged (nothing restored), or the database load
failed; 2 could not start (unknown run, no copy, wrong password, bad target).
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from jobs.engine.restore import RestoreError
from jobs.management.commands.verifybackup import find_run, key_options, read_secret_file, secrets_from
from jobs.restores import restore_run
from jobs.verification import VerificationError


class Command(BaseCommand):
    help = "Restore a backup into an empty or new folder (and, if asked, its database dump into a database)."

    def add_arguments(self, parser):
        parser.add_argument("run", help="Run number (or archive name)")
        parser.add_argument("--target", required=True, help="Empty or new folder to restore into.")
        parser.add_argument(
            "--only",
            action="append",
            metavar="PATH",
            help="Restore only this path of the archive (a source's folder, or a path inside one); repeatable.",
        )
        key_options(parser)
        db = parser.add_mutually_exclusive_group()
        db.add_argument("--database-url", help="Load the backup's database dump into this database.")
        db.add_argument("--database-url-file", help="File whose first line is the database URL.")
        parser.add_argument("--source", help="Which database source to load (its slug), if there are several.")
        parser.add_argument(
            "--allow-panel-database",
            action="store_true",
            help="Allow loading the dump into backupsite's own live database (disaster recovery only).",
        )

    def handle(self, *args, run: str, target: str, **options):
        found = find_run(run)
        password, identities = secrets_from(options, found)
        database_url = options.get("database_url")
        if options.get("database_url_file"):
            database_url = read_secret_file(options["database_url_file"])
        try:
            report = restore_run(
                found,
                target,
                destination=options.get("destination"),
                password=password,
                identities=identities,
                only=options.get("only"),
                database_url=database_url,
                source_slug=options.get("source"),
                allow_panel_database=options["allow_panel_database"],
            )
        except RestoreError as exc:
            raise CommandError(f"Run #{found.pk}: nothing restored: {exc}", returncode=1) from None
        except VerificationError as exc:
            code = 1 if "were restored" in str(exc) else 2
            raise CommandError(f"Run #{found.pk}: {exc}", returncode=code) from None
        self.stdout.write(self.style.SUCCESS(f"Run #{found.pk}: {report.message}"))
