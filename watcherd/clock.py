"""The clock seam: the engine reads time and sleeps only through a Clock."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Protocol

__all__ = ["MAX_WAIT", "Clock", "SystemClock"]

# A single wait is capped so a wall-clock jump (suspend, NTP step) is noticed within a minute;
# the caller recomputes its deadline, it does not tick.
MAX_WAIT = 60.0


class Clock(Protocol):
    """Aware-UTC time and deadline sleeps."""

    def now(self) -> datetime:
        """The current instant, aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a monotonic clock (durations only)."""
        ...

    async def sleep_until(self, deadline: datetime, wake: asyncio.Event | None = None) -> bool:
        """Sleep until `deadline` (wall clock) or until `wake` is set; True if woken.

        Returns False when the deadline passed. `wake` is not cleared.
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

    async def sleep_until(self, deadline: datetime, wake: asyncio.Event | None = None) -> bool:
        while True:
            remaining = (deadline - self.now()).total_seconds()
            if remaining <= 0:
                return False
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
        await asyncio.sleep(max(0.0, seconds))
