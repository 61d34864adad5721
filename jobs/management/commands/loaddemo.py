"""Load demo data (idempotent): a demo directory tree, its Source, the panel database
Source, a "Server hard drive" destination under the data dir, one demo Job, and a demo
planning database (SQLite) with an enabled planning export of it to that destination.

"Demo backup" backs up the demo folder only, unencrypted, so that a newcomer can
download it and open it with ``zstd`` and ``tar`` at once. The panel database source is
created (it shows in the list) but left out of the demo job: its archive would carry
every password hash in clear and only administrators may download it. An older demo job
that still holds it unencrypted has it removed.

"Demo planning export" writes ``topics.xlsx`` and ``appointments.xlsx`` (the next five
days of the demo newsroom's planning) into ``planning/`` of the server hard drive every
night at 02:00, and on *Run now*. The planning database is made anew when it is more than
a week old, so the window always has rows."""

from __future__ import annotations

import os
import random

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction

from backupsite import configwrite
from backupsite.private import private_dir, write_private
from destinations.models import Destination
from jobs.exports import demo as planning_demo
from jobs.models import ExportDataset, Job, PlanningExport, Source

DEMO_TEXT = """backupsite demo file {n}

This folder stands in for the data a small business wants to keep safe:
invoices, the phone system's configuration, a few scans. Run the demo job,
download the archive and restore it with stock tools:

    zstd -dc demo-backup-*.tar.zst | tar -xf -
"""


def make_demo_tree(root) -> None:
    """The demo folder lives in the data dir: 0700 folders, 0600 files, like the rest."""
    if (root / ".demo-complete").exists():
        return
    rng = random.Random(20261123)  # noqa: S311 - demo content, not a secret
    for folder, count in (("invoices/2026", 12), ("pbx-config", 5), ("scans", 3)):
        path = private_dir(root / folder)
        for n in range(count):
            write_private(path / f"file-{n:02d}.txt", DEMO_TEXT.format(n=n) * (n + 1))
    write_private(root / "scans" / "scan-001.bin", rng.randbytes(256 * 1024))
    write_private(root / "README.txt", "Demo data for backupsite.\n")
    link = root / "latest-invoices"
    if not link.is_symlink():
        os.symlink("invoices/2026", link)
    write_private(root / ".demo-complete", "ok\n")


class Command(BaseCommand):
    help = "Create demo sources, a local destination and a demo job (safe to run again)."

    @transaction.atomic
    def handle(self, *args, **options):
        demo_root = settings.DATA_DIR / "demo" / "files"
        make_demo_tree(demo_root)
        backups = settings.BACKUPSITE_LOCAL_BACKUP_DIR
        backups.mkdir(parents=True, exist_ok=True)

        files, _ = Source.objects.get_or_create(
            name="Demo files",
            defaults={"kind": "directory", "settings": {"path": str(demo_root), "exclude": ["*.tmp"]}},
        )
        panel_db = Source.panel_database()  # made by a migration; never a second one
        local, _ = Destination.objects.get_or_create(
            name="Server hard drive", defaults={"kind": "local", "settings": {"path": str(backups)}}
        )
        # Jobs are written through configwrite, as by the wizard (audit, admin e-mails).
        job = Job.objects.filter(name="Demo backup").first()
        if job is None:
            job = Job(name="Demo backup", report_to="admin@example.com", interval=Job.Interval.MANUAL, keep_last=7)
            configwrite.save(job, m2m={"sources": [files], "destinations": [local]})
        elif not job.encrypts and job.sources.filter(pk=panel_db.pk).exists():
            configwrite.save(job, m2m={"sources": job.sources.exclude(pk=panel_db.pk)})
            self.stdout.write(
                f"Removed the panel database from “{job.name}”: unencrypted, its archive would carry every "
                "password hash in clear."
            )
        export = self.planning_export(local)
        for source in (files, panel_db):
            if source.size_bytes is None:
                source.measure()
        self.stdout.write(
            self.style.SUCCESS(
                f"Demo data ready: job “{job.name}”, sources in {demo_root}, backups to {backups}; "
                f"planning export “{export.name}” into {backups / 'planning'}."
            )
        )

    def planning_export(self, local: Destination) -> PlanningExport:
        """The demo planning database (made anew when older than a week) and its export."""
        from django.utils import timezone

        path = private_dir(settings.DATA_DIR / "demo") / "planning.sqlite3"
        today = timezone.localdate()
        made = planning_demo.made_on(path)
        if made is None or abs((today - made).days) > 7:
            planning_demo.make_planning_database(path, today)
        source, _ = Source.objects.get_or_create(
            name="Demo planning database", defaults={"kind": "sqlite", "settings": {"path": str(path)}}
        )
        export = PlanningExport.objects.filter(name="Demo planning export").first()
        if export is None:
            export = PlanningExport(
                name="Demo planning export", source=source, folder="planning", report_to="admin@example.com"
            )
            configwrite.save(export, m2m={"destinations": [local]})
            for position, dataset in enumerate(planning_demo.DATASETS):
                configwrite.save(ExportDataset(export=export, position=position, **dataset))
        return export
