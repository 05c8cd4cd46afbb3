"""engine.arming: a disarmed poller ends even when one cancellation is lost."""

from __future__ import annotations

import asyncio

import pytest

from watcherd.engine import arming


async def test_a_poller_that_loses_a_cancellation_is_cancelled_again() -> None:
    caught = 0

    async def stubborn() -> None:  # what a cancel dropped inside asyncio.wait_for looks like
        nonlocal caught
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                caught += 1
                if caught == 1:
                    continue
                raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    arming._cancel_until_done(task)
    async with asyncio.timeout(arming.RECANCEL * 5):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert caught == 2


async def test_a_finished_poller_is_left_alone() -> None:
    async def done() -> None:
        return None

    task = asyncio.create_task(done())
    await task
    arming._cancel_until_done(task)  # no error, nothing scheduled that could fail later
    assert not task.cancelled()
