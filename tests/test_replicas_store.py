"""The PostgreSQL store and cluster as replicas see them (SPEC §12): leases and fencing,
claims across replicas, lost replicas, the deployment's config, notifications, schema
versions, outages and the URL as a secret. Real PostgreSQL (tests/postgres.py), several
stores in one process standing for several replicas; a paused replica is simulated by moving
its heartbeat and leases into the past on the database's clock.
"""

# ruff: noqa: F811  (the imported fixtures are test parameters)

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import structlog

from tests.clocks import ManualClock
from tests.postgres import PASSWORD, PostgresServer
from watcherd.core.errors import ClaimLost, LeaseLost, StateError
from watcherd.core.models import FileRef, RunStatus, TimeOptions
from watcherd.core.runs import NewRun
from watcherd.engine.ports import Change, Claim, ClaimResult, ConfigWrite, Reading, SlotBatch
from watcherd.state.postgres import PgCluster, PgStore, SchemaTooNew, open_pg, parse_url
from watcherd.state.postgres.db import IDLE_CHECK
from watcherd.state.postgres.runs import RUNS_NOTICE_IDS
from watcherd.state.postgres.schema import SCHEMA_VERSION

NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
TTL = timedelta(seconds=15)

Replica = tuple[PgStore, PgCluster]


@pytest.fixture
async def replicas(pg_store_url: str) -> AsyncIterator[Callable[..., Awaitable[Replica]]]:
    """make(id, host=…, config_hash=…, join=True) → (store, cluster) of a joined replica."""
    async with AsyncExitStack() as stack:

        async def make(
            rid: str, *, host: str = "h", config_hash: str = "cfg", join: bool = True
        ) -> Replica:
            store, cluster = await open_pg(
                pg_store_url, replica_id=rid, lease_ttl=TTL, clock=ManualClock(NOW)
            )
            stack.push_async_callback(store.close)
            if join:
                await cluster.join(host=host, config_hash=config_hash)
            return store, cluster

        yield make


def _sql(url: str, query: str, *args: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, args)  # type: ignore[call-overload]
        return cur.fetchall() if cur.description else []


def pause(url: str, rid: str) -> None:
    """The replica stopped beating lease_ttl ago (SIGSTOP, GC, a partition)."""
    _sql(url, "UPDATE replicas SET expires_at = now() - interval '1 second' WHERE id = %s", rid)
    _sql(url, "UPDATE leases SET expires_at = now() - interval '1 second' WHERE owner = %s", rid)


def _run(dedup: str, schedule: str = "s") -> NewRun:
    return NewRun(
        schedule_id=schedule,
        pipeline_id="p",
        experiment="E",
        dedup=dedup,
        trigger={"kind": "time", "slot": dedup},
        parameters={},
    )


def _file_run(name: bytes, version: str, schedule: str = "f") -> NewRun:
    return NewRun(
        schedule_id=schedule,
        pipeline_id="p",
        experiment="E",
        dedup=f"file:{name.hex()}:{version}",
        trigger={"kind": "file", "datastore": "d", "path": name.decode(), "version": version},
        parameters={},
        file=FileRef(datastore="d", relative_path=name, version=version),
    )


# ── leases and fencing ───────────────────────────────────────────────────────


