"""`SqliteStore`: the engine's `RunStore` port on one SQLite file in state_dir (the default).

Writes go through the database's writer thread in group commits; reads go to reader threads,
so neither blocks the event loop and an API read never waits behind a long write.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from watcherd.core.models import Run, RunStatus, StoredSchedule
from watcherd.core.runs import NewRun
from watcherd.core.stored_spec import StoredSpec, spec_text
from watcherd.core.timefmt import format_utc, utc_texts, utc_values
from watcherd.engine.ports import (
    Claim,
    ClaimResult,
    ConfigWrite,
    PipelineRow,
    Reading,
    RunPage,
    SlotBatch,
)
from watcherd.state.sqlite import runs as runs_sql
from watcherd.state.sqlite.database import Database, Tx
from watcherd.state.sqlite.schema import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "SqliteStore"]

Conn = sqlite3.Connection

PRUNE_BATCH = 200  # rows per prune transaction (~10 ms at 1M runs): timers slip in between


class SqliteStore:
    """The state of one daemon in `state_dir/state.db`, guarded by `state_dir/lock`."""

    def __init__(self, state_dir: Path, *, read_only: bool = False, lock: bool = True) -> None:
        self.db = Database(state_dir, read_only=read_only, lock=lock)
        self.path = self.db.path
        self._last_seen: dict[str, Any] = {}  # newest run per schedule, by row (last_runs)
        self._pipeline_seen: dict[str, Any] = {}  # and per pipeline (last_pipeline_runs)

    async def close(self) -> None:
        await asyncio.to_thread(self.db.close)

    # ── pipelines ────────────────────────────────────────────────────────────

    async def load_pipelines(self) -> dict[str, PipelineRow]:
        return await self.db.read(_load_pipelines)

    async def save_pipelines(self, rows: Sequence[PipelineRow]) -> None:
        await self.db.write(_save_pipelines, list(rows))

    async def set_pipeline_status(self, pipeline_id: str, status: str) -> None:
        await self.db.write(_set_pipeline_status, pipeline_id, status)

    # ── schedules ────────────────────────────────────────────────────────────

    async def load_schedules(self) -> list[StoredSchedule]:
        return await self.db.read(load_schedules)

    async def load_schedule(self, schedule_id: str) -> StoredSchedule | None:
        rows = await self.db.read(load_schedules, schedule_id)
        return rows[0] if rows else None

    async def apply_config(self, compute: Callable[[Reading], ConfigWrite]) -> ConfigWrite:
        # One daemon per state_dir (the lock): reading, computing and writing in sequence on
        # the writer thread is already serialized.
        return await self.db.write(_apply_config, compute)

    async def save_schedules(
        self, rows: Sequence[StoredSchedule], *, reset_snapshots: Sequence[str] = ()
    ) -> None:
        if rows or reset_snapshots:
            await self.db.write(_save_schedules, list(rows), list(reset_snapshots))

    async def delete_schedule(self, schedule_id: str) -> None:
        await self.db.write(_delete_schedule, schedule_id)

    # ── the outbox ───────────────────────────────────────────────────────────

    async def record_slots(self, batches: Sequence[SlotBatch], now: datetime) -> list[str]:
        return await self.db.write(_record_slots, list(batches), now)

    async def save_timer_hints(self, hints: Sequence[tuple[str, str, datetime | None]]) -> None:
        if hints:
            await self.db.write(_save_timer_hints, list(hints))

    async def load_snapshot(self, schedule_id: str, key: str) -> dict[bytes, str] | None:
        return await self.db.read(_load_snapshot, schedule_id, key)

    async def load_marker(self, schedule_id: str, key: str) -> str | None:
        return await self.db.read(_load_marker, schedule_id, key)

    async def commit_changes(
        self,
        schedule_id: str,
        key: str,
        upserts: Sequence[tuple[bytes, str]],
        deletes: Sequence[bytes],
        runs: Sequence[NewRun],
        now: datetime,
        marker: str | None = None,
        epoch: int | None = None,  # fences only matter with replicas
    ) -> list[str]:
        return await self.db.write(
            _commit_changes,
            schedule_id,
            key,
            list(upserts),
            list(deletes),
            list(runs),
            now,
            marker,
        )

    async def drop_baseline(self, schedule_id: str) -> None:
        await self.db.write(_drop_baseline, schedule_id)

    async def insert_manual(self, run: NewRun, idempotency_key: str | None, now: datetime) -> str:
        return await self.db.write(runs_sql.insert_manual, run, idempotency_key, now)

    # ── runs ─────────────────────────────────────────────────────────────────

    async def requeue_interrupted(self, reason: str, *, replica_id: str = "") -> int:
        return await self.db.write(runs_sql.requeue_interrupted, reason)

    async def queued_runs(self) -> list[Run]:
        return await self.db.read(runs_sql.queued_runs)

    async def get_runs(self, run_ids: Sequence[str]) -> list[Run]:
        return await self.db.read(runs_sql.get_runs, list(run_ids))

    async def get_run(self, run_id: str) -> Run | None:
        return await self.db.read(runs_sql.get_run, run_id)

    async def run_log(self, run_id: str) -> bytes | None:
        return await self.db.read(runs_sql.run_log, run_id)

    async def list_runs(
        self,
        *,
        schedule_id: str | None = None,
        pipeline_id: str | None = None,
        status: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        before = int(cursor) if cursor else None
        runs, nxt = await self.db.read(
            runs_sql.list_runs,
            schedule_id=schedule_id,
            pipeline_id=pipeline_id,
            status=status,
            limit=limit,
            before_seq=before,
        )
        return RunPage(runs, str(nxt) if nxt is not None else None)

    async def last_runs(self, schedule_ids: Sequence[str] | None = None) -> dict[str, Run]:
        seen = self._last_seen
        return await self.db.read(lambda c: runs_sql.last_runs(c, schedule_ids, seen))

    async def last_pipeline_runs(self, pipeline_ids: Sequence[str]) -> dict[str, Run]:
        ids, seen = list(pipeline_ids), self._pipeline_seen
        return await self.db.read(lambda c: runs_sql.last_pipeline_runs(c, ids, seen))

    async def experiments(self) -> list[str]:
        return await self.db.read(runs_sql.experiments)

    async def claim_run(
        self,
        run_id: str,
        *,
        replica_id: str,
        now: datetime,
        serial: bool,
        attempt: int | None = None,
    ) -> ClaimResult:
        return await self.db.write(runs_sql.claim_run, run_id, now, serial, attempt)

    async def transition_run(
        self,
        run_id: str,
        to: RunStatus,
        *,
        among: Sequence[RunStatus] | None = None,
        followups: Sequence[NewRun] = (),
        now: datetime,
        claim: Claim | None = None,  # one daemon: its claims cannot be lost
        **fields: Any,
    ) -> tuple[bool, list[str]]:
        return await self.db.write(
            runs_sql.transition_run, run_id, to, among, list(followups), now, fields
        )

    async def update_running(
        self, run_id: str, *, claim: Claim | None = None, **fields: Any
    ) -> bool:
        return await self.db.write(runs_sql.update_running, run_id, fields)

    async def request_cancel(self, run_id: str) -> str | None:
        return None  # one daemon: a run it runs is canceled in place

    async def cancel_requests(self) -> list[str]:
        return []

    async def skip_runs(self, run_ids: Sequence[str], reason: str, now: datetime) -> None:
        await self.db.write(runs_sql.skip_runs, list(run_ids), reason, now)

    async def prune(self, before: datetime) -> int:
        """In batches of PRUNE_BATCH rows, one transaction each, then a WAL checkpoint."""
        total = 0
        while n := await self.db.write(runs_sql.prune_batch, before, PRUNE_BATCH):
            total += n
            await asyncio.sleep(0)  # let queued timer and run commits take the writer
        if total:
            await self.db.write(_checkpoint)
        return total


# ── SQL (on the database's threads) ──────────────────────────────────────────


def _load_pipelines(c: Conn) -> dict[str, PipelineRow]:
    rows = c.execute("SELECT id, name, status, file_status FROM pipelines")
    return {r[0]: PipelineRow(r[0], r[1], r[2], r[3]) for r in rows}


def _save_pipelines(c: Conn, rows: list[PipelineRow]) -> None:
    with Tx(c) as cur:
        cur.executemany(
            "INSERT INTO pipelines(id, name, status, file_status) VALUES (?,?,?,?) "
            "ON CONFLICT(id) DO UPDATE SET name=excluded.name, status=excluded.status, "
            "file_status=excluded.file_status",
            [(r.id, r.name, r.status, r.file_status) for r in rows],
        )


def _set_pipeline_status(c: Conn, ident: str, status: str) -> None:
    with Tx(c) as cur:
        cur.execute("UPDATE pipelines SET status=? WHERE id=?", (status, ident))


def load_schedules(c: Conn, schedule_id: str | None = None) -> list[StoredSchedule]:
    """Every stored schedule, oldest first, or the one with `schedule_id` (check-config reads
    them read-only too)."""
    sql = (
        "SELECT id, name, source, status, file_status, spec, trigger_key, anchor, cursor, "
        "created_at, updated_at, next_for, next_due FROM schedules"
    )
    if schedule_id is None:
        rows = c.execute(sql + " ORDER BY created_at, name").fetchall()
    else:
        rows = c.execute(sql + " WHERE id=?", (schedule_id,)).fetchall()
    at = utc_values()
    return [
        StoredSchedule(
            id=r[0],
            name=r[1],
            source=r[2],
            status=r[3],
            file_status=r[4],
            spec=StoredSpec(r[5]),
            trigger_key=r[6],
            anchor=at(r[7]),
            cursor=at(r[8]),
            created_at=at(r[9]) or datetime.min,
            updated_at=at(r[10]) or datetime.min,
            next_hint=(r[11], at(r[12])) if r[11] else None,
        )
        for r in rows
    ]


def _apply_config(c: Conn, compute: Callable[[Reading], ConfigWrite]) -> ConfigWrite:
    mark = c.execute("SELECT value FROM meta WHERE key='applied'").fetchone()
    reading = Reading(
        schedules={s.id: s for s in load_schedules(c)},
        pipelines=_load_pipelines(c),
        applied=mark[0] if mark else None,
    )
    out = compute(reading)
    with Tx(c):
        _save_pipelines(c, list(out.pipelines))
        if out.schedules:
            _save_schedules(c, list(out.schedules))
        # Written last: the statements above cleared it (schema 5's triggers).
        if out.applied is not None:
            c.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('applied', ?)", (out.applied,)
            )
    return out


def _save_schedules(c: Conn, items: list[StoredSchedule], reset: Sequence[str] = ()) -> None:
    fmt = utc_texts()
    rows = [
        (
            s.id,
            s.name,
            s.source,
            s.status,
            s.file_status,
            spec_text(s.spec),
            s.trigger_key,
            fmt(s.anchor),
            fmt(s.cursor),
            fmt(s.created_at),
            fmt(s.updated_at),
        )
        for s in items
    ]
    with Tx(c) as cur:
        cur.executemany(
            "INSERT INTO schedules(id, name, source, status, file_status, spec, trigger_key,"
            " anchor, cursor, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT(id) DO UPDATE SET name=excluded.name, source=excluded.source, "
            "status=excluded.status, file_status=excluded.file_status, spec=excluded.spec,"
            " trigger_key=excluded.trigger_key, anchor=excluded.anchor, "
            "cursor=excluded.cursor, updated_at=excluded.updated_at",
            rows,
        )
        for sid in reset:
            cur.execute("DELETE FROM baselines WHERE schedule_id=?", (sid,))
            cur.execute("DELETE FROM snapshots WHERE schedule_id=?", (sid,))


def _delete_schedule(c: Conn, ident: str) -> None:
    with Tx(c) as cur:
        cur.execute("DELETE FROM schedules WHERE id=?", (ident,))
        cur.execute("DELETE FROM snapshots WHERE schedule_id=?", (ident,))
        cur.execute("DELETE FROM baselines WHERE schedule_id=?", (ident,))


def _record_slots(c: Conn, batches: list[SlotBatch], now: datetime) -> list[str]:
    fmt = utc_texts()  # schedules that fire together share their cursor and next slot
    with Tx(c) as cur:
        runs = [r for b in batches for r in b.runs]
        out = runs_sql.insert_runs(cur, runs, now) if runs else []
        cur.executemany(
            "UPDATE schedules SET cursor=?, next_for=?, next_due=? WHERE id=?",
            [(fmt(b.cursor), b.hint[0], fmt(b.hint[1]), b.schedule_id)
             for b in batches if b.hint is not None],
        )  # fmt: skip
        # Without a next slot (a catch-up's): NULLs written, not bound (see runs._INSERT_PLAIN).
        cur.executemany(
            "UPDATE schedules SET cursor=?, next_for=NULL, next_due=NULL WHERE id=?",
            [(fmt(b.cursor), b.schedule_id) for b in batches if b.hint is None],
        )
        return out


def _save_timer_hints(c: Conn, hints: list[tuple[str, str, datetime | None]]) -> None:
    with Tx(c) as cur:
        cur.executemany(
            "UPDATE schedules SET next_for=?, next_due=? WHERE id=?",
            [(key, format_utc(due, micro=True), sid) for sid, key, due in hints],
        )


def _load_snapshot(c: Conn, schedule_id: str, key: str) -> dict[bytes, str] | None:
    row = c.execute("SELECT key FROM baselines WHERE schedule_id=?", (schedule_id,)).fetchone()
    if row is None or row[0] != key:
        return None
    rows = c.execute("SELECT name, version FROM snapshots WHERE schedule_id=?", (schedule_id,))
    return {bytes(n): v for n, v in rows}


def _load_marker(c: Conn, schedule_id: str, key: str) -> str | None:
    row = c.execute(
        "SELECT key, marker FROM baselines WHERE schedule_id=?", (schedule_id,)
    ).fetchone()
    return row[1] if row is not None and row[0] == key and row[1] else None


def _commit_changes(
    c: Conn,
    schedule_id: str,
    key: str,
    upserts: list[tuple[bytes, str]],
    deletes: list[bytes],
    runs: list[NewRun],
    now: datetime,
    marker: str | None,
) -> list[str]:
    with Tx(c) as cur:
        row = cur.execute(
            "SELECT key FROM baselines WHERE schedule_id=?", (schedule_id,)
        ).fetchone()
        if row is None or row[0] != key:
            cur.execute("DELETE FROM snapshots WHERE schedule_id=?", (schedule_id,))
            cur.execute(
                "INSERT OR REPLACE INTO baselines(schedule_id, key) VALUES (?,?)",
                (schedule_id, key),
            )
        if marker is not None:
            cur.execute(
                "UPDATE baselines SET marker=? WHERE schedule_id=?",
                (marker or None, schedule_id),
            )
        cur.executemany(
            "INSERT OR REPLACE INTO snapshots(schedule_id, name, version) VALUES (?,?,?)",
            [(schedule_id, n, v) for n, v in upserts],
        )
        cur.executemany(
            "DELETE FROM snapshots WHERE schedule_id=? AND name=?",
            [(schedule_id, n) for n in deletes],
        )
        return runs_sql.insert_runs(cur, runs, now)


def _drop_baseline(c: Conn, schedule_id: str) -> None:
    with Tx(c) as cur:
        cur.execute("DELETE FROM baselines WHERE schedule_id=?", (schedule_id,))
        cur.execute("DELETE FROM snapshots WHERE schedule_id=?", (schedule_id,))


def _checkpoint(c: Conn) -> None:
    if not c.in_transaction:  # inside a group commit the next prune will do it
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
