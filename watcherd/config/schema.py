"""The table-driven checking shared by config sections: key paths, key tables, small converters.

A converter takes `(value, at)` and returns the converted value, or raises `Invalid(reason)`
for a problem with the value itself. A converter that checks nested values reports each
problem at its own key path through `at` and then raises `Invalid(None)` ("already
reported"). `read_table` runs the converters of one table and collects every problem.

The converters check the size limits of their keys (`config.limits`, issue #11 item 19).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from watcherd.config.limits import ENTRIES_MAX, NAME_MAX, PATH_MAX, key_join
from watcherd.core.durations import parse_duration, parse_size
from watcherd.core.errors import ConfigError, ValidationError
from watcherd.core.redact import lenient_credentials, redact_url
from watcherd.core.wallclock import parse_local_datetime

__all__ = [
    "At",
    "Converter",
    "EnvStr",
    "Field",
    "Invalid",
    "Problems",
    "a_type",
    "as_bool",
    "as_choice",
    "as_duration",
    "as_int",
    "as_name",
    "as_path",
    "as_secret",
    "as_size",
    "as_str",
    "as_str_list",
    "as_str_map",
    "as_text",
    "as_wall_time",
    "describe",
    "did_you_mean",
    "key_join",
    "read_table",
    "type_name",
    "unknown_key",
]

_TRUE = {"true": True, "false": False}


class EnvStr(str):
    """A string value that was exactly one `${…}` reference before substitution; numeric,
    boolean and duration keys convert it (SPEC §2)."""

    __slots__ = ()


class Invalid(Exception):
    """A value refused by a converter; `reason` None means "already reported" (nested)."""

    def __init__(self, reason: str | None) -> None:
        super().__init__(reason or "")
        self.reason = reason


@dataclass
class Problems:
    """Every ConfigError found so far, in order."""

    errors: list[ConfigError] = field(default_factory=list)

    def add(self, key_path: str, reason: str) -> None:
        self.errors.append(ConfigError(key_path, reason))

    def __bool__(self) -> bool:
        return bool(self.errors)


class At:
    """Where a converter is: a key path and the collector to report nested problems to.

    The path text is built only when asked for (a problem to report): a config of 10k
    schedules descends into ~100k places and reports none (issue #14)."""

    __slots__ = ("_key", "_parent", "_path", "problems")

    def __init__(self, path: str, problems: Problems) -> None:
        self._path: str | None = path
        self._parent: At | None = None
        self._key: str | int = ""
        self.problems = problems

    @property
    def path(self) -> str:
        if self._path is None:
            assert self._parent is not None
            self._path = key_join(self._parent.path, self._key)
        return self._path

    def __truediv__(self, key: str | int) -> At:
        child = At.__new__(At)
        child._path, child._parent, child._key, child.problems = None, self, key, self.problems
        return child

    def __eq__(self, other: object) -> bool:
        return isinstance(other, At) and (self.path, self.problems) == (other.path, other.problems)

    def __hash__(self) -> int:
        return hash(self.path)

    def __repr__(self) -> str:
        return f"At({self.path!r})"

    def error(self, reason: str) -> None:
        self.problems.add(self.path, reason)


Converter = Callable[[object, At], Any]


@dataclass(frozen=True)
class Field:
    """One key of a table: its converter and whether it is required. `flat`: the converter
    reports nothing through its `at` (it raises Invalid, reported at the key), so it is
    handed the table's own and no key path is built for it (10 keys × 10k schedules)."""

    convert: Converter
    required: bool = False
    flat: bool = False


def read_table(
    raw: object,
    at: At,
    fields: Mapping[str, Field],
    *,
    foreign: Mapping[str, str] | None = None,
    skip: Iterable[str] = (),
) -> dict[str, Any] | None:
    """Convert the keys of one table, reporting every problem; None if `raw` is not a table.

    Unknown keys are errors ("did you mean …" when close); `foreign` gives the reason for a
    key that belongs to another kind; keys in `skip` are left to the caller. The result holds
    only the keys that converted cleanly.
    """
    if type(raw) is not dict and not isinstance(raw, Mapping):  # a dict: no ABC check
        at.error(f"expected a table, got {describe(raw)}")
        return None
    skipped = set(skip)
    foreign = foreign or {}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in skipped:
            continue
        spec = fields.get(key)
        if spec is None:
            reason = foreign.get(key) or unknown_key(key, [*fields, *foreign, *skipped])
            (at / key).error(reason)
            continue
        try:
            out[key] = spec.convert(value, at if spec.flat else at / key)
        except Invalid as exc:
            if exc.reason is not None:
                (at / key).error(exc.reason)
    for key, spec in fields.items():
        if spec.required and key not in raw and key not in skipped:
            (at / key).error("required")
    return out


def unknown_key(key: str, known: Iterable[str]) -> str:
    """`unknown key 'recurence', did you mean 'recurrence'?`."""
    return f"unknown key {key!r}{did_you_mean(key, known)}"


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`, did you mean 'x'?` for the closest candidate, or "" when none is close."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f", did you mean {close[0]!r}?" if close else ""


_TYPE_NAMES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),
    (int, "integer"),
    (float, "float"),
    (str, "string"),
    (datetime, "date-time"),
    (date, "date"),
    (time, "time"),
    (list, "array"),
    (dict, "table"),
)


