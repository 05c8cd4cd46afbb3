"""The runs table of the state database: the outbox rows and their lifecycle queries.

`RunsTable` is mixed into `Store`; its methods run on the store's worker thread.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from watcherd.core.errors import StateError
from watcherd.core.models import NAMESPACE, TERMINAL, Run, RunStatus

__all__ = ["NewRun", "RunsTable", "Tx", "iso", "parse_iso", "run_id_for"]

_RUN_COLUMNS = (
    "id, schedule_id, pipeline_id, experiment, status, trigger, parameters, path, attempt, "
    "attempts, error, exit_code, remote_id, queued_at, started_at, finished_at, "
    "next_attempt_at, seq"
)


def iso(dt: datetime | None) -> str | None:
    """A sortable UTC timestamp string (microseconds, 'Z')."""
    if dt is None:
        return None
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: str | None) -> datetime | None:
    """Inverse of `iso` (accepts any ISO form with an offset or Z)."""
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def run_id_for(schedule_id: str, dedup: str) -> str:
    """The run id is stable for its (schedule, dedup) key."""
    return str(uuid.uuid5(NAMESPACE, f"run/{schedule_id}/{dedup}"))


@dataclass(frozen=True, slots=True, kw_only=True)
class NewRun:
    """A run to insert as Queued (or directly Skipped) under its dedup key."""

    schedule_id: str
    pipeline_id: str
    experiment: str
    dedup: str
    trigger: Mapping[str, object]
    parameters: Mapping[str, str]
    path: bytes | None = None
    status: RunStatus = RunStatus.QUEUED
    error: str | None = None

    @property
    def id(self) -> str:
        return run_id_for(self.schedule_id, self.dedup)


class RunsTable:
    """Queries on the runs (and idempotency) tables."""

    _conn: sqlite3.Connection

    def _tx(self) -> Tx:
        return Tx(self._conn)

    @staticmethod
    def _insert_runs(c: sqlite3.Cursor, runs: Sequence[NewRun], now: datetime) -> list[str]:
        """INSERT OR IGNORE; returns the ids actually inserted as Queued."""
        inserted: list[str] = []
        ts = iso(now)
        for r in runs:
            finished = ts if r.status in TERMINAL else None
            c.execute(
                "INSERT OR IGNORE INTO runs(id, schedule_id, pipeline_id, experiment, dedup,"
                " status, trigger, parameters, path, error, queued_at, finished_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    r.id,
                    r.schedule_id,
                    r.pipeline_id,
                    r.experiment,
                    r.dedup,
                    r.status.value,
                    json.dumps(r.trigger),
                    json.dumps(dict(r.parameters)),
                    r.path,
                    r.error,
                    ts,
                    finished,
                ),
            )
            if c.rowcount and r.status is RunStatus.QUEUED:
                inserted.append(r.id)
        return inserted

    # ── runs ─────────────────────────────────────────────────────────────────

    @staticmethod
    def _run(r: Sequence[Any]) -> Run:
        return Run(
            id=r[0],
            schedule_id=r[1],
            pipeline_id=r[2],
            experiment_name=r[3],
            status=RunStatus(r[4]),
            trigger=json.loads(r[5]),
            parameters=json.loads(r[6]),
            path=bytes(r[7]) if r[7] is not None else None,
            attempt=r[8],
            attempts=tuple(json.loads(r[9])),
            error=r[10],
            exit_code=r[11],
            remote_id=r[12],
            queued_at=parse_iso(r[13]),
            started_at=parse_iso(r[14]),
            finished_at=parse_iso(r[15]),
            next_attempt_at=parse_iso(r[16]),
        )

    def get_run(self, run_id: str) -> Run | None:
        row = self._conn.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE id=?", (run_id,)
        ).fetchone()
        return self._run(row) if row else None

    def get_runs(self, run_ids: Sequence[str]) -> list[Run]:
        out: list[Run] = []
        for i in range(0, len(run_ids), 500):
            chunk = run_ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE id IN ({marks}) ORDER BY seq", chunk
            )
            out += [self._run(r) for r in rows]
        return out

    def run_log(self, run_id: str) -> bytes | None:
        row = self._conn.execute("SELECT log FROM runs WHERE id=?", (run_id,)).fetchone()
        return bytes(row[0]) if row and row[0] is not None else None

    def queued_runs(self) -> list[Run]:
        rows = self._conn.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE status='Queued' ORDER BY seq"
        )
        return [self._run(r) for r in rows]

    def list_runs(
        self,
        *,
        schedule_id: str | None = None,
        pipeline_id: str | None = None,
        status: str | None = None,
        limit: int = 50,
        before_seq: int | None = None,
    ) -> tuple[list[Run], int | None]:
        """Newest first; returns (runs, seq to pass as before_seq for the next page)."""
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
        sql = f"SELECT {_RUN_COLUMNS} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        rows = self._conn.execute(sql, (*args, limit + 1)).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        return [self._run(r) for r in rows], (rows[-1][17] if more and rows else None)

    def last_runs(self) -> dict[str, Run]:
        """The newest run of each schedule."""
        rows = self._conn.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE seq IN "
            "(SELECT max(seq) FROM runs GROUP BY schedule_id)"
        )
        return {r[1]: self._run(r) for r in rows}

    def experiments(self) -> list[str]:
        rows = self._conn.execute("SELECT DISTINCT experiment FROM runs")
        return [r[0] for r in rows]

    def update_run(
        self,
        run_id: str,
        *,
        expect: Iterable[RunStatus] | None = None,
        followups: Sequence[NewRun] = (),
        now: datetime | None = None,
        **fields: Any,
    ) -> tuple[bool, list[str]]:
        """Set columns of one run (status transitions checked against `expect`), and insert
        `followups` (on_failure) in the same transaction. Returns (updated, new queued ids)."""
        sets, args = [], []
        for k, v in fields.items():
            if isinstance(v, datetime):
                v = iso(v)
            elif k == "attempts":
                v = json.dumps(list(v))
            elif isinstance(v, RunStatus):
                v = v.value
            sets.append(f"{k}=?")
            args.append(v)
        sql = f"UPDATE runs SET {', '.join(sets)} WHERE id=?"
        args.append(run_id)
        if expect is not None:
            statuses = [s.value for s in expect]
            sql += f" AND status IN ({','.join('?' * len(statuses))})"
            args += statuses
        with self._tx() as c:
            c.execute(sql, args)
            if c.rowcount == 0:
                return False, []
            new = self._insert_runs(c, followups, now or datetime.now(UTC)) if followups else []
            return True, new

    def requeue_interrupted(self, reason: str) -> int:
        """Runs left Running by a crash go back to Queued with the next attempt number."""
        with self._tx() as c:
            c.execute(
                "UPDATE runs SET status='Queued', attempt=attempt+1, error=?, "
                "next_attempt_at=NULL WHERE status='Running'",
                (reason,),
            )
            return c.rowcount

    def skip_runs(self, run_ids: Sequence[str], reason: str, now: datetime) -> None:
        with self._tx() as c:
            c.executemany(
                "UPDATE runs SET status='Skipped', error=?, finished_at=? "
                "WHERE id=? AND status='Queued'",
                [(reason, iso(now), r) for r in run_ids],
            )

    def insert_manual(self, run: NewRun, key: str | None, now: datetime) -> str:
        """Insert a manual run, remembering its Idempotency-Key; returns the run id."""
        with self._tx() as c:
            if key is not None:
                row = c.execute("SELECT run_id FROM idempotency WHERE key=?", (key,)).fetchone()
                if row:
                    return str(row[0])
                c.execute(
                    "INSERT INTO idempotency(key, run_id, created_at) VALUES (?,?,?)",
                    (key, run.id, iso(now)),
                )
            self._insert_runs(c, [run], now)
            return run.id

    def prune(self, before: datetime) -> int:
        """Delete finished runs older than `before`."""
        with self._tx() as c:
            c.execute(
                "DELETE FROM runs WHERE finished_at IS NOT NULL AND finished_at < ?",
                (iso(before),),
            )
            n = c.rowcount
            c.execute("DELETE FROM idempotency WHERE created_at < ?", (iso(before),))
            return n


class Tx:
    """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on error; maps sqlite errors to StateError.

    Inside a transaction already open (a group commit, see `Store.call`) it nests as a
    SAVEPOINT: an error undoes this method's changes only, and the group's COMMIT makes the
    rest durable."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._cur: sqlite3.Cursor | None = None
        self._nested = False

    def __enter__(self) -> sqlite3.Cursor:
        try:
            if self._conn.in_transaction:
                self._nested = True
                self._conn.execute("SAVEPOINT tx")
            else:
                self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StateError(f"state database: {exc}") from exc
        self._cur = self._conn.cursor()
        return self._cur

    def __exit__(self, et: object, exc: BaseException | None, tb: object) -> None:
        if self._nested:
            if exc is not None and self._conn.in_transaction:
                self._conn.execute("ROLLBACK TO tx")
            if self._conn.in_transaction:
                self._conn.execute("RELEASE tx")
            if isinstance(exc, sqlite3.Error):
                raise StateError(f"state database: {exc}") from exc
            return
        if exc is None:
            try:
                self._conn.execute("COMMIT")
                return
            except sqlite3.Error as e:
                self._rollback()
                raise StateError(f"state database: {e}") from e
        self._rollback()
        if isinstance(exc, sqlite3.Error):
            raise StateError(f"state database: {exc}") from exc

    def _rollback(self) -> None:
        # After an I/O error SQLite may have rolled back already; a second ROLLBACK would
        # raise "no transaction is active" and hide the real error.
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
