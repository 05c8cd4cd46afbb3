"""Races between replicas found by review, each a regression test now (real PostgreSQL via
tests/postgres.py, engines on a ManualClock): runs re-queued from a dead replica are run, a
first gain after start-up catches up, a stale attempt is never claimed, leave() re-queues, a
failed gain is retried, a change whose re-read fails is not dropped, "forbid" holds across
replicas, a replica whose config no longer matches stands by.

Several replicas live in one process; a killed replica is simulated by moving its heartbeat
and leases into the past on the database's clock (`pause`).
"""

# ruff: noqa: F811  (the imported fixtures are test parameters)

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import TupleRow

from tests.clocks import ManualClock
from tests.engine_helpers import eventually, load_config, settles
from watcherd.core.errors import StateError
from watcherd.core.models import RunStatus, Status, StoredSchedule
from watcherd.core.runs import manual_run, submit_run
from watcherd.daemon import build_engine
from watcherd.engine.engine import Engine, config_hash
from watcherd.engine.ports import Claim
from watcherd.state.postgres import PgCluster, PgStore, open_pg

TTL = timedelta(seconds=15)
WAIT = 20.0  # deadline for conditions that take well under a second on an idle machine

DB = psycopg.Connection[TupleRow]


# ── helpers ──────────────────────────────────────────────────────────────────


@pytest.fixture
def db(pg_store_url: str) -> Iterator[DB]:
    """One autocommit connection for the test's own reads and fault injection (polled in
    `eventually`, so it must not connect on every poll)."""
    with psycopg.connect(pg_store_url, autocommit=True) as conn:
        yield conn


def _sql(db: DB, query: str, *args: object) -> list[tuple[object, ...]]:
    cur = db.execute(query, args)
    return cur.fetchall() if cur.description else []


def _run_row(db: DB, run_id: str) -> tuple[object, ...]:
    """(status, claimed_by, attempt, error) of a run."""
    rows = _sql(db, "SELECT status, claimed_by, attempt, error FROM runs WHERE id = %s", run_id)
    assert rows, f"run {run_id} is not in the store"
    return rows[0]


def _time_runs(db: DB) -> list[tuple[str, str, object]]:
    """(slot, status, error) of every run a time slot queued, oldest first."""
    rows = _sql(db, "SELECT trigger, status, error FROM runs ORDER BY seq")
    out = []
    for trigger, status, error in rows:
        t = json.loads(str(trigger))
        if t.get("kind") == "time":
            out.append((str(t["slot"]), str(status), error))
    return out


def pause(db: DB, rid: str) -> None:
    """The replica stopped beating lease_ttl ago (SIGKILL, SIGSTOP, a partition)."""
    _sql(db, "UPDATE replicas SET expires_at = now() - interval '1 second' WHERE id = %s", rid)
    _sql(db, "UPDATE leases SET expires_at = now() - interval '1 second' WHERE owner = %s", rid)


@dataclasses.dataclass
class Node:
    """A replica running the real engine."""

    engine: Engine
    store: PgStore
    task: asyncio.Task[None]
    resynced: asyncio.Event  # the follower's first resync is done: LISTEN is up


@asynccontextmanager
async def pg_engine(
    tmp_path: Path, text: str, url: str, clock: ManualClock, rid: str
) -> AsyncIterator[Node]:
    store, cluster = await open_pg(url, replica_id=rid, lease_ttl=TTL, clock=clock)
    d = tmp_path / rid
    d.mkdir(exist_ok=True)
    engine = build_engine(load_config(d, text), store, clock, cluster)
    resynced = asyncio.Event()
    resync = engine.follower.resync

    async def resync_and_tell() -> None:
        await resync()
        resynced.set()

    engine.follower.resync = resync_and_tell  # type: ignore[method-assign]
    try:
        await engine.prepare()
        task = asyncio.ensure_future(engine.run())
        await engine.started.wait()
        try:
            yield Node(engine, store, task, resynced)
        finally:
            if not task.done():
                engine.stop()
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(task, 30)
            await engine.close()
    finally:
        await store.close()


async def listening(node: Node) -> None:
    """Wait for the node's first resync: notifications sent from now on reach it, and the
    resync's own reads cannot stand in for (or consume) what the test does next."""
    await asyncio.wait_for(node.resynced.wait(), WAIT)