async def test_fenced_writes_refused_once_the_lease_moved(
    replicas: Callable[..., Awaitable[Replica]], pg_store_url: str
) -> None:
    a_store, a = await replicas("a")
    b_store, b = await replicas("b")
    m = await a.beat(wanted=["s"], running=0)
    assert dict(m.leases) == {"s": 1} and m.config_ok and m.replicas == 2
    assert m.valid_until == ManualClock(NOW).monotonic() + TTL.total_seconds() - 1
    one = _run("slot:1")
    assert await a_store.record_slots([SlotBatch("s", NOW, [one], epoch=1)], NOW) == [one.id]
    await a_store.commit_changes("s", "K", [(b"x", "1")], [], [], NOW, epoch=1)

    pause(pg_store_url, "a")
    with pytest.raises(LeaseLost):  # expired, even before anyone took it
        await a_store.record_slots([SlotBatch("s", NOW, [_run("slot:1b")], epoch=1)], NOW)
    mb = await b.beat(wanted=["s"], running=0)
    assert dict(mb.leases) == {"s": 2}  # taken over: epoch + 1
    later = NOW + timedelta(minutes=1)
    two = _run("slot:2")
    with pytest.raises(LeaseLost) as lost:
        await a_store.record_slots(
            [SlotBatch("t", later, [_run("slot:t")]), SlotBatch("s", later, [two], epoch=1)], later
        )
    assert lost.value.schedule_id == "s"
    with pytest.raises(LeaseLost):
        await a_store.commit_changes(
            "s", "K", [(b"x", "0")], [b"y"], [_file_run(b"x", "0", "s")], NOW, marker="m", epoch=1
        )
    # Nothing of the refused writes landed: no run, no cursor, no snapshot change.
    assert [r.id for r in (await b_store.list_runs()).runs] == [one.id]
    assert await b_store.load_snapshot("s", "K") == {b"x": "1"}
    assert await b_store.load_marker("s", "K") is None
    assert await b_store.record_slots([SlotBatch("s", later, [two], epoch=2)], later) == [two.id]
    # The paused replica comes back: its lease is gone for good (no renewal of an old epoch).
    ma = await a.beat(wanted=["s"], running=0)
    assert dict(ma.leases) == {}
    with pytest.raises(LeaseLost):
        await b_store.record_slots([SlotBatch("s", later, [], epoch=1)], later)


async def test_a_slot_of_a_schedule_disabled_elsewhere_starts_nothing(
    replicas: Callable[..., Awaitable[Replica]],
) -> None:
    """A replica that has not heard of a disable yet (its LISTEN reconnecting after an
    outage) still records the slot's cursor, but the slot queues no run (SPEC §12: no slot
    of the old state starts after the 2xx)."""
    from tests.test_store import _schedule

    a_store, a = await replicas("a")
    b_store, _ = await replicas("b")
    await b_store.save_schedules([_schedule("s", "s", NOW), _schedule("t", "t", NOW)])
    m = await a.beat(wanted=["s", "t"], running=0)
    assert set(m.leases) == {"s", "t"}
    await b_store.save_schedules([_schedule("s", "s", NOW, status="Disabled")])  # elsewhere
    later = NOW + timedelta(minutes=1)
    off, on = _run("slot:off", schedule="s"), _run("slot:on", schedule="t")
    batches = [
        SlotBatch("s", later, [off], epoch=m.leases["s"]),
        SlotBatch("t", later, [on], epoch=m.leases["t"]),
    ]
    assert await a_store.record_slots(batches, later) == [on.id]
    assert [r.id for r in (await b_store.list_runs()).runs] == [on.id]
    rows = {r.id: r for r in await b_store.load_schedules()}
    assert rows["s"].cursor == later and rows["t"].cursor == later


async def test_leases_spread_and_rebalance(
    replicas: Callable[..., Awaitable[Replica]], pg_store_url: str
) -> None:
    wanted = [f"s{i}" for i in range(10)]
    _, a = await replicas("a")
    held: dict[str, dict[str, int]] = {}

    async def beat(c: PgCluster) -> None:
        held[c.replica_id] = dict((await c.beat(wanted=wanted, running=0)).leases)

    def owners() -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for rid, leases in held.items():
            for sid in leases:
                out.setdefault(sid, []).append(rid)
        return out

    await beat(a)
    assert len(held["a"]) == 10
    _, b = await replicas("b")
    _, c = await replicas("c")
    for _ in range(2):  # a releases above ⌈10/3⌉ + 1, then b and c take what is free
        for r in (a, b, c):
            await beat(r)
    assert sorted(owners()) == wanted and all(len(v) == 1 for v in owners().values())
    assert max(len(v) for v in held.values()) <= 4 + 1
    assert min(len(v) for v in held.values()) >= 2
    epochs = {sid: e for leases in held.values() for sid, e in leases.items()}
    c_had = set(held["c"])
    await c.leave()
    held.pop("c")
    for r in (a, b):
        await beat(r)
    assert sorted(owners()) == wanted  # c's schedules found new owners at once
    assert all(len(v) == 5 for v in held.values())
    for leases in held.values():  # a lease that changed hands has a new epoch, no other
        for sid, e in leases.items():
            assert (e > epochs[sid]) == (sid in c_had), (sid, e, epochs[sid])
    # Released leases: none held by a replica that no longer wants them.
    await a.beat(wanted=wanted[:2], running=0)
    kept = _sql(
        pg_store_url,
        "SELECT schedule_id FROM leases WHERE owner = 'a' AND expires_at > now()",
    )
    assert {str(sid) for (sid,) in kept} <= set(wanted[:2]), kept


