"""The clock seam: the engine reads time and sleeps only through a Clock."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = ["MAX_WAIT", "PRECISE_LAST", "Clock", "ScaledClock", "SystemClock", "clock_from_env"]

# A single wait is capped so a wall-clock jump (suspend, NTP step) is noticed within a minute;
# the caller recomputes its deadline, it does not tick.
MAX_WAIT = 60.0
# The last stretch of a `precise` sleep, spent yielding to the loop rather than in epoll,
# whose timeout counts whole milliseconds, rounded up: a timer woke 0-1 ms late (0.7 ms at
# p50 with 1,000 Minute schedules, a quarter of a slot's lateness). So a precise sleep keeps
# the loop busy (other tasks running meanwhile) for at most this long before its deadline.
PRECISE_LAST = 0.0015


class Clock(Protocol):
    """Aware-UTC time and deadline sleeps."""

    def now(self) -> datetime:
        """The current instant, aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a monotonic clock (durations only)."""
        ...

    async def sleep_until(
        self, deadline: datetime, wake: asyncio.Event | None = None, *, precise: bool = False
    ) -> bool:
        """Sleep until `deadline` (wall clock) or until `wake` is set; True if woken.

        Returns False when the deadline passed. `wake` is not cleared. `precise`: return as
        close after the deadline as the loop allows (a timer's instant), not up to a
        millisecond after it.
        """
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep for a duration (backoff, poll cadence)."""
        ...


class SystemClock:
    """The real clock; waits are capped at MAX_WAIT and recomputed against the wall clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def _real_seconds(self, seconds: float) -> float:
        """How long `seconds` of this clock's time last on the real one."""
        return seconds

    async def sleep_until(
        self, deadline: datetime, wake: asyncio.Event | None = None, *, precise: bool = False
    ) -> bool:
        while True:
            remaining = self._real_seconds((deadline - self.now()).total_seconds())
            if remaining <= 0:
                return False
            if precise:
                if remaining <= PRECISE_LAST:  # yield until then: other tasks run meanwhile
                    await asyncio.sleep(0)
                    if wake is not None and wake.is_set():
                        return True
                    continue
                remaining -= PRECISE_LAST
            step = min(remaining, MAX_WAIT)
            if wake is None:
                await asyncio.sleep(step)
                continue
            if wake.is_set():
                return True
            try:
                async with asyncio.timeout(step):
                    await wake.wait()
                return True
            except TimeoutError:
                continue

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, self._real_seconds(seconds)))


class ScaledClock(SystemClock):
    """A clock running `speed` times faster than the real one from a chosen origin.

    A test hook for end-to-end tests of a daemon subprocess (`$WATCHERD_TEST_CLOCK`), so a
    test can watch hours of Minute slots in seconds; restarts with the same origin continue
    the same timeline.
    """

    def __init__(self, origin_real: float, origin: datetime, speed: float) -> None:
        self.origin_real = origin_real
        self.origin = origin
        self.speed = speed

    @classmethod
    def from_env(cls, value: str) -> ScaledClock:
        """Parse `<unix seconds>|<ISO instant>|<speed>`."""
        real, origin, speed = value.split("|")
        return cls(float(real), datetime.fromisoformat(origin).astimezone(UTC), float(speed))

    def monotonic(self) -> float:
        return time.monotonic() * self.speed

    def now(self) -> datetime:
        return self.origin + timedelta(seconds=(time.time() - self.origin_real) * self.speed)

    def _real_seconds(self, seconds: float) -> float:
        return seconds / self.speed


def clock_from_env(env: dict[str, str] | None = None) -> Clock:
    """The system clock, or a ScaledClock when `$WATCHERD_TEST_CLOCK` is set (tests only)."""
    value = (env if env is not None else os.environ).get("WATCHERD_TEST_CLOCK")
    return ScaledClock.from_env(value) if value else SystemClock()
