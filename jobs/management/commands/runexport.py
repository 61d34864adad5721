"""Run a planning export in the foreground: ``python manage.py runexport EXPORT``.

EXPORT is the export's name or id. Prints a progress line on a terminal, then what was
written and where; exits 0 when every destination got the files, 3 when some did
(partial), 1 with a one-line error otherwise. While a backup holds the heavy slot the
run waits and this command polls it.
"""

from __future__ import annotations

import sys

from django.core.management.base import BaseCommand, CommandError
from django.template.defaultfilters import filesizeformat

from jobs.exports import service
from jobs.management.follow import ProgressLine, find, follow
from jobs.models import ExportRun, PlanningExport

POLL_SECONDS = 2


def progress_line(run: ExportRun) -> str:
    if run.phase == ExportRun.Phase.UPLOAD:
        return (
            f"Uploading  {filesizeformat(run.bytes_done)} / {filesizeformat(run.bytes_total)}"
            f"  ({run.progress_percent or 0}%)"
        )
    done = f"{run.datasets_done}/{run.datasets_total}"
    current = f" {run.current_file}: {run.rows_done:,} rows" if run.current_file else ""
    return f"Writing    {done}{current}"


def one_line(text: str) -> str:
    return " ".join((text or "").split())


def _waiting(run: ExportRun) -> str:
    if run.state == ExportRun.State.WAITING:
        return "Waiting for a slot (a backup or export holds it)…"
    return "Following the worker…"


class Command(BaseCommand):
    help = "Run a planning export now, in the foreground, with a progress line on a terminal."

    def add_arguments(self, parser):
        parser.add_argument("export", help="Export name or id")
        parser.add_argument("--quiet", action="store_true", help="No progress line.")

    def handle(self, *args, export: str, quiet: bool, **options):
        found = find(PlanningExport, export, "planning export")
        try:
            run = service.create_run(found, trigger=ExportRun.Trigger.CLI)
        except service.AlreadyRunning as exc:
            raise CommandError(str(exc)) from None
        progress = ProgressLine(self.stdout, progress_line, enabled=not quiet and sys.stdout.isatty())
        run = follow(
            run,
            service.execute,
            progress,
            finished=lambda r: r.state in ExportRun.FINAL_STATES,
            waiting=_waiting,
            poll_seconds=POLL_SECONDS,
        )
        progress.end()
        for item in run.files:
            self.stdout.write(f"  {item['file_name']}: {item['rows']} rows, {filesizeformat(item['size'])}")
        for upload in run.uploads.all():
            where = f" ({upload.remote_folder})" if upload.remote_folder else ""
            self.stdout.write(f"  → {upload.destination_name}: {upload.get_state_display().lower()}{where}")
        if run.state == ExportRun.State.SUCCEEDED:
            self.stdout.write(self.style.SUCCESS(f"Export run #{run.pk} succeeded."))
            return
        if run.state == ExportRun.State.PARTIAL:
            self.stderr.write(f"Export run #{run.pk} partially succeeded: {one_line(run.error)}")
            sys.exit(3)
        raise CommandError(f"Export run #{run.pk} {run.get_state_display().lower()}: {one_line(run.error)}")
