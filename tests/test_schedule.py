"""The schedule arithmetic: every interval, cron, and daylight-saving nights in
Europe/Berlin and Europe/Stockholm (a 02:30 job runs exactly once every night)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from jobs.schedule import ScheduleError, describe, localize, next_run_after, upcoming, validate_cron

BERLIN = ZoneInfo("Europe/Berlin")
STOCKHOLM = ZoneInfo("Europe/Stockholm")


def local(times, tz):
    return [t.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z") for t in times]


@pytest.mark.parametrize("tz_name", ["Europe/Berlin", "Europe/Stockholm"])
def test_a_daily_0230_job_runs_once_every_night_across_both_dst_changes(tz_name):
    tz = ZoneInfo(tz_name)
    first = datetime(2026, 3, 1, 2, 30, tzinfo=tz)
    spring = upcoming("daily", first, tz_name, "", datetime(2026, 3, 28, 12, 0, tzinfo=tz), 3)
    # 29 March 2026: 02:30 does not exist (02:00 → 03:00): it runs at 03:00, once.
    assert local(spring, tz) == ["2026-03-29 03:00 CEST", "2026-03-30 02:30 CEST", "2026-03-31 02:30 CEST"]
    autumn = upcoming("daily", first, tz_name, "", datetime(2026, 10, 24, 12, 0, tzinfo=tz), 3)
    # 25 October 2026: 02:30 exists twice: it runs at the first (summer time) one only.
    assert local(autumn, tz) == ["2026-10-25 02:30 CEST", "2026-10-26 02:30 CET", "2026-10-27 02:30 CET"]
    assert autumn[1] - autumn[0] == timedelta(hours=25)


def test_inside_the_repeated_hour_the_job_does_not_run_again():
    first = datetime(2026, 3, 1, 2, 30, tzinfo=BERLIN)
    # 02:45 CET on 25 October is after both 02:30s were reached once (the first in CEST).
    moment = datetime(2026, 10, 25, 1, 45, tzinfo=UTC)  # = 02:45 CET, the second pass
    assert local([next_run_after("daily", first, "Europe/Berlin", "", moment)], BERLIN) == ["2026-10-26 02:30 CET"]


def test_hourly_counts_real_hours_across_a_dst_change():
    first = datetime(2026, 3, 29, 0, 15, tzinfo=BERLIN)
    times = upcoming("hourly", first, "Europe/Berlin", "", first, 3)
    assert local(times, BERLIN) == ["2026-03-29 01:15 CET", "2026-03-29 03:15 CEST", "2026-03-29 04:15 CEST"]
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(times))


def test_weekly_keeps_the_weekday_and_monthly_clamps_to_short_months():
    first = datetime(2026, 1, 31, 23, 0, tzinfo=STOCKHOLM)  # a Saturday, the 31st
    weekly = upcoming("weekly", first, "Europe/Stockholm", "", first, 2)
    assert [t.astimezone(STOCKHOLM).weekday() for t in weekly] == [5, 5]
    monthly = upcoming("monthly", first, "Europe/Stockholm", "", first, 4)
    assert local(monthly, STOCKHOLM) == [
        "2026-02-28 23:00 CET",
        "2026-03-31 23:00 CEST",
        "2026-04-30 23:00 CEST",
        "2026-05-31 23:00 CEST",
    ]


def test_before_the_first_start_the_first_start_is_next():
    first = datetime(2027, 5, 4, 6, 0, tzinfo=BERLIN)
    assert next_run_after("weekly", first, "Europe/Berlin", "", datetime(2026, 1, 1, tzinfo=UTC)) == first


def test_a_week_of_missed_slots_gives_one_next_run_not_seven():
    first = datetime(2026, 11, 1, 2, 0, tzinfo=BERLIN)
    now = datetime(2026, 11, 20, 9, 0, tzinfo=BERLIN)  # nothing ran since the 13th
    nxt = next_run_after("daily", first, "Europe/Berlin", "", now)
    assert local([nxt], BERLIN) == ["2026-11-21 02:00 CET"]


def test_cron_in_the_jobs_zone_and_across_the_gap():
    times = upcoming("cron", None, "Europe/Berlin", "30 2 * * *", datetime(2026, 3, 28, 12, tzinfo=BERLIN), 2)
    assert local(times, BERLIN) == ["2026-03-29 03:00 CEST", "2026-03-30 02:30 CEST"]
    first = datetime(2026, 12, 7, 0, 0, tzinfo=BERLIN)
    assert local(
        upcoming("cron", first, "Europe/Berlin", "0 18 * * 1-5", datetime(2026, 12, 1, tzinfo=UTC), 1), BERLIN
    ) == ["2026-12-07 18:00 CET"]


@pytest.mark.parametrize(
    ("expression", "message"),
    [("0 0 30 2 *", "Invalid cron"), ("61 * * * *", "Invalid cron"), ("* * *", "five fields"), ("", "five fields")],
)
def test_bad_cron_expressions_are_refused(expression, message):
    with pytest.raises(ScheduleError, match=message):
        validate_cron(expression)


def test_manual_jobs_have_no_next_run():
    assert next_run_after("manual", datetime(2026, 1, 1, tzinfo=UTC), "UTC", "", datetime.now(UTC)) is None


def test_localize_gap_and_fold():
    assert localize(datetime(2026, 3, 29, 2, 30), BERLIN).strftime("%H:%M %Z") == "03:00 CEST"
    assert localize(datetime(2026, 10, 25, 2, 30), BERLIN).strftime("%H:%M %Z") == "02:30 CEST"
    assert localize(datetime(2026, 6, 1, 12, 0), BERLIN).strftime("%H:%M %Z") == "12:00 CEST"


def test_descriptions():
    first = datetime(2026, 1, 5, 2, 30, tzinfo=BERLIN)  # a Monday
    assert describe("daily", first, "Europe/Berlin", "") == "Every day at 02:30 (Europe/Berlin)"
    assert describe("weekly", first, "Europe/Berlin", "") == "Every Monday at 02:30 (Europe/Berlin)"
    assert describe("manual", None, "UTC", "") == "Manually only"
    assert describe("cron", None, "Europe/Berlin", "0 3 * * 1-5") == "At 03:00 on Monday through Friday (Europe/Berlin)"


# --- on the model ------------------------------------------------------------------------
def test_next_run_at_follows_the_schedule_however_the_job_is_saved(db, settings):
    from jobs.models import Job

    settings.TIME_ZONE = "Europe/Berlin"
    job = Job.objects.create(
        name="Nightly", interval=Job.Interval.DAILY, first_run_at=datetime(2026, 1, 1, 2, 30, tzinfo=BERLIN)
    )
    assert job.timezone == "Europe/Berlin"  # the site's zone, not UTC
    assert job.next_run_at is not None and job.next_run_at.astimezone(BERLIN).strftime("%H:%M") == "02:30"
    job = Job.objects.get(pk=job.pk)
    job.first_run_at = datetime(2026, 1, 1, 4, 0, tzinfo=BERLIN)
    job.save()
    assert Job.objects.get(pk=job.pk).next_run_at.astimezone(BERLIN).strftime("%H:%M") == "04:00"
    # A save that does not touch the schedule keeps the dispatcher's next_run_at.
    later = datetime(2030, 1, 1, tzinfo=UTC)
    Job.objects.filter(pk=job.pk).update(next_run_at=later)
    job = Job.objects.get(pk=job.pk)
    job.report_to = "a@example.com"
    job.save()
    assert Job.objects.get(pk=job.pk).next_run_at == later
    job.interval = Job.Interval.MANUAL
    job.save()
    assert Job.objects.get(pk=job.pk).next_run_at is None


def test_loaddata_fixtures_get_a_next_run_too(db, tmp_path):
    import json

    from django.core.management import call_command

    from jobs.models import Job

    fixture = tmp_path / "jobs.json"
    fixture.write_text(
        json.dumps(
            [
                {
                    "model": "jobs.job",
                    "pk": 900,
                    "fields": {
                        "name": "From a fixture",
                        "slug": "from-a-fixture",
                        "interval": "hourly",
                        "first_run_at": "2026-01-01T00:10:00Z",
                        "timezone": "UTC",
                        "created_at": "2026-01-01T00:00:00Z",
                        "updated_at": "2026-01-01T00:00:00Z",
                    },
                }
            ]
        )
    )
    call_command("loaddata", str(fixture), verbosity=0)
    assert Job.objects.get(pk=900).next_run_at.minute == 10


def test_clean_refuses_a_cron_that_never_fires_and_a_schedule_without_start(db):
    from django.core.exceptions import ValidationError

    from jobs.models import Job

    with pytest.raises(ValidationError) as info:
        Job(name="x", interval="cron", cron="0 0 30 2 *").clean()
    assert "cron" in info.value.message_dict
    with pytest.raises(ValidationError) as info:
        Job(name="y", interval="daily").clean()
    assert "first_run_at" in info.value.message_dict
