"""Runner races found by review, each a regression test now (real SQLite, ManualClock): a
cancel while the claim is in flight, a shutdown while a schedule is enabled, coalescing by
version not by queue position, a refresh that must keep runs queued meanwhile."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from tests.clocks import ManualClock
from tests.engine_helpers import Harness, eventually, load_config, running_engine, settles
from watcherd.core.models import TERMINAL, Run, RunStatus
from watcherd.core.runs import file_run
from watcherd.daemon import build_engine
from watcherd.state.sqlite import runs as runs_sql
from watcherd.state.sqlite.database import Conn, Tx
from watcherd.state.sqlite.store import SqliteStore

WAIT = 20.0  # deadline for conditions that take well under a second on an idle machine


def _clock() -> ManualClock:
    return ManualClock(datetime(2026, 11, 25, 10, 0, tzinfo=UTC))


def _run(h: Harness, run_id: str) -> Run | None:
    """The stored run, read synchronously (usable in `eventually`)."""
    return h.store.db.sync(runs_sql.get_run, run_id)


def _ended(h: Harness, run_id: str) -> bool:
    r = _run(h, run_id)
    return r is not None and r.status in TERMINAL


SERIAL = """
[daemon]
api = ""
[pipelines.p]
kind = "command"
steps = [["true"]]
[[schedules]]
name = "s"
pipeline = "p"
experiment_name = "E"
cron = "0 3 * * *"
concurrency = "queue"
"""


async def test_cancel_during_claim_ends_canceled_and_the_schedule_runs_on(
    tmp_path: Path,
) -> None:
    """A cancel arriving while the run's claim is in flight must wait for the claim and end
    the run Canceled (not leave it Running with nobody on it): the next run of the serial
    schedule then runs to Completed."""
    async with running_engine(tmp_path, SERIAL, _clock()) as h:
        runner = h.engine.runner
        await h.manager.trigger_schedule("s")
        await h.settle()
        runner.paused = True  # queue the run, but let nothing claim it yet
        rid = (
            await h.engine.trigger(
                h.engine.schedule("s"), by="t", path=None, parameters={}, idempotency_key=None
            )
        ).id
        await eventually(lambda: rid in runner._queued, WAIT)
        # Hold the writer thread for 0.5 s (the fault, not a wait), and only then let the
        # runner claim: the run's claim is still in flight when the cancel arrives.
        holding = threading.Event()

        def hold(_c: object) -> None:
            holding.set()
            time.sleep(0.5)

        slow = asyncio.ensure_future(h.store.db.write(hold))
        await eventually(holding.is_set, WAIT)
        runner.paused = False
        runner.refresh_soon()
        await eventually(
            lambda: (e := runner._executions.get(rid)) is not None and e.claiming, WAIT
        )  # its task is in claim()
        answer = await h.manager.cancel_run(rid)
        await slow
        await settles(lambda: _ended(h, rid))
        final = _run(h, rid)
        assert final is not None and final.status is RunStatus.CANCELED, (
            f"canceled during its claim (answered {answer['status']}): {final and final.status}"
        )
        # A third run of the serial schedule: with an orphan Running it would stay BUSY.
        third = (await h.manager.trigger_schedule("s"))["id"]
        await settles(lambda: _ended(h, third))
        t = _run(h, third)
        assert t is not None and t.status is RunStatus.COMPLETED, (
            f"the next run is {t and t.status}; queued here: {runner.total_queued()}"
        )


DS = """
[daemon]
api = ""
shutdown_timeout = "20s"
[datastores.d]
kind = "local"
root = "{root}"
[pipelines.p]
kind = "command"
steps = [["sleep", "2"]]
[[schedules]]
name = "t"
pipeline = "p"
experiment_name = "E"
cron = "0 3 * * *"
[[schedules]]
name = "files"
pipeline = "p"
experiment_name = "E"
status = "Disabled"
datastore = "d"
path_on_datastore = ""
polling_interval = "10s"
"""


async def test_enabling_a_schedule_while_draining_does_not_hang_shutdown(tmp_path: Path) -> None:
    """Enabling a datastore schedule while the engine drains (the API still answers) must
    arm nothing: engine.run() returns once the running run ends."""
    root = tmp_path / "root"
    root.mkdir()
    clock = _clock()
    store = SqliteStore(tmp_path / ".w")
    engine = build_engine(load_config(tmp_path, DS.format(root=root)), store, clock)
    try:
        await engine.prepare()
        task = asyncio.ensure_future(engine.run())
        await engine.started.wait()
        h = Harness(engine, clock, store)
        await h.manager.trigger_schedule("t")  # a 2 s run: the drain waits for it
        await eventually(lambda: engine.runner.total_running() == 1, WAIT)
        engine.stop()
        await eventually(lambda: not engine.runner._intake, WAIT)  # draining now
        await h.manager.set_schedule_status("files", "Active")  # API still served
        try:
            await asyncio.wait_for(asyncio.shield(task), WAIT)
            hung = False
        except TimeoutError:
            hung = True
            engine.arming.disarm(engine.schedule("files").id)  # let it end, then fail
            await asyncio.wait_for(task, WAIT)
        assert not hung, f"engine.run() still running {WAIT} s after a 2 s drain"
    finally:
        await engine.close()
        await store.close()


FILES = """
[daemon]
api = ""
[datastores.d]
kind = "local"
root = "{root}"
[pipelines.p]
kind = "command"
steps = [["true"]]
[[schedules]]
name = "files"
pipeline = "p"
experiment_name = "E"
datastore = "d"
path_on_datastore = ""
polling_interval = "1h"
"""


async def test_coalescing_keeps_the_newest_version_not_the_last_queued(tmp_path: Path) -> None:
    """Two versions of one file wait: the newer one (higher seq) runs and the older is
    Skipped, even when the older was queued here last (re-queued after an interruption)."""
    root = tmp_path / "root"
    root.mkdir()
    clock = _clock()
    async with running_engine(tmp_path, FILES.format(root=root), clock) as h:
        eng = h.engine
        s = eng.schedule("files")
        p = eng.config.pipeline_by_id(s.pipeline)
        v1 = file_run(s, p, eng.sink.file_ref(s, b"a.csv", "v1"))
        v2 = file_run(s, p, eng.sink.file_ref(s, b"a.csv", "v2"))

        def insert(c: Conn) -> list[str]:  # v1 then v2: v2 is the newer version (higher seq)
            with Tx(c) as cur:
                return runs_sql.insert_runs(cur, [v1, v2], clock.now())

        await h.store.db.write(insert)
        eng.runner.paused = True
        await eng.store.claim_run(v1.id, replica_id="x", now=clock.now(), serial=False)
        await eng.runner.enqueue([v2.id])  # v2 waits here (its file busy elsewhere)
        # v1's holder is interrupted: v1 back to Queued; this replica re-reads the queue.
        await eng.store.transition_run(
            v1.id, RunStatus.QUEUED, among=[RunStatus.RUNNING], now=clock.now(), attempt=2
        )
        await eng.runner.refresh()
        eng.runner.paused = False
        eng.runner._wake.set()
        await h.settle()
        r1, r2 = await eng.store.get_run(v1.id), await eng.store.get_run(v2.id)
        assert r1 is not None and r2 is not None
        seen = f"v1: {r1.status} ({r1.error}), v2: {r2.status} ({r2.error})"
        assert r2.status is RunStatus.COMPLETED and r1.status is RunStatus.SKIPPED, seen


async def test_refresh_keeps_a_run_enqueued_while_it_reads(tmp_path: Path) -> None:
    """A run enqueued here while a refresh's read is in flight (so the read misses it) must
    stay queued when the refresh applies that read."""
    async with running_engine(tmp_path, SERIAL, _clock()) as h:
        eng = h.engine
        real = eng.store.queued_runs
        read_done, release = asyncio.Event(), asyncio.Event()

        async def slow_read() -> list[Run]:  # a read in flight (PostgreSQL: one round trip)
            rows = await real()
            read_done.set()
            await release.wait()
            return rows

        eng.store.queued_runs = slow_read  # type: ignore[method-assign]
        eng.runner.paused = True  # e.g. at max_concurrent_runs
        refresh = asyncio.ensure_future(eng.runner.refresh())  # a "runs" NOTIFY arrived
        await asyncio.wait_for(read_done.wait(), WAIT)
        run = await eng.trigger(
            eng.schedule("s"), by="t", path=None, parameters={}, idempotency_key=None
        )  # a slot/trigger commits meanwhile
        rid = run.id
        assert eng.runner.total_queued() == 1
        release.set()
        await asyncio.wait_for(refresh, WAIT)
        r = await eng.store.get_run(rid)
        assert eng.runner.total_queued() == 1, (
            f"the run ({r and r.status} in the store) was dropped from the runner's queue"
        )


BLOCKED = """
[daemon]
api = ""
max_concurrent_runs = 4
[pipelines.slow]
kind = "command"
steps = [["sh", "-c", "while [ ! -e {go} ]; do sleep 0.01; done"]]
[pipelines.quick]
kind = "command"
steps = [["true"]]
[[schedules]]
name = "s"
pipeline = "slow"
experiment_name = "E"
cron = "0 3 * * *"
concurrency = "queue"
max_queued = 100
[[schedules]]
name = "t"
pipeline = "quick"
experiment_name = "E"
cron = "0 3 * * *"
"""


async def test_a_run_behind_a_long_ineligible_head_of_the_queue_starts(tmp_path: Path) -> None:
    """More runs than the runner looks at first (runner.HEAD) wait on a serial schedule whose
    run is busy; a run queued behind them, on another schedule, still starts."""
    from watcherd.engine import runner as runner_mod

    go = tmp_path / "go"
    config = BLOCKED.replace("{go}", str(go))
    async with running_engine(tmp_path, config, _clock()) as h:
        eng = h.engine
        s, t = eng.schedule("s"), eng.schedule("t")
        eng.runner.paused = True
        serial = [
            await eng.trigger(s, by="x", path=None, parameters={}, idempotency_key=None)
            for _ in range(runner_mod.HEAD + 5)
        ]
        last = await eng.trigger(t, by="x", path=None, parameters={}, idempotency_key=None)
        eng.runner.paused = False
        eng.runner._wake.set()
        try:
            await eventually(lambda: _ended(h, last.id), WAIT)
            assert sum(_ended(h, r.id) for r in serial) == 0  # the first still blocks
        finally:
            go.touch()
        await eventually(lambda: all(_ended(h, r.id) for r in serial), WAIT)
