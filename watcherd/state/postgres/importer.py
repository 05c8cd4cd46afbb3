"""Filling an empty PostgreSQL database from another state (`watcherd state copy`, SPEC §12).

All tables are written with COPY in one transaction: a copy that fails half-way leaves the
database empty, ready for another try. The run sequence is moved past the copied runs, so
their `seq` (the API's listing cursor) is kept and new runs list after them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

import psycopg
from psycopg import sql

from watcherd.core.errors import StateError
from watcherd.state.postgres.conninfo import DatabaseUrl, parse_url
from watcherd.state.postgres.db import Conn, PgDatabase, quiet_driver_logs
from watcherd.state.postgres.schema import migrate

__all__ = ["TABLES", "Importer"]

# Each table copied, with the columns the source must give, in this order.
TABLES: dict[str, tuple[str, ...]] = {
    "pipelines": ("id", "name", "status", "file_status"),
    "schedules": (
        "id", "name", "source", "status", "file_status", "spec", "trigger_key",
        "timer_anchor", "timer_cursor", "created_at", "updated_at",
    ),
    "runs": (
        "seq", "id", "schedule_id", "pipeline_id", "experiment", "dedup", "status",
        "trigger", "parameters", "path", "attempt", "attempts", "error", "exit_code",
        "remote_id", "queued_at", "started_at", "finished_at", "next_attempt_at", "log",
        "file_local", "file_url", "file_param",
    ),
    "snapshots": ("schedule_id", "name", "version"),
    "baselines": ("schedule_id", "key", "marker"),
    "idempotency": ("key", "run_id", "created_at"),
    "experiments": ("name",),
}  # fmt: skip


class Importer:
    """`async with Importer(url) as imp: await imp.write(table, rows)…` — connects, migrates,
    refuses a database that holds any state, and commits on a clean exit."""

    def __init__(self, url: str) -> None:
        quiet_driver_logs()
        self.url: DatabaseUrl = parse_url(url)
        self._db = PgDatabase(self.url, replica_id="state-copy")
        self._conn: Conn | None = None
        self.counts: dict[str, int] = {}

    async def __aenter__(self) -> Importer:
        self._conn = conn = await self._db.connect()
        try:
            await self._guard(migrate(conn))
            await self._guard(self._check_empty())
            await self._guard(conn.execute("BEGIN"))
        except BaseException:
            self._conn = None
            await conn.close()
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if exc is None:
                await self._guard(self._finish(conn))
            else:
                await conn.execute("ROLLBACK")
        finally:
            await conn.close()

    async def _guard(self, op: Any) -> Any:
        """Await `op`, turning a driver error into a masked StateError (never chained)."""
        err: StateError | None = None
        try:
            return await op
        except psycopg.Error as e:
            err = self.url.error("state copy", e)
        raise err

    async def _check_empty(self) -> None:
        assert self._conn is not None
        used = []
        for table in TABLES:
            cur = await self._conn.execute(
                sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(table))
            )
            row = await cur.fetchone()
            if row and row[0]:
                used.append(table)
        if used:
            raise StateError(
                f"database {self.url.display} already holds watcherd state ({', '.join(used)}):"
                " state copy only writes into an empty database"
            )

    async def write(self, table: str, rows: Iterable[Sequence[Any]]) -> int:
        """COPY rows (tuples in TABLES[table] order) into `table`; returns how many."""
        assert self._conn is not None
        cols = TABLES[table]
        stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, cols))
        )
        n = 0

        async def go() -> None:
            nonlocal n
            assert self._conn is not None
            async with self._conn.cursor() as cur, cur.copy(stmt) as copy:
                for row in rows:
                    if len(row) != len(cols):
                        raise ValueError(f"{table}: {len(row)} values for {len(cols)} columns")
                    await copy.write_row(row)
                    n += 1

        await self._guard(go())
        self.counts[table] = self.counts.get(table, 0) + n
        return n

    async def _finish(self, conn: Conn) -> None:
        await conn.execute(
            "SELECT setval(pg_get_serial_sequence('runs', 'seq'), coalesce(max(seq), 1),"
            " max(seq) IS NOT NULL) FROM runs"
        )
        await conn.execute("COMMIT")
