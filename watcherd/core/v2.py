"""Azure ML v2 triggers (SPEC §13): `{type: recurrence | cron, …}` into a Recurrence or CronRule.

v2 names (`time_zone`, `schedule`; the 2022 reference page's `timezone` / `pattern` are aliases),
v2's case-insensitive frequencies, types and week days, and v2's slot rules, carried by the
rule's `v2` flag: a slot exactly at `start_time` fires, Month takes hours, minutes, week days and
`month_days`, and without `start_time` the schedule fires once at creation (cron too).
`start_time`/`end_time` may carry an offset (v2 accepts one): it is converted to `time_zone`.

watcherd is stricter than azure-ai-ml where v2's documentation draws the line (§11): intervals of
at least 1 and at most 100 years, hours 0–23, minutes 0–59, month_days 1–31, integers only, the
pattern keys only with the frequencies they apply to. Every problem is reported, each with its
key path relative to the trigger table (a tuple of keys and indices).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime
from enum import Enum
from zoneinfo import ZoneInfo

from watcherd.core.cron import CronRule, make_cron
from watcherd.core.errors import ValidationError
from watcherd.core.recurrence import MAX_INTERVAL, WEEK_DAYS, Recurrence
from watcherd.core.timezones import resolve_zone
from watcherd.core.wallclock import check_year

__all__ = ["ALIASES", "Problem", "V2Trigger", "make_v2_trigger", "parse_v2_trigger"]

Path = tuple[str | int, ...]
Problem = tuple[Path, str]

ALIASES = {"timezone": "time_zone", "pattern": "schedule"}
_COMMON = ("type", "start_time", "end_time", "time_zone")
_KEYS = {
    "recurrence": ("type", "frequency", "interval", "schedule", "start_time", "end_time",
                   "time_zone"),
    "cron": ("type", "expression", "start_time", "end_time", "time_zone"),
}  # fmt: skip
_FREQUENCIES = ("minute", "hour", "day", "week", "month")
_DAYS = tuple(d.lower() for d in WEEK_DAYS)
_PATTERN_KEYS = ("hours", "minutes", "week_days", "month_days")
_RANGES = {"hours": (0, 23), "minutes": (0, 59), "month_days": (1, 31)}
# v1's form, a space for the T, fractions, and an offset (Z, ±hh:mm, ±hhmm), as v2 reads them.
# As azure-ai-ml's ISO 8601 check takes them: no space around the text or before the offset,
# and `Z` upper-case (SPEC §13: what it rejects, watcherd rejects).
_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?"
    r"(Z|[+-]\d{2}:?\d{2})?",
    re.ASCII,
)


@dataclass(frozen=True, slots=True)
class V2Trigger:
    """A checked v2 trigger: the rule the slot math runs, its end, and the table to show."""

    rule: Recurrence | CronRule
    end_time: datetime | None  # naive wall time in the zone (recurrence; a CronRule has its own)
    given: dict[str, object]  # the trigger as given, in v2's key names (SPEC §13: shown as is)


def make_v2_trigger(raw: object) -> V2Trigger:
    """`parse_v2_trigger`, raising the first problem as ValidationError(message, dotted key)."""
    trigger, problems = parse_v2_trigger(raw)
    if trigger is None:
        path, message = problems[0]
        raise ValidationError(message, _dotted(path))
    return trigger


def parse_v2_trigger(raw: object) -> tuple[V2Trigger | None, list[Problem]]:
    """Check a v2 trigger table; (trigger, []) or (None, every problem)."""
    if not isinstance(raw, Mapping):
        example = '{ type = "recurrence", frequency = "day", interval = 1 }'
        return None, [((), f"expected a table like {example}, got {_show(raw)}")]
    problems: list[Problem] = []
    table, names = _canonical(raw, problems)
    kind = _type(table, problems)
    keys = _KEYS.get(kind or "", ())
    for key in table:
        if kind is not None and key not in keys:
            problems.append(((names.get(key, key),), _foreign(key, names.get(key, key), kind)))
    zone = _zone(table, names, problems)
    start = _time(table, "start_time", zone, problems)
    end = _time(table, "end_time", zone, problems)
    given: dict[str, object] = {"type": kind}
    rule: Recurrence | CronRule | None = None
    if kind == "recurrence":
        rule = _recurrence(table, names, problems, given)
    elif kind == "cron":
        rule = _cron(table, problems, given, start, end)
    for key in ("start_time", "end_time", "time_zone"):
        if key in table:
            value = table[key]
            given[key] = value.isoformat() if isinstance(value, datetime) else value
    if problems or rule is None or zone is None:
        return None, problems
    if isinstance(rule, CronRule):
        return V2Trigger(rule, None, given), []
    time_zone = table.get("time_zone", "UTC")
    rule = replace(
        rule,
        zone=zone,
        time_zone=str(time_zone.value if isinstance(time_zone, Enum) else time_zone),
        start_time=start[0] if start else None,
    )
    return V2Trigger(rule, end[0] if end else None, given), []


# ── keys ──────────────────────────────────────────────────────────────────────


def _canonical(
    raw: Mapping[str, object], problems: list[Problem]
) -> tuple[dict[str, object], dict[str, str]]:
    """The table with aliases renamed, and each renamed key's name as written (messages name
    the key the user wrote); an alias given beside its name is a problem."""
    out: dict[str, object] = {}
    names: dict[str, str] = {}
    for key, value in raw.items():
        name = ALIASES.get(str(key), str(key))
        if name in out:
            alias = next(a for a, n in ALIASES.items() if n == name)
            problems.append(((alias,), f"give either {name} or {alias}, not both"))
            continue
        out[name] = value
        if name != key:
            names[name] = str(key)
    return out, names


def _foreign(key: str, written: str, kind: str) -> str:
    other = "cron" if kind == "recurrence" else "recurrence"
    if key in _KEYS[other]:
        return f"{written!r} is a key of {other} triggers, not of {kind} triggers"
    close = difflib.get_close_matches(key, [*_KEYS[kind], *ALIASES], n=1, cutoff=0.6)
    return f"unknown key {written!r}" + (f", did you mean {close[0]!r}?" if close else "")


def _type(table: Mapping[str, object], problems: list[Problem]) -> str | None:
    if "type" not in table:
        problems.append((("type",), "required (recurrence or cron)"))
        return None
    value = table["type"]
    if isinstance(value, str) and value.lower() in _KEYS:
        return value.lower()
    if value == "datastore":
        reason = "a datastore trigger is written with the schedule's datastore keys (SPEC §2)"
    else:
        reason = f"invalid value {_show(value)}, expected recurrence or cron (any case)"
    problems.append((("type",), reason))
    return None


def _zone(
    table: Mapping[str, object], names: Mapping[str, str], problems: list[Problem]
) -> str | None:
    value = table.get("time_zone", "UTC")
    where = names.get("time_zone", "time_zone")
    if isinstance(value, Enum):
        value = value.value
    if not isinstance(value, str):
        problems.append(((where,), f"expected a string, got {_show(value)}"))
        return None
    try:
        return resolve_zone(value)
    except ValidationError:
        problems.append(((where,), f"unknown time zone {value[:80]!r}: expected one of "
                         "Azure ML's TimeZone names (e.g. \"Pacific Standard Time\") or an "
                         "IANA name (e.g. \"Europe/Berlin\")"))  # fmt: skip
        return None


def _time(
    table: Mapping[str, object], key: str, zone: str | None, problems: list[Problem]
) -> tuple[datetime] | None:
    """The wall time in `zone` (an offset converted); None when absent, problem or no zone."""
    if key not in table:
        return None
    value = table[key]
    try:
        parsed = _parse_time(value, key)
        if zone is None:
            return None
        if parsed.tzinfo is not None:
            parsed = parsed.astimezone(ZoneInfo(zone)).replace(tzinfo=None)
        return (check_year(parsed.replace(microsecond=0, fold=0), key),)
    except ValidationError as exc:
        problems.append(((key,), exc.message))
    except OverflowError:
        problems.append(((key,), f"{key} is out of range"))
    return None


def _parse_time(value: object, key: str) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, date) or not isinstance(value, str):
        raise ValidationError(
            f'expected a date-time string like "2022-07-10T10:00:00", got {_show(value)}', key
        )
    m = _TIME.fullmatch(value)
    if m is None:
        raise ValidationError(
            f"invalid date-time {value[:80]!r}: expected YYYY-MM-DDThh:mm[:ss], optionally with "
            "an offset (Z, +02:00)",
            key,
        )
    try:
        parsed = datetime.fromisoformat(value.replace(" ", "T", 1))
    except ValueError as exc:
        raise ValidationError(f"invalid date-time {value!r}: {exc}", key) from None
    check_year(parsed, key)
    return parsed


# ── recurrence ────────────────────────────────────────────────────────────────


def _recurrence(
    table: Mapping[str, object],
    names: Mapping[str, str],
    problems: list[Problem],
    given: dict[str, object],
) -> Recurrence | None:
    """The recurrence without its zone and start (set once both are known)."""
    before = len(problems)
    frequency = _frequency(table, problems)
    interval = _interval(table, frequency, problems)
    if frequency is not None:
        given["frequency"] = frequency
    if interval is not None:
        given["interval"] = interval
    pattern = _pattern(table, names.get("schedule", "schedule"), frequency, problems)
    if pattern is not None:
        given["schedule"] = {k: list(v) for k, v in pattern.items()}
    if len(problems) > before or frequency is None or interval is None:
        return None
    pattern = pattern or {}
    days = pattern.get("week_days")
    return Recurrence(
        frequency=frequency.capitalize(),
        interval=interval,
        hours=_ints(pattern.get("hours")),
        minutes=_ints(pattern.get("minutes")),
        week_days=None if days is None else tuple(str(d).capitalize() for d in days),
        month_days=_ints(pattern.get("month_days")),
        v2=True,
    )


def _ints(values: tuple[object, ...] | None) -> tuple[int, ...] | None:
    return None if values is None else tuple(int(str(v)) for v in values)


def _frequency(table: Mapping[str, object], problems: list[Problem]) -> str | None:
    if "frequency" not in table:
        problems.append((("frequency",), "required"))
        return None
    value = table["frequency"]
    if isinstance(value, str) and value.lower() in _FREQUENCIES:
        return value.lower()
    problems.append((("frequency",), f"invalid value {_show(value)}, expected one of minute, "
                     "hour, day, week, month (any case)"))  # fmt: skip
    return None


def _interval(
    table: Mapping[str, object], frequency: str | None, problems: list[Problem]
) -> int | None:
    if "interval" not in table:
        problems.append((("interval",), "required"))
        return None
    value = table["interval"]
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append((("interval",), f"expected an integer, got {_show(value)}"))
        return None
    if value < 1:
        problems.append((("interval",), f"must be at least 1, got {value}"))
        return None
    top = MAX_INTERVAL[frequency.capitalize()] if frequency else None
    if top is not None and value > top:
        reason = f"must be at most {top} for frequency {frequency} (100 years), got {value}"
        problems.append((("interval",), reason))
        return None
    return value


def _pattern(
    table: Mapping[str, object], where: str, frequency: str | None, problems: list[Problem]
) -> dict[str, tuple[object, ...]] | None:
    if "schedule" not in table:
        return None
    raw = table["schedule"]
    if not isinstance(raw, Mapping):
        example = "{ hours = [4], minutes = [50] }"
        problems.append(((where,), f"expected a table like {example}, got {_show(raw)}"))
        return None
    if frequency in ("minute", "hour"):
        if all(v in ([], None) for v in raw.values()):
            return None  # azure-ai-ml writes `schedule: {hours: [], minutes: []}` for these
        problems.append(((where,), f"frequency {frequency} takes no schedule (hours, minutes, "
                         "week_days and month_days go with day, week and month)"))  # fmt: skip
        return None
    out: dict[str, tuple[object, ...]] = {}
    for key, value in raw.items():
        path: Path = (where, str(key))
        if key not in _PATTERN_KEYS:
            close = difflib.get_close_matches(str(key), _PATTERN_KEYS, n=1, cutoff=0.6)
            hint = f", did you mean {close[0]!r}?" if close else ""
            problems.append((path, f"unknown key {str(key)!r}{hint} (a schedule takes hours, "
                             "minutes, week_days and month_days)"))  # fmt: skip
            continue
        if key == "week_days" and frequency == "day":
            problems.append((path, "week_days go with frequency week or month, not day"))
            continue
        if key == "month_days" and frequency in ("day", "week"):
            problems.append((path, f"month_days go with frequency month, not {frequency}"))
            continue
        checked = _days(value, path, problems) if key == "week_days" else _numbers(
            value, key, path, problems)  # fmt: skip
        if checked is not None:
            out[str(key)] = checked
    for key in ("hours", "minutes"):
        if key not in raw:
            problems.append(((where, key), "required (a v2 schedule gives both hours and "
                             "minutes)"))  # fmt: skip
    return out


def _items(value: object) -> list[object]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _numbers(
    value: object, key: str, path: Path, problems: list[Problem]
) -> tuple[object, ...] | None:
    low, high = _RANGES[key]
    ok: list[object] = []
    scalar = not isinstance(value, list | tuple)
    for i, item in enumerate(_items(value)):
        where = path if scalar else (*path, i)
        if isinstance(item, bool) or not isinstance(item, int):
            problems.append((where, f"expected an integer {low}-{high}, got {_show(item)}"))
        elif not low <= item <= high:
            problems.append((where, f"must be between {low} and {high}, got {item}"))
        else:
            ok.append(item)
    return tuple(ok) if len(ok) == len(_items(value)) else None


def _days(value: object, path: Path, problems: list[Problem]) -> tuple[object, ...] | None:
    ok: list[object] = []
    scalar = not isinstance(value, list | tuple)
    for i, item in enumerate(_items(value)):
        where = path if scalar else (*path, i)
        if isinstance(item, str) and item.lower() in _DAYS:
            ok.append(item.lower())
        else:
            problems.append((where, f"invalid week day {_show(item)}, expected one of "
                             f"{', '.join(_DAYS)} (any case)"))  # fmt: skip
    return tuple(ok) if len(ok) == len(_items(value)) else None


# ── cron ──────────────────────────────────────────────────────────────────────


def _cron(
    table: Mapping[str, object],
    problems: list[Problem],
    given: dict[str, object],
    start: tuple[datetime] | None,
    end: tuple[datetime] | None,
) -> CronRule | None:
    if "expression" not in table:
        problems.append((("expression",), "required"))
        return None
    try:
        rule = make_cron(
            table["expression"],
            table.get("time_zone"),
            start[0] if start else None,
            end[0] if end else None,
        )
    except ValidationError as exc:
        if exc.key in ("", "cron", "expression"):
            problems.append((("expression",), exc.message))
        return None  # zone and time problems are reported by their own checks
    given["expression"] = rule.expression
    return replace(rule, v2=True)


# ── helpers ───────────────────────────────────────────────────────────────────


def _show(value: object) -> str:
    """A value of the wrong type or range as users wrote it, short."""
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, dict | Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    if value is None:
        return "null"
    name = {str: "string", int: "integer"}.get(type(value), type(value).__name__)
    return f"{name} {repr(value)[:80]}"


def _dotted(path: Path) -> str:
    out = ""
    for part in path:
        out = f"{out}[{part}]" if isinstance(part, int) else (f"{out}.{part}" if out else part)
    return out
