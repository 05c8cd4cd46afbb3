"""`PgStore`: the engine's `RunStore` port on a PostgreSQL database shared by replicas.

It behaves as `SqliteStore` on every method (ids, UNIQUE(schedule, dedup), the transition
table, `seq` cursors, markers), and adds what replicas need (SPEC §12): writes that advance a
timer cursor, a snapshot or a listing marker are fenced by the schedule's lease epoch in the
same transaction; run status writes are conditional on the claim; every write another replica
must hear of sends a NOTIFY in its transaction. Pipelines and schedules are the base class's
(`definitions.Definitions`); this module holds the outbox and the runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from watcherd.core.models import Run, RunStatus
from watcherd.core.runs import NewRun
from watcherd.engine.ports import Claim, ClaimResult, RunPage, SlotBatch
from watcherd.state.postgres import runs as runs_sql
from watcherd.state.postgres.db import Conn, PgDatabase
from watcherd.state.postgres.definitions import Definitions
from watcherd.state.postgres.runs import COLUMNS, row_to_run

__all__ = ["PRUNE_BATCH", "PgStore"]

PRUNE_BATCH = 500  # rows per prune transaction

_R_COLUMNS = ", ".join("r." + c.strip() for c in COLUMNS.split(","))


class PgStore(Definitions):
    """The shared state of a deployment of replicas (see the module doc)."""

    def __init__(self, db: PgDatabase) -> None:
        super().__init__(db)
        self._last_seen: dict[str, Any] = {}  # newest run per schedule, by row (last_runs)
        self._pipeline_seen: dict[str, Any] = {}  # and per pipeline (last_pipeline_runs)

    async def close(self) -> None:
        await self.db.close()

    # ── the outbox ───────────────────────────────────────────────────────────

    async def record_slots(self, batches: Sequence[SlotBatch], now: datetime) -> list[str]:
        async def go(c: Conn) -> list[str]:
            async with c.transaction():
                await self._fence(
                    c, [(b.schedule_id, b.epoch) for b in batches if b.epoch is not None]
                )
                # A schedule disabled on another replica, whose notice this one has not had
                # yet (LISTEN reconnecting after an outage): its slot starts nothing (§12).
                ids = [b.schedule_id for b in batches if b.runs]
                off: set[str] = set()
                if ids:
                    cur = await c.execute(
                        "SELECT id FROM schedules WHERE id = ANY(%s) AND status <> 'Active'",
                        (ids,),
                    )
                    off = {str(row[0]) for row in await cur.fetchall()}
                runs = [r for b in batches if b.schedule_id not in off for r in b.runs]
                out = await runs_sql.insert_runs(c, runs, now, self.db.runs_notice())
                # An unfenced write (one daemon; or a caller that lost track of its lease)
                # never moves a cursor back.
                # The hint names its cursor: where `greatest` keeps a later one, it is stale.
                await c.execute(
                    "UPDATE schedules s SET timer_cursor = CASE WHEN u.fenced THEN u.cur"
                    " ELSE greatest(s.timer_cursor, u.cur) END, next_for = u.key,"
                    " next_due = u.due FROM unnest(%s::text[], %s::timestamptz[],"
                    " %s::boolean[], %s::text[], %s::timestamptz[])"
                    " AS u(id, cur, fenced, key, due) WHERE s.id = u.id",
                    (
                        [b.schedule_id for b in batches],
                        [b.cursor for b in batches],
                        [b.epoch is not None for b in batches],
                        [b.hint[0] if b.hint else None for b in batches],
                        [b.hint[1] if b.hint else None for b in batches],
                    ),
                )
                return out

        if not batches:
            return []
        return await self.db.run(go, what="record slots")

    async def save_timer_hints(self, hints: Sequence[tuple[str, str, datetime | None]]) -> None:
        """Unfenced: a hint names the cursor it was computed for, so one written by a replica
        that lost the schedule meanwhile is merely stale (and recomputed by its reader)."""

        async def go(c: Conn) -> None:
            await c.execute(
                "UPDATE schedules s SET next_for = u.key, next_due = u.due FROM unnest("
                "%s::text[], %s::text[], %s::timestamptz[]) AS u(id, key, due) WHERE s.id = u.id",
                ([h[0] for h in hints], [h[1] for h in hints], [h[2] for h in hints]),
            )

        if hints:
            await self.db.run(go, what="save timer hints")

    async def load_snapshot(self, schedule_id: str, key: str) -> dict[bytes, str] | None:
        async def go(c: Conn) -> dict[bytes, str] | None:
            cur = await c.execute(
                "SELECT key FROM baselines WHERE schedule_id = %s", (schedule_id,)
            )
            row = await cur.fetchone()
            if row is None or row[0] != key:
                return None
            cur = await c.execute(
                "SELECT name, version FROM snapshots WHERE schedule_id = %s", (schedule_id,)
            )
            return {bytes(n): v for n, v in await cur.fetchall()}

        return await self.db.run(go, what="load snapshot", retry=True)

    async def load_marker(self, schedule_id: str, key: str) -> str | None:
        async def go(c: Conn) -> str | None:
            cur = await c.execute(
                "SELECT key, marker FROM baselines WHERE schedule_id = %s", (schedule_id,)
            )
            row = await cur.fetchone()
            return row[1] if row is not None and row[0] == key and row[1] else None

        return await self.db.run(go, what="load marker", retry=True)

    async def commit_changes(
        self,
        schedule_id: str,
        key: str,
        upserts: Sequence[tuple[bytes, str]],
        deletes: Sequence[bytes],
        runs: Sequence[NewRun],
        now: datetime,
        marker: str | None = None,
        epoch: int | None = None,
    ) -> list[str]:
        latest = dict(upserts)  # a name given twice: the last version wins, as in SQLite

        async def go(c: Conn) -> list[str]:
            async with c.transaction():
                if epoch is not None:
                    await self._fence(c, [(schedule_id, epoch)])
                cur = await c.execute(
                    "SELECT key FROM baselines WHERE schedule_id = %s FOR UPDATE", (schedule_id,)
                )
                row = await cur.fetchone()
                if row is None or row[0] != key:
                    await c.execute("DELETE FROM snapshots WHERE schedule_id = %s", (schedule_id,))
                    await c.execute(
                        "INSERT INTO baselines(schedule_id, key, marker) VALUES (%s, %s, NULL)"
                        " ON CONFLICT (schedule_id) DO UPDATE SET key = excluded.key,"
                        " marker = NULL",
                        (schedule_id, key),
                    )
                if marker is not None:
                    await c.execute(
                        "UPDATE baselines SET marker = %s WHERE schedule_id = %s",
                        (marker or None, schedule_id),
                    )
                if latest:
                    await c.execute(
                        "INSERT INTO snapshots(schedule_id, name, version) SELECT %s, n, v FROM"
                        " unnest(%s::bytea[], %s::text[]) AS u(n, v) ON CONFLICT"
                        " (schedule_id, name) DO UPDATE SET version = excluded.version",
                        (schedule_id, list(latest), list(latest.values())),
                    )
                if deletes:
                    await c.execute(
                        "DELETE FROM snapshots WHERE schedule_id = %s AND name = ANY(%s::bytea[])",
                        (schedule_id, list(deletes)),
                    )
                return await runs_sql.insert_runs(c, runs, now, self.db.runs_notice())

        return await self.db.run(go, what="commit changes")

    async def drop_baseline(self, schedule_id: str) -> None:
        async def go(c: Conn) -> None:
            async with c.transaction():
                await c.execute("DELETE FROM baselines WHERE schedule_id = %s", (schedule_id,))
                await c.execute("DELETE FROM snapshots WHERE schedule_id = %s", (schedule_id,))

        await self.db.run(go, what="drop baseline")

    async def insert_manual(self, run: NewRun, idempotency_key: str | None, now: datetime) -> str:
        notify = self.db.runs_notice()

        async def one(c: Conn) -> str:  # no key: one statement, no transaction of its own
            await runs_sql.insert_runs(c, [run], now, notify)
            return run.id

        async def go(c: Conn) -> str:
            async with c.transaction():
                if idempotency_key is not None:
                    cur = await c.execute(
                        "INSERT INTO idempotency(key, run_id, created_at) VALUES (%s, %s, %s)"
                        " ON CONFLICT DO NOTHING RETURNING run_id",
                        (idempotency_key, run.id, now),
                    )
                    if await cur.fetchone() is None:
                        cur = await c.execute(
                            "SELECT run_id FROM idempotency WHERE key = %s", (idempotency_key,)
                        )
                        row = await cur.fetchone()
                        assert row is not None
                        return str(row[0])
                await runs_sql.insert_runs(c, [run], now, notify)
                return run.id

        if idempotency_key is None:
            return await self.db.run(one, what="insert run")
        return await self.db.run(go, what="insert run")

    # ── runs ─────────────────────────────────────────────────────────────────

    async def requeue_interrupted(self, reason: str, *, replica_id: str = "") -> int:
        """This replica's Running runs (and unclaimed ones, e.g. copied from SQLite) back to
        Queued as their next attempt."""
        me = replica_id or self.replica_id

        async def go(c: Conn) -> int:
            async with c.transaction():
                n = await runs_sql.requeue(
                    c, "claimed_by = %s OR claimed_by IS NULL", [reason, me], "%s"
                )
                if n:
                    await self.db.notify(c, [("runs", "")])
                return n

        return await self.db.run(go, what="requeue runs")

    async def queued_runs(self) -> list[Run]:
        async def go(c: Conn) -> list[Run]:
            cur = await c.execute(
                f"SELECT {COLUMNS} FROM runs WHERE status = 'Queued' ORDER BY seq"
            )
            return [row_to_run(r) for r in await cur.fetchall()]

        return await self.db.run(go, what="queued runs", retry=True)

    async def get_runs(self, run_ids: Sequence[str]) -> list[Run]:
        async def go(c: Conn) -> list[Run]:
            cur = await c.execute(
                f"SELECT {COLUMNS} FROM runs WHERE id = ANY(%s) ORDER BY seq", (list(run_ids),)
            )
            return [row_to_run(r) for r in await cur.fetchall()]

        return await self.db.run(go, what="get runs", retry=True) if run_ids else []

    async def get_run(self, run_id: str) -> Run | None:
        async def go(c: Conn) -> Run | None:
            cur = await c.execute(f"SELECT {COLUMNS} FROM runs WHERE id = %s", (run_id,))
            row = await cur.fetchone()
            return row_to_run(row) if row else None

        return await self.db.run(go, what="get run", retry=True)

    async def run_log(self, run_id: str) -> bytes | None:
        async def go(c: Conn) -> bytes | None:
            cur = await c.execute("SELECT log FROM runs WHERE id = %s", (run_id,))
            row = await cur.fetchone()
            return bytes(row[0]) if row and row[0] is not None else None

        return await self.db.run(go, what="run log", retry=True)

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

        async def go(c: Conn) -> tuple[list[Run], int | None]:
            return await runs_sql.list_runs(
                c,
                schedule_id=schedule_id,
                pipeline_id=pipeline_id,
                status=status,
                limit=limit,
                before_seq=before,
            )

        runs, nxt = await self.db.run(go, what="list runs", retry=True)
        return RunPage(runs, str(nxt) if nxt is not None else None)

    async def last_runs(self, schedule_ids: Sequence[str] | None = None) -> dict[str, Run]:
        if schedule_ids is not None:
            ids = list(schedule_ids)
            seen = self._last_seen
            return await self.db.run(
                lambda c: _last_runs_of(c, ids, seen), what="last runs", retry=True
            )
        return await self.db.run(_last_runs, what="last runs", retry=True)

    async def last_pipeline_runs(self, pipeline_ids: Sequence[str]) -> dict[str, Run]:
        ids, seen = list(pipeline_ids), self._pipeline_seen

        async def go(c: Conn) -> dict[str, Run]:
            cur = await c.execute(
                f"SELECT {_R_COLUMNS} FROM unnest(%s::text[]) AS t(pid) CROSS JOIN LATERAL"
                f" (SELECT {COLUMNS} FROM runs WHERE pipeline_id = t.pid ORDER BY seq DESC"
                " LIMIT 1) r",
                (ids,),
            )
            out: dict[str, Run] = {}
            for r in await cur.fetchall():  # an unchanged row: the same Run (cached items)
                got = seen.get(r[2])
                if got is None or got[0] != r:
                    got = seen[r[2]] = (tuple(r), row_to_run(r))
                out[r[2]] = got[1]
            return out

        return await self.db.run(go, what="last runs", retry=True)

    async def experiments(self) -> list[str]:
        async def go(c: Conn) -> list[str]:
            cur = await c.execute('SELECT name FROM experiments ORDER BY name COLLATE "C"')
            return [r[0] for r in await cur.fetchall()]

        return await self.db.run(go, what="experiments", retry=True)

    async def claim_run(
        self,
        run_id: str,
        *,
        replica_id: str,
        now: datetime,
        serial: bool,
        attempt: int | None = None,
    ) -> ClaimResult:
        async def go(c: Conn) -> ClaimResult:
            return await runs_sql.claim_run(c, run_id, replica_id, now, serial, attempt)

        return await self.db.run(go, what="claim run")

    async def transition_run(
        self,
        run_id: str,
        to: RunStatus,
        *,
        among: Sequence[RunStatus] | None = None,
        followups: Sequence[NewRun] = (),
        now: datetime,
        claim: Claim | None = None,
        **fields: Any,
    ) -> tuple[bool, list[str]]:
        async def one(c: Conn) -> tuple[bool, list[str]]:  # the common case: one statement
            return await runs_sql.transition_run(c, run_id, to, among, claim, fields), []

        async def go(c: Conn) -> tuple[bool, list[str]]:
            async with c.transaction():
                if not await runs_sql.transition_run(c, run_id, to, among, claim, fields):
                    return False, []
                out = await runs_sql.insert_runs(c, followups, now, self.db.runs_notice())
                if to is RunStatus.QUEUED:
                    await self.db.notify(c, [("runs", "")])
                return True, out

        if not followups and to is not RunStatus.QUEUED:
            return await self.db.run(one, what="run status")
        return await self.db.run(go, what="run status")

    async def update_running(
        self, run_id: str, *, claim: Claim | None = None, **fields: Any
    ) -> bool:
        async def go(c: Conn) -> bool:
            return await runs_sql.update_running(c, run_id, claim, fields)

        return await self.db.run(go, what="update run")

    async def skip_runs(self, run_ids: Sequence[str], reason: str, now: datetime) -> None:
        async def go(c: Conn) -> None:
            await c.execute(
                "UPDATE runs SET status = 'Skipped', error = %s, finished_at = %s"
                " WHERE id = ANY(%s) AND status = 'Queued'",
                (reason, now, list(run_ids)),
            )

        if run_ids:
            await self.db.run(go, what="skip runs")

    async def request_cancel(self, run_id: str) -> str | None:
        """Ask the replica running `run_id` to stop it (NOTIFY "cancel"): returns that
        replica's id, or None when the run is not Running. The request is kept on the run, so
        a replica that missed the notification finds it (`cancel_requests`) and a lost
        replica's run ends Canceled instead of running again."""

        async def go(c: Conn) -> str | None:
            async with c.transaction():
                cur = await c.execute(
                    "UPDATE runs SET cancel_requested_at = now() WHERE id = %s"
                    " AND status = 'Running' RETURNING claimed_by",
                    (run_id,),
                )
                row = await cur.fetchone()
                if row is None:
                    return None
                await self.db.notify(c, [("cancel", run_id)])
                return str(row[0] or "")

        return await self.db.run(go, what="cancel run")

    async def cancel_requests(self) -> list[str]:
        """This replica's Running runs whose cancel was requested (to re-check after a
        resync: notifications are not durable)."""

        async def go(c: Conn) -> list[str]:
            cur = await c.execute(
                "SELECT id FROM runs WHERE status = 'Running' AND claimed_by = %s"
                " AND cancel_requested_at IS NOT NULL ORDER BY seq",
                (self.replica_id,),
            )
            return [r[0] for r in await cur.fetchall()]

        return await self.db.run(go, what="cancel requests", retry=True)

    async def prune(self, before: datetime) -> int:
        """In batches of PRUNE_BATCH rows, one transaction each (replicas skip each other's
        locked rows)."""

        async def batch(c: Conn) -> int:
            async with c.transaction():
                cur = await c.execute(
                    "DELETE FROM runs WHERE seq IN (SELECT seq FROM runs WHERE finished_at < %s"
                    " LIMIT %s FOR UPDATE SKIP LOCKED)",
                    (before, PRUNE_BATCH),
                )
                await c.execute(  # kept while its run is unfinished (SPEC §5)
                    "DELETE FROM idempotency WHERE created_at < %s AND NOT EXISTS (SELECT 1"
                    " FROM runs WHERE runs.id = idempotency.run_id AND runs.finished_at IS NULL)",
                    (before,),
                )
                return cur.rowcount

        total = 0
        while n := await self.db.run(batch, what="prune"):
            total += n
        return total


