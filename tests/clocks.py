"""ManualClock: a Clock whose time moves only when a test calls advance()."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta


class ManualClock:
    """Implements engine.clock.Clock; sleepers wake when advance() passes their deadline."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
        self._mono = 1000.0
        self._changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop _changed belongs to
        self.sleepers = 0  # sleep_until calls in progress

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def set(self, when: datetime) -> None:
        delta = (when - self._now).total_seconds()
        self._now = when
        self._mono += max(0.0, delta)
        self._changed.set()
        self._changed = asyncio.Event()

    def advance(self, seconds: float = 0.0, **kw: float) -> datetime:
        self.set(self._now + timedelta(seconds=seconds, **kw))
        return self._now

    async def sleep_until(
        self, deadline: datetime, wake: asyncio.Event | None = None, *, precise: bool = False
    ) -> bool:
        self.sleepers += 1
        try:
            return await self._sleep_until(deadline, wake)
        finally:
            self.sleepers -= 1

    def _changed_here(self) -> asyncio.Event:
        """`_changed`, for the running loop: a clock outliving one asyncio.run() (a test
        starting an engine per step) must not hand the next loop an Event bound to the
        last one, whose wait() fails at once and would make every sleeper spin."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._changed = loop, asyncio.Event()
        return self._changed

    async def _sleep_until(self, deadline: datetime, wake: asyncio.Event | None) -> bool:
        while self._now < deadline:
            if wake is not None and wake.is_set():
                return True
            changed = asyncio.ensure_future(self._changed_here().wait())
            waits: set[asyncio.Future[object]] = {changed}  # type: ignore[arg-type]
            if wake is not None:
                waits.add(asyncio.ensure_future(wake.wait()))  # type: ignore[arg-type]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
        return False

    async def sleep(self, seconds: float) -> None:
        await self.sleep_until(self._now + timedelta(seconds=seconds))
