"""Seeded generators of inputs for the differential tests against Azure's packages.

Everything is JSON-serialisable, so one batch goes to a driver on stdin unchanged:

- `v1_recurrence_kwargs(seed, n)`: keyword dicts for `ScheduleRecurrence(**kwargs)`, valid and
  invalid mixes. Values JSON cannot hold are tagged: `{"$datetime": iso}` (naive or with an
  offset), `{"$timezone": member name}` (v1 `TimeZone` member, e.g. "PacificStandardTime"),
  `{"$tuple": [...]}`. `decode_v1_kwargs` turns them into Python objects for any side.
- `v2_schedule_yamls(seed, n)`: v2 schedule YAML texts (recurrence and cron triggers,
  `create_job: azureml:<pipeline>`), inside and outside v2's documented ranges. With
  `variants=True` they also use forms where watcherd departs from azure-ai-ml on purpose
  (SPEC §11, §13): `create_job` with `:version`, `@label`, a bare name or an inline job, and
  the `timezone`/`pattern` aliases.

Same seed, same inputs (random.Random(seed); no global state, no hypothesis).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

__all__ = [
    "IANA_ZONES",
    "PIPELINES",
    "V1_FREQUENCIES",
    "WEEK_DAYS",
    "WINDOWS_ZONES",
    "decode_v1_kwargs",
    "v1_recurrence_kwargs",
    "v2_schedule_yamls",
    "zone_member_name",
]

V1_FREQUENCIES = ("Minute", "Hour", "Day", "Week", "Month")
WEEK_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
# A sample of Azure ML's 131 Windows zone names (the same values in v1 and v2), with the odd
# spellings: punctuation, "UTC-11"/"UTC+12", and the two names CLDR lacks.
WINDOWS_ZONES = (
    "UTC",
    "UTC-11",
    "UTC-02",
    "UTC+12",
    "Pacific Standard Time",
    "Pacific Standard Time (Mexico)",
    "Eastern Standard Time",
    "Central Standard Time",
    "Mountain Standard Time",
    "US Mountain Standard Time",
    "Atlantic Standard Time",
    "Newfoundland Standard Time",
    "E. South America Standard Time",
    "Mid-Atlantic Standard Time",
    "GMT Standard Time",
    "W. Europe Standard Time",
    "Romance Standard Time",
    "W. Central Africa Standard Time",
    "FLE Standard Time",
    "Russia Time Zone 3",
    "India Standard Time",
    "Nepal Standard Time",
    "China Standard Time",
    "Tokyo Standard Time",
    "AUS Eastern Standard Time",
    "Lord Howe Standard Time",
    "Kamchatka Standard Time",
    "Chatham Islands Standard Time",
    "Tonga Standard Time",
    "Line Islands Standard Time",
)
IANA_ZONES = ("Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe")
BAD_ZONES = ("Mars/Olympus_Mons", "Pacific Standard", "pacific standard time", "GMT+1", "")
PIPELINES = ("nightly-train", "score_daily", "p1", "etl.v2", "Ingest-Blobs")


def zone_member_name(value: str) -> str:
    """v1 TimeZone member name: the value without non-alphanumerics ("UTC-11" → "UTC11")."""
    return re.sub(r"[^0-9A-Za-z]", "", value)


def decode_v1_kwargs(kwargs: dict[str, Any], zone_enum: Any) -> dict[str, Any]:
    """The generator's tagged values as Python objects; `zone_enum` maps `$timezone` names."""

    def dec(value: Any) -> Any:
        if isinstance(value, list):
            return [dec(v) for v in value]
        if isinstance(value, dict) and len(value) == 1:
            ((tag, inner),) = value.items()
            if tag == "$datetime":
                return datetime.fromisoformat(inner)
            if tag == "$timezone":
                return zone_enum[inner]
            if tag == "$tuple":
                return tuple(dec(v) for v in inner)
        if isinstance(value, dict):
            return {k: dec(v) for k, v in value.items()}
        return value

    return {key: dec(value) for key, value in kwargs.items()}


def _pick(rng: random.Random, weighted: list[tuple[float, Callable[[], Any]]]) -> Any:
    total = sum(w for w, _ in weighted)
    x = rng.random() * total
    for weight, make in weighted:
        x -= weight
        if x < 0:
            return make()
    return weighted[-1][1]()


def _sample(rng: random.Random, values: range | tuple[Any, ...], most: int) -> list[Any]:
    return sorted(rng.sample(list(values), rng.randint(1, min(most, len(values)))))


