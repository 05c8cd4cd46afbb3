"""Azure ML v2 trigger syntax (SPEC §13): the slot table, checks, the API shape and PATCH."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from watcherd.config import export_toml, load, parse_schedule, schedule_to_dict
from watcherd.core import slots
from watcherd.core.errors import ConfigErrors, ValidationError
from watcherd.core.models import Config, CronTrigger, RecurrenceTrigger, Schedule, Source
from watcherd.core.v2 import make_v2_trigger
from watcherd.core.words import trigger_words

BASE = """\
[datastores.inbox]
kind = "local"
root = "inbox"

[pipelines.train]
kind = "command"
steps = [["python", "train.py"]]
"""
BODY = {"name": "S", "pipeline": "train", "experiment_name": "E"}
CREATED = datetime(2026, 3, 4, 10, 15, 30, 250000, tzinfo=UTC)  # a Wednesday


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Config:
    path = tmp_path_factory.mktemp("v2") / "watcherd.toml"
    path.write_text(BASE)
    return load(path, {})


def make(cfg: Config, trigger: dict[str, Any], **extra: Any) -> Schedule:
    body = {**BODY, "trigger": trigger, **extra}
    return parse_schedule(body, config=cfg, key_prefix="body", source=Source.API)


def errors(cfg: Config, trigger: object, **extra: Any) -> list[str]:
    with pytest.raises(ConfigErrors) as exc:
        parse_schedule({**BODY, "trigger": trigger, **extra}, config=cfg, key_prefix="body",
                       source=Source.API)  # fmt: skip
    return [str(e) for e in exc.value.errors]


def fires(s: Schedule, n: int, now: datetime = CREATED) -> list[str]:
    """The first `n` fire times of a schedule created (or whose trigger changed) at `now`, as
    the daemon computes them: the creation fire first where there is one."""
    trigger = s.trigger
    assert isinstance(trigger, RecurrenceTrigger | CronTrigger)
    anchor, cursor = slots.new_timer(trigger, now, active=True)
    return [t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in slots.upcoming(trigger, anchor, cursor, n)]


# ── the §13 slot table, row by row ────────────────────────────────────────────

ROWS: list[tuple[str, dict[str, Any], list[str]]] = [
    # frequency: any case
    ("frequency any case", {"type": "RECURRENCE", "frequency": "Hour", "interval": 6,
                            "start_time": "2026-03-04T00:00:00"},
     ["2026-03-04T12:00:00Z", "2026-03-04T18:00:00Z", "2026-03-05T00:00:00Z"]),
    # schedule keys: hours/minutes with day
    ("day hours x minutes", {"type": "recurrence", "frequency": "day", "interval": 1,
                             "schedule": {"hours": [4, 16], "minutes": [0, 30]},
                             "start_time": "2026-03-01T00:00:00"},
     ["2026-03-04T16:00:00Z", "2026-03-04T16:30:00Z", "2026-03-05T04:00:00Z"]),
    # week_days with week
    ("week days", {"type": "recurrence", "frequency": "week", "interval": 2,
                   "schedule": {"hours": 9, "minutes": 0, "week_days": ["Monday", "friday"]},
                   "start_time": "2026-03-02T00:00:00"},
     ["2026-03-06T09:00:00Z", "2026-03-16T09:00:00Z", "2026-03-20T09:00:00Z"]),
    # week_days with month: those weekdays in each fired month
    ("month week days", {"type": "recurrence", "frequency": "month", "interval": 2,
                         "schedule": {"hours": [9], "minutes": [0], "week_days": "monday"},
                         "start_time": "2026-03-01T00:00:00"},
     ["2026-03-09T09:00:00Z", "2026-03-16T09:00:00Z", "2026-03-23T09:00:00Z",
      "2026-03-30T09:00:00Z", "2026-05-04T09:00:00Z"]),
    # month_days with month; values a scalar or a list
    ("month days", {"type": "recurrence", "frequency": "month", "interval": 1,
                    "schedule": {"hours": 4, "minutes": 50, "month_days": [1, 15]},
                    "start_time": "2026-01-01T00:00:00", "time_zone": "Pacific Standard Time"},
     ["2026-03-15T11:50:00Z", "2026-04-01T11:50:00Z", "2026-04-15T11:50:00Z"]),
    # month_days and week_days together: either matches
    ("month days or week days", {"type": "recurrence", "frequency": "month", "interval": 1,
                                 "schedule": {"hours": [0], "minutes": [0], "month_days": [5],
                                              "week_days": ["sunday"]},
                                 "start_time": "2026-03-01T00:00:00"},
     ["2026-03-05T00:00:00Z", "2026-03-08T00:00:00Z", "2026-03-15T00:00:00Z"]),
    # months counted from the start month; a day the month lacks is skipped
    ("month interval from start month", {"type": "recurrence", "frequency": "month",
                                         "interval": 3,
                                         "schedule": {"hours": [8], "minutes": [0],
                                                      "month_days": [31]},
                                         "start_time": "2026-02-10T00:00:00"},
     ["2026-05-31T08:00:00Z", "2026-08-31T08:00:00Z", "2027-05-31T08:00:00Z"]),
    # month without a pattern: the start's day and time, months from the start month
    ("month no pattern", {"type": "recurrence", "frequency": "month", "interval": 1,
                          "start_time": "2026-01-31T06:00:00"},
     ["2026-03-31T06:00:00Z", "2026-05-31T06:00:00Z", "2026-07-31T06:00:00Z"]),
    # no start_time: fires once at creation, then by the pattern
    ("no start fires on creation", {"type": "recurrence", "frequency": "day", "interval": 1,
                                    "schedule": {"hours": [4], "minutes": [0]}},
     ["2026-03-04T10:15:30Z", "2026-03-05T04:00:00Z", "2026-03-06T04:00:00Z"]),
    ("no start minute", {"type": "recurrence", "frequency": "minute", "interval": 15},
     ["2026-03-04T10:15:30Z", "2026-03-04T10:30:30Z", "2026-03-04T10:45:30Z"]),
    ("no start cron", {"type": "cron", "expression": "0 * * * *"},
     ["2026-03-04T10:15:30Z", "2026-03-04T11:00:00Z", "2026-03-04T12:00:00Z"]),
    # start_time past: no back-fill, the next computed time
    ("past start", {"type": "recurrence", "frequency": "day", "interval": 1,
                    "schedule": {"hours": [4, 11], "minutes": [0]},
                    "start_time": "2020-01-01T04:00:00"},
     ["2026-03-04T11:00:00Z", "2026-03-05T04:00:00Z", "2026-03-05T11:00:00Z"]),
    # a slot exactly at start_time fires (v1 would skip it)
    ("slot at start fires", {"type": "recurrence", "frequency": "day", "interval": 1,
                             "schedule": {"hours": [12], "minutes": [0]},
                             "start_time": "2026-03-04T12:00:00"},
     ["2026-03-04T12:00:00Z", "2026-03-05T12:00:00Z", "2026-03-06T12:00:00Z"]),
    ("cron slot at start fires", {"type": "cron", "expression": "0 12 * * *",
                                  "start_time": "2026-03-04T12:00:00"},
     ["2026-03-04T12:00:00Z", "2026-03-05T12:00:00Z", "2026-03-06T12:00:00Z"]),
    # start_time/end_time with an offset: converted to time_zone
    ("offset start", {"type": "recurrence", "frequency": "day", "interval": 1,
                      "start_time": "2026-03-05T10:15:00-04:00",
                      "time_zone": "W. Europe Standard Time"},
     ["2026-03-05T14:15:00Z", "2026-03-06T14:15:00Z", "2026-03-07T14:15:00Z"]),
    ("offset end", {"type": "cron", "expression": "0 0 * * *", "start_time": "2026-03-05T00:00",
                    "end_time": "2026-03-06T12:00:00Z", "time_zone": "Asia/Tokyo"},
     ["2026-03-04T15:00:00Z", "2026-03-05T15:00:00Z"]),
    # time_zone: default UTC, the Windows names and IANA names
    ("windows zone", {"type": "cron", "expression": "30 9 * * *", "time_zone": "Tokyo Standard Time",  # noqa: E501
                      "start_time": "2026-03-05T00:00:00"},
     ["2026-03-05T00:30:00Z", "2026-03-06T00:30:00Z"]),
    # DST as §3: spring gap (Los Angeles, 2026-03-08 02:00 → 03:00) fires once after the gap
    ("dst gap", {"type": "recurrence", "frequency": "day", "interval": 1,
                 "schedule": {"hours": [2, 3], "minutes": [30]},
                 "start_time": "2026-03-07T00:00:00", "time_zone": "America/Los_Angeles"},
     ["2026-03-07T10:30:00Z", "2026-03-07T11:30:00Z", "2026-03-08T10:00:00Z",
      "2026-03-08T10:30:00Z", "2026-03-09T09:30:00Z"]),
    # ... and the autumn fold (Berlin, 2026-10-25 03:00 → 02:00) fires once, at the first pass
    ("dst fold", {"type": "recurrence", "frequency": "day", "interval": 1,
                  "schedule": {"hours": [2], "minutes": [30]},
                  "start_time": "2026-10-24T00:00:00", "timezone": "Europe/Berlin"},
     ["2026-10-24T00:30:00Z", "2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]),
    # end_time: no runs after it
    ("end", {"type": "recurrence", "frequency": "hour", "interval": 12,
             "start_time": "2026-03-05T00:00:00", "end_time": "2026-03-06T00:00:00"},
     ["2026-03-05T00:00:00Z", "2026-03-05T12:00:00Z", "2026-03-06T00:00:00Z"]),
]  # fmt: skip


@pytest.mark.parametrize(("case", "trigger", "expected"), ROWS, ids=[r[0] for r in ROWS])
def test_v2_slot_table(
    cfg: Config, case: str, trigger: dict[str, Any], expected: list[str]
) -> None:
    s = make(cfg, trigger)
    assert fires(s, len(expected) + 1)[: len(expected)] == expected
    if case in ("offset end", "end"):
        assert len(fires(s, 10)) == len(expected)


def test_v2_pattern_alias_and_zone_alias(cfg: Config) -> None:
    a = make(cfg, {"type": "recurrence", "frequency": "week", "interval": 1,
                   "pattern": {"hours": [1], "minutes": [0], "week_days": ["sunday"]},
                   "timezone": "UTC", "start_time": "2026-03-01T00:00"})  # fmt: skip
    b = make(cfg, {"type": "recurrence", "frequency": "week", "interval": 1,
                   "schedule": {"hours": [1], "minutes": [0], "week_days": ["sunday"]},
                   "time_zone": "UTC", "start_time": "2026-03-01T00:00"})  # fmt: skip
    assert a.trigger == b.trigger
    assert schedule_to_dict(a, cfg)["trigger"] == schedule_to_dict(b, cfg)["trigger"]


REFUSED: list[tuple[dict[str, Any], list[str]]] = [
    ({"type": "recurrence", "frequency": "daily", "interval": 1},
     ["body.trigger.frequency: invalid value string 'daily', expected one of minute, hour, day, "
      "week, month (any case)"]),
    ({"type": "recurrence", "frequency": "day", "interval": 0},
     ["body.trigger.interval: must be at least 1, got 0"]),
    ({"type": "recurrence", "frequency": "day", "interval": "3"},
     ["body.trigger.interval: expected an integer, got string '3'"]),
    ({"type": "recurrence", "frequency": "day", "interval": 1.0},
     ["body.trigger.interval: expected an integer, got float 1.0"]),
    ({"type": "recurrence", "frequency": "month", "interval": 1201},
     ["body.trigger.interval: must be at most 1200 for frequency month (100 years), got 1201"]),
    ({"type": "recurrence", "frequency": "minute", "interval": 5,
      "schedule": {"hours": [1], "minutes": [0]}},
     ["body.trigger.schedule: frequency minute takes no schedule (hours, minutes, week_days and "
      "month_days go with day, week and month)"]),
    ({"type": "recurrence", "frequency": "day", "interval": 1,
      "schedule": {"hours": [24], "minutes": [60], "week_days": ["monday"]}},
     ["body.trigger.schedule.hours[0]: must be between 0 and 23, got 24",
      "body.trigger.schedule.minutes[0]: must be between 0 and 59, got 60",
      "body.trigger.schedule.week_days: week_days go with frequency week or month, not day"]),
    ({"type": "recurrence", "frequency": "week", "interval": 1,
      "schedule": {"hours": 1, "minutes": "5", "month_days": [1]}},
     ["body.trigger.schedule.minutes: expected an integer 0-59, got string '5'",
      "body.trigger.schedule.month_days: month_days go with frequency month, not week"]),
    ({"type": "recurrence", "frequency": "month", "interval": 1,
      "schedule": {"hours": [1], "minutes": [0], "month_days": [0, 32], "week_days": ["mon"],
                   "seconds": 5}},
     ["body.trigger.schedule.month_days[0]: must be between 1 and 31, got 0",
      "body.trigger.schedule.month_days[1]: must be between 1 and 31, got 32",
      "body.trigger.schedule.week_days[0]: invalid week day string 'mon', expected one of monday, "
      "tuesday, wednesday, thursday, friday, saturday, sunday (any case)",
      "body.trigger.schedule.seconds: unknown key 'seconds' (a schedule takes hours, minutes, "
      "week_days and month_days)"]),
    ({"type": "recurrence", "frequency": "week", "interval": 1, "schedule": {"hours": 1}},
     ["body.trigger.schedule.minutes: required (a v2 schedule gives both hours and minutes)"]),
    ({"type": "cron", "expression": "61 * * * *", "time_zone": "Mars/Olympus_Mons",
      "start_time": "2024-01-01", "frequency": "day"},
     ["body.trigger.frequency: 'frequency' is a key of recurrence triggers, not of cron triggers",
      "body.trigger.time_zone: unknown time zone 'Mars/Olympus_Mons': expected one of Azure ML's "
      "TimeZone names (e.g. \"Pacific Standard Time\") or an IANA name (e.g. \"Europe/Berlin\")",
      "body.trigger.start_time: invalid date-time '2024-01-01': expected YYYY-MM-DDThh:mm[:ss], "
      "optionally with an offset (Z, +02:00)",
      "body.trigger.expression: Invalid cron expression '61 * * * *': Bad minute"]),
    ({"type": "cron", "expression": "garbage"},
     ["body.trigger.expression: Invalid cron expression 'garbage': expected 5 fields (MIN HOUR "
      "DOM MON DOW), got 1"]),
    ({"type": "cron", "expression": "* * * * *", "timezone": "UTC", "time_zone": "UTC"},
     ["body.trigger.timezone: give either time_zone or timezone, not both"]),
    ({"type": "cron", "expresion": "* * * * *"},
     ["body.trigger.expresion: unknown key 'expresion', did you mean 'expression'?",
      "body.trigger.expression: required"]),
    ({"type": "timer"},
     ["body.trigger.type: invalid value string 'timer', expected recurrence or cron (any case)"]),
    ({"frequency": "day", "interval": 1}, ["body.trigger.type: required (recurrence or cron)"]),
    ({"type": "cron", "expression": "* * * * *", "start_time": "0001-01-01T00:00:00"},
     ["body.trigger.start_time: start_time year must be between 1900 and 9899, got 1"]),
    ({"type": "cron", "expression": "* * * * *", "end_time": "2026-02-30T00:00:00"},
     ["body.trigger.end_time: invalid date-time '2026-02-30T00:00:00': day is out of range for "
      "month"]),
    # azure-ai-ml's ISO 8601 check refuses these three; so does watcherd (SPEC §13)
    *[({"type": "recurrence", "frequency": "day", "interval": 1, "start_time": text},
       [f"body.trigger.start_time: invalid date-time {text!r}: expected YYYY-MM-DDThh:mm[:ss], "
        "optionally with an offset (Z, +02:00)"])
      for text in ("2030-01-01T04:00:00z", "2030-01-01T04:00:00 +02:00", " 2030-01-01T04:00:00 ")],
    ({"type": "cron", "expression": "* * * * *", "end_time": "2030-01-01T04:00:00z"},
     ["body.trigger.end_time: invalid date-time '2030-01-01T04:00:00z': expected "
      "YYYY-MM-DDThh:mm[:ss], optionally with an offset (Z, +02:00)"]),
]  # fmt: skip


@pytest.mark.parametrize(("trigger", "expected"), REFUSED)
def test_v2_refusals(cfg: Config, trigger: dict[str, Any], expected: list[str]) -> None:
    assert errors(cfg, trigger) == expected


def test_v2_key_placement(cfg: Config) -> None:
    trigger = {"type": "cron", "expression": "0 4 * * *"}
    assert errors(cfg, trigger, start_time="2026-01-01T00:00") == [
        "body.start_time: 'start_time' is a key of cron schedules, not of trigger schedules "
        "(put it inside trigger)"
    ]
    assert errors(cfg, trigger, frequency="day") == [
        "body.frequency: 'frequency' goes inside trigger (v2 syntax, SPEC §13)"
    ]
    assert errors(cfg, trigger, cron="* * * * *") == ["body: give one of cron, trigger, not both"]
    assert errors(cfg, trigger, datastore="inbox") == [
        "body: Can not specify both a Recurrence and a Datastore"
    ]
    assert errors(cfg, "daily") == [
        'body.trigger: expected a table like { type = "recurrence", frequency = "day", '
        "interval = 1 }, got string 'daily'"
    ]
    s = make(cfg, trigger, catch_up="all", max_catch_up=3, concurrency="forbid")
    assert s.trigger.options.catch_up == "all" and s.trigger.options.concurrency == "forbid"


def test_v2_core_raises_the_first_problem() -> None:
    with pytest.raises(ValidationError) as exc:
        make_v2_trigger({"type": "recurrence", "frequency": "day", "interval": 1,
                         "schedule": {"hours": [1, 99], "minutes": 0}})  # fmt: skip
    assert (exc.value.key, exc.value.message) == (
        "schedule.hours[1]",
        "must be between 0 and 23, got 99",
    )


# ── stored and served once ────────────────────────────────────────────────────


def test_v2_is_shown_as_given(cfg: Config) -> None:
    """A v2 trigger that v1 terms express fully is still shown as `trigger`."""
    s = make(cfg, {"type": "Recurrence", "frequency": "DAY", "interval": 1,
                   "schedule": {"hours": 4, "minutes": [0, 30]},
                   "start_time": "2026-01-01 04:00", "timezone": "UTC"})  # fmt: skip
    d = schedule_to_dict(s, cfg)
    assert "recurrence" not in d and "cron" not in d and "end_time" not in d
    assert d["trigger"] == {
        "type": "recurrence", "frequency": "day", "interval": 1,
        "schedule": {"hours": [4], "minutes": [0, 30]},
        "start_time": "2026-01-01 04:00", "time_zone": "UTC",
    }  # fmt: skip
    assert {"catch_up", "max_catch_up", "concurrency", "max_queued"} <= set(d)
    cron = make(cfg, {"type": "cron", "expression": "0  4 * * 1"})
    assert schedule_to_dict(cron, cfg)["trigger"] == {"type": "cron", "expression": "0 4 * * 1"}
    assert trigger_words(cron) == "cron '0 4 * * 1': at 04:00 on Monday, first run on creation"
    assert trigger_words(s) == ("every day at 04:00, 04:30, starting 2026-01-01 04:00")
    month = make(cfg, {"type": "recurrence", "frequency": "month", "interval": 2,
                       "schedule": {"hours": [4], "minutes": [50], "month_days": [1, 15],
                                    "week_days": ["friday"]},
                       "time_zone": "Pacific Standard Time"})  # fmt: skip
    assert trigger_words(month) == (
        "every 2 months on day 1, 15 and every Friday at 04:50 (Pacific Standard Time), "
        "first run on creation"
    )


def test_v2_trigger_keys_differ_from_v1(cfg: Config) -> None:
    v2 = make(cfg, {"type": "recurrence", "frequency": "hour", "interval": 1})
    v1 = parse_schedule({**BODY, "recurrence": {"frequency": "Hour", "interval": 1}},
                        config=cfg, key_prefix="body", source=Source.API)  # fmt: skip
    assert isinstance(v1.trigger, RecurrenceTrigger) and isinstance(v2.trigger, RecurrenceTrigger)
    assert slots.trigger_key(v1.trigger) == repr(
        ("recurrence", "Hour", 1, None, "UTC", None, None, None)
    )  # unchanged across upgrades
    assert slots.trigger_key(v2.trigger) != slots.trigger_key(v1.trigger)
    c1 = parse_schedule({**BODY, "cron": "0 4 * * *"}, config=cfg, key_prefix="body",
                        source=Source.API)  # fmt: skip
    c2 = make(cfg, {"type": "cron", "expression": "0 4 * * *"})
    assert isinstance(c1.trigger, CronTrigger) and isinstance(c2.trigger, CronTrigger)
    assert slots.trigger_key(c1.trigger) == repr(("cron", "0 4 * * *", "UTC", None))
    assert slots.trigger_key(c2.trigger) != slots.trigger_key(c1.trigger)
    # v1 cron has no creation fire; v2 cron has one.
    assert slots.creation_fire(c1.trigger, CREATED) is None
    assert slots.creation_fire(c2.trigger, CREATED) == CREATED


def patch(cfg: Config, existing: Schedule, body: dict[str, Any]) -> Schedule:
    return parse_schedule(body, config=cfg, key_prefix="body", source=Source.API,
                          existing=existing)  # fmt: skip


def test_patch_replaces_one_time_trigger_with_another(cfg: Config) -> None:
    rec = parse_schedule({**BODY, "recurrence": {"frequency": "Hour", "interval": 2},
                          "end_time": "2027-01-01T00:00", "catch_up": "last"},
                         config=cfg, key_prefix="body", source=Source.API)  # fmt: skip
    to_v2 = patch(cfg, rec, {"trigger": {"type": "cron", "expression": "0 4 * * *"}})
    d = schedule_to_dict(to_v2, cfg)
    assert d["trigger"] == {"type": "cron", "expression": "0 4 * * *"}
    assert "recurrence" not in d and "end_time" not in d and d["catch_up"] == "last"
    to_cron = patch(cfg, to_v2, {"cron": "*/5 * * * *", "time_zone": "Europe/Berlin"})
    d = schedule_to_dict(to_cron, cfg)
    assert d["cron"] == "*/5 * * * *" and d["time_zone"] == "Europe/Berlin" and "trigger" not in d
    back = patch(cfg, to_cron, {"recurrence": {"frequency": "Day", "interval": 1}})
    d = schedule_to_dict(back, cfg)
    assert d["recurrence"]["frequency"] == "Day" and "cron" not in d and "time_zone" not in d
    assert back.id == rec.id
    same_kind = patch(cfg, to_v2, {"trigger": {"type": "recurrence", "frequency": "minute",
                                               "interval": 5}})  # fmt: skip
    assert schedule_to_dict(same_kind, cfg)["trigger"]["frequency"] == "minute"  # type: ignore[index]
    with pytest.raises(ConfigErrors) as exc:
        patch(cfg, to_v2, {"trigger": {"type": "cron", "expression": "0 4 * * *"},
                           "time_zone": "UTC"})  # fmt: skip
    assert [e.key_path for e in exc.value.errors] == ["body.time_zone"]


# ── the config file ───────────────────────────────────────────────────────────


def test_v2_in_the_config_file_and_export_round_trip(tmp_path: Path, cfg: Config) -> None:
    text = (
        BASE
        + """