@asynccontextmanager
async def pg_replica(
    url: str, rid: str, clock: ManualClock
) -> AsyncIterator[tuple[PgStore, PgCluster]]:
    """A bare replica (store and cluster, no engine) the test drives by hand."""
    store, cluster = await open_pg(url, replica_id=rid, lease_ttl=TTL, clock=clock)
    try:
        yield store, cluster
    finally:
        await store.close()


def _clock() -> ManualClock:
    return ManualClock(datetime(2026, 11, 25, 10, 0, tzinfo=UTC))


PIPES = """
[daemon]
api = ""
max_concurrent_runs = 1
[pipelines.p]
kind = "command"
steps = [["true"]]
[pipelines.long]
kind = "command"
steps = [["sleep", "2"]]
"""

SCHED = """
[daemon]
api = ""
[pipelines.p]
kind = "command"
steps = [["true"]]
[[schedules]]
name = "s"
pipeline = "p"
experiment_name = "E"
cron = "* * * * *"
"""

TWO = """
[daemon]
api = ""
[pipelines.p]
kind = "command"
steps = [["true"]]
[[schedules]]
name = "s0"
pipeline = "p"
experiment_name = "E"
cron = "0 3 * * *"
[[schedules]]
name = "s"
pipeline = "p"
experiment_name = "E"
cron = "0 4 * * *"
status = "Disabled"
"""

FORBID = """
[daemon]
api = ""
[pipelines.p]
kind = "command"
steps = [["true"]]
[[schedules]]
name = "s"
pipeline = "p"
experiment_name = "E"
cron = "* * * * *"
concurrency = "forbid"
"""


# ── tests ────────────────────────────────────────────────────────────────────


async def test_survivor_runs_the_runs_it_requeued_from_a_dead_replica(
    tmp_path: Path, pg_store_url: str, db: DB
) -> None:
    """A survivor that re-queues a dead replica's Running run (its own beat, so no
    notification reaches it) must still run it: the run ends Completed."""
    clock = _clock()
    async with pg_replica(pg_store_url, "b", clock) as (b_store, b):
        await b.join(host="h", config_hash="x")
        cfg = load_config(tmp_path, PIPES)
        run = submit_run(
            cfg.pipelines["p"], "E", by="t", parameters={}, continue_on_step_failure=None, nonce="1"
        )
        await b_store.insert_manual(run, None, clock.now())
        assert await b_store.claim_run(run.id, replica_id="b", now=clock.now(), serial=False)
        async with pg_engine(tmp_path, PIPES, pg_store_url, clock, "a") as a:
            # a joins (its config hash wins) while b is alive, running the run.
            await listening(a)
            pause(db, "b")  # b is SIGKILLed
            a.engine.arming.leases.wake()  # a's next beat buries b and re-queues its run
            await settles(lambda: _run_row(db, run.id)[0] == RunStatus.COMPLETED)
            r = await a.store.get_run(run.id)
            assert r is not None and r.status is RunStatus.COMPLETED, (
                f"the re-queued run is {r and r.status} ({r and r.error}); "
                f"a's queue holds {a.engine.runner.total_queued()}"
            )


async def test_a_stale_queued_copy_is_claimed_at_the_runs_current_attempt(
    tmp_path: Path, pg_store_url: str, db: DB
) -> None:
    """A run queued here at attempt 1, then run and re-queued by another replica as attempt
    2, must be claimed at attempt 2 here (not lost to a stale claim): it ends Completed."""
    clock = _clock()
    async with (
        pg_engine(tmp_path, PIPES, pg_store_url, clock, "a") as a,
        pg_replica(pg_store_url, "b", clock) as (b_store, b),
    ):
        eng = a.engine
        await b.join(host="h", config_hash=config_hash(eng.config))
        await listening(a)
        await eng.submit(
            eng.config.pipelines["long"].id,
            "E",
            by="t",
            parameters={},
            continue_on_step_failure=None,
        )  # fills a's one slot for 2 s
        await eventually(lambda: eng.runner.total_running() == 1, WAIT)
        run = submit_run(
            eng.config.pipelines["p"],
            "E",
            by="t",
            parameters={},
            continue_on_step_failure=None,
            nonce="2",
        )
        await b_store.insert_manual(run, None, clock.now())  # NOTIFY: a queues it (attempt 1)
        await eventually(lambda: eng.runner.total_queued() == 1, WAIT)
        assert await b_store.claim_run(run.id, replica_id="b", now=clock.now(), serial=False)
        # b is stopped (SIGTERM): its run goes back to Queued as attempt 2.
        await b_store.transition_run(
            run.id,
            RunStatus.QUEUED,
            among=[RunStatus.RUNNING],
            now=clock.now(),
            claim=Claim("b", 1),
            attempt=2,
            error="interrupted by shutdown",
            next_attempt_at=None,
        )
        await settles(lambda: _run_row(db, run.id)[0] == RunStatus.COMPLETED)
        row = _run_row(db, run.id)
        assert row[0] == RunStatus.COMPLETED, f"(status, claimed_by, attempt, error) = {row}"