async def test_a_schedule_only_one_replica_can_serve_is_not_orphaned(
    replicas: Callable[..., Awaitable[Replica]],
) -> None:
    """A local datastore only one host mounts counts whole in that host's share."""
    _, a = await replicas("a")
    _, b = await replicas("b")
    common = [f"t{i}" for i in range(4)]
    await b.beat(wanted=common, running=0)
    for _ in range(2):
        ma = await a.beat(wanted=[*common, "local"], running=0)
        mb = await b.beat(wanted=common, running=0)
    assert "local" in ma.leases
    assert set(ma.leases) | set(mb.leases) == {*common, "local"}
    assert not set(ma.leases) & set(mb.leases)


async def test_release_and_leave(replicas: Callable[..., Awaitable[Replica]]) -> None:
    _, a = await replicas("a")
    _, b = await replicas("b")
    await a.beat(wanted=["x", "y"], running=0)
    assert b.recheck_at is None  # b has not beaten yet
    await b.beat(wanted=["x", "y"], running=0)
    # b wants what a holds: it beats again when a's leases would expire.
    assert b.recheck_at is not None
    assert 1000 + TTL.total_seconds() - 1 < b.recheck_at < 1000 + TTL.total_seconds() + 0.1
    await a.release(["x"])
    assert dict((await b.beat(wanted=["x", "y"], running=0)).leases) == {"x": 2}
    [info_a, info_b] = await b.replicas()
    assert (info_a.id, info_a.schedules) == ("a", frozenset({"y"}))
    assert (info_b.id, info_b.schedules) == ("b", frozenset({"x"}))
    await a.leave()
    assert [r.id for r in await b.replicas()] == ["b"]
    assert dict((await b.beat(wanted=["x", "y"], running=0)).leases) == {"x": 2, "y": 2}


# ── claims ───────────────────────────────────────────────────────────────────


async def test_each_run_claimed_by_one_replica(
    replicas: Callable[..., Awaitable[Replica]],
) -> None:
    a_store, _ = await replicas("a")
    b_store, _ = await replicas("b")
    runs = [_run(f"slot:{i}") for i in range(40)]
    await a_store.record_slots([SlotBatch("s", NOW, runs)], NOW)

    async def claim_all(store: PgStore, rid: str) -> list[str]:
        got = []
        for r in runs:
            if await store.claim_run(r.id, replica_id=rid, now=NOW, serial=False) is (
                ClaimResult.CLAIMED
            ):
                got.append(r.id)
        return got

    ga, gb = await asyncio.gather(claim_all(a_store, "a"), claim_all(b_store, "b"))
    assert sorted(ga + gb) == sorted(r.id for r in runs)
    assert not set(ga) & set(gb)
    # Two versions of one file, claimed at once on two replicas: one runs, one waits.
    v1, v2 = _file_run(b"same", "1"), _file_run(b"same", "2")
    await a_store.commit_changes("f", "K", [], [], [v1, v2], NOW)
    results = await asyncio.gather(
        a_store.claim_run(v1.id, replica_id="a", now=NOW, serial=False),
        b_store.claim_run(v2.id, replica_id="b", now=NOW, serial=False),
    )
    assert sorted(r.value for r in results) == ["busy", "claimed"]