# ---------------------------------------------------------------- v1: ScheduleRecurrence


def _v1_frequency(rng: random.Random) -> Any:
    bad = ("day", "DAY", "Daily", "Days", " Day", "", "Second", "Year")
    return _pick(
        rng,
        [
            (8, lambda: rng.choice(V1_FREQUENCIES)),
            (1.5, lambda: rng.choice(bad)),
            (0.3, lambda: rng.choice([None, 1, ["Day"]])),
        ],
    )


def _v1_interval(rng: random.Random) -> Any:
    return _pick(
        rng,
        [
            (7, lambda: rng.randint(1, 30)),
            (1, lambda: rng.choice([0, -1, -30])),
            (0.7, lambda: rng.choice([1.0, 1.5, 0.5, 2.0])),
            (0.5, lambda: rng.choice([True, False])),
            (0.7, lambda: rng.choice([36524, 36525, 5217, 1200, 1201, 10**6, 10**9, 10**20])),
            (0.5, lambda: rng.choice(["1", "x", None])),
        ],
    )


def _v1_ints(rng: random.Random, top: int) -> Any:
    """A value for hours (top 23) or minutes (top 59)."""
    return _pick(
        rng,
        [
            (5, lambda: _sample(rng, range(top + 1), 4)),
            (1, lambda: [*_sample(rng, range(top + 1), 2), rng.choice([top + 1, -1, 100])]),
            (1, lambda: rng.randint(0, top)),  # a scalar: Azure raises TypeError
            (0.5, lambda: []),
            (0.5, lambda: [rng.choice([1.0, 2.5, True, False])]),
            (0.4, lambda: rng.choice([[str(rng.randint(0, top))], "5", [None]])),
            (0.3, lambda: {"$tuple": _sample(rng, range(top + 1), 3)}),
        ],
    )


def _v1_week_days(rng: random.Random) -> Any:
    return _pick(
        rng,
        [
            (5, lambda: [d for d in WEEK_DAYS if rng.random() < 0.35] or ["Monday"]),
            (0.7, lambda: []),
            (1, lambda: [rng.choice(["monday", "Mon", "Funday", "MONDAY", ""])]),
            (0.7, lambda: rng.choice(["Monday", "Mon", 5])),  # scalars
        ],
    )


def _v1_time_of_day(rng: random.Random) -> Any:
    bad = ("1830", "18:30:00", "7:5", "24:00", "23:60", "99:99", "18:30\n", "", " 8:00", "8h30")
    return _pick(
        rng,
        [
            (6, lambda: f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"),
            (1, lambda: f"{rng.randint(0, 9)}:{rng.randint(0, 59):02d}"),
            (2, lambda: rng.choice(bad)),
            (0.3, lambda: 1830),
        ],
    )


def _stamp(rng: random.Random) -> str:
    return (
        f"{rng.randint(2019, 2031):04d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        f"T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"
    )


def _v1_start_time(rng: random.Random) -> Any:
    return _pick(
        rng,
        [
            (5, lambda: _stamp(rng) + f":{rng.choice([0, 0, 30]):02d}"),
            (1.5, lambda: _stamp(rng)),
            (1.5, lambda: {"$datetime": _stamp(rng) + ":00"}),
            (1, lambda: {"$datetime": _stamp(rng) + rng.choice(["+02:00", "+00:00", "-05:30"])}),
            (1, lambda: _stamp(rng) + rng.choice([":00Z", ":00+02:00", ":00.5"])),
            (1, lambda: rng.choice(["2020-01-01 10:00:00", "garbage", "2020-13-01T00:00:00", ""])),
            (0.3, lambda: 1234567890),
        ],
    )


def _v1_time_zone(rng: random.Random) -> Any:
    return _pick(
        rng,
        [
            (5, lambda: {"$timezone": zone_member_name(rng.choice(WINDOWS_ZONES))}),
            (2, lambda: rng.choice(WINDOWS_ZONES)),  # a string: Azure wants the enum (§11)
            (1, lambda: rng.choice(IANA_ZONES)),
            (1, lambda: rng.choice(BAD_ZONES)),
        ],
    )


def _v1_one(rng: random.Random) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"frequency": _v1_frequency(rng), "interval": _v1_interval(rng)}
    frequency = kwargs["frequency"]
    patterned = frequency in ("Day", "Week")
    optional: list[tuple[str, float, Callable[[], Any]]] = [
        ("start_time", 0.45, lambda: _v1_start_time(rng)),
        ("time_zone", 0.4, lambda: _v1_time_zone(rng)),
        ("hours", 0.45 if patterned else 0.1, lambda: _v1_ints(rng, 23)),
        ("minutes", 0.45 if patterned else 0.1, lambda: _v1_ints(rng, 59)),
        ("week_days", 0.6 if frequency == "Week" else 0.08, lambda: _v1_week_days(rng)),
        ("time_of_day", 0.3 if patterned else 0.05, lambda: _v1_time_of_day(rng)),
    ]
    for key, chance, make in optional:
        if rng.random() < chance:
            kwargs[key] = make()
        elif rng.random() < 0.03:
            kwargs[key] = None  # an explicit None, as Azure's defaults
    # time_of_day with hours/minutes is a constructor error; keep it, but not too often.
    if "time_of_day" in kwargs and rng.random() < 0.7:
        kwargs.pop("hours", None)
        kwargs.pop("minutes", None)
    return kwargs