def type_name(value: object) -> str:
    for typ, name in _TYPE_NAMES:
        if isinstance(value, typ):
            return name
    return type(value).__name__


def a_type(value: object) -> str:
    """The value's type with an article, never the value: `an integer`, `a table`."""
    name = type_name(value)
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def describe(value: object) -> str:
    """A value of the wrong type as users wrote it: `integer 5`, `string 'x'`, `a table`."""
    if isinstance(value, (dict, list)):
        return a_type(value)
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    return f"{type_name(value)} {value!r}"


# ── converters ────────────────────────────────────────────────────────────────


def as_str(value: object, at: At) -> str:
    if not isinstance(value, str):
        raise Invalid(f"expected a string, got {describe(value)}")
    return str(value)  # drop the EnvStr subclass


def _limit(text: str, most: int) -> str:
    if len(text) > most:
        raise Invalid(f"longer than {most} characters ({len(text)})")
    return text


def as_text(most: int, *, empty: bool = True) -> Callable[[object, At], str]:
    """A string of at most `most` characters (non-empty unless `empty`)."""

    def convert(value: object, at: At) -> str:
        text = _limit(as_str(value, at), most)
        if not text and not empty:
            raise Invalid("must not be empty")
        return text

    return convert


def as_name(value: object, at: At) -> str:
    """A non-empty string of at most NAME_MAX characters."""
    text = _limit(as_str(value, at), NAME_MAX)
    if not text:
        raise Invalid("must not be empty")
    return text


def as_secret(value: object, at: At) -> str:
    """A string whose value must never be echoed."""
    if not isinstance(value, str):
        raise Invalid(f"expected a string, got {a_type(value)}")
    return str(value)


def as_bool(value: object, at: At) -> bool:
    if isinstance(value, bool):
        return value
    if _is_env(value) and str(value).lower() in _TRUE:
        return _TRUE[str(value).lower()]
    raise Invalid(f"expected true or false, got {describe(value)}")


