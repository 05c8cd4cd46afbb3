"""engine.arming: a disarmed poller ends even when one cancellation is lost; missed slots
are logged without flooding the log."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from structlog.testing import capture_logs

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


def test_missed_slots_are_one_line_each_for_a_few_schedules_and_one_in_all_for_many() -> None:
    t0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    few = [
        (f"s{i}", "last", 2, t0 + timedelta(hours=i), t0 + timedelta(hours=i + 1), i == 2)
        for i in range(3)
    ]
    with capture_logs() as logs:
        arming._log_missed(few)
    assert [(e["event"], e["schedule"], e["count"], e["catch_up"]) for e in logs] == [
        ("slots_missed", f"s{i}", 2, "last") for i in range(3)
    ]
    assert [e.get("count_is_lower_bound") for e in logs] == [None, None, True]
    many = [
        (f"s{i}", "all", i + 1, t0 + timedelta(minutes=i), t0 + timedelta(hours=i), False)
        for i in range(50)
    ]
    with capture_logs() as logs:
        arming._log_missed(many)
    (line,) = logs
    assert line["event"] == "slots_missed" and line["schedules"] == 50
    assert line["count"] == sum(range(1, 51))
    assert (line["first"], line["last"]) == ("2026-11-25T10:00:00Z", "2026-11-27T11:00:00Z")
    assert line["names"] == [f"s{i}" for i in range(arming.MISSED_EACH)]