def v1_recurrence_kwargs(seed: int, n: int) -> list[dict[str, Any]]:
    """`n` keyword dicts for ScheduleRecurrence, about half of them valid."""
    rng = random.Random(seed)
    return [_v1_one(rng) for _ in range(n)]


# ------------------------------------------------------------------ v2: schedule YAML


def _q(text: str) -> str:
    """A double-quoted YAML scalar (JSON strings are valid YAML)."""
    return json.dumps(text)


def _case(rng: random.Random, word: str) -> str:
    return rng.choice([word, word, word.capitalize(), word.upper()])


def _v2_int(rng: random.Random, low: int, high: int, below: int, above: int) -> str:
    """A YAML scalar for an integer: mostly in [low, high], sometimes not an int at all."""
    return _pick(
        rng,
        [
            (8, lambda: str(rng.randint(low, high))),
            (1, lambda: str(rng.choice([below, above]))),
            (0.5, lambda: _q(str(rng.randint(low, high)))),  # "4": azure-ai-ml takes it
            (0.3, lambda: rng.choice(["1.0", "2.5", "true", "x", "null", "[]"])),
        ],
    )


def _v2_ints(rng: random.Random, low: int, high: int, below: int, above: int) -> str:
    if rng.random() < 0.35:
        return _v2_int(rng, low, high, below, above)
    items = [_v2_int(rng, low, high, below, above) for _ in range(rng.randint(1, 4))]
    return "[" + ", ".join(items) + "]"


def _v2_week_days(rng: random.Random) -> str:
    days = [_case(rng, d.lower()) for d in WEEK_DAYS if rng.random() < 0.35] or ["monday"]
    if rng.random() < 0.1:
        days.append(rng.choice(["mon", "Funday", "weekday"]))
    if rng.random() < 0.25:
        return days[0]
    return "[" + ", ".join(days) + "]"


def _v2_time(rng: random.Random) -> str:
    stamp = _stamp(rng) + ":00"
    return _pick(
        rng,
        [
            (6, lambda: _q(stamp)),
            (1, lambda: _q(stamp + rng.choice(["Z", "+02:00", "-05:30", "+00:00"]))),
            (1, lambda: _q(stamp.replace("T", " ")[:-3])),  # "2024-01-01 10:00"
            (1, lambda: stamp),  # unquoted: YAML makes it a datetime
            (0.5, lambda: rng.choice([_q("garbage"), _q("2024-02-30T10:00:00"), "2024-01-01"])),
        ],
    )


def _v2_zone(rng: random.Random) -> str:
    return _pick(
        rng,
        [
            (6, lambda: _q(rng.choice(WINDOWS_ZONES))),
            (1.5, lambda: _q(rng.choice(IANA_ZONES))),
            (1, lambda: _q(rng.choice(BAD_ZONES))),
            (0.5, lambda: _q(rng.choice(WINDOWS_ZONES).lower())),
            (0.2, lambda: "5"),
        ],
    )


CRON_OK = ("0 4 * * 1", "*/15 * * * *", "30 2 1 * *", "0 0 * * 1-5", "15 10 * * *", "0 */6 * * *")
CRON_BAD = ("garbage", "61 * * * *", "* * * * * *", "0 4 * *", "")


