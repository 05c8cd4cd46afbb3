"""A run backing off between attempts lends its slot of `max_concurrent_runs` (the daemon keeps
serving every other schedule while one target is down), then takes one back before any queued
run starts: `engine.capacity` alone, then a real engine (SQLite, ManualClock, real commands)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.clocks import ManualClock
from tests.engine_helpers import eventually, running_engine
from watcherd.core.models import RunStatus
from watcherd.engine.capacity import Capacity


def _capacity(size: int) -> tuple[Capacity, list[int]]:
    woken: list[int] = []
    cap = Capacity(size, lambda: woken.append(1))
    return cap, woken


async def test_a_lent_slot_is_free_for_a_queued_run_and_taken_back_in_order() -> None:
    cap, woken = _capacity(2)
    cap.take("a")
    cap.take("b")
    assert cap.free == 0
    cap.lend("a")  # a backs off
    assert cap.free == 1 and woken
    cap.take("c")  # a queued run takes the slot
    cap.lend("b")  # b backs off too
    cap.take("d")
    back_a = asyncio.create_task(cap.take_back("a"))
    back_b = asyncio.create_task(cap.take_back("b"))
    await asyncio.sleep(0)
    assert not back_a.done() and not back_b.done()
    assert cap.free == 0
    cap.release("c")
    assert cap.free == 0  # a queued run may not jump ahead of the runs waiting for a slot
    await asyncio.sleep(0)
    assert back_a.done() and not back_b.done()  # the first backoff to end goes first
    cap.release("d")
    await asyncio.sleep(0)
    assert back_b.done()
    woken.clear()
    cap.release("a")
    assert cap.free == 1 and woken


async def test_at_most_size_runs_lend_their_slot_at_once() -> None:
    """A flood of failing runs never makes more than twice `size` Running: beyond `size`
    lent slots, a run backing off keeps its own (and takes it back at once)."""
    cap, _ = _capacity(1)
    cap.take("a")
    cap.lend("a")
    cap.take("b")
    cap.lend("b")  # a lent already: b keeps its slot
    assert cap.free == 0
    async with asyncio.timeout(1):
        await cap.take_back("b")
    cap.release("b")
    assert cap.free == 1
    async with asyncio.timeout(1):
        await cap.take_back("a")
    assert cap.free == 0


async def test_a_run_cancelled_while_waiting_for_its_slot_gives_its_place_up() -> None:
    cap, _ = _capacity(2)
    cap.take("a")
    cap.take("b")
    cap.size = 1  # lowered by a reload: both run on
    cap.lend("a")
    waiting = asyncio.create_task(cap.take_back("a"))
    await asyncio.sleep(0)
    waiting.cancel()
    cap.release("b")  # grants nothing to a cancelled waiter
    assert cap.free == 1
    with pytest.raises(asyncio.CancelledError):
        await waiting
    cap.release("a")
    assert cap.free == 1
    cap.size = 3
    assert cap.free == 3


def _config(tmp_path: Path) -> str:
    return f"""
[daemon]
api = ""
max_concurrent_runs = 1
[pipelines.down]
kind = "command"
retry = {{ attempts = 3, max_delay = "10m" }}
retry_exit_codes = [75]
steps = [["sh", "-c", "echo x >> {tmp_path}/tries; exit 75"]]
[pipelines.ok]
kind = "command"
steps = [["true"]]
[[schedules]]
name = "broken"
pipeline = "down"
experiment_name = "E"
cron = "0 3 * * *"
[[schedules]]
name = "other"
pipeline = "ok"
experiment_name = "E"
cron = "0 3 * * *"
"""


def _tries(tmp_path: Path) -> int:
    f = tmp_path / "tries"
    return len(f.read_text().split()) if f.exists() else 0


async def test_other_runs_go_on_while_the_only_slots_run_backs_off(tmp_path: Path) -> None:
    """max_concurrent_runs = 1 and the one run retrying against a dead target: another
    schedule's run completes during the backoff (it waited for the whole backoff before); the
    retries go on, then the run fails with every attempt recorded."""
    clock = ManualClock(datetime(2026, 11, 25, 10, 0, tzinfo=UTC))
    async with running_engine(tmp_path, _config(tmp_path), clock) as h:
        broken = await h.manager.trigger_schedule("broken")
        await eventually(lambda: _tries(tmp_path) == 1)
        await eventually(lambda: h.runs("broken")[0].next_attempt_at is not None)
        other = await h.manager.trigger_schedule("other")
        await eventually(lambda: h.runs("other")[0].status is RunStatus.COMPLETED)
        assert h.runs("broken")[0].status is RunStatus.RUNNING  # still backing off

        async def past_backoffs() -> None:  # a backoff's sleep starts after a write: unseen
            while _tries(tmp_path) < 3:
                await h.advance(minutes=11)  # past the backoff (capped at 10m)
                await asyncio.sleep(0.01)

        await asyncio.wait_for(past_backoffs(), 20)
        await eventually(lambda: h.runs("broken")[0].status is RunStatus.FAILED)
        run = h.runs("broken")[0]
        assert run.id == broken["id"] and len(run.attempts) == 3
        assert h.runs("other")[0].id == other["id"]
        assert h.engine.runner.capacity.free == 1
