"""Cron rules: validation, Vixie matching in a zone, the DST rule, and searched properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from cronsim import CronSim
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from watcherd.core.cron import CronRule, anchor_for, describe, fires_between, make_cron, next_fire
from watcherd.core.errors import ValidationError
from watcherd.core.recurrence import anchor_for as rec_anchor_for
from watcherd.core.recurrence import make_recurrence
from watcherd.core.recurrence import next_fire as rec_next_fire
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
    return datetime(year, month, day, hour, minute, tzinfo=LA, fold=fold).astimezone(UTC)


def run(rule: CronRule, anchor: datetime, after: datetime, n: int) -> list[datetime]:
    out: list[datetime] = []
    while len(out) < n and (nxt := next_fire(rule, anchor, after)) is not None:
        out.append(nxt)
        after = nxt
    return out


def local(instants: list[datetime]) -> list[str]:
    return [f"{i.astimezone(LA):%m-%d %H:%M%z}" for i in instants]


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("0 9 * *", "expected 5 fields (MIN HOUR DOM MON DOW), got 4"),
        ("0 0 9 * * *", "expected 5 fields (MIN HOUR DOM MON DOW), got 6"),
        ("", "expected 5 fields (MIN HOUR DOM MON DOW), got 0"),
        ("@daily", "expected 5 fields (MIN HOUR DOM MON DOW), got 1"),
        ("0 24 * * *", "Bad hour"),
        ("60 * * * *", "Bad minute"),
        ("0 0 0 * *", "Bad day-of-month"),
        ("0 0 * 13 *", "Bad month"),
        ("0 0 * * 8", "Bad day-of-week"),
        ("*/0 * * * *", "Bad minute"),
        ("0 0 31 4 *", "Bad day-of-month"),  # never matches
        ("0 0 L * *", "bad day-of-month 'L' (Vixie syntax: * N N-M */S N-M/S)"),
        ("0 0 * * 5L", "bad day-of-week '5L' (Vixie syntax: * N N-M */S N-M/S)"),
        ("0 0 * * 5#2", "bad day-of-week '5#2' (Vixie syntax: * N N-M */S N-M/S)"),
        ("0 0 LW * *", "bad day-of-month 'LW' (Vixie syntax: * N N-M */S N-M/S)"),
        ("0 0 ? * *", "bad day-of-month '?' (Vixie syntax: * N N-M */S N-M/S)"),
        ("0 0 * FEB-MON *", "bad month 'FEB-MON' (Vixie syntax: * N N-M */S N-M/S)"),
        ("0 MON * * *", "bad hour 'MON' (Vixie syntax: * N N-M */S N-M/S)"),
    ],
)
def test_bad_expressions(expression: str, reason: str) -> None:
    with pytest.raises(ValidationError) as info:
        make_cron(expression)
    assert info.value.message == f"Invalid cron expression {expression!r}: {reason}"
    assert info.value.key == "cron"


def test_non_string_expression() -> None:
    with pytest.raises(ValidationError) as info:
        make_cron(5)
    assert (info.value.message, info.value.key) == (
        "Invalid cron expression 5: expected a string",
        "cron",
    )


@pytest.mark.parametrize(
    ("kwargs", "key", "message"),
    [
        ({"time_zone": "Mars/Base"}, "time_zone", "Time zone is not a valid TimeZone enum."),
        ({"time_zone": 3}, "time_zone", "Time zone is not a valid TimeZone enum."),
        (
            {"start_time": "2026-01-01T09:00Z"},
            "start_time",
            "Can not specify tzinfo for start_time, use time_zone instead.",
        ),
        (
            {"end_time": datetime(2026, 1, 1, tzinfo=UTC)},
            "end_time",
            "Can not specify tzinfo for end_time, use time_zone instead.",
        ),
        ({"start_time": "2026-01-01 09:00"}, "start_time", None),
        ({"end_time": "tomorrow"}, "end_time", None),
    ],
)
def test_bad_zone_and_times(kwargs: dict[str, Any], key: str, message: str | None) -> None:
    with pytest.raises(ValidationError) as info:
        make_cron("0 9 * * *", **kwargs)
    assert info.value.key == key
    if message is not None:
        assert info.value.message == message


def test_valid_rule_is_normalised() -> None:
    rule = make_cron(
        " 0  9 * *  mon-fri ", PST, start_time="2026-01-01T00:00", end_time=datetime(2027, 1, 1)
    )
    assert rule == CronRule(
        expression="0 9 * * mon-fri",
        time_zone=PST,
        zone="America/Los_Angeles",
        start_time=datetime(2026, 1, 1),
        end_time=datetime(2027, 1, 1),
    )
    assert make_cron("*/5 * * * *").zone == "UTC"
    assert make_cron("0 */2 * * *").elapsed and make_cron("0 0-23/3 * * *").elapsed
    assert make_cron("0 * * * *").elapsed and not make_cron("0 0-23 * * *").elapsed


@pytest.mark.parametrize(
    ("rule", "text"),
    [
        (make_cron("0 9 * * 1-5"), "cron '0 9 * * 1-5': at 09:00 on Monday through Friday"),
        (make_cron("*/15 * * * *"), "cron '*/15 * * * *': every 15th minute of every hour"),
        (
            make_cron(
                "30 2 * * *", PST, start_time="2026-01-01T00:00", end_time="2027-01-01T00:00"
            ),
            "cron '30 2 * * *': at 02:30 every day (Pacific Standard Time), "
            "starting 2026-01-01 00:00, until 2027-01-01 00:00",
        ),
    ],
)
def test_describe(rule: CronRule, text: str) -> None:
    assert describe(rule) == text


# --- worked examples ------------------------------------------------------------------------


def test_weekdays_at_nine_in_pacific_across_spring_forward() -> None:
    rule = make_cron("0 9 * * 1-5", PST)
    anchor = anchor_for(rule, utc(2026, 3, 5, 12, 0, 7) + 999 * US)
    assert anchor == utc(2026, 3, 5, 12, 0, 7)
    assert run(rule, anchor, anchor - US, 4) == [
        utc(2026, 3, 5, 17),  # Thursday 09:00 PST; no creation fire
        utc(2026, 3, 6, 17),
        utc(2026, 3, 9, 16),  # Monday 09:00 PDT
        utc(2026, 3, 10, 16),
    ]


def test_dom_and_dow_are_or_unless_one_is_a_star() -> None:
    anchor = utc(2026, 2, 1)
    either = make_cron("0 9 13 * 5")  # the 13th, or any Friday
    assert run(either, anchor, anchor, 4) == [
        utc(2026, 2, 6, 9),
        utc(2026, 2, 13, 9),  # a Friday the 13th: once
        utc(2026, 2, 20, 9),
        utc(2026, 2, 27, 9),
    ]
    assert run(either, anchor, utc(2026, 3, 1), 3) == [
        utc(2026, 3, 6, 9),
        utc(2026, 3, 13, 9),
        utc(2026, 3, 20, 9),
    ]
    both = make_cron("0 9 */2 * 5")  # DOM starts with '*': odd days that are Fridays
    assert run(both, anchor, anchor, 2) == [utc(2026, 2, 13, 9), utc(2026, 2, 27, 9)]


def test_start_time_slot_fires_and_no_slot_before_it() -> None:
    rule = make_cron("0 9 * * *", start_time="2026-06-01T09:00")
    anchor = anchor_for(rule, utc(2026, 1, 1))
    assert anchor == utc(2026, 6, 1, 9)
    assert next_fire(rule, anchor, utc(2026, 1, 1)) == utc(2026, 6, 1, 9)
    # no back-fill: a past start_time fires at the next slot ≥ now
    assert next_fire(rule, anchor, utc(2026, 7, 4, 9) - US) == utc(2026, 7, 4, 9)


def test_end_time() -> None:
    rule = make_cron("0 9 * * *", PST, end_time="2026-01-03T09:00")
    anchor = utc(2026, 1, 1)
    assert run(rule, anchor, anchor, 10) == [
        la(2026, 1, 1, 9),
        la(2026, 1, 2, 9),
        la(2026, 1, 3, 9),
    ]
    assert fires_between(rule, anchor, anchor, utc(2026, 2, 1), 2) == [
        la(2026, 1, 2, 9),
        la(2026, 1, 3, 9),
    ]


def test_catch_up_after_30_days_of_every_minute() -> None:
    rule = make_cron("* * * * *", PST)
    anchor = utc(2026, 3, 1, 0, 0, 7)
    until = utc(2026, 3, 31, 0, 0, 30)
    got = fires_between(rule, anchor, anchor, until, 10)
    assert got == [utc(2026, 3, 31) - timedelta(minutes=m) for m in range(9, -1, -1)]
    assert fires_between(rule, anchor, until, until, 10) == []


def test_far_future_and_no_match_for_50_years() -> None:
    rule = make_cron("0 0 29 2 *")
    anchor = utc(2026, 1, 1)
    assert next_fire(rule, anchor, utc(2097, 1, 1)) == utc(2104, 2, 29)
    assert next_fire(rule, anchor, utc(9997, 1, 1)) is None  # past year 9999
    assert next_fire(make_cron("* * * * *"), anchor, datetime.max.replace(tzinfo=UTC) - US) is None


def test_cron_minute_steps_equal_minute_recurrence_in_whole_hour_zones() -> None:
    rec = make_recurrence("Minute", 15, start_time="2026-10-31T00:00", time_zone=PST)
    rec_anchor = rec_anchor_for(rec, utc(2026, 1, 1))
    rule = make_cron("*/15 * * * *", PST)
    after = utc(2026, 10, 31, 12)
    cron_fires = run(rule, utc(2026, 1, 1), after, 24 * 4 * 3)
    rec_fires: list[datetime] = []
    while len(rec_fires) < len(cron_fires):
        nxt = rec_next_fire(rec, rec_anchor, rec_fires[-1] if rec_fires else after)
        assert nxt is not None
        rec_fires.append(nxt)
    assert cron_fires == rec_fires


# --- DST (SPEC §3.1) ------------------------------------------------------------------------


def test_cron_fixed_hour_in_spring_gap_fires_after_gap() -> None:
    rule = make_cron("30 2 * * *", PST)
    got = run(rule, utc(2026, 1, 1), la(2026, 3, 7, 3), 2)
    assert got == [utc(2026, 3, 8, 10), la(2026, 3, 9, 2, 30)]
    assert local(got) == ["03-08 03:00-0700", "03-09 02:30-0700"]


def test_cron_gap_collapses() -> None:
    rule = make_cron("0,30 2,3 * * *", PST)
    got = fires_between(rule, utc(2026, 1, 1), la(2026, 3, 8), la(2026, 3, 9), 10)
    assert local(got) == ["03-08 03:00-0700", "03-08 03:30-0700"]
    every_minute = make_cron("* 2 * * *", PST)
    assert run(every_minute, utc(2026, 1, 1), la(2026, 3, 8), 2) == [
        utc(2026, 3, 8, 10),
        la(2026, 3, 9, 2, 0),
    ]


def test_cron_fold_fires_once_first_occurrence() -> None:
    rule = make_cron("30 1 * * *", PST)
    got = run(rule, utc(2026, 1, 1), la(2026, 10, 31, 12), 2)
    assert got == [utc(2026, 11, 1, 8, 30), utc(2026, 11, 2, 9, 30)]
    assert next_fire(rule, utc(2026, 1, 1), la(2026, 11, 1, 1, 10, fold=1)) == utc(
        2026, 11, 2, 9, 30
    )
    dense = make_cron("*/20 1 * * *", PST)
    fold = fires_between(dense, utc(2026, 1, 1), la(2026, 11, 1), la(2026, 11, 1, 3), 10)
    assert local(fold) == ["11-01 01:00-0700", "11-01 01:20-0700", "11-01 01:40-0700"]


def test_cron_step_hour_fires_in_both_passes_of_fold() -> None:
    rule = make_cron("0,30 */1 * * *", PST)
    got = fires_between(rule, utc(2026, 1, 1), la(2026, 11, 1, 0, 45), la(2026, 11, 1, 2), 10)
    assert local(got) == [
        "11-01 01:00-0700",
        "11-01 01:30-0700",
        "11-01 01:00-0800",
        "11-01 01:30-0800",
        "11-01 02:00-0800",
    ]
    # asked in the second pass, the next is the next elapsed slot
    assert next_fire(rule, utc(2026, 1, 1), la(2026, 11, 1, 1, 10, fold=1)) == la(
        2026, 11, 1, 1, 30, fold=1
    )
    # asked in the first pass after its last slot, the second pass follows
    assert next_fire(rule, utc(2026, 1, 1), la(2026, 11, 1, 1, 45)) == la(2026, 11, 1, 1, 0, fold=1)


def test_cron_star_hour_has_no_slot_at_nonexistent_times() -> None:
    rule = make_cron("30 * * * *", PST)
    got = fires_between(rule, utc(2026, 1, 1), la(2026, 3, 8), la(2026, 3, 8, 4), 10)
    assert local(got) == ["03-08 00:30-0800", "03-08 01:30-0800", "03-08 03:30-0700"]


def test_cron_anchor_in_fold_second_pass() -> None:
    rule = make_cron("0 * * * *", PST)
    anchor = la(2026, 11, 1, 1, 0, fold=1)  # created exactly at the second 01:00
    assert next_fire(rule, anchor, anchor - US) == anchor
    assert next_fire(rule, anchor, utc(2026, 1, 1)) == anchor


# --- properties -----------------------------------------------------------------------------

ZONES = ["UTC", PST, "Europe/London", "Australia/Lord_Howe", "America/Santiago"]
FIXED_HOURS = ["1", "2", "0,2", "1-3", "9", "23", "0-2"]
ANY_HOURS = ["*", "*/2", "0-23/3", "1-5/2"]
MINUTES = ["0", "30", "*/15", "5,35", "*", "59", "0-10/5"]
DOMS = ["*", "1", "8", "1-15", "*/2"]
MONTHS = ["*", "3", "10,11", "4", "9-12"]
DOWS = ["*", "0", "1-5", "SUN", "sat,sun"]


@st.composite
def rules(draw: st.DrawFn, hours: list[str]) -> tuple[CronRule, datetime]:
    fields = [draw(st.sampled_from(f)) for f in (MINUTES, hours, DOMS, MONTHS, DOWS)]
    rule = make_cron(" ".join(fields), draw(st.sampled_from(ZONES)))
    created = draw(st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2028, 1, 1)))
    return rule, anchor_for(rule, created.replace(tzinfo=UTC))


SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
afters = st.datetimes(
    min_value=datetime(2023, 6, 1),
    max_value=datetime(2030, 1, 1),
    timezones=st.sampled_from([UTC, LA]),
    allow_imaginary=False,
)


def matches(rule: CronRule, wall: datetime) -> bool:
    """Does the naive local `wall` match the expression (cronsim's parsed fields)?"""
    spec = _parsed(rule.expression)
    return (
        wall.second == wall.microsecond == 0
        and wall.minute in spec.minutes
        and wall.hour in spec.hours
        and wall.month in spec.months
        and spec.match_day(wall.date())
    )


@cache
def _parsed(expression: str) -> CronSim:
    return CronSim(expression, datetime(2000, 1, 1))


@SETTINGS
@given(case=rules(FIXED_HOURS + ANY_HOURS), after=afters)
def test_next_fire_is_strictly_later_and_aware(
    case: tuple[CronRule, datetime], after: datetime
) -> None:
    rule, anchor = case
    nxt = next_fire(rule, anchor, after)
    assert nxt is not None
    assert nxt > after and nxt >= anchor and nxt.utcoffset() == timedelta(0)
    assert next_fire(rule, anchor, nxt - US) == nxt
    assert nxt in wall_instants(to_wall(nxt, rule.zone), rule.zone)  # a real local time


@SETTINGS
@given(case=rules(FIXED_HOURS), after=afters)
def test_fixed_hour_cron_never_fires_twice_for_one_wall_time(
    case: tuple[CronRule, datetime], after: datetime
) -> None:
    rule, anchor = case
    fires = run(rule, anchor, after, 15)
    walls = [to_wall(f, rule.zone) for f in fires]
    assert walls == sorted(set(walls))
    for fire, wall in zip(fires, walls, strict=True):
        gap_end = (fire - timedelta(seconds=1)).astimezone(ZoneInfo(rule.zone)).utcoffset() != (
            fire.astimezone(ZoneInfo(rule.zone)).utcoffset()
        )
        assert matches(rule, wall) or gap_end


@SETTINGS
@given(case=rules(ANY_HOURS), after=afters)
def test_elapsed_cron_fires_match_and_increase(
    case: tuple[CronRule, datetime], after: datetime
) -> None:
    rule, anchor = case
    fires = run(rule, anchor, after, 15)
    assert fires == sorted(set(fires))
    assert all(matches(rule, to_wall(f, rule.zone)) for f in fires)


FOLD_AND_GAP = [datetime(2026, 3, 7, 20), datetime(2026, 10, 31, 20), datetime(2026, 4, 4, 12)]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=rules(FIXED_HOURS + ANY_HOURS),
    zone=st.sampled_from(["UTC", PST, "Australia/Lord_Howe"]),
    start=st.sampled_from(FOLD_AND_GAP),
    shift=st.integers(0, 12 * 60),
)
@example((make_cron("30 1 * * *"), utc(2020, 1, 1)), PST, FOLD_AND_GAP[1], 0)
@example((make_cron("*/15 */1 * * *"), utc(2020, 1, 1)), PST, FOLD_AND_GAP[1], 0)
@example((make_cron("0,30 2 * * *"), utc(2020, 1, 1)), PST, FOLD_AND_GAP[0], 0)
def test_brute_force_minute_scan_finds_nothing_next_fire_skips(
    case: tuple[CronRule, datetime], zone: str, start: datetime, shift: int
) -> None:
    rule = make_cron(case[0].expression, zone)
    zone = rule.zone
    anchor = utc(2020, 1, 1)
    first = start.replace(tzinfo=UTC) + timedelta(minutes=shift)
    last = first + timedelta(days=2)
    expected: list[datetime] = []
    m = first - timedelta(hours=4)
    seen = to_wall(m, zone)
    while m < last:
        m += timedelta(minutes=1)
        wall, prev = to_wall(m, zone), seen
        seen = max(seen, wall)
        if rule.elapsed:
            hit = matches(rule, wall)  # every instant whose local time matches
        else:  # first occurrence only, and the end of a gap that swallowed a match
            hit = wall > prev and matches(rule, wall)
            skipped = prev + timedelta(minutes=1)
            while not hit and skipped < wall:
                hit = matches(rule, skipped)
                skipped += timedelta(minutes=1)
        if hit and m > first:
            expected.append(m)
    stepped = run(rule, anchor, first, len(expected) + 1)
    assert stepped[: len(expected)] == expected
    assert len(stepped) == len(expected) + 1 and stepped[-1] > last
    assert fires_between(rule, anchor, first, last, 5) == expected[-5:]