async def test_forbid_holds_when_two_replicas_insert_at_once(
    replicas: Callable[..., Awaitable[Replica]], pg_store_url: str
) -> None:
    """Two replicas insert a run of one "forbid" schedule in the same instant (a manual run
    on one, a slot on the other): the gate counts under a lock, so exactly one is Queued."""
    a_store, _ = await replicas("a")
    b_store, _ = await replicas("b")
    forbid = TimeOptions(concurrency="forbid")
    for i in range(15):
        ra = dataclasses.replace(_run(f"slot:a{i}"), gate=forbid)
        rb = dataclasses.replace(_run(f"slot:b{i}"), gate=forbid)
        await asyncio.gather(
            a_store.record_slots([SlotBatch("s", NOW, [ra])], NOW),
            b_store.record_slots([SlotBatch("s", NOW, [rb])], NOW),
        )
        rows = _sql(pg_store_url, "SELECT status FROM runs WHERE id = ANY(%s)", [ra.id, rb.id])
        assert sorted(str(r[0]) for r in rows) == ["Queued", "Skipped"], (i, rows)
        _sql(pg_store_url, "UPDATE runs SET status = 'Completed' WHERE status = 'Queued'")


async def test_a_lost_replicas_runs_are_requeued_and_its_writes_refused(
    replicas: Callable[..., Awaitable[Replica]], pg_store_url: str
) -> None:
    a_store, a = await replicas("a")
    b_store, b = await replicas("b")
    run, other = _run("slot:1"), _run("slot:2")
    await a_store.record_slots([SlotBatch("s", NOW, [run, other])], NOW)
    assert await a_store.claim_run(run.id, replica_id="a", now=NOW, serial=False) is (
        ClaimResult.CLAIMED
    )
    assert await a_store.claim_run(other.id, replica_id="a", now=NOW, serial=False) is (
        ClaimResult.CLAIMED
    )
    assert await a_store.request_cancel(other.id) == "a"
    assert await a_store.cancel_requests() == [other.id]
    held = Claim("a", 1)
    assert await a_store.update_running(run.id, claim=held, remote_id="r-1")
    await a.beat(wanted=[], running=2)
    assert [(r.id, r.running) for r in await b.replicas()] == [("a", 2), ("b", 0)]

    pause(pg_store_url, "a")
    await b.beat(wanted=[], running=0)
    got = await b_store.get_run(run.id)
    assert got is not None and got.status is RunStatus.QUEUED
    assert (got.attempt, got.error) == (2, "replica a lost")
    canceled = await b_store.get_run(other.id)  # its cancel was asked for: not run again
    assert canceled is not None and canceled.status is RunStatus.CANCELED
    assert [r.id for r in await b.replicas()] == ["b"]
    until = await b.alive_until()
    assert until is not None and until < datetime.now(UTC)
    assert await a.alive_until() is not None  # b is alive: now + ttl
    # The paused replica wakes up: every status write of its old claim is refused.
    with pytest.raises(ClaimLost):
        await a_store.transition_run(
            run.id, RunStatus.COMPLETED, among=[RunStatus.RUNNING], now=NOW, claim=held
        )
    with pytest.raises(ClaimLost):
        await a_store.update_running(run.id, claim=held, remote_id="stale")
    assert await b_store.claim_run(run.id, replica_id="b", now=NOW, serial=False) is (
        ClaimResult.CLAIMED
    )
    with pytest.raises(ClaimLost):  # claimed elsewhere now
        await a_store.transition_run(run.id, RunStatus.FAILED, now=NOW, claim=held)
    moved, _ = await b_store.transition_run(
        run.id, RunStatus.COMPLETED, among=[RunStatus.RUNNING], now=NOW, claim=Claim("b", 2)
    )
    assert moved
    got = await b_store.get_run(run.id)
    assert got is not None and got.status is RunStatus.COMPLETED and got.remote_id == "r-1"
    # A write that lost a race (not a claim) is just "not moved".
    moved, _ = await b_store.transition_run(
        run.id, RunStatus.CANCELED, among=[RunStatus.RUNNING], now=NOW, claim=Claim("b", 2)
    )
    assert not moved


