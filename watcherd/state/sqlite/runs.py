"""SQL of the runs table: the outbox rows and their lifecycle (functions on a connection).

Each function runs on the database's writer or a reader thread (see `database.Database`);
the ones that write open their own transaction (`Tx`), which nests in a group commit.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from itertools import groupby
from operator import itemgetter
from typing import Any

from watcherd.core.jsontext import mapping_json, mapping_json_once
from watcherd.core.models import TERMINAL, FileRef, Run, RunStatus
from watcherd.core.runs import NewRun, apply_gates, sources_of
from watcherd.core.timefmt import format_utc, parse_utc
from watcherd.engine.ports import ClaimResult
from watcherd.state.sqlite.database import Tx

__all__ = [
    "experiments",
    "claim_run",
    "get_run",
    "get_runs",
    "insert_manual",
    "last_pipeline_runs",
    "insert_runs",
    "last_runs",
    "list_runs",
    "prune_batch",
    "queued_runs",
    "requeue_interrupted",
    "run_log",
    "skip_runs",
    "transition_run",
    "update_running",
]

Conn = sqlite3.Connection

COLUMNS = (
    "id, schedule_id, pipeline_id, experiment, status, trigger, parameters, path, attempt, "
    "attempts, error, exit_code, remote_id, queued_at, started_at, finished_at, "
    "next_attempt_at, seq, file_local, file_url, file_param"
)
# Columns a status write may set (anything else is a bug, not a request).
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


_INSERT = (
    "INSERT OR IGNORE INTO runs(id, schedule_id, pipeline_id, experiment, dedup, status,"
    " trigger, parameters, path, error, queued_at, finished_at, file_local, file_url,"
    " file_param) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
# A run with no file, no error and not finished (every time slot's, most manual ones) binds
# only the columns it sets: Python's sqlite3 looks for an adapter for each None it binds
# (~0.5 µs each), and the six NULLs cost more than the rest of the row (1,500 rows of a
# catch-up: 24 -> 12 ms with the COMMIT). The columns left out take their default, NULL.
_INSERT_PLAIN = (
    "INSERT OR IGNORE INTO runs(id, schedule_id, pipeline_id, experiment, dedup, status,"
    " trigger, parameters, queued_at) VALUES (?,?,?,?,?,?,?,?,?)"
)


def insert_runs(c: sqlite3.Cursor, runs: Sequence[NewRun], now: datetime) -> list[str]:
    """INSERT OR IGNORE under UNIQUE(schedule_id, dedup); returns the ids inserted Queued.

    One statement for the batch (a catch-up inserts hundreds). A run already stored is
    ignored by it; when the statement added fewer rows than it was given, the rows it added
    are read back (their seq is above the largest before it: AUTOINCREMENT). A batch of new
    runs, as a catch-up's, reads nothing back. (An ignored row still takes a seq value, as
    a single run's insert always did: seq orders runs, with gaps.)"""
    if len(runs) == 1:
        return _insert_one(c, runs[0], now)
    gated = sorted({r.schedule_id for r in runs if r.gate is not None})
    if gated:
        runs = apply_gates(runs, {sid: _active(c, sid) for sid in gated})
    first: dict[str, NewRun] = {}
    for r in runs:
        first.setdefault(r.id, r)  # the first of a repeated id wins, as row by row
    new = list(first.values())
    ts, text = format_utc(now, micro=True), mapping_json_once()
    (top,) = c.execute("SELECT coalesce(max(seq), 0) FROM runs").fetchone()
    before = c.connection.total_changes
    # One executemany per stretch of runs of one shape, in order: seq is the dispatch order.
    for sql, same in groupby((_statement(r, ts, text) for r in new), key=itemgetter(0)):
        c.executemany(sql, [row for _, row in same])
    if c.connection.total_changes - before != len(new):  # some were stored already
        added = {row[0] for row in c.execute("SELECT id FROM runs WHERE seq > ?", (top,))}
        new = [r for r in new if r.id in added]
        if not new:
            return []
    c.executemany(
        "INSERT OR IGNORE INTO experiments(name) VALUES (?)",
        [(e,) for e in dict.fromkeys(r.experiment for r in new)],
    )
    return [r.id for r in new if r.status is RunStatus.QUEUED]