@SETTINGS
@given(
    hour=st.integers(0, 23),
    minute=st.integers(0, 59),
    days=st.lists(st.integers(0, 6), min_size=1, max_size=3),
    zone=st.sampled_from(ZONES),
    after=afters,
)
def test_cron_agrees_with_the_equivalent_week_recurrence(
    hour: int, minute: int, days: list[int], zone: str, after: datetime
) -> None:
    names = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
    start = "2023-01-01T00:00"  # before any `after`; a Sunday at midnight
    rule = make_cron(f"{minute} {hour} * * {','.join(str((d + 1) % 7) for d in days)}", zone, start)
    rec = make_recurrence(
        "Week", 1, start_time=start, time_zone=zone, hours=[hour], minutes=[minute],
        week_days=[names[d] for d in days],
    )  # fmt: skip
    cron_anchor = anchor_for(rule, utc(2020, 1, 1))
    rec_anchor = rec_anchor_for(rec, utc(2020, 1, 1))
    assert cron_anchor == rec_anchor == wall_to_utc(datetime(2023, 1, 1), rec.zone)
    assert next_fire(rule, cron_anchor, after) == rec_next_fire(rec, rec_anchor, after)


_FIELDS = st.tuples(
    st.sampled_from(["*", "0", "*/7", "5,35", "10-20/5", "59"]),
    st.sampled_from(["*", "3", "*/5", "1-4", "22,23", "0"]),
    st.sampled_from(["*", "1", "13", "29-31", "*/10", "15"]),
    st.sampled_from(["*", "2", "JAN,JUL", "2-4", "*/3", "12"]),
    st.sampled_from(["*", "1-5", "5", "SUN", "MON,WED", "0,6"]),
)


@settings(max_examples=300, deadline=None)
@given(
    fields=_FIELDS,
    start=st.datetimes(min_value=datetime(1999, 1, 1), max_value=datetime(2099, 12, 31)),
)
@example(fields=("0", "0", "13", "*", "5"), start=datetime(2026, 1, 1))  # dom OR dow
def test_a_parsed_expression_walks_as_a_fresh_cronsim(
    fields: tuple[str, ...], start: datetime
) -> None:
    """core.cron reuses one parse per expression (`cronsim_from`): it must walk exactly as
    `CronSim(expression, start)` does, so a cronsim that keeps other state fails here."""
    from watcherd.core.cron import cronsim_from

    expression = " ".join(fields)
    mine, theirs = cronsim_from(expression, start), CronSim(expression, start)
    for _ in range(4):
        try:
            want = next(theirs)
        except (StopIteration, OverflowError, ValueError) as exc:
            with pytest.raises(type(exc)):
                next(mine)
            return
        assert next(mine) == want
