"""The state database: the only SQL in watcherd (SQLite, WAL, one writer thread).

Every method of `Store` is synchronous and runs on the store's single worker thread; the
engine calls them through `await store.call(method, ...)`. Each state change is one short
transaction. Runs are an outbox: a due slot or file version is inserted as a Queued run under
UNIQUE(schedule_id, dedup) in the same transaction that advances the timer cursor or the
snapshot, so a crash neither loses nor duplicates a run.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import structlog

from watcherd.core.errors import AlreadyRunning, StateError
from watcherd.state.sqlite.runs import NewRun, RunsTable, iso, parse_iso, run_id_for

__all__ = ["NewRun", "Store", "StoredSchedule", "iso", "parse_iso", "run_id_for"]

log = structlog.get_logger(__name__)

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
        UNIQUE(schedule_id, dedup));
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


class Store(RunsTable):
    """One SQLite file, opened once per daemon, guarded by a lock file in state_dir."""

    def __init__(self, state_dir: Path, *, read_only: bool = False, lock: bool = True) -> None:
        self.state_dir = state_dir
        self.path = state_dir / "state.db"
        self._lock_fd: int | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="watcherd-state")
        self._pending: collections.deque[Any] = collections.deque()  # calls for _drain
        self._drain_scheduled = False
        self.read_only = read_only
        self.write_error: str | None = None  # set while writes fail (see `write`)
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

    async def write(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Like `call`, for state changes the engine cannot drop: a StateError (disk full,
        read-only file system) is logged once and retried with backoff until it clears, so
        the daemon neither crashes nor loses the change."""
        delay = 0.25
        while True:
            try:
                result = await self.call(fn, *args, **kwargs)
            except StateError as exc:
                if self.write_error is None:
                    log.error("state_write_failed", error=str(exc), path=str(self.path))
                self.write_error = str(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            if self.write_error is not None:
                log.info("state_write_recovered", path=str(self.path))
                self.write_error = None
            return result

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a Store method on the worker thread, in a group commit.

        Calls made while the worker is busy queue up; the worker then runs all of them in one
        BEGIN IMMEDIATE … COMMIT (each method's own transaction nests as a SAVEPOINT, so a
        failure undoes only that method's changes) and answers every caller after that COMMIT:
        each change is still durable before it is acknowledged, but N concurrent changes cost
        one fsync instead of N."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._pending.append((fn, args, kwargs, fut, loop))
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self._executor.submit(self._drain)
        return await fut

    def _drain(self) -> None:
        """On the worker thread: run every queued call in one transaction, then answer."""
        self._drain_scheduled = False  # before popping: a call queued from now on re-submits
        items = []
        while self._pending:
            items.append(self._pending.popleft())
        if not items:
            return
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        group = len(items) > 1 and not self.read_only
        if group:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error:
                group = False  # each call then runs its own transaction, as before
        for fn, args, kwargs, fut, _ in items:
            try:
                results.append((fut, fn(*args, **kwargs), None))
            except BaseException as exc:  # delivered to its caller
                results.append((fut, None, exc))
        if group:
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                err = StateError(f"state database: {exc}")
                results = [(f, None, err) for f, _, _ in results]
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for (_, _, _, _, loop), result in zip(items, results, strict=True):
            by_loop.setdefault(loop, []).append(result)
        for loop, answers in by_loop.items():
            loop.call_soon_threadsafe(_deliver, answers)

    def sync(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a Store method on the worker thread, blocking (start-up and tests)."""
        return self._executor.submit(fn, *args, **kwargs).result()

    # ── pipelines ────────────────────────────────────────────────────────────

    def pipeline_rows(self) -> dict[str, tuple[str, str | None]]:
        """{id: (status, file_status)}."""
        rows = self._conn.execute("SELECT id, status, file_status FROM pipelines")
        return {r[0]: (r[1], r[2]) for r in rows}

    def upsert_pipelines(self, rows: Sequence[tuple[str, str, str, str]]) -> None:
        """(id, name, status, file_status) rows, in one transaction."""
        with self._tx() as c:
            c.executemany(
                "INSERT INTO pipelines(id, name, status, file_status) VALUES (?,?,?,?) "
                "ON CONFLICT(id) DO UPDATE SET name=excluded.name, status=excluded.status, "
                "file_status=excluded.file_status",
                rows,
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
        self.put_schedules([s])

    def put_schedules(self, items: Iterable[StoredSchedule]) -> None:
        """Insert or replace schedule rows, all in one transaction."""
        rows = [
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
            )
            for s in items
        ]
        if not rows:
            return
        with self._tx() as c:
            c.executemany(
                "INSERT INTO schedules(id, name, source, status, file_status, spec, trigger_key,"
                " anchor, cursor, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(id) DO UPDATE SET name=excluded.name, source=excluded.source, "
                "status=excluded.status, file_status=excluded.file_status, spec=excluded.spec,"
                " trigger_key=excluded.trigger_key, anchor=excluded.anchor, "
                "cursor=excluded.cursor, updated_at=excluded.updated_at",
                rows,
            )

    def delete_schedule(self, ident: str) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM schedules WHERE id=?", (ident,))
            c.execute("DELETE FROM snapshots WHERE schedule_id=?", (ident,))
            c.execute("DELETE FROM baselines WHERE schedule_id=?", (ident,))

    # ── the outbox ───────────────────────────────────────────────────────────

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


def _deliver(results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, value, exc in results:
        if fut.cancelled():
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)
