"""SQL of the runs table on PostgreSQL: the outbox rows and their lifecycle.

The same semantics as `state.sqlite.runs` (UNIQUE(schedule, dedup), the transition table of
`core.runs`, `seq` cursors), plus what replicas need: `claimed_by` on Running runs, claims
with FOR UPDATE SKIP LOCKED, and status writes conditional on (claimed_by, attempt).
Each function runs on a connection its caller borrowed, inside the caller's transaction
where it needs one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from watcherd.core.errors import ClaimLost
from watcherd.core.jsontext import mapping_json_once
from watcherd.core.models import TERMINAL, FileRef, Run, RunStatus
from watcherd.core.runs import NewRun, apply_gates, sources_of
from watcherd.engine.ports import Claim, ClaimResult

__all__ = [
    "COLUMNS",
    "claim_run",
    "insert_runs",
    "list_runs",
    "requeue",
    "row_to_run",
    "transition_run",
    "update_running",
    "utc",
]

Conn = AsyncConnection[TupleRow]

COLUMNS = (
    "id, schedule_id, pipeline_id, experiment, status, trigger, parameters, path, attempt, "
    "attempts, error, exit_code, remote_id, queued_at, started_at, finished_at, "
    "next_attempt_at, seq, file_local, file_url, file_param"
)
_SETTABLE = frozenset(
    {
        "attempt",
        "attempts",
        "error",
        "exit_code",
        "remote_id",
        "queued_at",
        "started_at",
        "finished_at",
        "next_attempt_at",
        "log",
    }
)
_TERMINAL = [s.value for s in TERMINAL]
# Run ids one "runs" notification names (36 characters each; NOTIFY payloads end at 8000 bytes).
RUNS_NOTICE_IDS = 100


def utc(value: datetime | None) -> datetime | None:
    """A timestamptz as aware UTC, whatever the session's TimeZone."""
    return value.astimezone(UTC) if value is not None else None


def row_to_run(r: Sequence[Any]) -> Run:
    trigger = json.loads(r[5])
    file = None
    if r[7] is not None:
        file = FileRef(
            datastore=str(trigger.get("datastore", "")),
            relative_path=bytes(r[7]),
            local_path=bytes(r[18]) if r[18] is not None else None,
            url=r[19],
            version=str(trigger.get("version", "")),
            parameter=r[20],
        )
    return Run(
        id=r[0],
        schedule_id=r[1],
        pipeline_id=r[2],
        experiment_name=r[3],
        status=RunStatus(r[4]),
        trigger=trigger,
        parameters=json.loads(r[6]),
        file=file,
        attempt=r[8],
        attempts=tuple(json.loads(r[9])),
        error=r[10],
        exit_code=r[11],
        remote_id=r[12],
        queued_at=utc(r[13]),
        started_at=utc(r[14]),
        finished_at=utc(r[15]),
        next_attempt_at=utc(r[16]),
        seq=r[17],
    )


async def insert_runs(
    conn: Conn, runs: Sequence[NewRun], now: datetime, notify: tuple[str, str] | None = None
) -> list[str]:
    """INSERT … ON CONFLICT DO NOTHING in one statement; returns the ids inserted Queued, in
    the order given. `notify` (channel, sender replica): the same statement sends a "runs"
    change naming the runs it inserted Queued, if any (so a lone insert needs no transaction
    of its own, and the others read just those runs)."""
    if not runs:
        return []
    gated = sorted({r.schedule_id for r in runs if r.gate is not None})
    if not gated:
        return await _insert(conn, runs, now, notify)
    # "forbid"/"queue" against every replica's runs (SPEC §3.3): the count and the insert in
    # one transaction (a savepoint inside the caller's), under a lock per gated schedule
    # taken in id order, so two replicas inserting at once never both see "none active".
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('gate:' || g, 0))"
            " FROM unnest(%s::text[]) AS g ORDER BY g",
            (gated,),
        )
        cur = await conn.execute(
            "SELECT schedule_id, count(*) FILTER (WHERE status = 'Queued'),"
            " count(*) FILTER (WHERE status = 'Running') FROM runs"
            " WHERE schedule_id = ANY(%s) AND status IN ('Queued', 'Running')"
            " GROUP BY schedule_id",
            (gated,),
        )
        active = {r[0]: (int(r[1]), int(r[2])) for r in await cur.fetchall()}
        return await _insert(conn, apply_gates(runs, active), now, notify)


