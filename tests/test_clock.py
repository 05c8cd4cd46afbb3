"""SystemClock's deadline sleeps on the real clock: a `precise` one returns at its instant,
not up to a millisecond after it (epoll counts whole milliseconds, rounded up), never before
it, and a wake-up still ends it at once."""

from __future__ import annotations

import asyncio
import statistics
import time
from datetime import UTC, datetime, timedelta

from watcherd.engine.clock import PRECISE_LAST, SystemClock


async def _lateness(clock: SystemClock, *, precise: bool, rounds: int = 15) -> list[float]:
    """Seconds after each deadline that sleep_until returned. Each deadline lies 0.05 ms
    past a whole number of milliseconds from now: a plain sleep's epoll timeout rounds
    that up to the next millisecond, ~0.95 ms late."""
    late = []
    for i in range(rounds):
        deadline = datetime.now(UTC) + timedelta(milliseconds=3 + i % 3, microseconds=50)
        assert await clock.sleep_until(deadline, asyncio.Event(), precise=precise) is False
        late.append(time.time() - deadline.timestamp())
    return late


async def test_a_precise_sleep_returns_at_its_instant_and_never_before_it() -> None:
    late = await _lateness(SystemClock(), precise=True)
    assert min(late) >= 0, late  # nothing before its instant
    assert statistics.median(late) < 0.0004, late  # a plain sleep: ~0.95 ms here


async def test_a_wake_up_ends_a_precise_sleep_in_its_last_stretch() -> None:
    clock, wake = SystemClock(), asyncio.Event()
    deadline = datetime.now(UTC) + timedelta(seconds=PRECISE_LAST / 2)  # only the last stretch
    asyncio.get_running_loop().call_soon(wake.set)
    assert await clock.sleep_until(deadline, wake, precise=True) is True
    assert datetime.now(UTC) < deadline + timedelta(seconds=0.05)
    far = datetime.now(UTC) + timedelta(seconds=30)  # and before it, in the plain part
    wake.clear()
    asyncio.get_running_loop().call_later(0.01, wake.set)
    started = time.monotonic()
    assert await clock.sleep_until(far, wake, precise=True) is True
    assert time.monotonic() - started < 5


async def test_a_plain_sleep_is_unchanged() -> None:
    late = await _lateness(SystemClock(), precise=False, rounds=5)
    assert min(late) >= 0, late
