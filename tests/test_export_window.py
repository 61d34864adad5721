"""The window (whole days in the site's zone) and the nightly time, across DST changes."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from jobs.exports.window import next_run_after, window

BERLIN = ZoneInfo("Europe/Berlin")
STOCKHOLM = ZoneInfo("Europe/Stockholm")
UTC = dt.UTC


def test_five_days_from_today_at_midnight_in_the_site_zone():
    # 23:30 UTC on 23 November is already 24 November in Berlin.
    start, end = window(dt.datetime(2026, 11, 23, 23, 30, tzinfo=UTC), 5, 0, BERLIN)
    assert start == dt.datetime(2026, 11, 24, 0, 0, tzinfo=BERLIN)
    assert end == dt.datetime(2026, 11, 29, 0, 0, tzinfo=BERLIN)
    assert start.astimezone(UTC) == dt.datetime(2026, 11, 23, 23, 0, tzinfo=UTC)


def test_an_offset_moves_the_first_day():
    start, end = window(dt.datetime(2026, 11, 24, 2, 0, tzinfo=BERLIN), 3, 1, BERLIN)
    assert (start.date(), end.date()) == (dt.date(2026, 11, 25), dt.date(2026, 11, 28))


@pytest.mark.parametrize(
    ("tz", "day", "hours"),
    [(BERLIN, dt.date(2026, 3, 29), 5 * 24 - 1), (STOCKHOLM, dt.date(2026, 10, 25), 5 * 24 + 1)],
)
def test_a_window_over_a_clock_change_still_ends_at_local_midnight(tz, day, hours):
    start, end = window(dt.datetime.combine(day, dt.time(3, 0), tzinfo=tz), 5, 0, tz)
    assert start.replace(tzinfo=None) == dt.datetime.combine(day, dt.time(0))
    assert end.astimezone(tz).replace(tzinfo=None) == dt.datetime.combine(day + dt.timedelta(days=5), dt.time(0))
    # (aware arithmetic within one zone counts wall-clock hours: compare in UTC)
    assert end.astimezone(UTC) - start.astimezone(UTC) == dt.timedelta(hours=hours)


def test_a_zone_whose_clocks_jump_at_midnight_starts_the_day_after_the_gap():
    santiago = ZoneInfo("America/Santiago")  # 2026-09-06: 00:00 → 01:00
    start, _ = window(dt.datetime(2026, 9, 6, 12, 0, tzinfo=santiago), 1, 0, santiago)
    assert start.astimezone(santiago).replace(tzinfo=None) == dt.datetime(2026, 9, 6, 1, 0)


def test_the_nightly_time_is_local_and_survives_clock_changes():
    two = dt.time(2, 0)
    assert next_run_after(two, BERLIN, dt.datetime(2026, 11, 24, 1, 0, tzinfo=UTC)) == dt.datetime(
        2026, 11, 25, 1, 0, tzinfo=UTC
    )
    # 02:30 does not exist on 29 March 2026 in Berlin: it runs at 03:00 (01:00 UTC).
    night = next_run_after(dt.time(2, 30), BERLIN, dt.datetime(2026, 3, 28, 12, 0, tzinfo=UTC))
    assert night == dt.datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    # 02:30 exists twice on 25 October 2026: once, at the first (00:30 UTC).
    night = next_run_after(dt.time(2, 30), BERLIN, dt.datetime(2026, 10, 24, 12, 0, tzinfo=UTC))
    assert night == dt.datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    after = next_run_after(dt.time(2, 30), BERLIN, night)
    assert after == dt.datetime(2026, 10, 26, 1, 30, tzinfo=UTC)


def test_a_naive_moment_is_refused():
    with pytest.raises(ValueError):
        window(dt.datetime(2026, 11, 24), 5, 0, BERLIN)
