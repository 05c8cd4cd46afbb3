"""The state database: the only SQL in watcherd (SQLite, WAL, one writer thread).

Every method of `Store` is synchronous and runs on the store's single worker thread; the
engine calls them through `await store.call(method, ...)`. Each state change is one short
transaction. Runs are an outbox: a due slot or file version is inserted as a Queued run under
UNIQUE(schedule_id, dedup) in the same transaction that advances the timer cursor or the
snapshot, so a crash neither loses nor duplicates a run.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from watcherd.errors import AlreadyRunning, StateError
from watcherd.models import NAMESPACE, TERMINAL, Run, RunStatus

__all__ = ["NewRun", "Store", "StoredSchedule", "iso", "parse_iso", "run_id_for"]

P = ParamSpec("P")
T = TypeVar("T")

SCHEMA_VERSION = 1

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE pipelines(
        id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL, file_status TEXT);
    CREATE TABLE schedules(
        id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, source TEXT NOT NULL,
        status TEXT NOT NULL, file_status TEXT, spec TEXT NOT NULL, trigger_key TEXT,
        anchor TEXT, cursor TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
    CREATE TABLE runs(
        seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
        schedule_id TEXT NOT NULL, pipeline_id TEXT NOT NULL, experiment TEXT NOT NULL,
        dedup TEXT NOT NULL, status TEXT NOT NULL, trigger TEXT NOT NULL,
        parameters TEXT NOT NULL, path BLOB, attempt INTEGER NOT NULL DEFAULT 1,
        attempts TEXT NOT NULL DEFAULT '[]', error TEXT, exit_code INTEGER, remote_id TEXT,
        queued_at TEXT, started_at TEXT, finished_at TEXT, next_attempt_at TEXT, log BLOB,
        extra_env TEXT, UNIQUE(schedule_id, dedup));
    CREATE INDEX runs_status ON runs(status, seq);
    CREATE INDEX runs_schedule ON runs(schedule_id, seq);
    CREATE INDEX runs_finished ON runs(finished_at);
    CREATE TABLE snapshots(
        schedule_id TEXT NOT NULL, name BLOB NOT NULL, version TEXT NOT NULL,
        PRIMARY KEY(schedule_id, name)) WITHOUT ROWID;
    CREATE TABLE baselines(schedule_id TEXT PRIMARY KEY, key TEXT NOT NULL);
    CREATE TABLE idempotency(key TEXT PRIMARY KEY, run_id TEXT NOT NULL, created_at TEXT);
    """,
}

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
    extra_env: Mapping[str, str] | None = None

    @property
    def id(self) -> str:
        return run_id_for(self.schedule_id, self.dedup)


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredSchedule:
    """A schedule row: its JSON spec and the timer state kept for it."""

    id: str
    name: str
    source: str
    status: str
    file_status: str | None
    spec: dict[str, Any]
    trigger_key: str | None
    anchor: datetime | None
    cursor: datetime | None
    created_at: datetime
    updated_at: datetime


