"""One PostgreSQL database shared by the replicas: the connection pool and the store boundary.

Every store call borrows a pooled connection (autocommit: a call that needs several
statements opens its own transaction) and runs one function on it. At this boundary a driver
error becomes a `StateError` whose text is masked (SPEC §8) and raised outside the `except`
block, so neither the driver's message nor its `pgconn` (which lists the password) is chained
to it. An outage is logged once, and its end once; the pool reconnects by itself, checking
each connection before lending it and the schema version on each new one.
"""

from __future__ import annotations

import json
import logging
import math
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import psycopg
import structlog
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from watcherd.core.errors import StateError
from watcherd.state.postgres.conninfo import DatabaseUrl
from watcherd.state.postgres.schema import SchemaTooNew, check_version

__all__ = ["CHANNEL", "Conn", "PgDatabase", "connect_kwargs", "quiet_driver_logs"]

log = structlog.get_logger(__name__)

T = TypeVar("T")
Conn = AsyncConnection[TupleRow]

CHANNEL = "watcherd"
# Seconds: a connection idle longer is checked (one empty query) before it is lent. A busy
# one is not: a call on a connection killed meanwhile fails with StateError (a read is retried
# on another connection; a write is not, its commit may have happened) and the caller retries.
IDLE_CHECK = 1.0
NOTIFY_MAX = 64  # more changes than this in one transaction: one "resync" instead
_RETRY_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock: rolled back
_OUTAGE_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})  # shutdown, crash, starting up


