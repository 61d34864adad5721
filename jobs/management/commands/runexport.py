"""Run a planning export in the foreground: ``python manage.py runexport EXPORT``.

EXPORT is the export's name or id. Prints a progress line on a terminal, then what was
written and where; exits 0 when every destination got the files, 3 when some did
(partial), 1 with a one-line error otherwise. While a backup holds the heavy slot the
run waits and this command polls it.
"""

from __future__ import annotations

import sys
import time

from django.core.management.base import BaseCommand, CommandError
from django.template.defaultfilters import filesizeformat

from jobs.exports import service
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


class Command(BaseCommand):
    help = "Run a planning export now, in the foreground, with a progress line on a terminal."

    def add_arguments(self, parser):
        parser.add_argument("export", help="Export name or id")
        parser.add_argument("--quiet", action="store_true", help="No progress line.")

    def handle(self, *args, export: str, quiet: bool, **options):
        found = PlanningExport.objects.filter(name=export).first()
        if found is None and export.isdigit():
            found = PlanningExport.objects.filter(pk=int(export)).first()
        if found is None:
            raise CommandError(f"No planning export named {export!r}.")
        try:
            run = service.create_run(found, trigger=ExportRun.Trigger.CLI)
        except service.AlreadyRunning as exc:
            raise CommandError(str(exc)) from None
        tty = not quiet and sys.stdout.isatty()

        def show(current: ExportRun) -> None:
            if tty:
                self.stdout.write("\r" + progress_line(current).ljust(78), ending="")
                self.stdout.flush()

        while True:
            run = service.execute(run.pk, listener=show)
            if run.state in ExportRun.FINAL_STATES:
                break
            if tty:
                waiting = run.state == ExportRun.State.WAITING
                message = "Waiting for a slot (a backup or export holds it)…" if waiting else "Following the worker…"
                self.stdout.write("\r" + message.ljust(78), ending="")
            time.sleep(POLL_SECONDS)
        if tty:
            self.stdout.write("")
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