async def _insert(
    conn: Conn, runs: Sequence[NewRun], now: datetime, notify: tuple[str, str] | None
) -> list[str]:
    if not runs:
        return []
    cols: list[list[Any]] = [[] for _ in range(13)]
    text = mapping_json_once()
    for r in runs:
        f = r.file
        row = (
            r.id, r.schedule_id, r.pipeline_id, r.experiment, r.dedup, r.status.value,
            text(r.trigger), text(r.parameters),
            f.relative_path if f else None, r.error,
            f.local_path if f else None, f.url if f else None, f.parameter if f else None,
        )  # fmt: skip
        for i, v in enumerate(row):
            cols[i].append(v)
    cur = await conn.execute(
        "WITH ins AS (INSERT INTO runs(id, schedule_id, pipeline_id, experiment, dedup, status,"
        " trigger, parameters, path, error, queued_at, finished_at, file_local, file_url,"
        " file_param) SELECT u.id, u.sid, u.pid, u.exp, u.dedup, u.status, u.trig, u.params,"
        " u.path, u.err, %s, CASE WHEN u.status = ANY(%s) THEN %s::timestamptz END, u.fl,"
        " u.fu, u.fp FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[],"
        " %s::text[], %s::text[], %s::text[], %s::bytea[], %s::text[], %s::bytea[],"
        " %s::text[], %s::text[]) AS u(id, sid, pid, exp, dedup, status, trig, params, path,"
        " err, fl, fu, fp) ON CONFLICT DO NOTHING RETURNING id, status, experiment),"
        " e AS (INSERT INTO experiments(name) SELECT DISTINCT experiment FROM ins"
        " ON CONFLICT DO NOTHING)"
        + (
            ", n AS (SELECT pg_notify(%s, json_build_object('r', %s::text, 'k', 'runs', 'i',"
            " CASE WHEN count(*) <= %s THEN string_agg(id, ',') ELSE '' END)::text)"
            " FROM ins WHERE status = 'Queued' HAVING count(*) > 0)"
            " SELECT id, status, (SELECT count(*) FROM n) FROM ins"
            if notify
            else " SELECT id, status FROM ins"
        ),
        (now, _TERMINAL, now, *cols, *((*notify, RUNS_NOTICE_IDS) if notify else ())),
    )
    queued = {r[0] for r in await cur.fetchall() if r[1] == RunStatus.QUEUED.value}
    out = []
    for r in runs:  # in the order given, each id once (a repeated id is inserted once)
        if r.id in queued:
            queued.discard(r.id)
            out.append(r.id)
    return out


async def list_runs(
    conn: Conn,
    *,
    schedule_id: str | None,
    pipeline_id: str | None,
    status: str | None,
    limit: int,
    before_seq: int | None,
) -> tuple[list[Run], int | None]:
    """Newest first; returns (runs, the seq to pass as before_seq for the next page)."""
    where: list[str] = []
    args: list[object] = []
    for col, val in (
        ("schedule_id", schedule_id),
        ("pipeline_id", pipeline_id),
        ("status", status),
    ):
        if val is not None:
            where.append(f"{col} = %s")
            args.append(val)
    if before_seq is not None:
        where.append("seq < %s")
        args.append(before_seq)
    sql = f"SELECT {COLUMNS} FROM runs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY seq DESC LIMIT %s"
    cur = await conn.execute(sql, (*args, limit + 1))
    rows = await cur.fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return [row_to_run(r) for r in rows], (rows[-1][17] if more and rows else None)


def _sets(fields: dict[str, Any]) -> tuple[list[str], list[Any]]:
    sets: list[str] = []
    args: list[Any] = []
    for k, v in fields.items():
        if k not in _SETTABLE:
            raise ValueError(f"runs.{k} cannot be set by a status write")
        sets.append(f"{k} = %s")
        args.append(json.dumps(list(v)) if k == "attempts" else v)
    return sets, args


async def _claim_lost(conn: Conn, run_id: str, claim: Claim) -> bool:
    """After a refused write: is it because the run is no longer held by `claim`?"""
    cur = await conn.execute("SELECT claimed_by, attempt FROM runs WHERE id = %s", (run_id,))
    row = await cur.fetchone()
    return row is not None and (row[0], row[1]) != (claim.replica_id, claim.attempt)


async def transition_run(
    conn: Conn,
    run_id: str,
    to: RunStatus,
    among: Sequence[RunStatus] | None,
    claim: Claim | None,
    fields: dict[str, Any],
) -> bool:
    """The status write of `RunStore.transition_run` (followups are the caller's)."""
    froms = sorted(s.value for s in sources_of(to, among))
    sets, args = _sets(fields)
    sets.insert(0, "status = %s")
    args.insert(0, to.value)
    if to is RunStatus.QUEUED:
        sets.append("claimed_by = NULL")
    elif to is RunStatus.RUNNING and claim is not None:
        sets.append("claimed_by = %s")
        args.append(claim.replica_id)
    where = "id = %s AND status = ANY(%s)"
    args += [run_id, froms]
    held = claim is not None and RunStatus.RUNNING.value in froms
    if held:
        assert claim is not None
        where += " AND (status <> 'Running' OR (claimed_by = %s AND attempt = %s))"
        args += [claim.replica_id, claim.attempt]
    cur = await conn.execute(
        f"UPDATE runs SET {', '.join(sets)} WHERE {where}",
        args,
    )
    if cur.rowcount:
        return True
    if held and claim is not None and await _claim_lost(conn, run_id, claim):
        raise ClaimLost(run_id)
    return False


