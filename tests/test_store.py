"""The state store port (`RunStore`): the outbox's UNIQUE keys, the transition table, pruning
and the declared-status rules; SQLite-specific checks (migrations, lock) at the end.

Store-level tests take the `store` fixture, so they run against every store implementation.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.clocks import ManualClock
from tests.engine_helpers import eventually, running_engine
from watcherd.core.errors import AlreadyRunning, InvalidTransition, StateError
from watcherd.core.models import RunStatus
from watcherd.core.runs import NewRun
from watcherd.engine.ports import RunStore, SlotBatch
from watcherd.state.sqlite.schema import SCHEMA_VERSION
from watcherd.state.sqlite.store import SqliteStore

NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunStore]:
    s = SqliteStore(tmp_path / "state")
    try:
        yield s
    finally:
        await s.close()


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
    from watcherd.state.sqlite import store as sqlite_store

    monkeypatch.setattr(sqlite_store, "PRUNE_BATCH", 7)
    runs = [_run(f"r{i}") for i in range(30)]
    when = NOW - timedelta(days=40)
    await store.record_slots([SlotBatch("s", NOW, runs)], when)
    for r in runs:
        await store.transition_run(r.id, RunStatus.SKIPPED, now=when, finished_at=when)
    assert await store.prune(NOW - timedelta(days=30)) == 30
    assert (await store.list_runs()).runs == []


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
        assert await h.manager.list_schedules(active_only=True) == []
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
