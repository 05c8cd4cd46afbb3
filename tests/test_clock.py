"""SystemClock's deadline sleeps on the real clock: a `precise` one returns at its instant,
not up to a millisecond after it (epoll counts whole milliseconds, rounded up), never before
it, and a wake-up still ends it at once."""

from __future__ import annotations

import asyncio
import statistics
import time
from datetime import UTC, datetime, timedelta

from watcherd.engine.clock import PRECISE_LAST, SystemClock


async def _late(clock: SystemClock, *, precise: bool, ms: int) -> float:
    """Seconds after its deadline that one sleep_until returned. The deadline lies 0.05 ms
    past a whole number of milliseconds from now: a plain sleep's epoll timeout rounds that
    up to the next millisecond, ~0.95 ms late."""
    deadline = datetime.now(UTC) + timedelta(milliseconds=ms, microseconds=50)
    assert await clock.sleep_until(deadline, asyncio.Event(), precise=precise) is False
    return time.time() - deadline.timestamp()


async def test_a_precise_sleep_returns_at_its_instant_and_never_before_it() -> None:
    """Interleaved with plain sleeps, so that both meet the same load (a busy CI machine
    delays both): the precise ones are never early, and well ahead of the plain ones."""
    clock = SystemClock()
    precise, plain = [], []
    for i in range(15):
        precise.append(await _late(clock, precise=True, ms=3 + i % 3))
        plain.append(await _late(clock, precise=False, ms=3 + i % 3))
    assert min(precise) >= 0 and min(plain) >= 0, (precise, plain)  # nothing before it
    assert statistics.median(precise) + 0.0004 < statistics.median(plain), (precise, plain)


class _Frozen(SystemClock):
    """Real sleeps, a fixed reading: always in the last stretch before `deadline`."""

    def __init__(self, now: datetime) -> None:
        self._now = now

    def now(self) -> datetime:
        return self._now


async def test_a_wake_up_ends_a_precise_sleep_in_its_last_stretch_or_before_it() -> None:
    deadline = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    clock, wake = _Frozen(deadline - timedelta(seconds=PRECISE_LAST / 2)), asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, wake.set)
    async with asyncio.timeout(5):  # it yields, and returns once woken
        assert await clock.sleep_until(deadline, wake, precise=True) is True
    clock, wake = _Frozen(deadline - timedelta(seconds=30)), asyncio.Event()  # the plain part
    asyncio.get_running_loop().call_later(0.01, wake.set)
    async with asyncio.timeout(5):
        assert await clock.sleep_until(deadline, wake, precise=True) is True
