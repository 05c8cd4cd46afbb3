"""The one way watcherd writes UTC instants as text, and reads them back."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import overload

from watcherd.core.memo import once_each

__all__ = ["format_utc", "parse_utc", "utc_texts", "utc_values"]


@overload
def format_utc(value: datetime, *, micro: bool = False) -> str: ...
@overload
def format_utc(value: None, *, micro: bool = False) -> None: ...


def format_utc(value: datetime | None, *, micro: bool = False) -> str | None:
    """`2026-11-25T10:15:00Z` (API, logs, env, bodies); with `micro`, the sortable form
    `2026-11-25T10:15:00.000000Z` kept in the state store. None stays None."""
    if value is None:
        return None
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    # isoformat, not strftime: half the cost (every run and schedule row is formatted), and
    # years below 1000 keep their four digits; an aware UTC value ends in "+00:00".
    return value.isoformat(timespec="microseconds" if micro else "seconds")[:-6] + "Z"


def parse_utc(text: str | None) -> datetime | None:
    """Any ISO 8601 instant with an offset or `Z`, as aware UTC; None or "" gives None."""
    if not text:
        return None
    if text[-1] == "Z":  # our own form (every stored instant): already UTC, read in one call
        return datetime.fromisoformat(text)
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def utc_texts() -> Callable[[datetime | None], str | None]:
    """`format_utc(value, micro=True)` for one batch of rows, each instant formatted once: the
    rows a start writes share a few (its `now`, the anchors of shared rules)."""
    return once_each(_stored_text)


def _stored_text(value: datetime | None) -> str | None:
    return None if value is None else format_utc(value, micro=True)


def utc_values() -> Callable[[str | None], datetime | None]:
    """`parse_utc` for one batch of rows read, each text parsed once (10k schedule rows share
    a few creation instants, anchors and cursors)."""
    return once_each(parse_utc)