async def update_running(
    conn: Conn, run_id: str, claim: Claim | None, fields: dict[str, Any]
) -> bool:
    sets, args = _sets(fields)
    where = "id = %s AND status = 'Running'"
    args.append(run_id)
    if claim is not None:
        where += " AND claimed_by = %s AND attempt = %s"
        args += [claim.replica_id, claim.attempt]
    cur = await conn.execute(
        f"UPDATE runs SET {', '.join(sets)} WHERE {where}",
        args,
    )
    if cur.rowcount:
        return True
    if claim is not None and await _claim_lost(conn, run_id, claim):
        raise ClaimLost(run_id)
    return False


async def claim_run(
    conn: Conn,
    run_id: str,
    replica_id: str,
    now: datetime,
    serial: bool,
    attempt: int | None = None,
) -> ClaimResult:
    """Queued → Running for `replica_id`. A run nothing serializes is claimed by one
    statement (its row locked with SKIP LOCKED: another replica claiming it means GONE for
    us). A file run, or a run of a serial schedule, goes through `_claim_serialized`."""
    cur = await conn.execute(
        "WITH r AS (SELECT id, path IS NOT NULL AND (trigger::jsonb ->> 'kind') = 'file' AS f"
        " FROM runs WHERE id = %s AND status = 'Queued' AND attempt = coalesce(%s, attempt)"
        " FOR UPDATE SKIP LOCKED),"
        " u AS (UPDATE runs SET status = 'Running', started_at = %s, next_attempt_at = NULL,"
        " claimed_by = %s FROM r WHERE runs.id = r.id AND NOT %s AND NOT r.f RETURNING runs.id)"
        " SELECT (SELECT count(*) FROM r), (SELECT count(*) FROM u)",
        (run_id, attempt, now, replica_id, serial),
    )
    row = await cur.fetchone()
    if row is None or row[0] == 0:
        if attempt is None:
            return ClaimResult.GONE
        # Already ours at this attempt: a retried claim whose first try did commit.
        cur = await conn.execute(
            "SELECT 1 FROM runs WHERE id = %s AND status = 'Running' AND claimed_by = %s"
            " AND attempt = %s",
            (run_id, replica_id, attempt),
        )
        return ClaimResult.CLAIMED if await cur.fetchone() else ClaimResult.GONE
    if row[1]:
        return ClaimResult.CLAIMED
    async with conn.transaction():
        return await _claim_serialized(conn, run_id, replica_id, now, serial, attempt)


async def _claim_serialized(
    conn: Conn, run_id: str, replica_id: str, now: datetime, serial: bool, attempt: int | None
) -> ClaimResult:
    """The claim of a file run or a serial schedule's run, in the caller's transaction: the
    "same file or schedule already Running" check runs under an advisory lock on that key,
    so two replicas never both see "nothing Running" for it."""
    cur = await conn.execute(
        "SELECT schedule_id, path, status, trigger, attempt FROM runs WHERE id = %s"
        " FOR UPDATE SKIP LOCKED",
        (run_id,),
    )
    row = await cur.fetchone()
    if row is None or row[2] != RunStatus.QUEUED.value:
        return ClaimResult.GONE
    if attempt is not None and row[4] != attempt:
        return ClaimResult.GONE
    schedule_id, path = row[0], row[1]
    key: str | None = None
    busy_sql = "SELECT 1 FROM runs WHERE status = 'Running' AND schedule_id = %s"
    busy_args: list[Any] = [schedule_id]
    if serial:
        key = f"serial:{schedule_id}"
    elif path is not None and json.loads(row[3]).get("kind") == "file":
        key = f"file:{schedule_id}:{bytes(path).hex()}"
        busy_sql += " AND path = %s"
        busy_args.append(path)
    if key is not None:
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,))
        cur = await conn.execute(busy_sql + " LIMIT 1", busy_args)
        if await cur.fetchone() is not None:
            return ClaimResult.BUSY
    await conn.execute(
        "UPDATE runs SET status = 'Running', started_at = %s, next_attempt_at = NULL,"
        " claimed_by = %s WHERE id = %s",
        (now, replica_id, run_id),
    )
    return ClaimResult.CLAIMED


async def requeue(conn: Conn, where: str, args: Sequence[Any], reason_sql: str) -> int:
    """Running runs matching `where` back to Queued as their next attempt (a run whose
    cancel was requested ends Canceled instead: its holder is gone)."""
    cur = await conn.execute(
        "UPDATE runs SET status = CASE WHEN cancel_requested_at IS NULL THEN 'Queued'"
        " ELSE 'Canceled' END, attempt = CASE WHEN cancel_requested_at IS NULL"
        " THEN attempt + 1 ELSE attempt END, finished_at = CASE WHEN cancel_requested_at"
        f" IS NULL THEN NULL ELSE now() END, error = {reason_sql}, next_attempt_at = NULL,"
        f" claimed_by = NULL WHERE status = 'Running' AND ({where})",
        args,
    )
    return cur.rowcount