def _v2_schedule(rng: random.Random, frequency: str, variants: bool) -> list[str]:
    """The `schedule:` block (or none), as indented lines."""
    freq = frequency.lower()
    chance = 0.7 if freq in ("day", "week", "month") else 0.12
    if rng.random() >= chance:
        return []
    key = "pattern" if variants and rng.random() < 0.08 else "schedule"
    lines = [f"  {key}:"]
    if rng.random() < 0.95:
        lines.append(f"    hours: {_v2_ints(rng, 0, 23, -1, 24)}")
    if rng.random() < 0.95:
        lines.append(f"    minutes: {_v2_ints(rng, 0, 59, -1, 60)}")
    if rng.random() < (0.7 if freq == "week" else 0.08):
        lines.append(f"    week_days: {_v2_week_days(rng)}")
    if rng.random() < (0.7 if freq == "month" else 0.08):
        lines.append(f"    month_days: {_v2_ints(rng, 1, 31, 0, 32)}")
    if rng.random() < 0.03:
        lines.append("    seconds: 5")
    return lines


def _v2_trigger(rng: random.Random, variants: bool) -> list[str]:
    lines = ["trigger:"]
    if rng.random() < 0.65:
        lines.append(f"  type: {_case(rng, 'recurrence')}")
        frequency = _pick(
            rng,
            [
                (9, lambda: _case(rng, rng.choice(("minute", "hour", "day", "week", "month")))),
                (1, lambda: rng.choice(["daily", "Days", "second", '""'])),
            ],
        )
        if rng.random() < 0.98:
            lines.append(f"  frequency: {frequency}")
        if rng.random() < 0.98:
            interval = _pick(
                rng,
                [
                    (8, lambda: str(rng.randint(1, 12))),
                    (2, lambda: _v2_int(rng, 1, 12, 0, -3)),
                    (0.5, lambda: str(rng.choice([1000, 10**6]))),
                ],
            )
            lines.append(f"  interval: {interval}")
        lines += _v2_schedule(rng, frequency, variants)
    else:
        lines.append(f"  type: {_case(rng, 'cron')}")
        if rng.random() < 0.98:
            expression = _pick(
                rng,
                [
                    (9, lambda: _q(rng.choice(CRON_OK))),
                    (1, lambda: _q(rng.choice(CRON_BAD))),
                    (0.2, lambda: "15"),
                ],
            )
            lines.append(f"  expression: {expression}")
    if rng.random() < 0.55:
        lines.append(f"  start_time: {_v2_time(rng)}")
    if rng.random() < 0.2:
        lines.append(f"  end_time: {_v2_time(rng)}")
    if rng.random() < 0.55:
        key = "timezone" if variants and rng.random() < 0.1 else "time_zone"
        lines.append(f"  {key}: {_v2_zone(rng)}")
    if rng.random() < 0.02:
        lines.append("  bogus: 1")
    return lines


def _v2_create_job(rng: random.Random, variants: bool) -> list[str]:
    pipeline = rng.choice(PIPELINES)
    if variants and rng.random() < 0.3:
        return _pick(
            rng,
            [
                (1, lambda: [f"create_job: azureml:{pipeline}:{rng.randint(1, 9)}"]),
                (1, lambda: [f"create_job: azureml:{pipeline}@latest"]),
                (1, lambda: [f"create_job: {pipeline}"]),
                (
                    1,
                    lambda: [
                        "create_job:",
                        "  type: pipeline",
                        f"  job: azureml:{pipeline}",
                        "  settings:",
                        "    continue_on_step_failure: true",
                    ],
                ),
            ],
        )
    return [f"create_job: azureml:{pipeline}"]


def _v2_one(rng: random.Random, index: int, variants: bool) -> str:
    lines = []
    if rng.random() < 0.3:
        lines.append("$schema: https://azuremlschemas.azureedge.net/latest/schedule.schema.json")
    if rng.random() < 0.99:
        lines.append(f"name: sched-{index}")
    if rng.random() < 0.3:
        lines.append(f"display_name: {_q(f'Schedule {index}')}")
    if rng.random() < 0.3:
        lines.append(f"description: {_q('generated')}")
    if rng.random() < 0.2:
        lines += ["tags:", f"  experiment_name: exp-{index % 7}"]
    trigger = _v2_trigger(rng, variants)
    job = _v2_create_job(rng, variants)
    blocks = [trigger, job]
    rng.shuffle(blocks)
    for block in blocks:
        lines += block
    return "\n".join(lines) + "\n"


def v2_schedule_yamls(seed: int, n: int, *, variants: bool = False) -> list[str]:
    """`n` v2 schedule YAML texts; with `variants`, also watcherd's deliberate departures."""
    rng = random.Random(seed)
    return [_v2_one(rng, i, variants) for i in range(n)]
