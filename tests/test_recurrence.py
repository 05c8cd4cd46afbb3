"""Recurrence validation (Azure ML's messages, in order) and fire times, worked and searched."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from watcherd.core.errors import ValidationError
from watcherd.core.recurrence import (
    FREQUENCIES,
    WEEK_DAYS,
    Recurrence,
    anchor_for,
    creation_fire,
    describe,
    fires_between,
    make_recurrence,
    next_fire,
)
from watcherd.core.wallclock import to_wall, wall_instants, wall_to_utc

US = timedelta(microseconds=1)
LA = ZoneInfo("America/Los_Angeles")
PST = "Pacific Standard Time"


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def la(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, *, fold: int = 0
) -> datetime:
    """A Los Angeles wall time as an aware UTC instant."""
    return datetime(year, month, day, hour, minute, tzinfo=LA, fold=fold).astimezone(UTC)


def run(
    rec: Recurrence, anchor: datetime, after: datetime, n: int, end: datetime | None = None
) -> list[datetime]:
    """Step through up to `n` fires after `after`, as the engine does."""
    out: list[datetime] = []
    while len(out) < n and (nxt := next_fire(rec, anchor, after, end)) is not None:
        out.append(nxt)
        after = nxt
    return out


# --- validation -----------------------------------------------------------------------------

R1 = "Invalid value for frequency, only one of Minute, Hour, Day, Week, or Month accepted"
R2 = "Interval must be an integer greater than 0."
R3 = "Can only specify hours if frequency is Week or Day."
R4 = "Can only specify minutes if frequency is Week or Day."
R5 = "Can only specify week days if frequency is Week."
R6 = "Hours must be between 0 and 23."
R7 = "Minutes must be between 0 and 59."
R8 = (
    "Week days must be a list of str, accepted values: Monday, Tuesday, Wednesday, Thursday, "
    "Friday, Saturday, Sunday."
)
R9 = "Time zone is not a valid TimeZone enum."
TZINFO = "Can not specify tzinfo for start_time, use time_zone instead."
TOD_BOTH = "Can not specify time_of_day and hours or minutes."
TOD_FORMAT = "time_of_day should be in the format hh:mm."
TOD_HOUR = "Time of day hour value must be between 0 and 23."
TOD_MINUTE = "Time of day minute value must be between 0 and 59."


@pytest.mark.parametrize(
    ("kwargs", "message", "key"),
    [
        ({"frequency": "minute", "interval": 1}, R1, "frequency"),
        ({"frequency": "Minutes", "interval": 1}, R1, "frequency"),
        ({"frequency": None, "interval": 1}, R1, "frequency"),
        ({"frequency": "minute", "interval": 0}, R1, "frequency"),  # both bad: rule 1 wins
        ({"frequency": "Minute", "interval": 0}, R2, "interval"),
        ({"frequency": "Minute", "interval": -5}, R2, "interval"),
        ({"frequency": "Minute", "interval": True}, R2, "interval"),
        ({"frequency": "Minute", "interval": 1.0}, R2, "interval"),
        ({"frequency": "Minute", "interval": "15"}, R2, "interval"),
        ({"frequency": "Minute", "interval": 0, "hours": [1]}, R2, "interval"),
        ({"frequency": "Minute", "interval": 1, "hours": [1]}, R3, "hours"),
        ({"frequency": "Minute", "interval": 1, "hours": [1], "minutes": [1]}, R3, "hours"),
        ({"frequency": "Month", "interval": 1, "hours": []}, R3, "hours"),
        ({"frequency": "Hour", "interval": 1, "hours": [99]}, R3, "hours"),  # 3 before 6
        ({"frequency": "Minute", "interval": 15, "time_of_day": "4:50"}, R3, "hours"),
        ({"frequency": "Hour", "interval": 1, "minutes": [0]}, R4, "minutes"),
        ({"frequency": "Day", "interval": 1, "week_days": ["Monday"]}, R5, "week_days"),
        ({"frequency": "Day", "interval": 1, "week_days": []}, R5, "week_days"),
        ({"frequency": "Week", "interval": 1, "hours": [24]}, R6, "hours"),
        ({"frequency": "Week", "interval": 1, "hours": [-1]}, R6, "hours"),
        ({"frequency": "Day", "interval": 1, "hours": ["4"]}, R6, "hours"),
        ({"frequency": "Day", "interval": 1, "hours": [True]}, R6, "hours"),
        ({"frequency": "Day", "interval": 1, "hours": 4}, R6, "hours"),
        ({"frequency": "Day", "interval": 1, "hours": [24], "time_zone": "Mars"}, R6, "hours"),
        ({"frequency": "Day", "interval": 1, "minutes": [60]}, R7, "minutes"),
        ({"frequency": "Day", "interval": 1, "minutes": [4.5]}, R7, "minutes"),
        ({"frequency": "Week", "interval": 1, "minutes": [60], "week_days": ["x"]}, R7, "minutes"),
        ({"frequency": "Week", "interval": 1, "week_days": ["monday"]}, R8, "week_days"),
        ({"frequency": "Week", "interval": 1, "week_days": "Monday"}, R8, "week_days"),
        (
            {"frequency": "Week", "interval": 1, "week_days": ["Mon"], "time_zone": 1},
            R8,
            "week_days",
        ),
        ({"frequency": "Week", "interval": 1, "time_zone": "Mars/Base"}, R9, "time_zone"),
        (
            {"frequency": "Week", "interval": 1, "time_zone": "pacific standard time"},
            R9,
            "time_zone",
        ),
        ({"frequency": "Week", "interval": 1, "time_zone": 8}, R9, "time_zone"),
    ],
)
def test_rules_in_order_first_failure_wins(kwargs: dict[str, Any], message: str, key: str) -> None:
    with pytest.raises(ValidationError) as info:
        make_recurrence(**kwargs)
    assert (info.value.message, info.value.key) == (message, key)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("kwargs", "message", "key"),
    [
        ({"start_time": datetime(2026, 1, 1, 9, tzinfo=UTC)}, TZINFO, "start_time"),
        ({"start_time": datetime(2026, 1, 1, 9, tzinfo=LA)}, TZINFO, "start_time"),
        ({"start_time": "2026-01-01T09:00+01:00"}, TZINFO, "start_time"),
        ({"start_time": "2026-01-01T09:00:00Z"}, TZINFO, "start_time"),
        ({"start_time": "2026-01-01T09:00:00.5-08:00"}, TZINFO, "start_time"),
        # tzinfo is checked before time_of_day and before the rules (bad frequency below)
        ({"start_time": "2026-01-01T09:00Z", "time_of_day": "99"}, TZINFO, "start_time"),
        ({"time_of_day": "4:50", "hours": [4]}, TOD_BOTH, "time_of_day"),
        ({"time_of_day": "4:50", "minutes": []}, TOD_BOTH, "time_of_day"),
        ({"time_of_day": "450"}, TOD_FORMAT, "time_of_day"),
        ({"time_of_day": "4:5"}, TOD_FORMAT, "time_of_day"),
        ({"time_of_day": "123:00"}, TOD_FORMAT, "time_of_day"),
        ({"time_of_day": "04:50:00"}, TOD_FORMAT, "time_of_day"),
        ({"time_of_day": 450}, TOD_FORMAT, "time_of_day"),
        ({"time_of_day": "24:00"}, TOD_HOUR, "time_of_day"),
        ({"time_of_day": "12:60"}, TOD_MINUTE, "time_of_day"),
        ({"time_of_day": "99:99"}, TOD_HOUR, "time_of_day"),
        # start_time format: after time_of_day, before the rules
        ({"start_time": "2026-01-01 09:00"}, None, "start_time"),
        ({"start_time": "2026-01-01"}, None, "start_time"),
        ({"start_time": "2026-02-30T09:00"}, None, "start_time"),
        ({"start_time": "2026-01-01T09:00:00.123"}, None, "start_time"),
        ({"start_time": date(2026, 1, 1)}, None, "start_time"),
        ({"start_time": 1767258000}, None, "start_time"),
    ],
)
def test_construction_checks_come_first(
    kwargs: dict[str, Any], message: str | None, key: str
) -> None:
    with pytest.raises(ValidationError) as info:
        make_recurrence("minute", 0, **kwargs)
    assert info.value.key == key
    if message is not None:
        assert info.value.message == message
    else:
        assert "YYYY-MM-DDThh:mm[:ss]" in info.value.message or "not a valid" in info.value.message


def test_valid_recurrence_is_normalised() -> None:
    rec = make_recurrence(
        "Week", 2, start_time="2026-12-01T09:00", time_zone=PST, week_days=["Friday", "Monday"],
        time_of_day="4:50",
    )  # fmt: skip
    assert rec == Recurrence(
        frequency="Week", interval=2, start_time=datetime(2026, 12, 1, 9), time_zone=PST,
        zone="America/Los_Angeles", hours=(4,), minutes=(50,), week_days=("Friday", "Monday"),
    )  # fmt: skip
    assert rec.to_dict() == {
        "frequency": "Week",
        "interval": 2,
        "start_time": "2026-12-01T09:00:00",
        "time_zone": PST,
        "hours": [4],
        "minutes": [50],
        "week_days": ["Friday", "Monday"],
    }


def test_defaults_and_accepted_forms() -> None:
    rec = make_recurrence("Minute", 15)
    assert (rec.zone, rec.time_zone, rec.start_time, rec.hours) == ("UTC", "UTC", None, None)
    assert rec.to_dict() == {"frequency": "Minute", "interval": 15, "time_zone": "UTC"}
    day = make_recurrence("Day", 1, hours=(1, 2), minutes=[0], start_time=datetime(2026, 1, 1, 9))
    assert (day.hours, day.minutes) == ((1, 2), (0,))
    assert make_recurrence("Day", 1, time_of_day="09:05").hours == (9,)
    micro = make_recurrence("Hour", 1, start_time=datetime(2026, 1, 1, 9, 0, 5, 999))
    assert micro.start_time == datetime(2026, 1, 1, 9, 0, 5)
    assert make_recurrence("Day", 1, start_time="2026-01-01T09:00:07").start_time == datetime(
        2026, 1, 1, 9, 0, 7
    )
    assert make_recurrence("Day", 1, time_zone="Europe/Paris").zone == "Europe/Paris"


# --- worked examples ------------------------------------------------------------------------


def test_seed_minute_15_fires_at_creation_then_every_15_minutes() -> None:
    rec = make_recurrence("Minute", 15)
    created = utc(2026, 5, 20, 16, 0, 7) + 345 * US
    anchor = anchor_for(rec, created)
    assert anchor == utc(2026, 5, 20, 16, 0, 7)
    assert creation_fire(rec, anchor) == anchor
    assert run(rec, anchor, anchor - US, 4) == [
        utc(2026, 5, 20, 16, 0, 7),
        utc(2026, 5, 20, 16, 15, 7),
        utc(2026, 5, 20, 16, 30, 7),
        utc(2026, 5, 20, 16, 45, 7),
    ]
    # a restart after the creation fire does not fire it again
    assert next_fire(rec, anchor, anchor) == utc(2026, 5, 20, 16, 15, 7)


def test_no_creation_fire_with_start_time() -> None:
    rec = make_recurrence("Minute", 15, start_time="2026-12-01T09:00")
    anchor = anchor_for(rec, utc(2026, 5, 20))
    assert anchor == utc(2026, 12, 1, 9)
    assert creation_fire(rec, anchor) is None
    assert next_fire(rec, anchor, utc(2026, 5, 20)) == utc(2026, 12, 1, 9)


def test_week_monday_friday_0450_pacific_across_2026_dst_changes() -> None:
    rec = make_recurrence(
        "Week", 1, time_zone=PST, week_days=["Monday", "Friday"], time_of_day="4:50",
        start_time="2026-02-25T00:00",
    )  # fmt: skip
    anchor = anchor_for(rec, utc(2026, 1, 1))
    assert run(rec, anchor, utc(2026, 3, 1), 4) == [
        utc(2026, 3, 2, 12, 50),  # PST, UTC-8
        utc(2026, 3, 6, 12, 50),
        utc(2026, 3, 9, 11, 50),  # PDT from Sunday Mar 8
        utc(2026, 3, 13, 11, 50),
    ]
    assert run(rec, anchor, utc(2026, 10, 25), 4) == [
        utc(2026, 10, 26, 11, 50),  # PDT
        utc(2026, 10, 30, 11, 50),
        utc(2026, 11, 2, 12, 50),  # PST from Sunday Nov 1
        utc(2026, 11, 6, 12, 50),
    ]
    assert describe(rec) == (
        "every week on Monday, Friday at 04:50 (Pacific Standard Time), starting 2026-02-25 00:00"
    )


def test_past_start_time_does_not_back_fill() -> None:
    rec = make_recurrence("Day", 1, start_time="2026-01-01T09:00")
    anchor = anchor_for(rec, utc(2026, 1, 1))
    now = utc(2026, 6, 15, 12)
    assert next_fire(rec, anchor, now - US) == utc(2026, 6, 16, 9)
    now = utc(2026, 6, 15, 9)  # exactly on a slot: that slot is the next ≥ now
    assert next_fire(rec, anchor, now - US) == utc(2026, 6, 15, 9)


def test_month_on_day_31_skips_shorter_months() -> None:
    rec = make_recurrence("Month", 1, start_time="2026-01-31T09:00")
    anchor = anchor_for(rec, utc(2026, 1, 1))
    assert run(rec, anchor, anchor - US, 8) == [
        utc(2026, 1, 31, 9),
        utc(2026, 3, 31, 9),
        utc(2026, 5, 31, 9),
        utc(2026, 7, 31, 9),
        utc(2026, 8, 31, 9),
        utc(2026, 10, 31, 9),
        utc(2026, 12, 31, 9),
        utc(2027, 1, 31, 9),
    ]
    assert describe(rec) == "every month on day 31 at 09:00, starting 2026-01-31 09:00"


def test_month_on_feb_29_every_12_months_waits_for_leap_years() -> None:
    rec = make_recurrence("Month", 12, start_time="2028-02-29T00:00")
    anchor = anchor_for(rec, utc(2026, 1, 1))
    assert run(rec, anchor, anchor, 2) == [utc(2032, 2, 29), utc(2036, 2, 29)]
    # far in the future: a jump, not a walk
    assert next_fire(rec, anchor, utc(2096, 3, 1)) == utc(2104, 2, 29)


def test_month_interval_counts_from_the_anchor_month() -> None:
    rec = make_recurrence("Month", 5, start_time="2026-01-15T06:30:15")
    anchor = anchor_for(rec, utc(2026, 1, 1))
    assert run(rec, anchor, utc(2026, 2, 1), 3) == [
        utc(2026, 6, 15, 6, 30, 15),
        utc(2026, 11, 15, 6, 30, 15),
        utc(2027, 4, 15, 6, 30, 15),
    ]


def test_end_time_bounds_the_slots() -> None:
    rec = make_recurrence("Day", 1, start_time="2026-01-01T09:00", time_zone=PST)
    anchor = anchor_for(rec, utc(2025, 1, 1))
    end = datetime(2026, 1, 3, 9)
    assert run(rec, anchor, anchor - US, 10, end) == [la(2026, 1, d, 9) for d in (1, 2, 3)]
    assert run(rec, anchor, anchor - US, 10, datetime(2026, 1, 3, 8, 59)) == [
        la(2026, 1, 1, 9),
        la(2026, 1, 2, 9),
    ]
    assert next_fire(rec, anchor, anchor, datetime(2025, 12, 31)) is None
    catch_up = fires_between(rec, anchor, anchor - US, utc(2026, 2, 1), 10, end)
    assert catch_up == [la(2026, 1, d, 9) for d in (1, 2, 3)]


def test_end_time_before_creation_suppresses_the_creation_fire() -> None:
    rec = make_recurrence("Hour", 1)
    anchor = utc(2026, 1, 1, 12)
    assert next_fire(rec, anchor, anchor - US, datetime(2026, 1, 1, 11)) is None
    assert next_fire(rec, anchor, anchor - US, datetime(2026, 1, 1, 12)) == anchor


def test_pattern_slot_exactly_at_start_time_does_not_fire() -> None:
    rec = make_recurrence("Day", 1, start_time="2026-01-01T09:00", time_of_day="09:00")
    anchor = anchor_for(rec, utc(2025, 1, 1))
    assert next_fire(rec, anchor, anchor - US) == utc(2026, 1, 2, 9)
    plain = make_recurrence("Day", 1, start_time="2026-01-01T09:00")  # no pattern: it fires
    assert next_fire(plain, anchor, anchor - US) == utc(2026, 1, 1, 9)
    week = make_recurrence("Week", 1, start_time="2026-01-05T09:00", week_days=[])  # a Monday
    anchor = anchor_for(week, utc(2025, 1, 1))
    assert next_fire(week, anchor, anchor - US) == utc(2026, 1, 12, 9)


def test_day_slots_take_missing_lists_from_the_anchor_with_seconds_zero() -> None:
    rec = make_recurrence("Day", 2, start_time="2026-01-01T09:20:30", hours=[4, 16])
    anchor = anchor_for(rec, utc(2025, 1, 1))
    assert run(rec, anchor, anchor - US, 4) == [
        utc(2026, 1, 1, 16, 20),
        utc(2026, 1, 3, 4, 20),
        utc(2026, 1, 3, 16, 20),
        utc(2026, 1, 5, 4, 20),
    ]
    plain = make_recurrence("Day", 1, start_time="2026-01-01T09:20:30")
    assert next_fire(plain, anchor, anchor - US) == utc(2026, 1, 2, 9, 20)


def test_day_without_start_time_fires_at_creation_then_on_the_pattern() -> None:
    rec = make_recurrence("Day", 1, time_of_day="04:50")
    anchor = anchor_for(rec, utc(2026, 3, 1, 12, 0, 7))
    assert run(rec, anchor, anchor - US, 3) == [
        utc(2026, 3, 1, 12, 0, 7),
        utc(2026, 3, 2, 4, 50),
        utc(2026, 3, 3, 4, 50),
    ]


def test_week_periods_start_monday_of_the_anchor_week() -> None:
    # Wednesday 2026-01-07; interval 2: weeks of Jan 5, Jan 19, Feb 2 …
    rec = make_recurrence(
        "Week", 2, start_time="2026-01-07T10:00", week_days=["Monday", "Thursday"]
    )
    anchor = anchor_for(rec, utc(2025, 1, 1))
    assert run(rec, anchor, anchor - US, 5) == [
        utc(2026, 1, 8, 10),  # the Monday of period 0 is before the anchor
        utc(2026, 1, 19, 10),
        utc(2026, 1, 22, 10),
        utc(2026, 2, 2, 10),
        utc(2026, 2, 5, 10),
    ]
    # far future: jumps to the right period
    assert next_fire(rec, anchor, utc(9000, 1, 1)) == utc(9000, 1, 6, 10)  # an even-period Monday


def test_empty_week_days_means_the_anchor_weekday() -> None:
    rec = make_recurrence("Week", 1, week_days=[], time_of_day="08:00")
    anchor = anchor_for(rec, utc(2026, 1, 7, 12))  # Wednesday
    assert run(rec, anchor, anchor - US, 3) == [
        utc(2026, 1, 7, 12),
        utc(2026, 1, 14, 8),
        utc(2026, 1, 21, 8),
    ]


def test_far_future_and_overflow() -> None:
    minute = make_recurrence("Minute", 1)
    anchor = utc(2026, 1, 1)
    assert next_fire(minute, anchor, utc(9000, 6, 1, 0, 0, 30)) == utc(9000, 6, 1, 0, 1)
    assert next_fire(minute, anchor, datetime.max.replace(tzinfo=UTC) - US) is None
    for freq in ("Day", "Week", "Month"):
        rec = make_recurrence(freq, 1, time_zone=PST)
        assert next_fire(rec, anchor, datetime.max.replace(tzinfo=UTC) - US) is None
        assert next_fire(rec, anchor, datetime.min.replace(tzinfo=UTC)) == anchor


def test_catch_up_after_30_days_of_minute_1_is_arithmetic() -> None:
    rec = make_recurrence("Minute", 1)
    anchor = utc(2026, 1, 1, 0, 0, 7)
    got = fires_between(rec, anchor, anchor, anchor + timedelta(days=30), 10)
    assert got == [anchor + timedelta(days=30, minutes=m) for m in range(-9, 1)]
    assert fires_between(rec, anchor, anchor - US, anchor + timedelta(seconds=5), 10) == [anchor]
    assert fires_between(rec, anchor, anchor, anchor + timedelta(days=1), 0) == []


def test_catch_up_after_30_days_of_a_dense_day_pattern() -> None:
    every_minute = make_recurrence(
        "Day", 1, hours=list(range(24)), minutes=list(range(60)), time_zone=PST
    )
    anchor = utc(2026, 3, 1, 0, 0, 7)
    until = utc(2026, 3, 31)
    got = fires_between(every_minute, anchor, anchor, until, 3)
    assert got == [until - timedelta(minutes=2), until - timedelta(minutes=1), until]
    assert fires_between(every_minute, anchor, until, until, 3) == []


DAY = {"frequency": "Day", "interval": 1}
WEEKLY = {"frequency": "Week", "interval": 1}


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"frequency": "Minute", "interval": 15}, "every 15 minutes"),
        ({"frequency": "Minute", "interval": 1}, "every minute"),
        ({"frequency": "Hour", "interval": 1}, "every hour"),
        (
            {"frequency": "Hour", "interval": 6, "time_zone": "Europe/Paris"},
            "every 6 hours (Europe/Paris)",
        ),
        ({"frequency": "Day", "interval": 2, "time_of_day": "4:50"}, "every 2 days at 04:50"),
        (DAY, "every day at the time of creation"),
        (
            {**DAY, "hours": [4, 16], "minutes": [0, 30]},
            "every day at 04:00, 04:30, 16:00, 16:30",
        ),
        (
            {**DAY, "hours": [1, 2, 3, 4], "minutes": [0, 30]},
            "every day at minutes 0, 30 of hours 1, 2, 3, 4",
        ),
        ({**DAY, "hours": [9]}, "every day at hour 9 (minute of creation)"),
        (
            {**WEEKLY, "week_days": ["Friday", "Monday"], "time_of_day": "4:50", "time_zone": PST},
            "every week on Monday, Friday at 04:50 (Pacific Standard Time)",
        ),
        (
            {"frequency": "Week", "interval": 3, "start_time": "2026-12-01T09:00"},
            "every 3 weeks on Tuesday at 09:00, starting 2026-12-01 09:00",
        ),
        (
            {"frequency": "Month", "interval": 1, "start_time": "2026-12-31T09:00"},
            "every month on day 31 at 09:00, starting 2026-12-31 09:00",
        ),
        (
            {"frequency": "Month", "interval": 2},
            "every 2 months on the day and time of creation",
        ),
        (
            {"frequency": "Minute", "interval": 15, "start_time": "2026-12-01T09:00"},
            "every 15 minutes, starting 2026-12-01 09:00",
        ),
    ],
)
def test_describe(kwargs: dict[str, Any], text: str) -> None:
    assert describe(make_recurrence(**kwargs)) == text


# --- DST (SPEC §3.1) ------------------------------------------------------------------------


def test_day_in_spring_gap_fires_after_gap() -> None:
    rec = make_recurrence("Day", 1, start_time="2026-03-07T02:30", time_zone=PST)
    anchor = anchor_for(rec, utc(2026, 1, 1))
    assert run(rec, anchor, anchor - US, 3) == [
        la(2026, 3, 7, 2, 30),  # 10:30Z
        la(2026, 3, 8, 3, 0),  # 02:30 does not exist: 10:00Z, the first instant after the gap
        la(2026, 3, 9, 2, 30),  # 09:30Z
    ]


def test_start_time_in_gap_anchors_after_the_gap() -> None:
    rec = make_recurrence("Hour", 1, start_time="2026-03-08T02:30", time_zone=PST)
    anchor = anchor_for(rec, utc(2026, 1, 1))
    assert anchor == utc(2026, 3, 8, 10)
    assert run(rec, anchor, anchor - US, 2) == [utc(2026, 3, 8, 10), utc(2026, 3, 8, 11)]


def test_gap_collapses() -> None:
    rec = make_recurrence(
        "Day", 1, start_time="2026-03-07T00:00", time_zone=PST, hours=[2, 3], minutes=[0, 30]
    )
    anchor = anchor_for(rec, utc(2026, 1, 1))
    assert run(rec, anchor, la(2026, 3, 8, 0, 0), 3) == [
        utc(2026, 3, 8, 10, 0),  # 02:00, 02:30 and 03:00 PDT: one run
        utc(2026, 3, 8, 10, 30),  # 03:30 PDT
        utc(2026, 3, 9, 9, 0),  # 02:00 PDT
    ]
    assert fires_between(rec, anchor, la(2026, 3, 8), la(2026, 3, 9), 10) == [
        utc(2026, 3, 8, 10, 0),
        utc(2026, 3, 8, 10, 30),
    ]


def test_month_in_spring_gap_fires_after_gap() -> None:
    rec = make_recurrence("Month", 1, start_time="2026-02-08T02:30", time_zone=PST)
    anchor = anchor_for(rec, utc(2026, 1, 1))
    assert run(rec, anchor, anchor, 2) == [utc(2026, 3, 8, 10), la(2026, 4, 8, 2, 30)]


def test_fold_fires_once_first_occurrence() -> None:
    rec = make_recurrence("Day", 1, start_time="2026-10-30T01:30", time_zone=PST)
    anchor = anchor_for(rec, utc(2026, 1, 1))
    assert run(rec, anchor, anchor, 3) == [
        utc(2026, 10, 31, 8, 30),  # PDT
        utc(2026, 11, 1, 8, 30),  # 01:30 PDT, the first pass; not 09:30Z
        utc(2026, 11, 2, 9, 30),  # PST
    ]
    # asked during the second pass (01:15 PST), the fold's slot is already past
    assert next_fire(rec, anchor, la(2026, 11, 1, 1, 15, fold=1)) == utc(2026, 11, 2, 9, 30)


def test_week_fold_fires_once() -> None:
    rec = make_recurrence(
        "Week", 1, time_zone=PST, week_days=["Sunday"], hours=[1], minutes=[0, 30],
        start_time="2026-10-01T00:00",
    )  # fmt: skip
    anchor = anchor_for(rec, utc(2026, 1, 1))
    assert fires_between(rec, anchor, la(2026, 11, 1), la(2026, 11, 2), 10) == [
        utc(2026, 11, 1, 8, 0),
        utc(2026, 11, 1, 8, 30),
    ]


def test_minute_fires_in_both_passes_of_fold() -> None:
    rec = make_recurrence("Minute", 30, start_time="2026-11-01T00:00", time_zone=PST)
    anchor = anchor_for(rec, utc(2026, 1, 1))
    got = run(rec, anchor, anchor - US, 7)
    assert got == [utc(2026, 11, 1, 7) + timedelta(minutes=30 * k) for k in range(7)]
    walls = [f"{g.astimezone(LA):%H:%M%z}" for g in got]
    assert walls == [
        "00:00-0700",
        "00:30-0700",
        "01:00-0700",
        "01:30-0700",
        "01:00-0800",
        "01:30-0800",
        "02:00-0800",
    ]


def test_hour_has_no_slot_at_nonexistent_times() -> None:
    rec = make_recurrence("Hour", 1, start_time="2026-03-08T00:00", time_zone=PST)
    anchor = anchor_for(rec, utc(2026, 1, 1))
    got = run(rec, anchor, anchor - US, 3)
    assert [f"{g.astimezone(LA):%H:%M}" for g in got] == ["00:00", "01:00", "03:00"]
    assert got == [utc(2026, 3, 8, 8), utc(2026, 3, 8, 9), utc(2026, 3, 8, 10)]


# --- properties (STYLE §3.9) ----------------------------------------------------------------

ZONES = [
    "UTC",
    PST,
    "Europe/London",
    "Europe/Dublin",  # negative DST in tzdata
    "Australia/Lord_Howe",  # 30-minute DST
    "America/Santiago",  # DST at midnight
    "Asia/Kolkata",
]
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
naive = st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2028, 12, 31))


@st.composite
def recurrences(
    draw: st.DrawFn, frequencies: tuple[str, ...] = FREQUENCIES, zones: list[str] = ZONES
) -> tuple[Recurrence, datetime]:
    freq = draw(st.sampled_from(frequencies))
    kwargs: dict[str, Any] = {"time_zone": draw(st.sampled_from(zones))}
    if freq in ("Day", "Week"):
        kwargs["hours"] = draw(st.none() | st.lists(st.integers(0, 23), max_size=4))
        kwargs["minutes"] = draw(st.none() | st.lists(st.integers(0, 59), max_size=3))
    if freq == "Week":
        kwargs["week_days"] = draw(st.none() | st.lists(st.sampled_from(WEEK_DAYS), max_size=3))
    start = draw(st.none() | naive)
    if start is not None:
        kwargs["start_time"] = start.replace(microsecond=0)
    interval = draw(st.integers(1, 3) | st.integers(4, 40))
    rec = make_recurrence(freq, interval, **kwargs)
    return rec, anchor_for(rec, draw(naive).replace(tzinfo=UTC))


afters = st.datetimes(
    min_value=datetime(2023, 6, 1),
    max_value=datetime(2030, 1, 1),
    timezones=st.sampled_from([UTC, LA, ZoneInfo("Australia/Lord_Howe")]),
    allow_imaginary=False,
)


@SETTINGS
@given(case=recurrences(), after=afters)
def test_next_fire_is_strictly_later_and_aware(
    case: tuple[Recurrence, datetime], after: datetime
) -> None:
    rec, anchor = case
    nxt = next_fire(rec, anchor, after)
    assert nxt is not None  # no end_time, and far from year 9999
    assert nxt > after and nxt.utcoffset() == timedelta(0)
    assert nxt >= anchor
    assert next_fire(rec, anchor, nxt - US) == nxt  # asking again just before


@SETTINGS
@given(case=recurrences(), after=afters, end=naive)
def test_no_slot_after_end_time(
    case: tuple[Recurrence, datetime], after: datetime, end: datetime
) -> None:
    rec, anchor = case
    nxt = next_fire(rec, anchor, after, end)
    assert nxt is None or nxt <= wall_to_utc(end, rec.zone)
    if nxt is None:
        unbounded = next_fire(rec, anchor, after)
        assert unbounded is not None and unbounded > wall_to_utc(end, rec.zone)


@SETTINGS
@given(
    case=recurrences(),
    after=afters,
    span=st.integers(0, 3 * 24 * 60),
    limit=st.integers(1, 5),
    end=st.none() | naive,
)
def test_fires_between_is_the_tail_of_stepping(
    case: tuple[Recurrence, datetime],
    after: datetime,
    span: int,
    limit: int,
    end: datetime | None,
) -> None:
    rec, anchor = case
    until = after + timedelta(minutes=span)
    stepped: list[datetime] = []
    nxt = next_fire(rec, anchor, after, end)
    while nxt is not None and nxt <= until:
        stepped.append(nxt)
        nxt = next_fire(rec, anchor, nxt, end)
    assert fires_between(rec, anchor, after, until, limit, end) == stepped[-limit:]


@SETTINGS
@given(case=recurrences(frequencies=("Day", "Week", "Month")), after=afters)
def test_wall_clock_rules_never_fire_twice_for_one_wall_time(
    case: tuple[Recurrence, datetime], after: datetime
) -> None:
    rec, anchor = case
    fires = run(rec, anchor, after, 12)
    walls = [to_wall(f, rec.zone) for f in fires]
    assert walls == sorted(set(walls))  # strictly increasing local times: one run per wall time
    for fire, wall in zip(fires, walls, strict=True):
        assert fire in wall_instants(wall, rec.zone)  # a real local time, never a nonexistent one


def _after_gap(instant: datetime, zone: str) -> bool:
    """True at the first instant after a spring-forward gap."""
    tz = ZoneInfo(zone)
    before = (instant - timedelta(seconds=1)).astimezone(tz).utcoffset()
    now = instant.astimezone(tz).utcoffset()
    return before is not None and now is not None and now > before


def _matches(rec: Recurrence, anchor_wall: datetime, wall: datetime) -> bool:
    """Brute-force pattern test of SPEC §3.1 for Day and Week."""
    hours = rec.hours or (anchor_wall.hour,)
    minutes = rec.minutes or (anchor_wall.minute,)
    if wall.hour not in hours or wall.minute not in minutes or wall.second or wall.microsecond:
        return False
    if rec.frequency == "Day":
        return (wall.date() - anchor_wall.date()).days % rec.interval == 0
    days = {WEEK_DAYS.index(d) for d in rec.week_days or ()} or {anchor_wall.weekday()}
    monday = anchor_wall.date() - timedelta(days=anchor_wall.weekday())
    return wall.weekday() in days and ((wall.date() - monday).days // 7) % rec.interval == 0


@SETTINGS
@given(case=recurrences(frequencies=("Day", "Week")), after=afters)
def test_day_and_week_fires_match_the_pattern(
    case: tuple[Recurrence, datetime], after: datetime
) -> None:
    rec, anchor = case
    anchor_wall = rec.start_time or to_wall(anchor, rec.zone)
    for fire in run(rec, anchor, after, 8):
        if rec.start_time is None and fire == anchor:
            continue  # the creation fire
        wall = to_wall(fire, rec.zone)
        assert _matches(rec, anchor_wall, wall) or _after_gap(fire, rec.zone)


WINDOW_STARTS = [datetime(2026, 3, 6, 12), datetime(2026, 10, 29, 12), datetime(2026, 6, 1, 12)]
# Biased towards the hours of the 2026 US gap (02:xx) and fold (01:xx), and edge minutes.
DST_HOURS = st.lists(st.sampled_from([1, 2]) | st.integers(0, 23), min_size=1, max_size=3)
DST_MINUTES = st.lists(st.sampled_from([0, 30, 59]) | st.integers(0, 59), max_size=3)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    frequency=st.sampled_from(["Day", "Week"]),
    interval=st.integers(1, 3),
    zone=st.sampled_from(["UTC", PST]),
    hours=st.none() | DST_HOURS,
    minutes=st.none() | DST_MINUTES,
    week_days=st.none() | st.lists(st.sampled_from(WEEK_DAYS), max_size=3),
    start=st.sampled_from(WINDOW_STARTS),
    shift=st.integers(0, 36 * 60),
    lead=st.integers(1, 20 * 24 * 60),
)
@example("Day", 1, PST, [1], [30], None, WINDOW_STARTS[1], 0, 100)  # fold
@example("Day", 2, PST, [2, 3], [0, 30], None, WINDOW_STARTS[0], 0, 1440)  # gap
@example("Week", 1, PST, [2], [15, 45], ["Sunday"], WINDOW_STARTS[0], 60, 5000)
@example("Week", 1, PST, [1, 2], [0, 59], ["Sunday", "Monday"], WINDOW_STARTS[1], 0, 5000)
def test_brute_force_minute_scan_finds_nothing_next_fire_skips(
    frequency: str,
    interval: int,
    zone: str,
    hours: list[int] | None,
    minutes: list[int] | None,
    week_days: list[str] | None,
    start: datetime,
    shift: int,
    lead: int,
) -> None:
    rec = make_recurrence(
        frequency,
        interval,
        start_time=start - timedelta(days=1, minutes=lead),
        time_zone=zone,
        hours=hours,
        minutes=minutes,
        week_days=week_days if frequency == "Week" else None,
    )
    anchor = anchor_for(rec, utc(2020, 1, 1))
    assert rec.start_time is not None
    first = start.replace(tzinfo=UTC) + timedelta(minutes=shift)
    last = first + timedelta(days=4 if rec.frequency == "Day" else 9)
    # Independent of the code under test: scan UTC minutes; a minute is a slot when its local
    # time matches and is seen for the first time (fold), or when a gap ends and a matching
    # local time lay inside it.
    expected: list[datetime] = []
    seen = to_wall(first - timedelta(hours=3), rec.zone)
    m = first - timedelta(hours=3)
    while m <= last:
        m += timedelta(minutes=1)
        wall, prev = to_wall(m, rec.zone), seen
        seen = max(seen, wall)
        hit = wall > prev and _matches(rec, rec.start_time, wall)
        skipped = prev + timedelta(minutes=1)
        while not hit and skipped < wall:
            hit = _matches(rec, rec.start_time, skipped)
            skipped += timedelta(minutes=1)
        if hit and first < m <= last:
            expected.append(m)
    stepped = run(rec, anchor, first, len(expected) + 1)
    assert stepped[: len(expected)] == expected
    assert stepped[len(expected)] > last
    assert fires_between(rec, anchor, first, last, len(expected) + 1) == expected
