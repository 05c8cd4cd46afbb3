"""The shared pool of the local pollers' blocking calls: bounded, and not starved by a few
calls stuck on a dead mount."""

from __future__ import annotations

import asyncio
import threading

import pytest

from watcherd.pollers import fspool


async def test_many_calls_at_once_share_a_bounded_pool() -> None:
    names: set[str] = set()
    before = fspool.pool_threads()

    def work(i: int) -> int:
        names.add(threading.current_thread().name)
        return i * 2

    results = await asyncio.gather(*(fspool.off_loop(work, i) for i in range(500)))
    assert results == [i * 2 for i in range(500)]
    assert names == {"watcherd-fs"}
    assert fspool.pool_threads() <= max(before, fspool.SIZE)


async def test_an_exception_reaches_the_caller() -> None:
    def fail() -> None:
        raise FileNotFoundError(2, "gone")

    with pytest.raises(FileNotFoundError):
        await fspool.off_loop(fail)


async def test_calls_stuck_on_a_dead_mount_do_not_starve_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fspool, "STUCK_AFTER", 0.05)
    release = threading.Event()
    stuck = [fspool.off_loop(release.wait, 30) for _ in range(fspool.pool_threads() + 4)]
    try:
        async with asyncio.timeout(10):
            while True:  # every worker busy for longer than STUCK_AFTER: one more is started
                fut = fspool.off_loop(lambda: "ok")
                done, _ = await asyncio.wait({fut}, timeout=1.2)
                if done:
                    break
        assert fut.result() == "ok"
        assert fspool.pool_threads() <= fspool.HARD_LIMIT
    finally:
        release.set()
        await asyncio.gather(*stuck)
    async with asyncio.timeout(5):  # the added workers leave once idle
        while fspool.pool_threads() > fspool.SIZE:  # noqa: ASYNC110  (threads, no event)
            await asyncio.sleep(0.01)
