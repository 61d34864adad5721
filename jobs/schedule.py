"""When a job runs: the schedule arithmetic, pure functions (no database).

A job has an interval (manual, hourly, daily, weekly, monthly or a cron expression), a
first start (an aware datetime) and a time zone. :func:`next_run_after` gives the first
scheduled moment strictly after a given one; the dispatcher calls it after each run (so
slots missed while nothing was running are not replayed one by one: the next run is the
next slot after *now*), and ``Job.save`` calls it whenever the schedule changes.

Wall-clock rules, in the job's time zone (the same as cron and healthchecks.io):

* **hourly**: every 60 minutes of real time from the first start (a DST change does not
  make an hour shorter or longer);
* **daily / weekly**: at the first start's wall-clock time, every day / on its weekday;
* **monthly**: on the first start's day of the month at its time; in shorter months on
  their last day (a job started on the 31st runs on 30 April and 28/29 February);
* **cron**: a five-field expression (cronsim, by the author of healthchecks.io).

Daylight-saving transitions: a time that does not exist that night (02:30 when the clocks
jump from 02:00 to 03:00) runs at the first moment after the gap (03:00); a time that
exists twice (02:30 when the clocks go back from 03:00 to 02:00) runs once, at its first
occurrence (summer time). So a daily 02:30 job runs exactly once every day, also on the two
nights a year the clocks change.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from django.utils.dates import WEEKDAYS
from django.utils.translation import gettext as _

MANUAL, HOURLY, DAILY, WEEKLY, MONTHLY, CRON = "manual", "hourly", "daily", "weekly", "monthly", "cron"
# A cron expression must fire within this long to be accepted ("0 0 30 2 *" never does).
CRON_HORIZON = timedelta(days=5 * 366)


class ScheduleError(ValueError):
    """An invalid schedule; the message is meant for users."""


def zone(name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(_("Unknown time zone %(name)r.") % {"name": name}) from None


def localize(naive: datetime, tz: tzinfo) -> datetime:
    """An aware datetime for a wall-clock time in *tz*: a time in a DST gap moves to the
    first moment after the gap, an ambiguous one is its first occurrence."""
    first = naive.replace(tzinfo=tz, fold=0)
    # A wall time exists iff it survives the round trip through UTC.
    if first.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == naive:
        return first
    # In a gap: fold=0 and fold=1 map it with the offsets before and after the gap; the
    # transition lies between the two instants. Find the first second whose wall time
    # is past *naive* (transitions fall on whole seconds).
    a = int(first.astimezone(UTC).timestamp())
    b = int(naive.replace(tzinfo=tz, fold=1).astimezone(UTC).timestamp())
    lo, hi = min(a, b), max(a, b)

    def past(ts: int) -> bool:
        return datetime.fromtimestamp(ts, tz).replace(tzinfo=None) > naive

    while lo < hi:
        mid = (lo + hi) // 2
        if past(mid):
            hi = mid
        else:
            lo = mid + 1
    return datetime.fromtimestamp(lo, tz)


def validate_cron(expression: str, tz_name: str = "UTC") -> str:
    """A five-field cron expression that fires at least once within five years."""
    expression = " ".join((expression or "").split())
    if len(expression.split(" ")) != 5:
        raise ScheduleError(_("A cron expression has five fields: minute hour day-of-month month day-of-week."))
    start = datetime.now(zone(tz_name))
    try:
        first = next(iter(CronSim(expression, start)))
    except CronSimError as exc:
        raise ScheduleError(_("Invalid cron expression: %(error)s.") % {"error": exc}) from None
    except StopIteration:
        first = None
    if first is None or first - start > CRON_HORIZON:
        raise ScheduleError(_("This cron expression never fires."))
    return expression


def _monthly_on(year: int, month: int, day: int) -> int:
    return min(day, calendar.monthrange(year, month)[1])


def next_run_after(
    interval: str, first_run_at: datetime | None, tz_name: str, cron: str, moment: datetime
) -> datetime | None:
    """The first scheduled moment strictly after *moment* (aware), or None (manual jobs,
    a missing first start). Before the first start, the first start itself (a cron job:
    its first slot at or after the first start)."""
    if moment.tzinfo is None:
        raise ValueError("moment must be timezone-aware.")
    if interval == MANUAL:
        return None
    tz = zone(tz_name or "UTC")
    if interval == CRON:
        # Cron slots strictly after *moment*, and not before the first start.
        start = moment if first_run_at is None else max(moment, first_run_at - timedelta(seconds=1))
        try:
            for candidate in CronSim(validate_cron(cron, tz_name), start.astimezone(tz)):
                if candidate > moment:
                    return candidate.astimezone(UTC)
        except CronSimError as exc:
            raise ScheduleError(_("Invalid cron expression: %(error)s.") % {"error": exc}) from None
        return None
    if first_run_at is None:
        return None
    if first_run_at.astimezone(UTC) > moment.astimezone(UTC):
        return first_run_at.astimezone(UTC)
    if interval == HOURLY:
        # In UTC: aware arithmetic within one zone would count wall-clock hours.
        start, now = first_run_at.astimezone(UTC), moment.astimezone(UTC)
        steps = int((now - start) // timedelta(hours=1)) + 1
        return start + timedelta(hours=steps)
    anchor = first_run_at.astimezone(tz)
    wall = anchor.time().replace(tzinfo=None, fold=0)
    local_moment = moment.astimezone(tz)
    if interval in (DAILY, WEEKLY):
        step = 1 if interval == DAILY else 7
        day = local_moment.date() - timedelta(days=1)
        if interval == WEEKLY:
            day -= timedelta(days=(day.weekday() - anchor.weekday()) % 7)
        for _attempt in range(4):
            candidate = localize(datetime.combine(day, wall), tz)
            if candidate > moment:
                return candidate.astimezone(UTC)
            day += timedelta(days=step)
        raise AssertionError("unreachable: a day or a week always holds the next slot")
    if interval == MONTHLY:
        year, month = local_moment.year, local_moment.month
        if month == 1:
            year, month = year - 1, 12
        else:
            month -= 1
        for _attempt in range(4):
            day = _monthly_on(year, month, anchor.day)
            candidate = localize(datetime(year, month, day, wall.hour, wall.minute, wall.second), tz)
            if candidate > moment:
                return candidate.astimezone(UTC)
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        raise AssertionError("unreachable: the next month always holds the next slot")
    raise ScheduleError(f"Unknown interval {interval!r}.")


def upcoming(
    interval: str, first_run_at: datetime | None, tz_name: str, cron: str, moment: datetime, count: int = 3
) -> list[datetime]:
    """The next *count* scheduled moments after *moment*."""
    times: list[datetime] = []
    current = moment
    while len(times) < count:
        nxt = next_run_after(interval, first_run_at, tz_name, cron, current)
        if nxt is None:
            break
        times.append(nxt)
        current = nxt
    return times


def describe(interval: str, first_run_at: datetime | None, tz_name: str, cron: str) -> str:
    """The schedule in words, in the active language: "Every day at 02:30 (Europe/Berlin)".
    (A cron expression is explained by cronsim, in English only.)"""
    if interval == MANUAL:
        return _("Manually only")
    tz_label = tz_name or "UTC"
    if interval == CRON:
        try:
            words = CronSim(cron, datetime.now(zone(tz_label))).explain()
        except (CronSimError, ScheduleError):
            return _("Cron %(expression)s (invalid)") % {"expression": cron}
        return f"{words} ({tz_label})"
    if first_run_at is None:
        return _("Not scheduled (no first start)")
    local = first_run_at.astimezone(zone(tz_label))
    values = {"time": local.strftime("%H:%M"), "zone": tz_label, "minute": local.strftime("%M")}
    if interval == HOURLY:
        values["start"] = local.strftime("%Y-%m-%d %H:%M")
        return _("Every hour at :%(minute)s, from %(start)s (%(zone)s)") % values
    if interval == DAILY:
        return _("Every day at %(time)s (%(zone)s)") % values
    if interval == WEEKLY:
        values["weekday"] = WEEKDAYS[local.weekday()]
        return _("Every %(weekday)s at %(time)s (%(zone)s)") % values
    if interval == MONTHLY:
        values["day"] = local.day
        if local.day > 28:
            return _("Every month on day %(day)s (the last day in shorter months) at %(time)s (%(zone)s)") % values
        return _("Every month on day %(day)s at %(time)s (%(zone)s)") % values
    return interval
