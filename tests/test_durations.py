"""Durations, sizes and polling intervals as the config file writes them."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watcherd.core.durations import (
    format_duration,
    format_size,
    parse_duration,
    parse_polling_interval,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0s", timedelta(0)),
        ("250ms", timedelta(milliseconds=250)),
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("2h", timedelta(hours=2)),
        ("30d", timedelta(days=30)),
        ("90s", timedelta(seconds=90)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "5", "s", "1.5s", "-1s", "5 s", " 5s", "5S", "5min", "1w"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_parse_duration_rejects_non_strings_and_overflow() -> None:
    with pytest.raises(ValueError, match="expected a duration string"):
        parse_duration(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="longer than the maximum 36524d"):
        parse_duration("99999999999999d")
    with pytest.raises(ValueError, match="longer than the maximum 36524d"):
        parse_duration("36525d")
    assert parse_duration("36524d") == timedelta(days=36524)
    assert parse_duration(f"{36524 * 86400 * 1000}ms") == timedelta(days=36524)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (timedelta(0), "0s"),
        (timedelta(seconds=30), "30s"),
        (timedelta(hours=2), "2h"),
        (timedelta(minutes=5), "5m"),
        (timedelta(seconds=90), "90s"),
        (timedelta(days=1), "1d"),
        (timedelta(hours=36), "36h"),
        (timedelta(milliseconds=1500), "1500ms"),
    ],
)
def test_format_duration_shortest_exact(value: timedelta, expected: str) -> None:
    assert format_duration(value) == expected
    assert parse_duration(expected) == value


def test_format_duration_rejects_what_cannot_be_written() -> None:
    with pytest.raises(ValueError):
        format_duration(timedelta(microseconds=5))
    with pytest.raises(ValueError):
        format_duration(timedelta(seconds=-1))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0B", 0), ("512B", 512), ("1KiB", 1024), ("1MiB", 1 << 20), ("2GiB", 2 << 30)],
)
def test_sizes(text: str, expected: int) -> None:
    assert parse_size(text) == expected
    assert parse_size(format_size(expected)) == expected


@pytest.mark.parametrize("text", ["1", "1KB", "1kib", "1.5MiB", "MiB", "-1B"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


def test_format_size() -> None:
    assert format_size(1 << 20) == "1MiB"
    assert format_size(1536) == "1536B"
    assert format_size(0) == "0B"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (5, timedelta(minutes=5)),
        (1, timedelta(minutes=1)),
        (0.5, timedelta(seconds=30)),
        ("30s", timedelta(seconds=30)),
        ("1s", timedelta(seconds=1)),
        ("2h", timedelta(hours=2)),
    ],
)
def test_polling_interval(value: object, expected: timedelta) -> None:
    assert parse_polling_interval(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "shorter than 1s"),
        (0.001, "shorter than 1s"),
        (-5, "shorter than 1s"),
        ("500ms", "shorter than 1s"),
        ("5", "invalid duration"),
        (True, "expected a number of minutes"),
        (None, "expected a number of minutes"),
        (float("nan"), "invalid polling interval"),
        (1e300, "longer than the maximum 36524d"),
        (36524 * 1440 + 1, "longer than the maximum 36524d"),
    ],
)
def test_polling_interval_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_polling_interval(value)


@given(st.integers(min_value=0, max_value=10**12))
def test_format_then_parse_is_exact(ms: int) -> None:
    value = timedelta(milliseconds=ms)
    text = format_duration(value)
    assert parse_duration(text) == value
    assert len(text) <= len(f"{ms}ms")