async def test_first_gain_after_startup_runs_every_slot_missed_while_ownerless(
    tmp_path: Path, pg_store_url: str, db: DB
) -> None:
    """A schedule first gained after start-up (its owner died) re-reads its cursor and
    runs every slot that fell due while nobody owned it, not catch_up's start-up choice."""
    # Half a minute past: a start on a whole minute is itself a slot, due at creation (a CI
    # run that began at :00 had it queued by b, against `due` counted from the next minute).
    start = datetime.now(UTC).replace(second=30, microsecond=0)
    clock = ManualClock(start)
    async with pg_engine(tmp_path, SCHED, pg_store_url, clock, "a") as a:
        assert a.engine.arming.leases.held  # a owns s
        async with pg_engine(tmp_path, SCHED, pg_store_url, clock, "b") as b:
            assert not b.engine.arming.leases.held
            a.task.cancel()  # SIGKILL a: no leave
            with contextlib.suppress(BaseException):
                await a.task
            pause(db, "a")
            clock.advance(seconds=150)  # slots fall due while s has no owner
            await b.engine.arming.leases.beat()  # b takes s over
            assert b.engine.arming.leases.held
            due = []
            t = start.replace(second=0) + timedelta(minutes=1)
            while t <= clock.now():
                due.append(t.strftime("%Y-%m-%dT%H:%M:%SZ"))
                t += timedelta(minutes=1)
            await settles(lambda: len(_time_runs(db)) >= len(due))
            runs = (await b.store.list_runs(limit=100)).runs
            slots = sorted(str(r.trigger["slot"]) for r in runs)
            assert slots == due, f"due while ownerless: {due}; queued by b: {slots}"


async def test_leave_requeues_the_leaving_replicas_running_runs(
    tmp_path: Path, pg_store_url: str, db: DB
) -> None:
    """leave() must re-queue the replica's Running runs itself (the engine's own
    interrupted-run write may have failed): they must not stay Running."""
    clock = _clock()
    async with (
        pg_replica(pg_store_url, "a", clock) as (a_store, a),
        pg_replica(pg_store_url, "b", clock) as (b_store, b),
    ):
        await a.join(host="h", config_hash="x")
        await b.join(host="h", config_hash="x")
        cfg = load_config(tmp_path, PIPES)
        run = submit_run(
            cfg.pipelines["p"], "E", by="t", parameters={}, continue_on_step_failure=None, nonce="3"
        )
        await a_store.insert_manual(run, None, clock.now())
        assert await a_store.claim_run(run.id, replica_id="a", now=clock.now(), serial=False)
        await a.leave()  # its interrupted-run write had failed (a suppressed StateError)
        _sql(db, "UPDATE replicas SET expires_at = now() - interval '1 hour' WHERE id = 'a'")
        await b.beat(wanted=[], running=0)
        r = await b_store.get_run(run.id)
        assert r is not None and r.status is not RunStatus.RUNNING, (
            f"after a left and b beat, the run is {r and r.status}"
            f" (claimed by {_run_row(db, run.id)[1]})"
        )