async def test_requeue_interrupted_takes_only_this_replicas_runs(
    replicas: Callable[..., Awaitable[Replica]],
) -> None:
    a_store, _ = await replicas("a")
    b_store, _ = await replicas("b")
    ra, rb = _run("slot:a"), _run("slot:b")
    await a_store.record_slots([SlotBatch("s", NOW, [ra, rb])], NOW)
    await a_store.claim_run(ra.id, replica_id="a", now=NOW, serial=False)
    await b_store.claim_run(rb.id, replica_id="b", now=NOW, serial=False)
    assert await a_store.requeue_interrupted("restarted", replica_id="a") == 1
    assert (await a_store.get_run(rb.id)).status is RunStatus.RUNNING  # type: ignore[union-attr]


# ── membership and config ────────────────────────────────────────────────────


async def test_the_newest_replicas_config_wins(
    replicas: Callable[..., Awaitable[Replica]],
) -> None:
    _, a = await replicas("a", config_hash="v1")
    assert (await a.beat(wanted=["s"], running=0)).config_ok
    _, b = await replicas("b", config_hash="v2")  # a rolling update starts
    ma = await a.beat(wanted=["s"], running=0)
    assert not ma.config_ok and dict(ma.leases) == {}  # stands by, holds nothing
    mb = await b.beat(wanted=["s"], running=0)
    assert mb.config_ok and dict(mb.leases) == {"s": 2}
    assert {r.id: r.config_hash for r in await b.replicas()} == {"a": "v1", "b": "v2"}


async def test_a_replica_id_in_use_on_another_host_is_refused(
    replicas: Callable[..., Awaitable[Replica]],
) -> None:
    await replicas("same", host="one")
    with pytest.raises(StateError, match="in use by a live replica on host one"):
        await replicas("same", host="two")
    _, again = await replicas("same", host="one")  # a restart on the same host is fine
    assert [r.host for r in await again.replicas()] == ["one"]


async def test_apply_config_is_serialized_across_replicas(
    replicas: Callable[..., Awaitable[Replica]],
) -> None:
    from tests.test_store import _schedule

    stores = [(await replicas(rid))[0] for rid in ("a", "b", "c")]
    seen: list[set[str]] = []

    def compute_for(rid: str) -> Callable[[Reading], ConfigWrite]:
        def compute(reading: Reading) -> ConfigWrite:
            seen.append(set(reading.schedules))
            return ConfigWrite(pipelines=[], schedules=[_schedule(rid, rid, NOW)])

        return compute

    await asyncio.gather(*(s.apply_config(compute_for(s.replica_id)) for s in stores))
    assert sorted(len(s) for s in seen) == [0, 1, 2]  # each saw every earlier write


# ── notifications ────────────────────────────────────────────────────────────