async def _last_runs_of(c: Conn, ids: list[str], seen: dict[str, Any]) -> dict[str, Run]:
    """The newest run of each named schedule: one probe of runs_schedule each. A row equal to
    the one read last time gives the same Run object back (see sqlite.runs._cached_run)."""
    cur = await c.execute(
        f"SELECT {_R_COLUMNS} FROM unnest(%s::text[]) AS t(sid) CROSS JOIN LATERAL"
        f" (SELECT {COLUMNS} FROM runs WHERE schedule_id = t.sid ORDER BY seq DESC LIMIT 1) r",
        (ids,),
    )
    out: dict[str, Run] = {}
    for r in await cur.fetchall():
        got = seen.get(r[1])
        if got is None or got[0] != r:
            got = seen[r[1]] = (tuple(r), row_to_run(r))
        out[r[1]] = got[1]
    return out


async def _last_runs(c: Conn) -> dict[str, Run]:
    """The newest run of each schedule: a loose index scan over runs_schedule (one probe per
    schedule id, however many runs there are)."""
    cur = await c.execute(
        "WITH RECURSIVE t(sid) AS ("
        " (SELECT schedule_id FROM runs ORDER BY schedule_id LIMIT 1)"
        " UNION ALL SELECT (SELECT schedule_id FROM runs WHERE schedule_id > t.sid"
        " ORDER BY schedule_id LIMIT 1) FROM t WHERE t.sid IS NOT NULL)"
        f" SELECT {_R_COLUMNS} FROM t CROSS JOIN LATERAL (SELECT {COLUMNS} FROM runs"
        " WHERE schedule_id = t.sid ORDER BY seq DESC LIMIT 1) r WHERE t.sid IS NOT NULL"
    )
    return {r[1]: row_to_run(r) for r in await cur.fetchall()}