def _insert_one(c: sqlite3.Cursor, r: NewRun, now: datetime) -> list[str]:
    if r.gate is not None:
        r = apply_gates([r], {r.schedule_id: _active(c, r.schedule_id)})[0]
    c.execute(*_statement(r, format_utc(now, micro=True)))
    if not c.rowcount:
        return []
    c.execute("INSERT OR IGNORE INTO experiments(name) VALUES (?)", (r.experiment,))
    return [r.id] if r.status is RunStatus.QUEUED else []


def _statement(
    r: NewRun, ts: str, text: Callable[[Mapping[str, object]], str] = mapping_json
) -> tuple[str, tuple[Any, ...]]:
    """The INSERT of run `r` and its row: `_INSERT_PLAIN`, without its NULLs, when it has no
    file, no error and is not finished. `text`: the JSON of a mapping (`mapping_json_once`)."""
    if r.file is None and r.error is None and r.status not in TERMINAL:
        return _INSERT_PLAIN, (*_head(r, text), ts)
    return _INSERT, _row(r, ts, text)


def _row(r: NewRun, ts: str, text: Callable[[Mapping[str, object]], str]) -> tuple[Any, ...]:
    f = r.file
    return (
        *_head(r, text),
        f.relative_path if f else None,
        r.error,
        ts,
        ts if r.status in TERMINAL else None,
        f.local_path if f else None,
        f.url if f else None,
        f.parameter if f else None,
    )


def _head(r: NewRun, text: Callable[[Mapping[str, object]], str]) -> tuple[Any, ...]:
    """The columns every run sets, first in both INSERTs."""
    return (
        r.id,
        r.schedule_id,
        r.pipeline_id,
        r.experiment,
        r.dedup,
        r.status.value,
        text(r.trigger),
        text(r.parameters),
    )


def _active(c: sqlite3.Cursor, schedule_id: str) -> tuple[int, int]:
    """(Queued, Running) runs of a schedule, from the partial index of active runs."""
    rows = dict(
        c.execute(
            "SELECT status, count(*) FROM runs WHERE schedule_id=? AND status IN "
            "('Queued','Running') GROUP BY status",
            (schedule_id,),
        ).fetchall()
    )
    return int(rows.get("Queued", 0)), int(rows.get("Running", 0))


def _run(r: Sequence[Any]) -> Run:
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
        queued_at=parse_utc(r[13]),
        started_at=parse_utc(r[14]),
        finished_at=parse_utc(r[15]),
        next_attempt_at=parse_utc(r[16]),
        seq=r[17],
    )


def get_run(c: Conn, run_id: str) -> Run | None:
    row = c.execute(f"SELECT {COLUMNS} FROM runs WHERE id=?", (run_id,)).fetchone()
    return _run(row) if row else None


def get_runs(c: Conn, run_ids: Sequence[str]) -> list[Run]:
    out: list[Run] = []
    for i in range(0, len(run_ids), 500):
        chunk = run_ids[i : i + 500]
        marks = ",".join("?" * len(chunk))
        rows = c.execute(f"SELECT {COLUMNS} FROM runs WHERE id IN ({marks}) ORDER BY seq", chunk)
        out += [_run(r) for r in rows]
    return out


def run_log(c: Conn, run_id: str) -> bytes | None:
    row = c.execute("SELECT log FROM runs WHERE id=?", (run_id,)).fetchone()
    return bytes(row[0]) if row and row[0] is not None else None


def queued_runs(c: Conn) -> list[Run]:
    rows = c.execute(f"SELECT {COLUMNS} FROM runs WHERE status='Queued' ORDER BY seq")
    return [_run(r) for r in rows]


