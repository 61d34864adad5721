"""Running work in the foreground (``runbackup``, ``runexport``): finding the job or
export the command names, then following its run with one progress line, rewritten in
place on a terminal, while this process executes the run or waits for it (every heavy
slot taken, or a worker took it and this command follows it)."""

from __future__ import annotations

import time
from collections.abc import Callable

from django.core.management.base import CommandError

WIDTH = 78  # the progress line, padded so a shorter line overwrites a longer one


def find(model, key: str, what: str, fields: tuple[str, ...] = ("name",)):
    """The row of *model* whose *fields* (tried in turn), else whose id, is *key*; a
    one-line CommandError ("No job named 'x'.") when there is none."""
    for name in fields:
        found = model.objects.filter(**{name: key}).first()
        if found is not None:
            return found
    found = model.objects.filter(pk=int(key)).first() if key.isdigit() else None
    if found is None:
        raise CommandError(f"No {what} named {key!r}.")
    return found


class ProgressLine:
    """Writes *line(run)* (or a message) over the previous one; nothing unless *enabled*
    (a terminal, no ``--quiet``)."""

    def __init__(self, stdout, line: Callable, *, enabled: bool) -> None:
        self.stdout = stdout
        self.line = line
        self.enabled = enabled

    def show(self, run) -> None:
        """The run's progress (the listener of the execute function)."""
        if self.enabled:
            self.stdout.write("\r" + self.line(run).ljust(WIDTH), ending="")
            self.stdout.flush()

    def say(self, message: str) -> None:
        if self.enabled:
            self.stdout.write("\r" + message.ljust(WIDTH), ending="")

    def end(self) -> None:
        """Ends the line (after the last progress)."""
        if self.enabled:
            self.stdout.write("")


def follow(
    run,
    execute: Callable,
    progress: ProgressLine,
    *,
    finished: Callable[[object], bool],
    waiting: Callable[[object], str],
    shown_states: tuple = (),
    poll_seconds: float,
):
    """Execute *run* here (``execute(pk, listener=progress.show)`` returns the row) until
    *finished(run)*; meanwhile say what it waits for (*waiting(run)*), after its progress
    when a worker runs it (*shown_states*), and look again every *poll_seconds*. Returns
    the run as it ended."""
    while True:
        run = execute(run.pk, listener=progress.show)
        if finished(run):
            return run
        if run.state in shown_states:
            progress.show(run)
        progress.say(waiting(run))
        time.sleep(poll_seconds)