def quiet_driver_logs() -> None:
    """psycopg's pool logs a warning per failed connection attempt; SPEC §12 wants an outage
    logged once, which `PgDatabase` does itself, masked."""
    for name in ("psycopg", "psycopg.pool"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def connect_kwargs(
    replica_id: str, *, timeout: float, prepare_threshold: int | None
) -> dict[str, Any]:
    """Connection options over the user's URL: TCP keepalives, so a half-open connection (a
    vanished host) fails in seconds rather than hanging a heartbeat."""
    return {
        "autocommit": True,
        "application_name": f"watcherd/{replica_id}"[:63],
        "connect_timeout": max(2, int(timeout)),
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
        "prepare_threshold": prepare_threshold,
    }


def _is_outage(exc: BaseException) -> bool:
    if isinstance(exc, PoolTimeout):
        return True
    state = getattr(exc, "sqlstate", None)
    return state is None or state.startswith("08") or state in _OUTAGE_SQLSTATES


class PgDatabase:
    """The pool of one replica, and its boundary: `run(fn)` → fn's result or StateError."""

    def __init__(
        self,
        url: DatabaseUrl,
        *,
        replica_id: str,
        pool_size: int = 10,
        timeout: float = 5.0,
        prepare_threshold: int | None = 5,
    ) -> None:
        self.url = url
        self.replica_id = replica_id
        self.timeout = timeout
        self.kwargs = connect_kwargs(
            replica_id, timeout=timeout, prepare_threshold=prepare_threshold
        )
        self.fatal: StateError | None = None  # set once: the schema outgrew this code
        self._used: weakref.WeakKeyDictionary[Conn, float] = weakref.WeakKeyDictionary()
        self._own: weakref.WeakSet[Conn] = weakref.WeakSet()
        self.down = False
        self.last_error = ""  # of the last outage, masked
        self.pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            url.raw,
            kwargs=self.kwargs,
            min_size=1,
            max_size=max(2, pool_size),
            open=False,
            configure=self._configure,
            name=f"watcherd/{replica_id}",
            timeout=timeout,
            # psycopg_pool retries a failed connection with a growing backoff until this
            # elapses; then the next request starts afresh. Short: after a long outage the
            # pool would otherwise wait out a long backoff after the server is back.
            reconnect_timeout=max(2 * timeout, 4.0),
        )

    async def open(self) -> None:
        """Open the pool, waiting for its first connection (StateError when unreachable)."""
        await self.run(_noop, what="connect", wait_open=True)

    async def close(self) -> None:
        """Close the pool and any connection of its own still open (a LISTEN whose
        consumer went away without closing its iterator)."""
        for conn in list(self._own):
            await conn.close()
        await self.pool.close()

    async def connect(self, **extra: Any) -> Conn:
        """A connection of its own (migrations, LISTEN, state copy); the caller closes it."""
        err: StateError | None = None
        try:
            conn = await AsyncConnection.connect(self.url.raw, **{**self.kwargs, **extra})
        except psycopg.Error as exc:
            err = self._failed("connect", exc)
        if err is not None:
            raise err
        self._own.add(conn)
        return conn

    async def _configure(self, conn: Conn) -> None:
        try:
            await check_version(conn)
        except SchemaTooNew as exc:
            if self.fatal is None:
                log.error("database_schema_too_new", database=self.url.display, error=str(exc))
            self.fatal = exc
            raise

    async def run(
        self,
        fn: Callable[[Conn], Awaitable[T]],
        *,
        what: str,
        retry: bool = False,
        wait_open: bool = False,
    ) -> T:
        """`await fn(conn)` on a pooled connection. A transaction rolled back by a deadlock
        or serialization failure is retried; with `retry` (reads), so is a connection that
        died under the call. Driver errors come out as masked StateErrors."""
        err: StateError | None = None
        for attempt in range(3):
            if self.fatal is not None:
                raise self.fatal
            again = False
            try:
                if wait_open:
                    await self.pool.open(wait=True, timeout=self.timeout)
                async with self._connection() as conn:
                    result = await fn(conn)
            except PoolTimeout:
                err = await self._unavailable(what)
            except psycopg.Error as exc:
                state = getattr(exc, "sqlstate", None)
                err = self._failed(what, exc)
                again = state in _RETRY_SQLSTATES or (retry and _is_outage(exc))
            else:
                self._recovered()
                return result
            if not again or attempt == 2:
                break
        if self.fatal is not None:
            raise self.fatal
        assert err is not None
        raise err

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Conn]:
        """A pooled connection that works: one idle for a while is checked first (an empty
        query) and, dead, closed (the pool then drops it) and the next one tried, without
        the pool's own check, which sleeps a growing backoff after each dead one: after a
        server restart every idle connection is dead."""
        for _ in range(self.pool.max_size + 1):
            async with self.pool.connection() as conn:
                if not await self._alive(conn):
                    continue
                yield conn
                self._used[conn] = time.monotonic()
                return
        raise PoolTimeout("no working connection in the pool")

    async def _alive(self, conn: Conn) -> bool:
        if time.monotonic() - self._used.get(conn, -math.inf) < IDLE_CHECK:
            return True
        try:
            await conn.execute("")
            return True
        except psycopg.Error:
            await conn.close()
            return False

    async def _unavailable(self, what: str) -> StateError:
        """The pool had no connection in time: say why, from a connection attempt of our own
        (the pool's own message is only "couldn't get a connection")."""
        reason: StateError | None = None
        if not self.down:
            try:
                probe = await AsyncConnection.connect(self.url.raw, **self.kwargs)
                await probe.close()
            except psycopg.Error as exc:
                reason = self._failed(what, exc)
        if reason is None:
            reason = StateError(
                f"database {self.url.display}: {what}: unavailable (no connection within "
                f"{self.timeout:g} s; last error: {self.last_error or 'none'})"
            )
        self.down = True
        return reason

    def _failed(self, what: str, exc: psycopg.Error) -> StateError:
        err = self.url.error(what, exc)
        if _is_outage(exc):
            self.last_error = str(err).partition(f": {what}: ")[2] or str(err)
            if not self.down:
                log.error("database_unavailable", database=self.url.display, error=str(err))
            self.down = True
        return err

    def _recovered(self) -> None:
        if self.down:
            self.down = False
            log.info("database_available", database=self.url.display)

    def runs_notice(self) -> tuple[str, str]:
        """(channel, sender) for `runs.insert_runs`, whose statement notifies by itself: a
        "runs" change naming the runs it inserted Queued (`runs.RUNS_NOTICE_IDS` at most; more
        become a plain "runs", which makes the others re-read every Queued run)."""
        return CHANNEL, self.replica_id

    def payload(self, kind: str, ident: str = "") -> tuple[str, str]:
        """(channel, payload) of one change, for a statement that notifies by itself."""
        return CHANNEL, _payload(self.replica_id, kind, ident)

    async def notify(self, conn: Conn, changes: Iterable[tuple[str, str]]) -> None:
        """Send each (kind, ident) to the other replicas, in the caller's transaction (sent at
        its commit, dropped on rollback). Many at once become one "resync"."""
        items = list(dict.fromkeys(changes))
        if not items:
            return
        if len(items) > NOTIFY_MAX:
            items = [("resync", "")]
        payloads = [_payload(self.replica_id, k, i) for k, i in items]
        await conn.execute(
            "SELECT pg_notify(%s, p) FROM unnest(%s::text[]) AS p", (CHANNEL, payloads)
        )


def _payload(replica_id: str, kind: str, ident: str) -> str:
    return json.dumps({"r": replica_id, "k": kind, "i": ident}, separators=(",", ":"))


async def _noop(conn: Conn) -> None:
    return None