def list_runs(
    c: Conn,
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
            where.append(f"{col}=?")
            args.append(val)
    if before_seq is not None:
        where.append("seq<?")
        args.append(before_seq)
    sql = f"SELECT {COLUMNS} FROM runs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY seq DESC LIMIT ?"
    rows = c.execute(sql, (*args, limit + 1)).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return [_run(r) for r in rows], (rows[-1][17] if more and rows else None)


def last_runs(
    c: Conn, schedule_ids: Sequence[str] | None = None, seen: dict[str, Any] | None = None
) -> dict[str, Run]:
    """The newest run of each schedule, or of those named (one probe of runs_schedule each:
    a page showing one schedule never reads the whole index)."""
    if schedule_ids is not None:  # one statement: a probe per id, in SQLite's C loop
        rows = c.execute(
            f"SELECT {COLUMNS} FROM runs WHERE seq IN (SELECT (SELECT seq FROM runs r WHERE"
            " r.schedule_id = j.value ORDER BY seq DESC LIMIT 1) FROM json_each(?) j)",
            (json.dumps(list(schedule_ids)),),
        )
        return {r[1]: _cached_run(r, seen) for r in rows}
    rows = c.execute(
        f"SELECT {COLUMNS} FROM runs WHERE seq IN (SELECT max(seq) FROM runs GROUP BY schedule_id)"
    )
    return {r[1]: _run(r) for r in rows}


def _cached_run(r: Sequence[Any], seen: dict[str, Any] | None, key: int = 1) -> Run:
    """`_run(r)`, reusing the Run built from the same row last time (`seen`: by schedule id):
    a page listing 10k schedules every 3 s rebuilds only the newest runs that changed, and
    an unchanged Run is the same object (what `services.views` caches items by)."""
    if seen is None:
        return _run(r)
    got = seen.get(r[key])
    if got is not None and got[0] == r:
        return got[1]  # type: ignore[no-any-return]
    run = _run(r)
    seen[r[key]] = (tuple(r), run)
    return run


def last_pipeline_runs(
    c: Conn, pipeline_ids: Sequence[str], seen: dict[str, Any] | None = None
) -> dict[str, Run]:
    """The newest run of each named pipeline: one probe of runs_pipeline each (`seen`: as
    for `last_runs`, by pipeline id)."""
    rows = c.execute(
        f"SELECT {COLUMNS} FROM runs WHERE seq IN (SELECT (SELECT seq FROM runs r WHERE"
        " r.pipeline_id = j.value ORDER BY seq DESC LIMIT 1) FROM json_each(?) j)",
        (json.dumps(list(pipeline_ids)),),
    )
    return {r[2]: _cached_run(r, seen, key=2) for r in rows}


def experiments(c: Conn) -> list[str]:
    return [r[0] for r in c.execute("SELECT name FROM experiments ORDER BY name")]


def transition_run(
    c: Conn,
    run_id: str,
    to: RunStatus,
    among: Sequence[RunStatus] | None,
    followups: Sequence[NewRun],
    now: datetime,
    fields: dict[str, Any],
) -> tuple[bool, list[str]]:
    """See `RunStore.transition_run`."""
    froms = sorted(s.value for s in sources_of(to, among))
    sets, args = ["status=?"], [to.value]
    for k, v in fields.items():
        sets.append(f"{_column(k)}=?")
        args.append(_value(k, v))
    sql = (
        f"UPDATE runs SET {', '.join(sets)} WHERE id=? AND status IN ({','.join('?' * len(froms))})"
    )
    with Tx(c) as cur:
        cur.execute(sql, (*args, run_id, *froms))
        if cur.rowcount == 0:
            return False, []
        return True, insert_runs(cur, followups, now) if followups else []


def claim_run(
    c: Conn, run_id: str, now: datetime, serial: bool, attempt: int | None = None
) -> ClaimResult:
    """Queued → Running unless its file's (or, serial, its schedule's) run is Running."""
    with Tx(c) as cur:
        row = cur.execute(
            "SELECT schedule_id, path, status, trigger, attempt FROM runs WHERE id=?", (run_id,)
        ).fetchone()
        if row is None or row[2] != RunStatus.QUEUED.value:
            return ClaimResult.GONE
        if attempt is not None and row[4] != attempt:
            return ClaimResult.GONE
        schedule_id, path = row[0], row[1]
        busy = None
        if serial:
            busy = cur.execute(
                "SELECT 1 FROM runs WHERE status='Running' AND schedule_id=? LIMIT 1",
                (schedule_id,),
            ).fetchone()
        elif path is not None and json.loads(row[3]).get("kind") == "file":
            busy = cur.execute(
                "SELECT 1 FROM runs WHERE status='Running' AND schedule_id=? AND path=? LIMIT 1",
                (schedule_id, path),
            ).fetchone()
        if busy:
            return ClaimResult.BUSY
        cur.execute(
            "UPDATE runs SET status='Running', started_at=?, next_attempt_at=NULL WHERE id=?",
            (format_utc(now, micro=True), run_id),
        )
        return ClaimResult.CLAIMED


def update_running(c: Conn, run_id: str, fields: dict[str, Any]) -> bool:
    sets = [f"{_column(k)}=?" for k in fields]
    args = [_value(k, v) for k, v in fields.items()]
    with Tx(c) as cur:
        cur.execute(
            f"UPDATE runs SET {', '.join(sets)} WHERE id=? AND status='Running'", (*args, run_id)
        )
        return cur.rowcount > 0


def _column(name: str) -> str:
    if name not in _SETTABLE:
        raise ValueError(f"runs.{name} cannot be set by a status write")
    return name


def _value(name: str, value: Any) -> Any:
    if isinstance(value, datetime):
        return format_utc(value, micro=True)
    if name == "attempts":
        return json.dumps(list(value))
    return value


def requeue_interrupted(c: Conn, reason: str) -> int:
    with Tx(c) as cur:
        cur.execute(
            "UPDATE runs SET status='Queued', attempt=attempt+1, error=?, next_attempt_at=NULL "
            "WHERE status='Running'",
            (reason,),
        )
        return cur.rowcount


def skip_runs(c: Conn, run_ids: Sequence[str], reason: str, now: datetime) -> None:
    with Tx(c) as cur:
        cur.executemany(
            "UPDATE runs SET status='Skipped', error=?, finished_at=? "
            "WHERE id=? AND status='Queued'",
            [(reason, format_utc(now, micro=True), r) for r in run_ids],
        )


def insert_manual(c: Conn, run: NewRun, key: str | None, now: datetime) -> str:
    with Tx(c) as cur:
        if key is not None:
            row = cur.execute("SELECT run_id FROM idempotency WHERE key=?", (key,)).fetchone()
            if row:
                return str(row[0])
            cur.execute(
                "INSERT INTO idempotency(key, run_id, created_at) VALUES (?,?,?)",
                (key, run.id, format_utc(now, micro=True)),
            )
        insert_runs(cur, [run], now)
        return run.id


def prune_batch(c: Conn, before: datetime, limit: int) -> int:
    """Delete at most `limit` finished runs older than `before`; returns how many."""
    cutoff = format_utc(before, micro=True)
    with Tx(c) as cur:
        cur.execute(
            "DELETE FROM runs WHERE seq IN (SELECT seq FROM runs WHERE finished_at IS NOT NULL "
            "AND finished_at < ? LIMIT ?)",
            (cutoff, limit),
        )
        n = cur.rowcount
        # A key is kept while its run is unfinished: a client retrying its request after a
        # restart must get that run back, not a second one (SPEC §5).
        cur.execute(
            "DELETE FROM idempotency WHERE created_at < ? AND NOT EXISTS (SELECT 1 FROM runs"
            " WHERE runs.id = idempotency.run_id AND runs.finished_at IS NULL)",
            (cutoff,),
        )
        return n
