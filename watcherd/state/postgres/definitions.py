"""Pipelines and schedules on PostgreSQL: the half of `PgStore` the config and the API write
(one module per half keeps each readable; `store.PgStore` adds the outbox and the runs).

Every write another replica caches sends a NOTIFY in its transaction ("pipeline" or
"schedule" with the id); `apply_config` is serialized across replicas by an advisory lock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime

from watcherd.core.errors import LeaseLost
from watcherd.core.models import StoredSchedule
from watcherd.core.stored_spec import StoredSpec, spec_text
from watcherd.engine.ports import ConfigWrite, PipelineRow, Reading
from watcherd.state.postgres.db import Conn, PgDatabase
from watcherd.state.postgres.runs import utc

__all__ = ["APPLY_LOCK", "Definitions", "read_pipelines", "read_schedules"]

APPLY_LOCK = 0x7761746368657202  # apply_config: one replica computes at a time

_SCHEDULE_COLS = (
    "id, name, source, status, file_status, spec, trigger_key, timer_anchor, timer_cursor,"
    " created_at, updated_at"
)


class Definitions:
    """Pipelines, schedules and the lease fence their owner's writes go through."""

    def __init__(self, db: PgDatabase) -> None:
        self.db = db
        self.replica_id = db.replica_id

    # ── pipelines ────────────────────────────────────────────────────────────

    async def load_pipelines(self) -> dict[str, PipelineRow]:
        return await self.db.run(read_pipelines, what="load pipelines", retry=True)

    async def save_pipelines(self, rows: Sequence[PipelineRow]) -> None:
        async def go(c: Conn) -> None:
            async with c.transaction():
                await self._save_pipelines(c, rows)

        if rows:
            await self.db.run(go, what="save pipelines")

    async def _save_pipelines(self, c: Conn, rows: Sequence[PipelineRow]) -> None:
        if not rows:
            return
        ids = [r.id for r in rows]
        cur = await c.execute("SELECT id, status FROM pipelines WHERE id = ANY(%s)", (ids,))
        before: dict[str, str] = {r[0]: r[1] for r in await cur.fetchall()}
        await c.execute(
            "INSERT INTO pipelines(id, name, status, file_status) SELECT u.id, u.name, u.st,"
            " u.fs FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[])"
            " AS u(id, name, st, fs) ON CONFLICT (id) DO UPDATE SET name = excluded.name,"
            " status = excluded.status, file_status = excluded.file_status",
            (ids, [r.name for r in rows], [r.status for r in rows], [r.file_status for r in rows]),
        )
        changed = [r.id for r in rows if before.get(r.id) != r.status]
        await self.db.notify(c, [("pipeline", i) for i in changed])

    async def set_pipeline_status(self, pipeline_id: str, status: str) -> None:
        async def go(c: Conn) -> None:
            async with c.transaction():
                await c.execute(
                    "UPDATE pipelines SET status = %s WHERE id = %s", (status, pipeline_id)
                )
                await self.db.notify(c, [("pipeline", pipeline_id)])

        await self.db.run(go, what="set pipeline status")

    # ── schedules ────────────────────────────────────────────────────────────

    async def load_schedules(self) -> list[StoredSchedule]:
        return await self.db.run(read_schedules, what="load schedules", retry=True)

    async def load_schedule(self, schedule_id: str) -> StoredSchedule | None:
        async def go(c: Conn) -> list[StoredSchedule]:
            return await read_schedules(c, schedule_id)

        rows = await self.db.run(go, what="load schedule", retry=True)
        return rows[0] if rows else None

    async def apply_config(self, compute: Callable[[Reading], ConfigWrite]) -> ConfigWrite:
        async def go(c: Conn) -> ConfigWrite:
            async with c.transaction():
                await c.execute("SELECT pg_advisory_xact_lock(%s)", (APPLY_LOCK,))
                cur = await c.execute("SELECT value FROM meta WHERE key = 'applied'")
                mark = await cur.fetchone()
                reading = Reading(
                    schedules={s.id: s for s in await read_schedules(c)},
                    pipelines=await read_pipelines(c),
                    applied=mark[0] if mark else None,
                )
                out = compute(reading)
                await self._save_pipelines(c, list(out.pipelines))
                await self._save_schedules(c, list(out.schedules))
                if out.applied is not None:  # last: the writes above dropped it (schema 3)
                    await c.execute(
                        "INSERT INTO meta(key, value) VALUES ('applied', %s)"
                        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        (out.applied,),
                    )
                return out

        return await self.db.run(go, what="apply config")

    async def save_schedules(
        self,
        rows: Sequence[StoredSchedule],
        *,
        reset_snapshots: Sequence[str] = (),
        epochs: Mapping[str, int] | None = None,
    ) -> None:
        """Upsert `rows`. A row written with the same trigger and anchor never moves the
        timer cursor back (a replica saving a status change from a stale copy cannot make
        the owner fire slots again). `epochs` {schedule id: epoch} fences the write as in
        `record_slots` (the owner's own status changes)."""

        async def go(c: Conn) -> None:
            async with c.transaction():
                if epochs:
                    await self._fence(c, sorted(epochs.items()))
                await self._save_schedules(c, rows)
                if reset_snapshots:  # enabling: a fresh baseline, in the same transaction
                    ids = list(reset_snapshots)
                    await c.execute("DELETE FROM baselines WHERE schedule_id = ANY(%s)", (ids,))
                    await c.execute("DELETE FROM snapshots WHERE schedule_id = ANY(%s)", (ids,))

        if rows or reset_snapshots:
            await self.db.run(go, what="save schedules")

    async def _save_schedules(self, c: Conn, items: Sequence[StoredSchedule]) -> None:
        if not items:
            return
        async with c.cursor() as cur:
            await cur.executemany(
                f"INSERT INTO schedules({_SCHEDULE_COLS}) VALUES"
                " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET"
                " name = excluded.name, source = excluded.source, status = excluded.status,"
                " file_status = excluded.file_status, spec = excluded.spec,"
                " trigger_key = excluded.trigger_key, timer_anchor = excluded.timer_anchor,"
                " timer_cursor = CASE WHEN schedules.trigger_key IS NOT DISTINCT FROM"
                " excluded.trigger_key AND schedules.timer_anchor IS NOT DISTINCT FROM"
                " excluded.timer_anchor THEN greatest(schedules.timer_cursor,"
                " excluded.timer_cursor) ELSE excluded.timer_cursor END,"
                " updated_at = excluded.updated_at",
                [
                    (
                        s.id,
                        s.name,
                        s.source,
                        s.status,
                        s.file_status,
                        spec_text(s.spec),
                        s.trigger_key,
                        s.anchor,
                        s.cursor,
                        s.created_at,
                        s.updated_at,
                    )  # fmt: skip
                    for s in items
                ],
            )
        await self.db.notify(c, [("schedule", s.id) for s in items])

    async def delete_schedule(self, schedule_id: str) -> None:
        async def go(c: Conn) -> None:
            async with c.transaction():
                for table, col in (
                    ("schedules", "id"),
                    ("snapshots", "schedule_id"),
                    ("baselines", "schedule_id"),
                ):
                    await c.execute(
                        f"DELETE FROM {table} WHERE {col} = %s",
                        (schedule_id,),
                    )
                await c.execute(
                    "UPDATE leases SET owner = NULL, expires_at = NULL WHERE schedule_id = %s",
                    (schedule_id,),
                )
                await self.db.notify(c, [("schedule", schedule_id)])

        await self.db.run(go, what="delete schedule")

    async def _fence(self, c: Conn, fences: Sequence[tuple[str, int]]) -> None:
        """Raise LeaseLost unless this replica holds each (schedule, epoch) lease, unexpired
        by the database's clock; the rows stay share-locked until commit, so the lease cannot
        change hands under the write (locked in id order: no deadlock with a heartbeat)."""
        if not fences:
            return
        cur = await c.execute(
            "SELECT l.schedule_id FROM leases l JOIN unnest(%s::text[], %s::bigint[])"
            " AS f(sid, ep) ON l.schedule_id = f.sid AND l.epoch = f.ep"
            " WHERE l.owner = %s AND l.expires_at > clock_timestamp()"
            " ORDER BY l.schedule_id FOR SHARE OF l",
            ([s for s, _ in fences], [e for _, e in fences], self.replica_id),
        )
        held = {r[0] for r in await cur.fetchall()}
        for sid, _ in fences:
            if sid not in held:
                raise LeaseLost(sid)