async def test_a_failed_gain_gives_the_lease_back_and_a_later_beat_arms_it(
    tmp_path: Path, pg_store_url: str
) -> None:
    """A gain whose re-read fails (a database blip) must not keep the lease unarmed: the
    lease is given back and a later beat gains and arms the schedule."""
    clock = _clock()
    async with pg_engine(tmp_path, TWO, pg_store_url, clock, "a") as a:
        eng = a.engine
        sid = eng.schedule("s").id
        await listening(a)  # the resync's own load_schedules must not take the blip
        real = a.store.load_schedules
        calls = 0

        async def flaky() -> list[StoredSchedule]:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise StateError("database: connection lost")  # one blip
            return await real()

        a.store.load_schedules = flaky  # type: ignore[method-assign]
        with contextlib.suppress(StateError):  # the enable may report the blip
            await eng.set_schedule_status(sid, Status.ACTIVE)
        assert calls >= 1, "the gain never re-read the schedules: the blip was not injected"
        for _ in range(3):  # later beats
            await eng.arming.leases.beat()
        assert sid in eng.timers.armed, (
            f"after {calls} reads: lease held: {sid in eng.arming.leases.held}, not armed"
        )


async def test_a_change_whose_reread_fails_is_applied_by_a_resync(
    tmp_path: Path, pg_store_url: str
) -> None:
    """A change notified by another replica whose re-read fails must not be dropped: a
    resync applies it (here: the owner disarms a schedule disabled elsewhere)."""
    clock = _clock()
    async with (
        pg_engine(tmp_path, TWO, pg_store_url, clock, "a") as a,
        pg_replica(pg_store_url, "b", clock) as (b_store, _),
    ):
        eng = a.engine
        sid = eng.schedule("s0").id
        await listening(a)
        assert sid in eng.timers.armed
        real = a.store.load_schedule
        calls = 0

        async def flaky(schedule_id: str) -> StoredSchedule | None:  # one blip on a's side
            nonlocal calls
            calls += 1
            if calls == 1:
                raise StateError("database: connection lost")
            return await real(schedule_id)

        a.store.load_schedule = flaky  # type: ignore[method-assign]
        row = await b_store.load_schedule(sid)
        assert row is not None
        # replica b serves `PATCH status=Disabled` → 2xx
        await b_store.save_schedules([dataclasses.replace(row, status="Disabled")])
        await settles(lambda: sid not in eng.timers.armed)
        assert calls >= 1, "a never re-read the change: the blip was not injected"
        assert sid not in eng.timers.armed, (
            "disabled elsewhere, still armed on the owner;"
            f" its book says {eng.schedule('s0').status}"
        )


async def test_forbid_skips_a_slot_while_a_run_is_running_on_another_replica(
    tmp_path: Path, pg_store_url: str, db: DB
) -> None:
    """concurrency = "forbid" holds across replicas: a slot falling due while the schedule's
    run is Running on another replica is Skipped."""
    clock = ManualClock(datetime(2026, 11, 25, 10, 0, 30, tzinfo=UTC))
    async with (
        pg_engine(tmp_path, FORBID, pg_store_url, clock, "a") as a,
        pg_replica(pg_store_url, "b", clock) as (b_store, b),
    ):
        eng = a.engine
        s = eng.schedule("s")
        assert s.id in eng.timers.armed
        await b.join(host="h", config_hash=config_hash(eng.config))
        eng.runner.paused = True  # let b take the manual run
        r0 = manual_run(
            s,
            eng.config.pipeline_by_id(s.pipeline),
            by="t",
            file=None,
            parameters={},
            nonce="0",
        )
        await b_store.insert_manual(r0, None, clock.now())
        assert await b_store.claim_run(r0.id, replica_id="b", now=clock.now(), serial=False)
        eng.runner.paused = False
        eng.runner._wake.set()
        # a tries r0 too (GONE: b has it) and goes idle.
        await eventually(
            lambda: eng.runner.total_queued() == 0 and eng.runner.total_running() == 0, WAIT
        )
        clock.advance(seconds=30)  # 10:01:00 falls due while r0 Runs on b
        await settles(lambda: any(st not in ("Queued", "Running") for _, st, _ in _time_runs(db)))
        slots = _time_runs(db)
        assert slots and slots[0][1] == RunStatus.SKIPPED, f"(slot, status, error): {slots}"