def as_int(minimum: int | None = None, maximum: int | None = None) -> Converter:
    """An integer within [minimum, maximum]; an exact `${…}` value is converted."""

    def convert(value: object, at: At) -> int:
        if _is_env(value):
            try:
                value = int(str(value))
            except ValueError:
                raise Invalid(f"expected an integer, got {str(value)!r}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"expected an integer, got {describe(value)}")
        if minimum is not None and value < minimum:
            raise Invalid(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise Invalid(f"must be at most {maximum}, got {value}")
        return value

    return convert


def as_choice(*choices: str) -> Converter:
    """One of `choices` (case-sensitive)."""

    def convert(value: object, at: At) -> str:
        if not isinstance(value, str) or value not in choices:
            shown = repr(value) if isinstance(value, str) else describe(value)
            raise Invalid(f"invalid value {shown}, expected one of {', '.join(choices)}")
        return str(value)

    return convert


def as_duration(minimum: timedelta = timedelta(0), *, positive: bool = False) -> Converter:
    """A duration string (`"30s"`), at least `minimum`, and non-zero when `positive`."""

    def convert(value: object, at: At) -> timedelta:
        try:
            result = parse_duration(value)  # type: ignore[arg-type]  # checked inside
        except ValueError as exc:
            raise Invalid(str(exc)) from None
        if result < minimum or (positive and not result):
            raise Invalid(f"duration {value!r} must be {'more than 0' if positive else 'longer'}")
        return result

    return convert


def as_size(value: object, at: At) -> int:
    try:
        return parse_size(value)  # type: ignore[arg-type]  # checked inside
    except ValueError as exc:
        raise Invalid(str(exc)) from None


_as_path_text = as_text(PATH_MAX, empty=False)


def as_path(base_dir: Path) -> Converter:
    """A non-empty path string; relative paths resolve against `base_dir` (no `~` expansion)."""

    def convert(value: object, at: At) -> Path:
        return base_dir / _as_path_text(value, at)

    return convert


def as_str_list(
    item: Converter = as_name, *, allow_str: bool = False, most: int = ENTRIES_MAX
) -> Converter:
    """An array of at most `most` strings (each checked by `item`), or a single string when
    `allow_str`."""

    def convert(value: object, at: At) -> tuple[Any, ...]:
        if allow_str and isinstance(value, str):
            return (item(value, at),)
        if not isinstance(value, list):
            want = "a string or an array of strings" if allow_str else "an array of strings"
            raise Invalid(f"expected {want}, got {describe(value)}")
        if len(value) > most:
            raise Invalid(f"more than {most} entries ({len(value)})")
        return _each(value, at, item)

    return convert


def _each(values: list[object], at: At, item: Converter) -> tuple[Any, ...]:
    out: list[Any] = []
    failed = False
    for i, v in enumerate(values):
        try:
            out.append(item(v, at / i))
        except Invalid as exc:
            failed = True
            if exc.reason is not None:
                (at / i).error(exc.reason)
    if failed:
        raise Invalid(None)
    return tuple(out)


def as_str_map(*, secret: bool = False) -> Converter:
    """A table of string values (`secret`: values are never echoed in errors)."""

    def convert(value: object, at: At) -> dict[str, str]:
        if not isinstance(value, Mapping):
            raise Invalid(f"expected a table of strings, got {describe(value)}")
        if len(value) > ENTRIES_MAX:
            raise Invalid(f"more than {ENTRIES_MAX} entries ({len(value)})")
        out: dict[str, str] = {}
        failed = False
        for k, v in value.items():
            if isinstance(v, str):
                out[str(k)] = str(v)
                continue
            failed = True
            hint = "" if secret or isinstance(v, (dict, list)) else f' (write "{_plain(v)}")'
            shown = a_type(v) if secret else describe(v)
            (at / k).error(f"expected a string, got {shown}{hint}")
        if failed:
            raise Invalid(None)
        return out

    return convert


def as_wall_time(key: str) -> Converter:
    """A wall time `YYYY-MM-DDThh:mm[:ss]` string or TOML local date-time; never an offset."""

    def convert(value: object, at: At) -> datetime:
        try:
            return parse_local_datetime(value, key)
        except ValidationError as exc:
            raise Invalid(exc.message) from None

    return convert


def _is_env(value: object) -> bool:
    return isinstance(value, EnvStr)


def _plain(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def url_problem(text: str, schemes: tuple[str, ...], expected: str | None = None) -> str | None:
    """Why `text` is not a URL of one of `schemes` a request can be sent to, or None. The URL
    is quoted with its credentials masked (SPEC §8), also when it does not parse. `expected`:
    what the message says is expected (default: the schemes)."""
    shown = redact_url(text)[:200]
    try:
        parts = urlsplit(text)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in schemes or not parts.netloc:
        return f"invalid URL {shown!r}: expected {expected or ' or '.join(schemes) + '://…'}"
    lenient = lenient_credentials(text)
    written = text[lenient[0] : lenient[1]] if lenient is not None else ""
    if written != parts.netloc.rpartition("@")[0]:
        return (
            f"invalid URL {shown!r}: its user name or password holds a character that must be "
            "percent-encoded there ('#' %23, '/' %2F, '?' %3F, '@' %40, '[' %5B)"
        )
    try:
        parts.port  # noqa: B018  # parses the port; ValueError when it is bad
    except ValueError:
        return f"invalid URL {shown!r}: bad port"
    return None
