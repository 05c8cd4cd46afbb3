"""attempts[] keeps the attempt a timeout, cancel or shutdown cut short (SPEC §5), and the
attempts before it, through the real engine with command pipelines."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.clocks import ManualClock
from tests.engine_helpers import Harness, eventually, running_engine
from watcherd.core.models import RunStatus

WAIT = 20.0


def _clock() -> ManualClock:
    return ManualClock(datetime(2026, 11, 25, 10, 0, tzinfo=UTC))


def _config(pipeline: str, *, shutdown: str = "20s") -> str:
    return f"""
[daemon]
api = ""
shutdown_timeout = "{shutdown}"
[pipelines.p]
kind = "command"
{pipeline}
[[schedules]]
name = "s"
pipeline = "p"
experiment_name = "E"
status = "Disabled"
cron = "0 0 1 1 *"
"""


def _hang(marker: Path) -> str:
    """A step that says it started, then runs until stopped."""
    return f'steps = [["sh", "-c", "touch {marker}; exec sleep 1000"]]'


def _retrying(script: str, attempts: int, extra: str = "") -> str:
    """A pipeline running `sh -c script`, whose exit 75 is retried up to `attempts` times."""
    return (
        f'{extra}retry = {{ attempts = {attempts}, max_delay = "1s" }}\n'
        "retry_exit_codes = [75]\n"
        f'steps = [["sh", "-c", "{script}"]]'
    )


def _stamped(attempt: dict[str, Any]) -> None:
    start = datetime.fromisoformat(str(attempt["start"]).replace("Z", "+00:00"))
    end = datetime.fromisoformat(str(attempt["end"]).replace("Z", "+00:00"))
    assert start <= end, attempt


async def _start(h: Harness, marker: Path) -> str:
    """Trigger the run and wait until its step runs."""
    rid = str((await h.manager.trigger_schedule("s"))["id"])
    await eventually(marker.exists, WAIT)
    return rid


async def test_a_timed_out_run_keeps_the_attempt_it_cut_short(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    text = _config(f'timeout = "300ms"\n{_hang(marker)}')
    async with running_engine(tmp_path, text, _clock()) as h:
        rid = await _start(h, marker)
        await eventually(lambda: h.runs()[0].status is RunStatus.FAILED, WAIT)
        run = await h.manager.get_run(rid)
    assert run["error"] == "timeout after 300ms"
    attempts = run["attempts"]
    assert [a["attempt"] for a in attempts] == [1], attempts
    assert attempts[0]["error"] == "timeout after 300ms"
    _stamped(attempts[0])


async def test_a_canceled_running_run_keeps_its_attempt(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    async with running_engine(tmp_path, _config(_hang(marker)), _clock()) as h:
        rid = await _start(h, marker)
        answer = await h.manager.cancel_run(rid)
        run = await h.manager.get_run(rid)
    assert answer["status"] == "Canceled" and run["status"] == "Canceled"
    attempts = run["attempts"]
    assert [a["attempt"] for a in attempts] == [1], attempts
    assert attempts[0]["error"] == "canceled"
    _stamped(attempts[0])


async def test_a_run_canceled_after_a_retry_keeps_both_attempts(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    script = f"if [ -e {first} ]; then touch {second}; exec sleep 1000; fi; touch {first}; exit 75"
    pipeline = _retrying(script, 3)
    async with running_engine(tmp_path, _config(pipeline), _clock()) as h:
        rid = str((await h.manager.trigger_schedule("s"))["id"])
        await eventually(lambda: h.runs() and h.runs()[0].attempt == 2, WAIT)
        async with asyncio.timeout(WAIT):
            # Attempt 2 waits out its backoff on the injected clock: advance until it runs.
            while not second.exists():  # noqa: ASYNC110
                await h.advance(seconds=2)
                await asyncio.sleep(0.01)
        await h.manager.cancel_run(rid)
        run = await h.manager.get_run(rid)
    assert run["status"] == "Canceled" and run["attempt"] == 2
    attempts = run["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2], attempts
    assert "exited 75" in attempts[0]["error"]
    assert attempts[1]["error"] == "canceled"
    for a in attempts:
        _stamped(a)


async def test_a_run_stopped_by_shutdown_keeps_its_attempt(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    text = _config(_hang(marker), shutdown="100ms")
    async with running_engine(tmp_path, text, _clock()) as h:
        rid = await _start(h, marker)
        h.engine.stop()  # the grace ends before the step does: re-queued
        await eventually(lambda: h.runs()[0].status is RunStatus.QUEUED, WAIT)
        run = h.runs()[0]
    assert run.id == rid and run.attempt == 2 and run.error == "interrupted by shutdown"
    assert [a["attempt"] for a in run.attempts] == [1], run.attempts
    assert run.attempts[0]["error"] == "interrupted by shutdown"
    _stamped(dict(run.attempts[0]))


async def _past_backoffs(h: Harness, done: Any) -> None:
    """Advance the injected clock until `done()`: each backoff's sleep starts after a write."""
    async with asyncio.timeout(WAIT):
        while not done():
            await h.advance(seconds=2)
            await asyncio.sleep(0.01)


