"""`retry.persist` and the store's health: a write retried through a store outage; the store
is healthy again (`/readyz`, the "recovered" line) only when no write is failing any more,
not when one small write gets through while a big one still fails (a disk nearly full)."""

from __future__ import annotations

import asyncio

import pytest
import structlog

from tests.clocks import ManualClock
from watcherd.core.errors import StateError
from watcherd.engine.retry import StoreHealth, persist


class _Write:
    """A write that fails until `ok` is set."""

    def __init__(self) -> None:
        self.ok = False
        self.tries = 0

    async def __call__(self) -> str:
        self.tries += 1
        if not self.ok:
            raise StateError("database or disk is full")
        return "done"


async def _until(pred: object, clock: ManualClock) -> None:
    async with asyncio.timeout(5):
        while not pred():  # type: ignore[operator]
            clock.advance(seconds=1)
            await asyncio.sleep(0)


async def test_recovered_only_when_no_write_is_failing_any_more() -> None:
    clock, health = ManualClock(), StoreHealth()
    big, small = _Write(), _Write()
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(persist(big, clock=clock, health=health, what="run log"))
        await _until(lambda: big.tries >= 2, clock)
        assert health.error == "database or disk is full" and health.failing == 1
        small.ok = True  # a small write fits: the big one still fails
        assert await persist(small, clock=clock, health=health, what="slots") == "done"
        assert health.error is not None  # still unhealthy: /readyz stays 503
        big.ok = True
        await _until(task.done, clock)
        assert task.result() == "done"
    assert health.error is None and health.failing == 0 and health.failed_writes == 0
    events = [e["event"] for e in logs]
    assert events.count("state_write_failed") == 1
    assert events.count("state_write_recovered") == 1
    assert events.index("state_write_recovered") == len(events) - 1


async def test_a_write_cancelled_while_retrying_is_no_recovery() -> None:
    clock, health = ManualClock(), StoreHealth()
    stuck = _Write()
    task = asyncio.create_task(persist(stuck, clock=clock, health=health, what="requeue"))
    await _until(lambda: stuck.tries >= 1, clock)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert health.failing == 0 and health.error is not None  # not known to be fine
    ok = _Write()
    ok.ok = True
    await persist(ok, clock=clock, health=health, what="slots")  # the next one that works
    assert health.error is None
