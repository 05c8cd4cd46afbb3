"""The state database: migrations, the lock, the outbox's UNIQUE keys, declared-status rules."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.clocks import ManualClock
from tests.engine_helpers import eventually, running_engine
from watcherd.core.errors import AlreadyRunning, StateError
from watcherd.core.models import RunStatus
from watcherd.state.sqlite.store import SCHEMA_VERSION, NewRun, Store

NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def test_migrates_an_empty_file_and_refuses_a_newer_schema(tmp_path: Path) -> None:
    s = Store(tmp_path)
    s.close()
    conn = sqlite3.connect(tmp_path / "state.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StateError, match="newer"):
        Store(tmp_path)


def test_second_store_on_same_dir_is_refused(tmp_path: Path) -> None:
    s = Store(tmp_path)
    try:
        with pytest.raises(AlreadyRunning, match="another watcherd"):
            Store(tmp_path)
    finally:
        s.close()
    Store(tmp_path).close()  # released on close


def test_outbox_key_is_unique_and_run_id_stable(tmp_path: Path) -> None:
    s = Store(tmp_path)
    try:
        run = NewRun(
            schedule_id="s",
            pipeline_id="p",
            experiment="E",
            dedup="slot:x",
            trigger={"kind": "time", "slot": "x"},
            parameters={},
        )
        assert s.sync(s.insert_runs, [run], NOW) == [run.id]
        assert s.sync(s.insert_runs, [run], NOW) == []
        runs, _ = s.sync(s.list_runs)
        assert [r.id for r in runs] == [run.id]
        ok, _ = s.sync(s.update_run, run.id, expect=[RunStatus.RUNNING], status=RunStatus.COMPLETED)
        assert not ok  # a refused transition changes nothing
    finally:
        s.close()


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
        assert h.manager.get_schedule("s")["status"] == "Disabled"  # runtime status kept
    async with running_engine(tmp_path, SCHED.format(status="Disabled"), clock) as h:
        assert h.manager.get_schedule("s")["status"] == "Disabled"
    async with running_engine(tmp_path, SCHED.format(status="Active"), clock) as h:
        assert h.manager.get_schedule("s")["status"] == "Active"  # the file changed: applied
        assert h.manager.get_schedule("s")["next_fire_times"][0] == "2026-12-01T00:00:00Z"


async def test_schedule_removed_from_file_is_disabled_and_restored(tmp_path: Path) -> None:
    clock = ManualClock(NOW)
    text = SCHED.format(status="Active")
    async with running_engine(tmp_path, text, clock) as h:
        sid = h.manager.get_schedule("s")["id"]
    head = text.split("[[schedules]]")[0]
    async with running_engine(tmp_path, head, clock) as h:
        got = h.manager.get_schedule(sid)
        assert (got["status"], got["source"]) == ("Disabled", "removed")
        assert h.manager.list_schedules(active_only=True) == []
    async with running_engine(tmp_path, text, clock) as h:
        got = h.manager.get_schedule(sid)
        assert (got["status"], got["source"]) == ("Active", "file")
        await eventually(lambda: h.manager.readiness()[0])


def test_retention_prunes_only_old_finished_runs(tmp_path: Path) -> None:
    from datetime import timedelta

    s = Store(tmp_path)
    try:

        def run(dedup: str) -> NewRun:
            return NewRun(
                schedule_id="s",
                pipeline_id="p",
                experiment="E",
                dedup=dedup,
                trigger={"kind": "time", "slot": dedup},
                parameters={},
            )

        old, new, queued = run("old"), run("new"), run("queued")
        s.sync(s.insert_runs, [old, queued], NOW - timedelta(days=40))
        s.sync(s.insert_runs, [new], NOW)
        for r, when in ((old, NOW - timedelta(days=40)), (new, NOW)):
            s.sync(s.update_run, r.id, status=RunStatus.COMPLETED, finished_at=when)
        assert s.sync(s.prune, NOW - timedelta(days=30)) == 1
        runs, _ = s.sync(s.list_runs)
        assert sorted(r.id for r in runs) == sorted([new.id, queued.id])
    finally:
        s.close()