async def test_a_run_failing_through_its_retries_keeps_each_attempts_output_and_codes(
    tmp_path: Path,
) -> None:
    pipeline = _retrying("echo attempt $WATCHERD_ATTEMPT says hello; exit 75", 3)
    async with running_engine(tmp_path, _config(pipeline), _clock()) as h:
        rid = str((await h.manager.trigger_schedule("s"))["id"])
        await _past_backoffs(h, lambda: h.runs()[0].status is RunStatus.FAILED)
        run = await h.manager.get_run(rid)
        log = (await h.manager.get_run_log(rid)).decode()
    assert run["error"].startswith("retries exhausted after 3 attempts") and run["exit_code"] == 75
    assert [a["exit_codes"] for a in run["attempts"]] == [[75], [75], [75]]
    for n in (1, 2, 3):  # each attempt's output, in order, and why it was tried again
        assert f"attempt {n} says hello" in log
        assert f"watcherd: attempt {n}: step 0 exited 75 (retryable)" in log
    assert log.index("attempt 1 says") < log.index("attempt 2 says") < log.index("attempt 3 says")


async def test_the_next_attempt_dispatches_the_pipeline_as_reloaded_and_clears_next_attempt_at(
    tmp_path: Path,
) -> None:
    """A pipeline fixed (SIGHUP) while its run backs off: the next attempt runs the fixed
    steps (SPEC §5: the pipeline's at dispatch time). `next_attempt_at` marks the backoff
    only: it is cleared once the next attempt runs."""
    from tests.engine_helpers import load_config

    started = tmp_path / "second"
    broken = _retrying("exit 75", 5)
    fixed = broken.replace("exit 75", f"touch {started}; exec sleep 1000")
    async with running_engine(tmp_path, _config(broken), _clock()) as h:
        rid = str((await h.manager.trigger_schedule("s"))["id"])
        await eventually(lambda: h.runs()[0].next_attempt_at is not None, WAIT)
        await h.engine.reload(load_config(tmp_path, _config(fixed)))
        await _past_backoffs(h, started.exists)
        await eventually(lambda: h.runs()[0].next_attempt_at is None, WAIT)
        run = h.runs()[0]
        assert run.id == rid and run.status is RunStatus.RUNNING and run.attempt == 2
        await h.manager.cancel_run(rid)


async def test_a_retried_runs_output_is_kept_while_it_backs_off_and_over_a_restart(
    tmp_path: Path,
) -> None:
    """During a backoff the output so far is the run's log (a crash then keeps it); a run
    re-queued by a shutdown during its backoff keeps it too, and its next attempts add to it."""
    gate = tmp_path / "fixed"
    script = f"echo out-$WATCHERD_ATTEMPT; [ -e {gate} ] && exit 0; exit 75"
    pipeline = _retrying(script, 9)
    text = _config(pipeline, shutdown="100ms")
    async with running_engine(tmp_path, text, _clock()) as h:
        rid = str((await h.manager.trigger_schedule("s"))["id"])
        await _past_backoffs(h, lambda: h.runs()[0].attempt == 3)
        await eventually(lambda: h.runs()[0].next_attempt_at is not None, WAIT)
        log = (await h.manager.get_run_log(rid)).decode()
        assert "out-1" in log and "out-2" in log and "watcherd: attempt 2:" in log
        h.engine.stop()  # during the backoff before attempt 3: re-queued as attempt 4
        await eventually(lambda: h.runs()[0].status is RunStatus.QUEUED, WAIT)
    gate.touch()
    async with running_engine(tmp_path, text, _clock()) as h:
        await eventually(lambda: h.runs()[0].status is RunStatus.COMPLETED, WAIT)
        log = (await h.manager.get_run_log(rid)).decode()
    assert [line for line in log.splitlines() if line.startswith("out-")] == [
        "out-1",
        "out-2",
        "out-4",
    ]
    assert "watcherd: attempt 3: interrupted by shutdown" in log  # each attempt's end shown


async def test_a_log_limit_of_0_keeps_no_output_through_retries(tmp_path: Path) -> None:
    pipeline = _retrying("echo noise; exit 75", 2, 'log_limit = "0B"\n')
    async with running_engine(tmp_path, _config(pipeline), _clock()) as h:
        rid = str((await h.manager.trigger_schedule("s"))["id"])
        await _past_backoffs(h, lambda: h.runs()[0].status is RunStatus.FAILED)
        assert await h.manager.get_run_log(rid) == b""