async def test_a_replica_whose_config_no_longer_matches_stands_by(
    tmp_path: Path, pg_store_url: str, db: DB
) -> None:
    """When a newer replica joins with another config, this one stands by: it reports not
    ready and claims no run queued meanwhile."""
    clock = _clock()
    async with (
        pg_engine(tmp_path, TWO, pg_store_url, clock, "a") as a,
        pg_replica(pg_store_url, "b", clock) as (b_store, b),
    ):
        eng = a.engine
        assert eng.arming.leases.held
        await listening(a)
        await b.join(host="h", config_hash="newer-config")  # a rolling update starts
        m = await eng.arming.leases.beat()
        run = submit_run(
            eng.config.pipelines["p"],
            "E",
            by="t",
            parameters={},
            continue_on_step_failure=None,
            nonce="9",
        )
        await b_store.insert_manual(run, None, clock.now())  # queued under the new config
        # a has seen the run (its notification), or claimed it already (the bug).
        await eventually(
            lambda: (
                eng.runner.total_queued() + eng.runner.total_running() > 0
                or _run_row(db, run.id)[1] is not None
            ),
            WAIT,
        )
        # Proving a non-event: a claim would follow at once, well within this window.
        await asyncio.sleep(0.5)
        row = _run_row(db, run.id)
        state = (
            f"beat config_ok={m.config_ok}, standby={eng.standby}, "
            f"runner paused={eng.runner.paused}, not_ready={eng.not_ready()!r}; "
            f"run (status, claimed_by, attempt, error) = {row}"
        )
        assert eng.not_ready() is not None, state
        assert row[1] != "a", state


SIX = """
[daemon]
api = ""
[pipelines.p]
kind = "command"
steps = [["true"]]
""" + "".join(
    f'[[schedules]]\nname = "s{i}"\npipeline = "p"\nexperiment_name = "E"\ncron = "0 {i} * * *"\n'
    for i in range(6)
)


async def test_every_replica_is_ready_while_the_others_hold_some_schedules(
    tmp_path: Path, pg_store_url: str
) -> None:
    """/readyz (SPEC §8, §12): a schedule another replica holds is that one's to arm; each
    replica is ready with its own share (a readiness probe on every pod)."""
    from watcherd.services.manager import Manager

    clock = _clock()
    async with (
        pg_engine(tmp_path, SIX, pg_store_url, clock, "r1") as a,
        pg_engine(tmp_path, SIX, pg_store_url, clock, "r2") as b,
    ):
        held = lambda n: set(n.engine.arming.leases.held)  # noqa: E731

        async def spread() -> bool:  # beats until both hold some and together all
            for n in (a, b):
                await n.engine.arming.leases.beat()
            return bool(held(a)) and bool(held(b)) and len(held(a) | held(b)) == 6

        async with asyncio.timeout(WAIT):
            while not await spread():
                clock.advance(seconds=1)
        for n in (a, b):
            ready, body = Manager(n.engine).readiness()
            assert ready, body
            assert body["waiting"] == [] and body["errors"] == []


LOCAL = """
[daemon]
api = ""
[datastores.mounted]
kind = "local"
root = "/nonexistent/watcherd-test/mount"
[pipelines.p]
kind = "command"
steps = [["true"]]
[[schedules]]
name = "files"
pipeline = "p"
experiment_name = "E"
datastore = "mounted"
polling_interval = "1h"
"""


async def test_a_replica_without_a_local_root_leaves_its_schedule_to_those_with_it(
    tmp_path: Path, pg_store_url: str
) -> None:
    """SPEC §12: a local schedule is owned only by replicas that can read its root; one that
    does not have the root at all (another host's mount) does not take it. Alone, a daemon
    keeps it, to report the missing directory (SPEC §4)."""
    from tests.engine_helpers import running_engine

    clock = _clock()
    async with pg_engine(tmp_path, LOCAL, pg_store_url, clock, "r1") as a:
        names = lambda n: [n.engine.schedules[i].name for i in n.engine.arming.wanted()]  # noqa: E731
        assert names(a) == ["files"]  # the only replica: it keeps it, to report it
        async with pg_engine(tmp_path, LOCAL, pg_store_url, clock, "r2") as b:
            await a.engine.arming.leases.beat()  # a now knows of b
            assert names(a) == [] and names(b) == []  # left to a replica that has the root
    solo = tmp_path / "solo"
    solo.mkdir()
    async with running_engine(solo, LOCAL, clock) as h:
        assert [h.engine.schedules[sid].name for sid in h.engine.arming.wanted()] == ["files"]
