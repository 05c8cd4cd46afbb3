"""The state store port (`RunStore`): the outbox's UNIQUE keys, the transition table, pruning
and the declared-status rules; SQLite-specific checks (migrations, lock) at the end.

Store-level tests take the `store` fixture, so they run against every store implementation:
SQLite and PostgreSQL (a real server from tests/postgres.py). Replica-only behaviour (leases,
fencing, claims across replicas, notifications) is in test_replicas_store.py.
"""

# ruff: noqa: F811  (the imported fixtures are test parameters)

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType

import pytest

from tests.clocks import ManualClock
from tests.engine_helpers import eventually, running_engine
from watcherd.core.errors import AlreadyRunning, InvalidTransition, StateError
from watcherd.core.models import FileRef, RunStatus, StoredSchedule
from watcherd.core.runs import NewRun
from watcherd.engine.ports import (
    ClaimResult,
    Cluster,
    ConfigWrite,
    PipelineRow,
    Reading,
    RunStore,
    SlotBatch,
)
from watcherd.state.sqlite.cluster import SoloCluster
from watcherd.state.sqlite.schema import SCHEMA_VERSION
from watcherd.state.sqlite.store import SqliteStore

NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunStore]:
    s: RunStore
    if request.param == "sqlite":
        s = SqliteStore(tmp_path / "state")
    else:
        from watcherd.state.postgres import open_pg

        url = request.getfixturevalue("pg_store_url")
        s, _ = await open_pg(
            url, replica_id="r1", lease_ttl=timedelta(seconds=15), clock=ManualClock(NOW)
        )
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def cluster(request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    """The cluster of a lone daemon: SQLite's SoloCluster, or a PgCluster with no peer."""
    clock = ManualClock(NOW)
    if request.param == "sqlite":
        yield SoloCluster("r1", clock)
        return
    from watcherd.state.postgres import open_pg

    store, c = await open_pg(
        request.getfixturevalue("pg_store_url"),
        replica_id="r1",
        lease_ttl=timedelta(seconds=15),
        clock=clock,
    )
    try:
        yield c
    finally:
        await store.close()


async def test_a_lone_replica_holds_what_it_wants(cluster: Cluster) -> None:
    assert await cluster.join(host="h1", config_hash="c1")
    m = await cluster.beat(wanted=["a", "b"], running=2)
    assert dict(m.leases) == {"a": 1, "b": 1} and m.config_ok and m.replicas == 1
    assert m.valid_until > ManualClock(NOW).monotonic()
    [me] = await cluster.replicas()
    assert (me.id, me.host, me.schedules, me.running, me.config_hash) == (
        "r1", "h1", frozenset({"a", "b"}), 2, "c1",
    )  # fmt: skip
    assert await cluster.alive_until() is None  # nobody else ever ran
    await cluster.release(["a"])
    assert set((await cluster.replicas())[0].schedules) == {"b"}
    m = await cluster.beat(wanted=["b"], running=0)
    assert dict(m.leases) == {"b": 1}  # renewed: same epoch
    await cluster.leave()


def _run(dedup: str, schedule: str = "s") -> NewRun:
    return NewRun(
        schedule_id=schedule,
        pipeline_id="p",
        experiment="E",
        dedup=dedup,
        trigger={"kind": "time", "slot": dedup},
        parameters={},
    )


async def test_outbox_key_is_unique_and_run_id_stable(store: RunStore) -> None:
    run = _run("slot:x")
    assert await store.record_slots([SlotBatch("s", NOW, [run])], NOW) == [run.id]
    assert await store.record_slots([SlotBatch("s", NOW, [run])], NOW) == []
    page = await store.list_runs()
    assert [r.id for r in page.runs] == [run.id]
    ok, _ = await store.transition_run(
        run.id, RunStatus.COMPLETED, among=[RunStatus.RUNNING], now=NOW
    )
    assert not ok  # the run is Queued, not Running: nothing changes
    assert (await store.get_run(run.id)).status is RunStatus.QUEUED  # type: ignore[union-attr]


async def test_a_batch_with_runs_stored_already_adds_and_returns_only_the_new(
    store: RunStore,
) -> None:
    """Runs already stored are left as they are, a run repeated in the batch counts once (the
    first), a Skipped one is stored but not returned: the ids returned are the new Queued
    runs, in the batch's order, and each run is stored once."""
    a, b, c, d = (_run(f"slot:{k}") for k in "abcd")
    assert await store.record_slots([SlotBatch("s", NOW, [a, b])], NOW) == [a.id, b.id]
    skipped = _run("slot:e").skipped("queue full")
    later = NOW + timedelta(minutes=1)
    got = await store.record_slots([SlotBatch("s", later, [c, a, d, c, skipped, b])], later)
    assert got == [c.id, d.id]
    page = await store.list_runs(limit=50)
    assert sorted(r.id for r in page.runs) == sorted({a.id, b.id, c.id, d.id, skipped.id})
    stored_a = await store.get_run(a.id)
    assert stored_a is not None and stored_a.queued_at == NOW  # not re-inserted
    assert await store.record_slots([SlotBatch("s", later, [a, b])], later) == []


async def test_a_refused_move_raises_invalid_transition(store: RunStore) -> None:
    run = _run("slot:y")
    await store.record_slots([SlotBatch("s", NOW, [run])], NOW)
    with pytest.raises(InvalidTransition, match="Queued to Completed"):
        await store.transition_run(run.id, RunStatus.COMPLETED, among=[RunStatus.QUEUED], now=NOW)
    ok, _ = await store.transition_run(run.id, RunStatus.RUNNING, now=NOW, started_at=NOW)
    assert ok
    got = await store.get_run(run.id)
    assert got is not None and got.status is RunStatus.RUNNING and got.started_at == NOW


async def test_retention_prunes_only_old_finished_runs(store: RunStore) -> None:
    old, new, queued = _run("old"), _run("new"), _run("queued")
    await store.record_slots([SlotBatch("s", NOW, [old, queued])], NOW - timedelta(days=40))
    await store.record_slots([SlotBatch("s", NOW, [new])], NOW)
    for r, when in ((old, NOW - timedelta(days=40)), (new, NOW)):
        await store.transition_run(r.id, RunStatus.RUNNING, now=when)
        await store.transition_run(r.id, RunStatus.COMPLETED, now=when, finished_at=when)
    assert await store.prune(NOW - timedelta(days=30)) == 1
    page = await store.list_runs()
    assert sorted(r.id for r in page.runs) == sorted([new.id, queued.id])


async def test_prune_works_in_batches(store: RunStore, monkeypatch: pytest.MonkeyPatch) -> None:
    from watcherd.state.postgres import store as pg_store
    from watcherd.state.sqlite import store as sqlite_store

    monkeypatch.setattr(sqlite_store, "PRUNE_BATCH", 7)
    monkeypatch.setattr(pg_store, "PRUNE_BATCH", 7)
    runs = [_run(f"r{i}") for i in range(30)]
    when = NOW - timedelta(days=40)
    await store.record_slots([SlotBatch("s", NOW, runs)], when)
    for r in runs:
        await store.transition_run(r.id, RunStatus.SKIPPED, now=when, finished_at=when)
    assert await store.prune(NOW - timedelta(days=30)) == 30
    assert (await store.list_runs()).runs == []


def _file_run(name: bytes, version: str, schedule: str = "f") -> NewRun:
    return NewRun(
        schedule_id=schedule,
        pipeline_id="p",
        experiment="Files",
        dedup=f"file:{name.hex()}:{version}",
        trigger={
            "kind": "file",
            "datastore": "d",
            "path": name.decode(errors="backslashreplace"),
            "version": version,
        },
        parameters={"k": "v"},
        file=FileRef(
            datastore="d",
            relative_path=name,
            local_path=b"/data/" + name,
            url=None,
            version=version,
            parameter="input",
        ),
    )


def _schedule(ident: str, name: str, created: datetime, **kw: object) -> StoredSchedule:
    fields: dict[str, object] = {
        "id": ident,
        "name": name,
        "source": "api",
        "status": "Active",
        "file_status": None,
        "spec": {"name": name, "recurrence": {"frequency": "Minute", "interval": 1}},
        "trigger_key": "k1",
        "anchor": created,
        "cursor": created,
        "created_at": created,
        "updated_at": created,
    }
    fields.update(kw)
    return StoredSchedule(**fields)  # type: ignore[arg-type]


async def test_pipelines_round_trip(store: RunStore) -> None:
    assert await store.load_pipelines() == {}
    rows = [PipelineRow("p1", "one", "Active", "Active"), PipelineRow("p2", "two", "Active", None)]
    await store.save_pipelines(rows)
    assert await store.load_pipelines() == {r.id: r for r in rows}
    await store.set_pipeline_status("p1", "Disabled")
    await store.save_pipelines([PipelineRow("p2", "renamed", "Disabled", "Disabled")])
    assert await store.load_pipelines() == {
        "p1": PipelineRow("p1", "one", "Disabled", "Active"),
        "p2": PipelineRow("p2", "renamed", "Disabled", "Disabled"),
    }


async def test_schedules_round_trip_in_creation_order(store: RunStore) -> None:
    later = _schedule("b", "beta", NOW + timedelta(seconds=1))
    first = _schedule("a", "alpha", NOW, anchor=None, cursor=None, trigger_key=None)
    same_time = _schedule("c", "Alpha2", NOW, source="file", file_status="Disabled")
    await store.save_schedules([later, first, same_time])
    got = await store.load_schedules()
    assert [s.id for s in got] == ["c", "a", "b"]  # created_at, then name (bytewise)
    assert got == [same_time, first, later]
    assert await store.load_schedule("a") == first
    assert await store.load_schedule("zzz") is None
    moved = _schedule(
        "b", "beta", NOW + timedelta(seconds=1), status="Disabled",
        cursor=NOW + timedelta(minutes=5), updated_at=NOW + timedelta(minutes=6),
    )  # fmt: skip
    await store.save_schedules([moved])
    assert await store.load_schedule("b") == moved


async def test_delete_schedule_drops_its_snapshot_but_keeps_its_runs(store: RunStore) -> None:
    await store.save_schedules([_schedule("f", "files", NOW)])
    run = _file_run(b"x.csv", "v1")
    await store.commit_changes("f", "K", [(b"x.csv", "v1")], [], [run], NOW, marker="m")
    await store.delete_schedule("f")
    assert await store.load_schedule("f") is None
    assert await store.load_snapshot("f", "K") is None
    assert await store.load_marker("f", "K") is None
    assert [r.id for r in (await store.list_runs()).runs] == [run.id]


async def test_apply_config_reads_computes_and_writes(store: RunStore) -> None:
    await store.save_pipelines([PipelineRow("p1", "one", "Active", "Active")])
    await store.save_schedules([_schedule("a", "alpha", NOW)])
    seen: list[Reading] = []

    def compute(reading: Reading) -> ConfigWrite:
        seen.append(reading)
        changed = _schedule("a", "alpha", NOW, status="Disabled")
        return ConfigWrite(
            pipelines=[PipelineRow("p1", "one", "Disabled", "Disabled")],
            schedules=[changed, _schedule("n", "new", NOW)],
            result="plan",
        )

    out = await store.apply_config(compute)
    assert out.result == "plan"
    assert list(seen[0].schedules) == ["a"] and list(seen[0].pipelines) == ["p1"]
    assert [(s.id, s.status) for s in await store.load_schedules()] == [
        ("a", "Disabled"),
        ("n", "Active"),
    ]
    assert (await store.load_pipelines())["p1"].status == "Disabled"

    def failing(reading: Reading) -> ConfigWrite:
        raise RuntimeError("bad plan")

    with pytest.raises(RuntimeError, match="bad plan"):
        await store.apply_config(failing)
    assert len(await store.load_schedules()) == 2


async def test_the_applied_mark_is_kept_and_dropped_by_any_other_write_of_a_declared_row(
    store: RunStore,
) -> None:
    """apply_config keeps ConfigWrite.applied and reads it back; a write of a declared row's
    spec, trigger, file status or source by anything else (triggers, in the database) drops
    it; cursors, next slots, statuses and API rows leave it."""
    declared = _schedule("f", "file-one", NOW, source="file", file_status="Active")

    async def apply(applied: str | None, *rows: StoredSchedule) -> str | None:
        seen: list[str | None] = []

        def compute(reading: Reading) -> ConfigWrite:
            seen.append(reading.applied)
            return ConfigWrite(pipelines=[], schedules=list(rows), applied=applied)

        await store.apply_config(compute)
        return seen[0]

    assert await apply("m1", declared) is None
    assert await apply("m1") == "m1"
    await store.record_slots([SlotBatch("f", NOW + timedelta(minutes=1), [])], NOW)
    await store.save_timer_hints([("f", "key", NOW)])
    await store.save_schedules([dataclasses.replace(declared, status="Disabled")])
    await store.save_schedules([_schedule("a", "api-one", NOW)])
    assert await apply("m1") == "m1"
    for changed in (
        dataclasses.replace(declared, spec={"name": "file-one", "description": "x"}),
        dataclasses.replace(declared, trigger_key="k2"),
        dataclasses.replace(declared, file_status="Disabled"),
        dataclasses.replace(declared, source="removed"),
    ):
        await store.save_schedules([changed])
        assert await apply("m2", declared) is None  # dropped; the apply writes it back
        assert await apply("m2") == "m2"
    await store.delete_schedule("f")
    assert await apply("m3") is None


async def test_record_slots_advances_cursors_and_returns_queued_ids(store: RunStore) -> None:
    await store.save_schedules([_schedule("s", "s", NOW), _schedule("t", "t", NOW)])
    a, b = _run("slot:a"), _run("slot:b").skipped("queue full")
    c = _run("slot:c", schedule="t")
    later = NOW + timedelta(minutes=3)
    got = await store.record_slots([SlotBatch("s", later, [a, b]), SlotBatch("t", later, [c])], NOW)
    assert got == [a.id, c.id]  # the Skipped run is recorded, not returned
    assert (await store.load_schedule("s")).cursor == later  # type: ignore[union-attr]
    assert (await store.load_schedule("t")).cursor == later  # type: ignore[union-attr]
    skipped = await store.get_run(b.id)
    assert skipped is not None and skipped.status is RunStatus.SKIPPED
    assert skipped.error == "queue full" and skipped.finished_at == NOW
    assert await store.experiments() == ["E"]
    assert [r.id for r in await store.queued_runs()] == [a.id, c.id]


async def test_a_batch_inserts_each_run_once_whatever_is_stored(store: RunStore) -> None:
    """One batch with runs already stored, a run repeated in it, and new runs of two
    experiments: only the new ones are inserted (the first of a repeated id), returned in
    batch order, and their experiments listed."""
    await store.save_schedules([_schedule("s", "s", NOW)])
    old = _run("slot:old")
    assert await store.record_slots([SlotBatch("s", NOW, [old])], NOW) == [old.id]
    a = _run("slot:a")
    b = dataclasses.replace(_run("slot:b"), experiment="F")
    again = _run("slot:a").skipped("a later copy of a")
    got = await store.record_slots([SlotBatch("s", NOW, [old, a, b, again])], NOW)
    assert got == [a.id, b.id]
    stored_a = await store.get_run(a.id)
    assert stored_a is not None and stored_a.status is RunStatus.QUEUED
    assert sorted(await store.experiments()) == ["E", "F"]
    assert len((await store.list_runs()).runs) == 3


async def test_snapshot_baseline_and_marker(store: RunStore) -> None:
    assert await store.load_snapshot("f", "K") is None
    r1 = _file_run(b"a.csv", "1")
    ids = await store.commit_changes(
        "f", "K", [(b"a.csv", "1"), (b"b\xff.csv", "1"), (b"a.csv", "1")], [], [r1], NOW
    )
    assert ids == [r1.id]
    assert await store.load_snapshot("f", "K") == {b"a.csv": "1", b"b\xff.csv": "1"}
    assert await store.load_snapshot("f", "other") is None
    assert await store.load_marker("f", "K") is None
    # A listing interrupted mid-way keeps its marker; None leaves it, "" clears it.
    await store.commit_changes("f", "K", [(b"c.csv", "1")], [b"a.csv"], [], NOW, marker="page2")
    assert await store.load_marker("f", "K") == "page2"
    assert await store.load_marker("f", "other") is None
    await store.commit_changes("f", "K", [], [], [], NOW)
    assert await store.load_marker("f", "K") == "page2"
    await store.commit_changes("f", "K", [], [], [], NOW, marker="")
    assert await store.load_marker("f", "K") is None
    assert await store.load_snapshot("f", "K") == {b"b\xff.csv": "1", b"c.csv": "1"}
    # A new baseline key starts afresh.
    await store.commit_changes("f", "K2", [(b"z", "9")], [], [], NOW, marker="m")
    assert await store.load_snapshot("f", "K") is None
    assert await store.load_snapshot("f", "K2") == {b"z": "9"}
    await store.commit_changes("f", "K3", [], [], [], NOW)
    assert await store.load_marker("f", "K3") is None  # the new baseline has no marker
    await store.drop_baseline("f")
    assert await store.load_snapshot("f", "K3") is None
    # The same file version is queued once.
    assert await store.commit_changes("f", "K", [(b"a.csv", "1")], [], [r1], NOW) == []


async def test_file_runs_keep_their_file(store: RunStore) -> None:
    run = _file_run(b"dir/\xfe.bin", "v7")
    await store.commit_changes("f", "K", [(b"dir/\xfe.bin", "v7")], [], [run], NOW)
    got = await store.get_run(run.id)
    assert got is not None and got.file == run.file
    assert got.parameters == {"k": "v"} and got.experiment_name == "Files"
    assert got.trigger["kind"] == "file" and got.queued_at == NOW


async def test_insert_manual_once_per_idempotency_key(store: RunStore) -> None:
    first, second = _run("manual:1"), _run("manual:2")
    assert await store.insert_manual(first, "key", NOW) == first.id
    assert await store.insert_manual(second, "key", NOW) == first.id
    assert await store.insert_manual(second, None, NOW) == second.id
    assert sorted(r.id for r in (await store.list_runs()).runs) == sorted([first.id, second.id])
    # A key outlives the retention while its run is unfinished: a client retrying after a
    # restart gets that run back, never a second one.
    assert await store.prune(NOW + timedelta(days=1)) == 0
    assert await store.insert_manual(_run("manual:3"), "key", NOW) == first.id
    # Once its run finished, the key goes with the runs of its age.
    await store.transition_run(first.id, RunStatus.CANCELED, now=NOW, finished_at=NOW)
    assert await store.prune(NOW + timedelta(days=1)) == 1
    assert await store.insert_manual(_run("manual:3"), "key", NOW) == _run("manual:3").id


async def test_listing_filters_and_cursor(store: RunStore) -> None:
    runs = [_run(f"slot:{i}", schedule="s" if i % 2 else "t") for i in range(7)]
    for r in runs:
        await store.record_slots([SlotBatch(r.schedule_id, NOW, [r])], NOW)
    await store.transition_run(runs[0].id, RunStatus.CANCELED, now=NOW, finished_at=NOW)
    newest_first = [r.id for r in reversed(runs)]
    seen: list[str] = []
    cursor = None
    while True:
        page = await store.list_runs(limit=3, cursor=cursor)
        seen += [r.id for r in page.runs]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == newest_first
    by_s = await store.list_runs(schedule_id="s")
    assert [r.id for r in by_s.runs] == [r.id for r in reversed(runs) if r.schedule_id == "s"]
    assert [r.id for r in (await store.list_runs(status="Canceled")).runs] == [runs[0].id]
    assert (await store.list_runs(pipeline_id="other")).runs == []
    assert len((await store.list_runs(pipeline_id="p", limit=100)).runs) == 7
    got = await store.get_runs([runs[3].id, runs[1].id, "missing"])
    assert [r.id for r in got] == [runs[1].id, runs[3].id]  # insertion order
    assert await store.get_runs([]) == []
    assert await store.get_run("missing") is None
    last = await store.last_runs()
    assert {k: v.id for k, v in last.items()} == {"s": runs[5].id, "t": runs[6].id}
    named = await store.last_runs(["t", "none"])  # one schedule's page reads only its own
    assert {k: v.id for k, v in named.items()} == {"t": runs[6].id}
    assert await store.last_runs([]) == {}
    # A pipeline's newest run, scheduled or submitted (no schedule), whatever its schedule.
    other = dataclasses.replace(_run("manual:q", schedule=""), pipeline_id="q")
    await store.insert_manual(other, None, NOW)
    newest = await store.last_pipeline_runs(["p", "q", "none"])
    assert {k: v.id for k, v in newest.items()} == {"p": runs[6].id, "q": other.id}
    assert newest["q"].schedule_id == ""


async def test_claims_serialize_a_file_and_a_serial_schedule(store: RunStore) -> None:
    v1, v2, other = _file_run(b"a", "1"), _file_run(b"a", "2"), _file_run(b"b", "1")
    await store.commit_changes("f", "K", [], [], [v1, v2, other], NOW)
    claim = store.claim_run
    assert await claim(v1.id, replica_id="r1", now=NOW, serial=False) is ClaimResult.CLAIMED
    assert await claim(v1.id, replica_id="r1", now=NOW, serial=False) is ClaimResult.GONE
    assert await claim(v2.id, replica_id="r1", now=NOW, serial=False) is ClaimResult.BUSY
    assert await claim(other.id, replica_id="r1", now=NOW, serial=False) is ClaimResult.CLAIMED
    assert await claim("missing", replica_id="r1", now=NOW, serial=False) is ClaimResult.GONE
    got = await store.get_run(v1.id)
    assert got is not None and got.status is RunStatus.RUNNING and got.started_at == NOW
    assert (await store.get_run(v2.id)).status is RunStatus.QUEUED  # type: ignore[union-attr]
    await store.transition_run(v1.id, RunStatus.COMPLETED, now=NOW, finished_at=NOW)
    assert await claim(v2.id, replica_id="r1", now=NOW, serial=False) is ClaimResult.CLAIMED
    # serial (concurrency "queue"): one Running run per schedule.
    s1, s2 = _run("slot:1"), _run("slot:2")
    await store.record_slots([SlotBatch("s", NOW, [s1, s2])], NOW)
    assert await claim(s1.id, replica_id="r1", now=NOW, serial=True) is ClaimResult.CLAIMED
    assert await claim(s2.id, replica_id="r1", now=NOW, serial=True) is ClaimResult.BUSY
    assert await claim(s2.id, replica_id="r1", now=NOW, serial=False) is ClaimResult.CLAIMED


async def test_run_lifecycle_fields_log_and_followups(store: RunStore) -> None:
    run = _run("slot:1")
    await store.record_slots([SlotBatch("s", NOW, [run])], NOW)
    await store.claim_run(run.id, replica_id="r1", now=NOW, serial=False)
    retry_at = NOW + timedelta(seconds=30)
    attempts = ({"attempt": 1, "error": "503"},)
    assert await store.update_running(
        run.id, attempt=2, next_attempt_at=retry_at, attempts=attempts
    )
    got = await store.get_run(run.id)
    assert got is not None and (got.attempt, got.next_attempt_at) == (2, retry_at)
    assert got.attempts == attempts
    with pytest.raises(ValueError, match="cannot be set"):
        await store.update_running(run.id, status="Completed")
    follow = NewRun(
        schedule_id="s", pipeline_id="on-fail", experiment="E", dedup=f"on_failure:{run.id}",
        trigger={"kind": "on_failure", "run_id": run.id}, parameters={},
    )  # fmt: skip
    moved, ids = await store.transition_run(
        run.id, RunStatus.FAILED, among=[RunStatus.RUNNING], followups=[follow], now=NOW,
        finished_at=NOW, error="boom", exit_code=3, log=b"out\x00put",
    )  # fmt: skip
    assert moved and ids == [follow.id]
    got = await store.get_run(run.id)
    assert got is not None and (got.status, got.error, got.exit_code) == (
        RunStatus.FAILED,
        "boom",
        3,
    )
    assert await store.run_log(run.id) == b"out\x00put"
    assert await store.run_log(follow.id) is None
    assert await store.run_log("missing") is None
    assert not await store.update_running(run.id, attempt=5)  # no longer Running
    # Retry: terminal → Queued.
    moved, _ = await store.transition_run(run.id, RunStatus.QUEUED, now=NOW, error=None)
    assert moved and (await store.get_run(run.id)).status is RunStatus.QUEUED  # type: ignore[union-attr]


async def test_skip_and_requeue(store: RunStore) -> None:
    a, b, c = _run("slot:a"), _run("slot:b"), _run("slot:c")
    await store.record_slots([SlotBatch("s", NOW, [a, b, c])], NOW)
    await store.claim_run(c.id, replica_id="r1", now=NOW, serial=False)
    await store.skip_runs([a.id, c.id], "schedule disabled", NOW)
    got = {r.id: r for r in await store.get_runs([a.id, b.id, c.id])}
    assert got[a.id].status is RunStatus.SKIPPED and got[a.id].error == "schedule disabled"
    assert got[c.id].status is RunStatus.RUNNING  # only Queued runs are skipped
    assert await store.requeue_interrupted("interrupted", replica_id="r1") == 1
    again = await store.get_run(c.id)
    assert again is not None and again.status is RunStatus.QUEUED
    assert (again.attempt, again.error) == (2, "interrupted")
    assert await store.requeue_interrupted("interrupted", replica_id="r1") == 0


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
status = "{status}"
recurrence = {{ frequency = "Day", interval = 1, start_time = "2026-12-01T00:00:00" }}
"""


async def test_runtime_status_survives_restart_until_the_file_changes(tmp_path: Path) -> None:
    clock = ManualClock(NOW)
    async with running_engine(tmp_path, SCHED.format(status="Active"), clock) as h:
        await h.manager.set_schedule_status("s", "Disabled")
    async with running_engine(tmp_path, SCHED.format(status="Active"), clock) as h:
        assert (await h.manager.get_schedule("s"))["status"] == "Disabled"  # runtime status kept
    async with running_engine(tmp_path, SCHED.format(status="Disabled"), clock) as h:
        assert (await h.manager.get_schedule("s"))["status"] == "Disabled"
    async with running_engine(tmp_path, SCHED.format(status="Active"), clock) as h:
        got = await h.manager.get_schedule("s")
        assert got["status"] == "Active"  # the file changed: applied
        assert (await h.manager.get_schedule("s"))["next_fire_times"][0] == "2026-12-01T00:00:00Z"


async def test_schedule_removed_from_file_is_disabled_and_restored(tmp_path: Path) -> None:
    clock = ManualClock(NOW)
    text = SCHED.format(status="Active")
    async with running_engine(tmp_path, text, clock) as h:
        sid = (await h.manager.get_schedule("s"))["id"]
    head = text.split("[[schedules]]")[0]
    async with running_engine(tmp_path, head, clock) as h:
        got = await h.manager.get_schedule(sid)
        assert (got["status"], got["source"]) == ("Disabled", "removed")
        assert (await h.manager.list_schedules(active_only=True))[0] == []
    async with running_engine(tmp_path, text, clock) as h:
        got = await h.manager.get_schedule(sid)
        assert (got["status"], got["source"]) == ("Active", "file")
        await eventually(lambda: h.manager.readiness()[0])


# ── SQLite only ──────────────────────────────────────────────────────────────


def test_migrates_an_empty_file_and_refuses_a_newer_schema(tmp_path: Path) -> None:
    SqliteStore(tmp_path).db.close()
    conn = sqlite3.connect(tmp_path / "state.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StateError, match="newer"):
        SqliteStore(tmp_path)


def test_second_store_on_same_dir_is_refused(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path)
    try:
        with pytest.raises(AlreadyRunning, match="another watcherd"):
            SqliteStore(tmp_path)
    finally:
        s.db.close()
    SqliteStore(tmp_path).db.close()  # released on close


async def test_next_slots_are_stored_with_their_key(store: RunStore) -> None:
    """A timer commit stores each schedule's next slot with the key it was computed for;
    save_timer_hints stores more; a batch without one clears it; saving the schedule row
    again (a status change) keeps it, for the reader to validate."""
    t0 = NOW - timedelta(hours=1)
    await store.save_schedules([_schedule("a", "A", t0), _schedule("b", "B", t0)])
    assert (await store.load_schedule("a")).next_hint is None  # type: ignore[union-attr]
    due = NOW + timedelta(minutes=1)
    await store.record_slots(
        [SlotBatch("a", NOW, [_run("slot:h")], hint=("key-a", due)), SlotBatch("b", NOW, [])],
        NOW,
    )
    rows = {r.id: r for r in await store.load_schedules()}
    assert rows["a"].next_hint == ("key-a", due) and rows["a"].cursor == NOW
    assert rows["b"].next_hint is None
    await store.save_timer_hints([("b", "key-b", None), ("a", "key-a2", due)])  # None: ended
    rows = {r.id: r for r in await store.load_schedules()}
    assert rows["a"].next_hint == ("key-a2", due) and rows["b"].next_hint == ("key-b", None)
    await store.save_schedules([_schedule("a", "A", t0, status="Disabled", cursor=NOW)])
    assert (await store.load_schedule("a")).next_hint == ("key-a2", due)  # type: ignore[union-attr]
    await store.record_slots([SlotBatch("a", due, [])], due)  # a catch-up batch: no hint
    assert (await store.load_schedule("a")).next_hint is None  # type: ignore[union-attr]


async def test_closing_while_reads_run_finishes_them_or_refuses_them(tmp_path: Path) -> None:
    """Reads in flight when the store closes end normally; later ones raise StateError. The
    reader connections used to be closed under a running query: a segfault of the process."""
    import asyncio

    from watcherd.state.sqlite.database import Database

    db = Database(tmp_path / "state")
    count = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "

    def slow(conn: sqlite3.Connection, rows: int) -> int:
        return int(conn.execute(count + "SELECT count(*) FROM n", (rows,)).fetchone()[0])

    reads = [asyncio.ensure_future(db.read(slow, 300_000)) for _ in range(4)]
    await asyncio.sleep(0.01)  # the readers are inside their queries
    await asyncio.to_thread(db.close)
    done = await asyncio.gather(*reads, return_exceptions=True)
    assert all(r == 300_000 or isinstance(r, StateError) for r in done), done
    assert any(r == 300_000 for r in done)
    with pytest.raises(StateError, match="closed"):
        await db.read(slow, 1)


def test_a_plain_runs_short_insert_stores_the_row_the_full_one_would(tmp_path: Path) -> None:
    """A run with no file, no error and not finished binds only the columns it sets
    (`runs_sql._INSERT_PLAIN`): every column of its row is what the full statement stores,
    and a batch of mixed runs keeps its order (seq is the dispatch order)."""
    from watcherd.state.sqlite import runs as runs_sql
    from watcherd.state.sqlite.schema import migrate

    ref = FileRef(
        datastore="d", relative_path=b"in/\xffa.csv", version="1:2:3", local_path=b"/r/in/a",
        parameter="input_path",
    )  # fmt: skip
    runs = [
        _run("slot:a"),
        dataclasses.replace(_run("file:1"), file=ref),
        _run("slot:b").skipped("queue full"),  # an error, and finished
        NewRun(
            schedule_id="s",
            pipeline_id="p",
            experiment="E2",
            dedup="manual:n",
            trigger={"kind": "manual", "by": "api"},
            parameters={"a": "1", "b": "é\n"},
        ),  # fmt: skip
        _run("slot:c"),
    ]
    # Runs sharing their trigger and parameters objects (a slot's runs, a schedule's runs;
    # each mapping's JSON is made once per batch: `jsontext.mapping_json_once`), then one with
    # other mappings of other contents: every row holds its own run's JSON.
    shared_trigger: Mapping[str, object] = MappingProxyType({"kind": "time", "slot": "d"})
    shared_params = {"x": "1"}
    runs += [
        dataclasses.replace(_run("slot:d", schedule=sid), trigger=shared_trigger,
                            parameters=shared_params)
        for sid in ("s2", "s3")
    ]  # fmt: skip
    runs.append(
        dataclasses.replace(_run("slot:e", schedule="s2"), trigger={**shared_trigger, "slot": "e"},
                            parameters={**shared_params, "x": "2"})
    )  # fmt: skip
    tables = []
    for name, insert in (("short", runs_sql.insert_runs), ("full", None)):
        conn = sqlite3.connect(tmp_path / f"{name}.db", isolation_level=None)
        migrate(conn)
        cur = conn.cursor()
        if insert is not None:
            assert insert(cur, runs, NOW) == [runs[i].id for i in (0, 1, 3, 4, 5, 6, 7)]
        else:
            ts = runs_sql.format_utc(NOW, micro=True)
            rows = [runs_sql._row(r, ts, runs_sql.mapping_json) for r in runs]
            cur.executemany(runs_sql._INSERT, rows)
        tables.append(conn.execute("SELECT * FROM runs ORDER BY seq").fetchall())
        conn.close()
    short, full = tables
    assert short == full
    assert [row[1] for row in short] == [r.id for r in runs]  # in the batch's order
    assert [runs_sql._statement(r, "")[0] for r in runs].count(runs_sql._INSERT_PLAIN) == 6
    assert [json.loads(row[7]) for row in short[-3:]] == [r.trigger for r in runs[-3:]]
    assert [json.loads(row[8]) for row in short[-3:]] == [r.parameters for r in runs[-3:]]