async def test_changes_reach_the_other_replicas(
    replicas: Callable[..., Awaitable[Replica]], pg_server: PostgresServer, pg_store_url: str
) -> None:
    from tests.test_store import _schedule

    a_store, a = await replicas("a")
    b_store, _ = await replicas("b")
    got: asyncio.Queue[Change] = asyncio.Queue()

    async def listen() -> None:
        async for change in a.changes():
            await got.put(change)

    task = asyncio.create_task(listen())
    try:
        assert await asyncio.wait_for(got.get(), 10) == Change("resync")
        await a_store.save_schedules([_schedule("mine", "mine", NOW)])  # not heard: ours
        await b_store.save_pipelines([])
        started = time.monotonic()
        await b_store.save_schedules([_schedule("s1", "one", NOW)])
        assert await asyncio.wait_for(got.get(), 5) == Change("schedule", "s1")
        assert time.monotonic() - started < 1.0
        await b_store.insert_manual(_run("manual:1"), None, NOW)  # named: read just that one
        assert await asyncio.wait_for(got.get(), 5) == Change("runs", _run("manual:1").id)
        await b_store.delete_schedule("s1")
        assert await asyncio.wait_for(got.get(), 5) == Change("schedule", "s1")
        run = _run("slot:9")
        await b_store.record_slots([SlotBatch("s", NOW, [run])], NOW)
        assert await asyncio.wait_for(got.get(), 5) == Change("runs", run.id)
        many = [_run(f"slot:m{i}") for i in range(RUNS_NOTICE_IDS + 1)]
        await b_store.record_slots([SlotBatch("s", NOW, many)], NOW)
        assert await asyncio.wait_for(got.get(), 5) == Change("runs")  # too many to name
        await b_store.record_slots([SlotBatch("s", NOW, many[:3])], NOW)  # none new: silent
        await a_store.claim_run(run.id, replica_id="a", now=NOW, serial=False)
        assert await b_store.request_cancel(run.id) == "a"
        assert await asyncio.wait_for(got.get(), 5) == Change("cancel", run.id)
        from watcherd.engine.ports import PipelineRow

        await b_store.save_pipelines([PipelineRow("p", "p", "Active", None)])
        assert await asyncio.wait_for(got.get(), 5) == Change("pipeline", "p")
        await b_store.set_pipeline_status("p", "Disabled")
        assert await asyncio.wait_for(got.get(), 5) == Change("pipeline", "p")
        # A bulk change is one "resync", not a flood.
        await b_store.save_schedules([_schedule(f"x{i}", f"x{i}", NOW) for i in range(100)])
        assert await asyncio.wait_for(got.get(), 5) == Change("resync")
        # The connection drops: the listener reconnects and asks for a resync.
        dbname = pg_store_url.rsplit("/", 1)[1]
        await asyncio.to_thread(pg_server.terminate_connections, dbname)
        assert await asyncio.wait_for(got.get(), 10) == Change("resync")
        await asyncio.sleep(IDLE_CHECK)  # b's pooled connections are checked before use
        await b_store.set_pipeline_status("p", "Active")
        assert await asyncio.wait_for(got.get(), 5) == Change("pipeline", "p")
        assert got.empty()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# ── schema versions ──────────────────────────────────────────────────────────


async def test_replicas_starting_together_migrate_once(pg_database: str) -> None:
    opened = await asyncio.gather(
        *(
            open_pg(pg_database, replica_id=f"r{i}", lease_ttl=TTL, clock=ManualClock(NOW))
            for i in range(3)
        )
    )
    try:
        rows = _sql(pg_database, "SELECT version FROM schema_version ORDER BY version")
        assert rows == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
    finally:
        for store, _ in opened:
            await store.close()


async def test_one_version_newer_works_two_refused(
    pg_database: str, pg_server: PostgresServer
) -> None:
    store, _ = await open_pg(pg_database, replica_id="old", lease_ttl=TTL, clock=ManualClock(NOW))
    try:
        # A newer watcherd migrated the database under us: an additive change.
        _sql(pg_database, "ALTER TABLE runs ADD COLUMN newer_thing text")
        _sql(pg_database, "INSERT INTO schema_version(version) VALUES (%s)", SCHEMA_VERSION + 1)
        run = _run("slot:1")
        for _ in range(6):  # past psycopg's prepare threshold
            await store.record_slots([SlotBatch("s", NOW, [run])], NOW)
            assert (await store.list_runs()).runs[0].id == run.id
        dbname = pg_database.rsplit("/", 1)[1]
        await asyncio.to_thread(pg_server.terminate_connections, dbname)
        assert await store.get_run(run.id) is not None  # reconnected: one version newer is fine
        # Two versions newer: refused on the next new connection, naming both versions.
        _sql(pg_database, "INSERT INTO schema_version(version) VALUES (%s)", SCHEMA_VERSION + 2)
        await asyncio.to_thread(pg_server.terminate_connections, dbname)
        with pytest.raises(SchemaTooNew) as too_new:
            for _ in range(3):
                await store.get_run(run.id)
        assert f"version {SCHEMA_VERSION + 2}" in str(too_new.value)
        assert f"schema {SCHEMA_VERSION}" in str(too_new.value)
    finally:
        await store.close()
    with pytest.raises(SchemaTooNew, match=f"version {SCHEMA_VERSION + 2} is too new"):
        await open_pg(pg_database, replica_id="late", lease_ttl=TTL, clock=ManualClock(NOW))


# ── outages and secrets ──────────────────────────────────────────────────────