class Store:
    """One SQLite file, opened once per daemon, guarded by a lock file in state_dir."""

    def __init__(self, state_dir: Path, *, read_only: bool = False, lock: bool = True) -> None:
        self.state_dir = state_dir
        self.path = state_dir / "state.db"
        self._lock_fd: int | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="watcherd-state")
        self.read_only = read_only
        try:
            if not read_only:
                state_dir.mkdir(parents=True, exist_ok=True)
                if lock:
                    self._take_lock()
            self._conn = self._executor.submit(self._open).result()
        except sqlite3.Error as exc:
            self._executor.shutdown()
            raise StateError(f"cannot open state database {self.path}: {exc}") from exc
        except BaseException:
            self._executor.shutdown()
            self._release_lock()
            raise

    # ── lifecycle ────────────────────────────────────────────────────────────

    def _take_lock(self) -> None:
        fd = os.open(self.state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(
                f"another watcherd is running on state directory {self.state_dir}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _open(self) -> sqlite3.Connection:
        if self.read_only:
            uri = f"file:{self.path}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            return conn
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        self._migrate(conn)
        return conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StateError(f"state database schema {version} is newer than this watcherd")
        for v in range(version + 1, SCHEMA_VERSION + 1):
            conn.execute("BEGIN IMMEDIATE")
            for stmt in _MIGRATIONS[v].split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute(f"PRAGMA user_version={v}")
            conn.execute("COMMIT")

    def close(self) -> None:
        """Close the connection, stop the worker thread and release the lock."""
        try:
            self._executor.submit(self._conn.close).result()
        finally:
            self._executor.shutdown()
            self._release_lock()

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a Store method on the worker thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def sync(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a Store method on the worker thread, blocking (start-up and tests)."""
        return self._executor.submit(fn, *args, **kwargs).result()

    def _tx(self) -> _Tx:
        return _Tx(self._conn)

    # ── pipelines ────────────────────────────────────────────────────────────

    def pipeline_rows(self) -> dict[str, tuple[str, str | None]]:
        """{id: (status, file_status)}."""
        rows = self._conn.execute("SELECT id, status, file_status FROM pipelines")
        return {r[0]: (r[1], r[2]) for r in rows}

    def upsert_pipeline(self, ident: str, name: str, status: str, file_status: str) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO pipelines(id, name, status, file_status) VALUES (?,?,?,?) "
                "ON CONFLICT(id) DO UPDATE SET name=excluded.name, status=excluded.status, "
                "file_status=excluded.file_status",
                (ident, name, status, file_status),
            )

    def set_pipeline_status(self, ident: str, status: str) -> None:
        with self._tx() as c:
            c.execute("UPDATE pipelines SET status=? WHERE id=?", (status, ident))

    # ── schedules ────────────────────────────────────────────────────────────

    def schedules(self) -> list[StoredSchedule]:
        rows = self._conn.execute(
            "SELECT id, name, source, status, file_status, spec, trigger_key, anchor, cursor, "
            "created_at, updated_at FROM schedules ORDER BY created_at, name"
        ).fetchall()
        return [
            StoredSchedule(
                id=r[0],
                name=r[1],
                source=r[2],
                status=r[3],
                file_status=r[4],
                spec=json.loads(r[5]),
                trigger_key=r[6],
                anchor=parse_iso(r[7]),
                cursor=parse_iso(r[8]),
                created_at=parse_iso(r[9]) or datetime.min,
                updated_at=parse_iso(r[10]) or datetime.min,
            )
            for r in rows
        ]

    def put_schedule(self, s: StoredSchedule) -> None:
        """Insert or replace one schedule row (its runs and snapshot are kept)."""
        with self._tx() as c:
            c.execute(
                "INSERT INTO schedules(id, name, source, status, file_status, spec, trigger_key,"
                " anchor, cursor, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(id) DO UPDATE SET name=excluded.name, source=excluded.source, "
                "status=excluded.status, file_status=excluded.file_status, spec=excluded.spec,"
                " trigger_key=excluded.trigger_key, anchor=excluded.anchor, "
                "cursor=excluded.cursor, updated_at=excluded.updated_at",
                (
                    s.id,
                    s.name,
                    s.source,
                    s.status,
                    s.file_status,
                    json.dumps(s.spec, sort_keys=True),
                    s.trigger_key,
                    iso(s.anchor),
                    iso(s.cursor),
                    iso(s.created_at),
                    iso(s.updated_at),
                ),
            )

    def put_schedules(self, items: Iterable[StoredSchedule]) -> None:
        for s in items:
            self.put_schedule(s)

    def delete_schedule(self, ident: str) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM schedules WHERE id=?", (ident,))
            c.execute("DELETE FROM snapshots WHERE schedule_id=?", (ident,))
            c.execute("DELETE FROM baselines WHERE schedule_id=?", (ident,))

    def set_cursor(self, ident: str, cursor: datetime) -> None:
        with self._tx() as c:
            c.execute("UPDATE schedules SET cursor=? WHERE id=?", (iso(cursor), ident))

    # ── the outbox ───────────────────────────────────────────────────────────

    @staticmethod
    def _insert_runs(c: sqlite3.Cursor, runs: Sequence[NewRun], now: datetime) -> list[str]:
        """INSERT OR IGNORE; returns the ids actually inserted as Queued."""
        inserted: list[str] = []
        ts = iso(now)
        for r in runs:
            finished = ts if r.status in TERMINAL else None
            c.execute(
                "INSERT OR IGNORE INTO runs(id, schedule_id, pipeline_id, experiment, dedup,"
                " status, trigger, parameters, path, error, queued_at, finished_at, extra_env)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
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
                    json.dumps(dict(r.extra_env)) if r.extra_env else None,
                ),
            )
            if c.rowcount and r.status is RunStatus.QUEUED:
                inserted.append(r.id)
        return inserted

    def record_slots(
        self, items: Sequence[tuple[str, datetime, Sequence[NewRun]]], now: datetime
    ) -> list[str]:
        """For each (schedule_id, new cursor, runs): insert the runs and advance the cursor,
        all in one transaction. Returns the Queued run ids inserted."""
        with self._tx() as c:
            out: list[str] = []
            for schedule_id, cursor, runs in items:
                out += self._insert_runs(c, runs, now)
                c.execute("UPDATE schedules SET cursor=? WHERE id=?", (iso(cursor), schedule_id))
            return out

    def insert_runs(self, runs: Sequence[NewRun], now: datetime) -> list[str]:
        with self._tx() as c:
            return self._insert_runs(c, runs, now)

    def active_count(self, schedule_id: str) -> tuple[int, int]:
        """(Queued, Running) runs of a schedule."""
        rows = self._conn.execute(
            "SELECT status, count(*) FROM runs WHERE schedule_id=? AND status IN "
            "('Queued','Running') GROUP BY status",
            (schedule_id,),
        ).fetchall()
        d = dict(rows)
        return int(d.get("Queued", 0)), int(d.get("Running", 0))

    # ── snapshots ────────────────────────────────────────────────────────────

    def load_snapshot(self, schedule_id: str, key: str) -> dict[bytes, str] | None:
        row = self._conn.execute(
            "SELECT key FROM baselines WHERE schedule_id=?", (schedule_id,)
        ).fetchone()
        if row is None or row[0] != key:
            return None
        rows = self._conn.execute(
            "SELECT name, version FROM snapshots WHERE schedule_id=?", (schedule_id,)
        )
        return {bytes(n): v for n, v in rows}

    def commit_changes(
        self,
        schedule_id: str,
        key: str,
        upserts: Sequence[tuple[bytes, str]],
        deletes: Sequence[bytes],
        runs: Sequence[NewRun],
        now: datetime,
    ) -> list[str]:
        """Apply a snapshot delta, set the baseline key and insert runs, in one transaction."""
        with self._tx() as c:
            row = c.execute(
                "SELECT key FROM baselines WHERE schedule_id=?", (schedule_id,)
            ).fetchone()
            if row is None or row[0] != key:
                c.execute("DELETE FROM snapshots WHERE schedule_id=?", (schedule_id,))
                c.execute(
                    "INSERT OR REPLACE INTO baselines(schedule_id, key) VALUES (?,?)",
                    (schedule_id, key),
                )
            c.executemany(
                "INSERT OR REPLACE INTO snapshots(schedule_id, name, version) VALUES (?,?,?)",
                [(schedule_id, n, v) for n, v in upserts],
            )
            c.executemany(
                "DELETE FROM snapshots WHERE schedule_id=? AND name=?",
                [(schedule_id, n) for n in deletes],
            )
            return self._insert_runs(c, runs, now)

    def drop_baseline(self, schedule_id: str) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM baselines WHERE schedule_id=?", (schedule_id,))
            c.execute("DELETE FROM snapshots WHERE schedule_id=?", (schedule_id,))

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

    def run_extra_env(self, run_id: str) -> dict[str, str]:
        row = self._conn.execute("SELECT extra_env FROM runs WHERE id=?", (run_id,)).fetchone()
        return json.loads(row[0]) if row and row[0] else {}

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

    def idempotent_run(self, key: str) -> str | None:
        row = self._conn.execute("SELECT run_id FROM idempotency WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

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


class _Tx:
    """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on error; maps sqlite errors to StateError."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._cur: sqlite3.Cursor | None = None

    def __enter__(self) -> sqlite3.Cursor:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StateError(f"state database: {exc}") from exc
        self._cur = self._conn.cursor()
        return self._cur

    def __exit__(self, et: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            try:
                self._conn.execute("COMMIT")
                return
            except sqlite3.Error as e:
                self._conn.execute("ROLLBACK")
                raise StateError(f"state database: {e}") from e
        self._conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise StateError(f"state database: {exc}") from exc
