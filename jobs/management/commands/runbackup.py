"""Run a backup job in the foreground: ``python manage.py runbackup JOB``.

Exit codes: 0 succeeded, 3 partially succeeded, 4 archived but an upload failed with a
transient error (the workers retry it; the run page follows it), 1 failed / cancelled /
interrupted / timed out / refused.

While every heavy slot is taken the run waits and this command polls it; when a slot
frees, a worker may take the run first (the run that freed the slot hands it on), and
then this command follows it to the end. Ctrl-C while waiting cancels the run.
"""

from __future__ import annotations

import sys

from django.core.management.base import BaseCommand, CommandError
from django.template.defaultfilters import filesizeformat

from jobs import notifications, services
from jobs.management.follow import ProgressLine, find, follow
from jobs.models import Job, Run, Upload

POLL_SECONDS = 2  # while the run waits for a slot, or a worker runs it


def _bar(run: Run, width: int = 30) -> str:
    percent = run.progress_percent
    if percent is None:
        return f"{run.get_phase_display():<10} …"
    filled = width * percent // 100
    return (
        f"{run.get_phase_display():<10} [{'#' * filled}{'.' * (width - filled)}] {percent:3d}% "
        f"{filesizeformat(run.bytes_done)} / {filesizeformat(run.bytes_total)}"
    )


def _waiting(run: Run) -> str:
    if run.state in Run.HELD_STATES:
        return f"Run #{run.pk} is being run by a worker; following it…"
    return "Waiting for another backup to finish…"


class Command(BaseCommand):
    help = "Run a backup job now, in the foreground, with a progress bar on a terminal."

    def add_arguments(self, parser):
        parser.add_argument("job", help="Job name, slug or id")
        parser.add_argument("--quiet", action="store_true", help="No progress bar.")

    def handle(self, *args, job: str, quiet: bool, **options):
        found = find(Job, job, "job", fields=("name", "slug"))
        try:
            run = services.create_run(found, trigger=Run.Trigger.CLI)
        except services.AlreadyRunning as exc:
            raise CommandError(str(exc)) from None

        progress = ProgressLine(self.stdout, _bar, enabled=not quiet and sys.stdout.isatty())
        # No worker may be running: this process sends the run's e-mails and pings itself.
        delivered_here, notifications.DELIVER_HERE = notifications.DELIVER_HERE, True
        try:
            run = follow(
                run,
                services.execute_run,
                progress,
                finished=lambda r: r.state in Run.FINAL_STATES or r.state == Run.State.UPLOADING,
                waiting=_waiting,
                shown_states=Run.HELD_STATES,
                poll_seconds=POLL_SECONDS,
            )
        except KeyboardInterrupt:
            services.cancel_run(run.pk)
            raise CommandError(f"Run #{run.pk} cancelled (Ctrl-C).") from None
        finally:
            notifications.DELIVER_HERE = delivered_here
        progress.end()

        if run.state == Run.State.SUCCEEDED:
            self.stdout.write(
                self.style.SUCCESS(f"Run #{run.pk} succeeded: {run.archive_name} ({filesizeformat(run.archive_size)})")
            )
            return
        if run.state == Run.State.PARTIAL:
            self.stderr.write(f"Run #{run.pk} partially succeeded: {run.error}")
            sys.exit(3)
        if run.state == Run.State.UPLOADING:
            retrying = ", ".join(
                f"{u.destination_name} ({u.error})" for u in run.uploads.filter(state__in=Upload.OPEN_STATES)
            )
            self.stderr.write(
                f"Run #{run.pk}: archive {run.archive_name} written; the workers retry the upload to {retrying}."
            )
            sys.exit(4)
        raise CommandError(f"Run #{run.pk} {run.get_state_display().lower()}: {run.error}")