[[schedules]]
name = "monthly"
pipeline = "train"
experiment_name = "E"
catch_up = "last"

[schedules.trigger]
type = "recurrence"
frequency = "month"
interval = "${EVERY}"
schedule = { hours = [4], minutes = [50], month_days = [1, 15] }
start_time = 2026-01-01T00:00:00
end_time = 2027-01-01T00:00:00-08:00
time_zone = "Pacific Standard Time"

[[schedules]]
name = "hourly"
pipeline = "train"
experiment_name = "E"
trigger = { type = "cron", expression = "0 * * * *", timezone = "Europe/Berlin" }
"""
    )
    path = tmp_path / "watcherd.toml"
    path.write_text(text)
    loaded = load(path, {"EVERY": "2"})
    monthly, hourly = loaded.schedules
    assert isinstance(monthly.trigger, RecurrenceTrigger)
    rec = monthly.trigger.recurrence
    assert (rec.frequency, rec.interval, rec.month_days, rec.v2) == ("Month", 2, (1, 15), True)
    assert monthly.trigger.end_time == datetime(2027, 1, 1, 0, 0)  # -08:00 is PST already
    assert schedule_to_dict(monthly, loaded)["trigger"]["start_time"] == "2026-01-01T00:00:00"  # type: ignore[index]
    assert schedule_to_dict(hourly, loaded)["trigger"] == {
        "type": "cron",
        "expression": "0 * * * *",
        "time_zone": "Europe/Berlin",
    }
    # export → load gives the same schedules
    api = [replace(s, source=Source.API) for s in loaded.schedules]
    out = export_toml(api, loaded)
    again = tmp_path / "again.toml"
    again.write_text(BASE + out)
    back = load(again, {})
    assert back.schedules == loaded.schedules
    assert [schedule_to_dict(s, back) for s in back.schedules] == [
        schedule_to_dict(s, loaded) for s in loaded.schedules
    ]


def test_scalar_hours_keep_the_rule_order(tmp_path: Path, cfg: Config) -> None:
    """Issue #15: check-config and the SDK give §3.1's message for a scalar hours/minutes."""
    cases = [
        ({"frequency": "Minute", "interval": 1, "hours": 5},
         "body.recurrence.hours: Can only specify hours if frequency is Week or Day."),
        ({"frequency": "Hour", "interval": 1, "minutes": 5},
         "body.recurrence.minutes: Can only specify minutes if frequency is Week or Day."),
        ({"frequency": "Day", "interval": 1, "hours": 5},
         "body.recurrence.hours: Hours must be between 0 and 23."),
        ({"frequency": "Week", "interval": 1, "minutes": "5"},
         "body.recurrence.minutes: Minutes must be between 0 and 59."),
        ({"frequency": "Day", "interval": 0, "hours": 5},
         "body.recurrence.interval: Interval must be an integer greater than 0."),
    ]  # fmt: skip
    from watcherd.core.recurrence import make_recurrence

    for rec, line in cases:
        with pytest.raises(ConfigErrors) as exc:
            parse_schedule({**BODY, "recurrence": rec}, config=cfg, key_prefix="body",
                           source=Source.API)  # fmt: skip
        assert [str(e) for e in exc.value.errors] == [line]
        with pytest.raises(ValidationError) as sdk:
            make_recurrence(**rec)  # what the SDK's ScheduleRecurrence runs
        assert line.endswith(sdk.value.message)
    path = tmp_path / "w.toml"
    path.write_text(BASE + '[[schedules]]\nname = "S"\npipeline = "train"\nexperiment_name = "E"\n'
                    'recurrence = { frequency = "Minute", interval = 1, hours = 5 }\n')  # fmt: skip
    with pytest.raises(ConfigErrors) as exc:
        load(path, {})
    assert [str(e) for e in exc.value.errors] == [
        "schedules[0].recurrence.hours: Can only specify hours if frequency is Week or Day."
    ]