async def read_pipelines(c: Conn) -> dict[str, PipelineRow]:
    cur = await c.execute("SELECT id, name, status, file_status FROM pipelines")
    return {r[0]: PipelineRow(r[0], r[1], r[2], r[3]) for r in await cur.fetchall()}


async def read_schedules(c: Conn, schedule_id: str | None = None) -> list[StoredSchedule]:
    if schedule_id is None:
        cur = await c.execute(
            f"SELECT {_SCHEDULE_COLS}, next_for, next_due FROM schedules"
            ' ORDER BY created_at, name COLLATE "C"'
        )
    else:
        cur = await c.execute(
            f"SELECT {_SCHEDULE_COLS}, next_for, next_due FROM schedules WHERE id = %s",
            (schedule_id,),
        )
    return [
        StoredSchedule(
            id=r[0],
            name=r[1],
            source=r[2],
            status=r[3],
            file_status=r[4],
            spec=StoredSpec(r[5]),
            trigger_key=r[6],
            anchor=utc(r[7]),
            cursor=utc(r[8]),
            created_at=utc(r[9]) or datetime.min,
            updated_at=utc(r[10]) or datetime.min,
            next_hint=(r[11], utc(r[12])) if r[11] else None,
        )
        for r in await cur.fetchall()
    ]
