"""The export's window and its nightly time: pure functions (no database).

The window is whole days in the site's time zone: it starts at 00:00 of the first day
(today + offset) and ends at 00:00 of the day after its last, so a query written as
``starts_at >= %(start)s AND starts_at < %(end)s`` takes today 00:00 and leaves out day 6
00:00. The days are calendar days, not 24-hour blocks: a window over the night the
clocks change is an hour shorter or longer, and still ends at local midnight. In a zone
whose clocks jump at midnight (00:00 does not exist that day) the day starts at the
first moment after the gap.

The nightly time is a wall-clock time in the site's zone, with the rules of
``jobs.schedule`` (a daily job): a time that does not exist that night (02:30 when the
clocks jump from 02:00 to 03:00) runs at 03:00; a time that exists twice runs once, at
its first occurrence. A run missed while nothing was running happens once, at the next
tick, not once per missed night (``next_run_at`` is always the next time after now).
"""

from __future__ import annotations

import datetime as dt

from jobs.schedule import DAILY, localize
from jobs.schedule import next_run_after as _next_run_after

_ANCHOR_DAY = dt.date(2000, 1, 3)


def window(moment: dt.datetime, days: int, offset_days: int, tz: dt.tzinfo) -> tuple[dt.datetime, dt.datetime]:
    """(start, end) of the window of a run at *moment*: aware datetimes in *tz*."""
    if moment.tzinfo is None:
        raise ValueError("moment must be timezone-aware.")
    if days < 1:
        raise ValueError("A window has at least one day.")
    first = moment.astimezone(tz).date() + dt.timedelta(days=offset_days)
    start = localize(dt.datetime.combine(first, dt.time(0)), tz)
    end = localize(dt.datetime.combine(first + dt.timedelta(days=days), dt.time(0)), tz)
    return start, end


def next_run_after(run_at: dt.time, tz: dt.tzinfo, moment: dt.datetime) -> dt.datetime:
    """The first nightly run strictly after *moment* (aware, UTC)."""
    anchor = localize(dt.datetime.combine(_ANCHOR_DAY, run_at.replace(tzinfo=None)), tz)
    result = _next_run_after(DAILY, anchor, str(tz), "", moment)
    assert result is not None  # a daily schedule always has a next run
    return result