def test_v2_next_slots_after_a_restart_are_stable(cfg: Config) -> None:
    """Asking again from the last slot gives the following ones (the timers' cursor walk)."""
    s = make(cfg, {"type": "recurrence", "frequency": "month", "interval": 1,
                   "schedule": {"hours": [0, 12], "minutes": [0], "month_days": [31, 1]},
                   "start_time": "2026-01-01T00:00:00"})  # fmt: skip
    trigger = s.trigger
    assert isinstance(trigger, RecurrenceTrigger)
    anchor = slots.anchor_for(trigger, CREATED)
    walk = slots.upcoming(trigger, anchor, anchor - slots.EPS, 12)
    assert walk[0] == datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(1, len(walk)):
        assert slots.next_slot(trigger, anchor, walk[i - 1]) == walk[i]
        assert slots.next_slot(trigger, anchor, walk[i] - timedelta(microseconds=1)) == walk[i]
    between = slots.slots_between(trigger, anchor, anchor - slots.EPS, walk[-1], 100)
    assert between == walk
    assert datetime(2026, 2, 28, tzinfo=UTC) not in walk  # February has no 31st


# ── property: accepted v2 triggers never break the slot math ─────────────────

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_TIMES = st.sampled_from(
    [
        "1900-01-01T00:00:00",
        "9899-12-31T23:59:59",
        "2026-03-08T02:30:00",
        "2026-10-25T02:30:00+01:00",
        "9899-12-31T23:59:59-12:00",
        "1900-01-01T00:00:00+14:00",
        "2026-02-29T00:00:00",
        "0001-01-01T00:00",
    ]
)
_ZONES = st.sampled_from(
    [
        "UTC",
        "Pacific/Kiritimati",
        "Etc/GMT+12",
        "Europe/Berlin",
        "Pacific Standard Time",
        "Lord Howe Standard Time",
        "Mars/Base",
    ]
)
_INTS = st.one_of(
    st.integers(-2, 40), st.sampled_from([1200, 1201, 5217, 36524, 52_594_560, 10**9])
)
_RECURRENCE = st.fixed_dictionaries(
    {
        "type": st.just("recurrence"),
        "frequency": st.sampled_from(["minute", "Hour", "DAY", "week", "month", "year"]),
        "interval": _INTS,
    },
    optional={
        "schedule": st.fixed_dictionaries(
            {
                "hours": st.one_of(_INTS, st.lists(_INTS, max_size=3)),
                "minutes": st.one_of(_INTS, st.lists(_INTS, max_size=3)),
            },
            optional={
                "week_days": st.lists(st.sampled_from(["monday", "SUNDAY", "x"]), max_size=3),
                "month_days": st.lists(_INTS, max_size=3),
            },
        ),
        "start_time": _TIMES,
        "end_time": _TIMES,
        "time_zone": _ZONES,
    },
)
_CRON = st.fixed_dictionaries(
    {"type": st.just("cron"),
     "expression": st.sampled_from(["0 0 29 2 *", "*/7 * * * *", "30 2 * * 0", "0 0 31 * 1"])},
    optional={"start_time": _TIMES, "end_time": _TIMES, "timezone": _ZONES},
)  # fmt: skip


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    trigger=st.one_of(_RECURRENCE, _CRON),
    now=st.datetimes(
        min_value=datetime(1990, 1, 1), max_value=datetime(9899, 12, 31), timezones=st.just(UTC)
    ),
)
def test_accepted_v2_triggers_answer_slot_questions(
    cfg: Config, trigger: dict[str, Any], now: datetime
) -> None:
    try:
        s = make(cfg, trigger)
    except ConfigErrors as exc:
        assert all(e.key_path.startswith("body.trigger") for e in exc.errors)
        return
    t = s.trigger
    assert isinstance(t, RecurrenceTrigger | CronTrigger)
    anchor, cursor = slots.new_timer(t, now, active=True)
    times = slots.upcoming(t, anchor, cursor, 3)
    assert times == sorted(times) and all(x > cursor for x in times)
    slots.catch_up(t, anchor, cursor, now + timedelta(days=40))
    slots.slots_between(t, anchor, cursor, now + timedelta(days=3), 5)
