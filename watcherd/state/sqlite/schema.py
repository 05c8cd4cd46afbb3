"""The SQLite schema: versioned migrations (PRAGMA user_version) and start-up checks."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

import structlog

from watcherd.core.errors import StateError

__all__ = ["SCHEMA_VERSION", "check_file", "migrate"]

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 5

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
    # The file a run was queued for travels with it (SPEC §5): where it is, and the parameter
    # it binds. Older rows get theirs from the schedule at dispatch, as before.
    2: """
    ALTER TABLE runs ADD COLUMN file_local BLOB;
    ALTER TABLE runs ADD COLUMN file_url TEXT;
    ALTER TABLE runs ADD COLUMN file_param TEXT;
    """,
    # The filters of the API and the page (a run list by pipeline scanned the table), and the
    # continuation marker of an interrupted blob listing (SPEC §4 "Large containers").
    3: """
    CREATE INDEX runs_pipeline ON runs(pipeline_id, seq);
    CREATE INDEX runs_active ON runs(schedule_id, status) WHERE status IN ('Queued','Running');
    ALTER TABLE baselines ADD COLUMN marker TEXT;
    CREATE TABLE experiments(name TEXT PRIMARY KEY) WITHOUT ROWID;
    INSERT OR IGNORE INTO experiments(name) SELECT DISTINCT experiment FROM runs;
    """,
    # A time schedule's next slot, kept with what it was computed from (core.slots.hint_key):
    # a restart arms 10,000 schedules without computing their next slots again.
    4: """
    ALTER TABLE schedules ADD COLUMN next_for TEXT;
    ALTER TABLE schedules ADD COLUMN next_due TEXT;
    """,
    # What the last config applied (engine.reconcile's mark): a restart on the same config
    # neither recomputes nor decodes the 10,000 declared rows it wrote. Any other write of a
    # declared row's spec, trigger, file status or source (a tool, a hand edit) drops it.
    # The schedules are read in creation order without sorting them (0.03 s at 10k).
    5: """
    CREATE INDEX schedules_created ON schedules(created_at, name);
    CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TRIGGER applied_insert AFTER INSERT ON schedules WHEN NEW.source = 'file'
    BEGIN DELETE FROM meta WHERE key = 'applied'; END;
    CREATE TRIGGER applied_update AFTER UPDATE OF spec, trigger_key, file_status, source
    ON schedules WHEN (OLD.source = 'file' OR NEW.source = 'file') AND (
        OLD.spec IS NOT NEW.spec OR OLD.trigger_key IS NOT NEW.trigger_key
        OR OLD.file_status IS NOT NEW.file_status OR OLD.source IS NOT NEW.source)
    BEGIN DELETE FROM meta WHERE key = 'applied'; END;
    CREATE TRIGGER applied_delete AFTER DELETE ON schedules WHEN OLD.source = 'file'
    BEGIN DELETE FROM meta WHERE key = 'applied'; END;
    """,
}

RESTORE_HINT = (
    "restore state.db from a backup (stop watcherd, copy it back with its -wal file), or move "
    "the directory aside to start with an empty state"
)


OPENED = b"state.db opened\n"  # the lock file's second line once a start opened state.db


def check_file(path: Path) -> None:
    """Refuse a state file that lost its content: an empty state.db beside a WAL or the lock
    file of an earlier run, or a missing one where an earlier start opened it (its lock file
    says so: `OPENED`), would otherwise start fresh and forget every API schedule and
    snapshot (SPEC §9)."""
    lock = path.with_name("lock")
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        with contextlib.suppress(OSError):
            if OPENED in lock.read_bytes():
                raise StateError(
                    f"state database {path} is missing but watcherd has run here before; "
                    + RESTORE_HINT
                ) from None
        return
    if size == 0:
        wal = path.with_name(path.name + "-wal")
        if (wal.exists() and wal.stat().st_size > 0) or lock.exists():
            raise StateError(
                f"state database {path} is empty but watcherd has run here before; " + RESTORE_HINT
            )


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the schema to SCHEMA_VERSION, one transaction per version, then check it."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise StateError(
            f"state database schema {version} is newer than this watcherd ({SCHEMA_VERSION})"
        )
    if version > 0:
        _quick_check(conn)
    for v in range(version + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        for stmt in _statements(_MIGRATIONS[v]):
            conn.execute(stmt)
        conn.execute(f"PRAGMA user_version={v}")
        conn.execute("COMMIT")


def _statements(script: str) -> list[str]:
    """The statements of a script (a trigger's body holds `;` too)."""
    out, buf = [], ""
    for part in script.split(";"):
        buf += part + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \n;"):
                out.append(buf)
            buf = ""
    return out


def _quick_check(conn: sqlite3.Connection) -> None:
    """PRAGMA quick_check at start: corrupted pages stop the daemon with a clear error
    instead of failing one query at a time later."""
    started = time.monotonic()
    rows = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
    log.debug("state_checked", seconds=round(time.monotonic() - started, 3))
    if rows != ["ok"]:
        raise StateError(
            "state database failed its integrity check (" + "; ".join(rows) + "); " + RESTORE_HINT
        )