async def test_database_down_raises_masked_state_errors_and_recovers(
    pg_server: PostgresServer,
    pg_database: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dbname = pg_database.rsplit("/", 1)[1]
    url = pg_server.password_dsn(dbname)
    store, cluster = await open_pg(
        url, replica_id="a", lease_ttl=TTL, clock=ManualClock(NOW), connect_timeout=1
    )
    try:
        await cluster.join(host="h", config_hash="c")
        run = _run("slot:1")
        await store.record_slots([SlotBatch("s", NOW, [run])], NOW)
        await asyncio.to_thread(pg_server.stop)  # "fast": no crash recovery to wait for
        errors = []
        for op in (
            store.get_run(run.id),
            store.record_slots([SlotBatch("s", NOW, [_run("slot:2")])], NOW),
            cluster.beat(wanted=["s"], running=0),
        ):
            with pytest.raises(StateError) as err:
                await op
            errors.append(str(err.value))
            assert err.value.__context__ is None and err.value.__cause__ is None
        await asyncio.to_thread(pg_server.start)
        assert (await store.get_run(run.id)) is not None  # the pool reconnected by itself
        assert (await cluster.beat(wanted=["s"], running=0)).leases
    finally:
        await store.close()
    out = capsys.readouterr()
    text = "\n".join(errors) + caplog.text + out.out + out.err
    assert "postgresql://***@127.0.0.1" in errors[0]
    for secret in (PASSWORD, "s3cr", "watcherd_pw", url):
        assert secret not in text
    assert text.count("database_unavailable") <= 1


async def test_after_an_outage_the_listener_is_back_with_the_first_heartbeat(
    pg_server: PostgresServer, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the database is down, LISTEN reconnects with a growing backoff (up to 10 s, in
    which another replica's disable would not reach this one, SPEC §12): a heartbeat that
    goes through ends the wait. The backoff is made 60 s here, so only that can end it."""
    from watcherd.state.postgres import cluster as cluster_mod

    dbname = pg_database.rsplit("/", 1)[1]
    url = pg_server.password_dsn(dbname)
    store, cluster = await open_pg(
        url, replica_id="a", lease_ttl=TTL, clock=ManualClock(NOW), connect_timeout=1
    )
    got: asyncio.Queue[Change] = asyncio.Queue()

    async def listen() -> None:
        async for change in cluster.changes():
            await got.put(change)

    task = asyncio.create_task(listen())
    try:
        await cluster.join(host="h", config_hash="c")
        assert await asyncio.wait_for(got.get(), 10) == Change("resync")
        monkeypatch.setattr(cluster_mod, "backoff_delay", lambda *_a, **_k: 60.0)
        with structlog.testing.capture_logs() as logs:
            await asyncio.to_thread(pg_server.stop)
            async with asyncio.timeout(30):  # the listener noticed, and waits its backoff
                while "listen_lost" not in [e["event"] for e in logs]:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        await asyncio.to_thread(pg_server.start)
        async with asyncio.timeout(30):
            while True:  # the pool may need a try or two after the restart
                try:
                    await cluster.beat(wanted=["s"], running=0)
                    break
                except StateError:
                    await asyncio.sleep(0.2)
        assert await asyncio.wait_for(got.get(), 5) == Change("resync")  # not 60 s later
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()


def test_the_url_never_appears_in_errors() -> None:
    bad = "postgresql://user:s3cret-pw@[::1/db"
    with pytest.raises(StateError) as err:
        parse_url(bad)
    assert "s3cret" not in str(err.value) and err.value.__context__ is None
    url = parse_url("postgresql://bob:p%40ss%3Aword@db.example:6432/prod?sslmode=require")
    assert url.display == "postgresql://***@db.example:6432/prod"
    assert str(url) == url.display and "p%40ss" not in repr(url)
    leak = 'connection to "postgresql://bob:p%40ss%3Aword@db.example:6432/prod?sslmode=require"'
    assert "p%40ss" not in url.mask(leak) and "p@ss:word" not in url.mask("pw p@ss:word")
    assert url.mask("host=x password='p@ss:word' dbname=y") == "host=x password=*** dbname=y"
    assert url.weak_tls()  # require ≠ verify-full on another host
    assert not parse_url("postgresql://x@db.example/p?sslmode=verify-full").weak_tls()
    assert not parse_url("postgresql://x@127.0.0.1/p").weak_tls()
    assert not parse_url("host=/var/run/postgresql dbname=p").weak_tls()
    conninfo = parse_url("host=db.example dbname=p user=u password=hunter22")
    assert conninfo.display == "postgresql://***@db.example/p" and conninfo.weak_tls()
    assert "hunter22" not in conninfo.mask("failed: password=hunter22 and hunter22")


async def test_weak_tls_is_logged(pg_store_url: str, caplog: pytest.LogCaptureFixture) -> None:
    # A non-local host name for our loopback server (hostaddr keeps it reachable).
    host = "db.invalid"
    url = pg_store_url.replace("@127.0.0.1:", f"@{host}:") + "?hostaddr=127.0.0.1"
    with structlog.testing.capture_logs() as logs:
        store, _ = await open_pg(url, replica_id="a", lease_ttl=TTL, clock=ManualClock(NOW))
        await store.close()
    warned = [e for e in logs if e["event"] == "database_tls_weak"]
    assert warned and warned[0]["database"].startswith("postgresql://***@db.invalid:")
    assert logging.getLogger("psycopg.pool").level >= logging.ERROR


async def test_password_from_pgpassword_or_pgpass(
    pg_server: PostgresServer,
    pg_store_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dbname = pg_store_url.rsplit("/", 1)[1]
    url = pg_server.password_dsn(dbname, with_password=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "absent"))
    monkeypatch.delenv("PGPASSWORD", raising=False)
    with pytest.raises(StateError, match="PGPASSWORD or ~/.pgpass") as err:
        await open_pg(url, replica_id="a", lease_ttl=TTL, clock=ManualClock(NOW))
    assert "postgresql://***@127.0.0.1" in str(err.value)
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(pg_server.pgpass_line())
    pgpass.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    store, _ = await open_pg(url, replica_id="a", lease_ttl=TTL, clock=ManualClock(NOW))
    await store.close()
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "absent"))
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    store, _ = await open_pg(url, replica_id="a", lease_ttl=TTL, clock=ManualClock(NOW))
    await store.close()


async def test_times_are_utc_whatever_the_session_time_zone(pg_store_url: str) -> None:
    url = pg_store_url + "?options=-c%20TimeZone%3DAmerica/New_York"
    store, _ = await open_pg(url, replica_id="a", lease_ttl=TTL, clock=ManualClock(NOW))
    try:
        run = _run("slot:1")
        await store.record_slots([SlotBatch("s", NOW, [run])], NOW)
        got = await store.get_run(run.id)
        assert got is not None and got.queued_at == NOW and got.queued_at.tzinfo is UTC
    finally:
        await store.close()


async def test_a_stale_save_never_moves_a_timer_cursor_back(
    replicas: Callable[..., Awaitable[Replica]],
) -> None:
    from dataclasses import replace

    from tests.test_store import _schedule

    a_store, a = await replicas("a")
    b_store, _ = await replicas("b")
    row = _schedule("s", "s", NOW)
    await a_store.save_schedules([row])
    m = await a.beat(wanted=["s"], running=0)
    later = NOW + timedelta(minutes=5)
    await a_store.record_slots([SlotBatch("s", later, [], epoch=m.leases["s"])], later)
    # Another replica disables it from the copy it read before the owner moved on.
    await b_store.save_schedules([replace(row, status="Disabled")])
    got = await b_store.load_schedule("s")
    assert got is not None and (got.status, got.cursor) == ("Disabled", later)
    # A new trigger re-anchors the timer: then the cursor is whatever the write says.
    await b_store.save_schedules([replace(row, trigger_key="k2", cursor=NOW)])
    assert (await b_store.load_schedule("s")).cursor == NOW  # type: ignore[union-attr]
    # The owner's own status writes can be fenced like its slots.
    with pytest.raises(LeaseLost):
        await b_store.save_schedules([replace(row, status="Active")], epochs={"s": 99})
    await a_store.save_schedules([replace(row, status="Active")], epochs=dict(m.leases))
