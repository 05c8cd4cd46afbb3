"""The state on PostgreSQL, shared by replicas (SPEC §12): `open_pg` gives the store and the
cluster of one replica."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import structlog

from watcherd.core.errors import StateError
from watcherd.engine.clock import Clock
from watcherd.state.postgres.cluster import PgCluster
from watcherd.state.postgres.conninfo import DatabaseUrl, parse_url
from watcherd.state.postgres.db import PgDatabase, quiet_driver_logs
from watcherd.state.postgres.schema import SCHEMA_VERSION, SchemaTooNew, migrate
from watcherd.state.postgres.store import PgStore

__all__ = [
    "SCHEMA_VERSION",
    "DatabaseUrl",
    "PgCluster",
    "PgStore",
    "SchemaTooNew",
    "open_pg",
    "parse_url",
]

log = structlog.get_logger(__name__)


async def open_pg(
    url: str,
    *,
    replica_id: str,
    lease_ttl: timedelta,
    clock: Clock,
    pool_size: int = 10,
    connect_timeout: float = 5.0,
    prepare_threshold: int | None = 5,
) -> tuple[PgStore, PgCluster]:
    """Connect, migrate the schema (once across replicas starting together) and open the
    pool. Raises StateError (the URL masked) when the database is unreachable or refuses,
    SchemaTooNew when a newer watcherd migrated it beyond what this one works with.
    `prepare_threshold=None` for PgBouncer in transaction mode (< 1.21)."""
    quiet_driver_logs()
    parsed = parse_url(url)
    if parsed.weak_tls():
        log.warning(
            "database_tls_weak",
            database=parsed.display,
            sslmode=parsed.sslmode,
            hint="a non-local database: use sslmode=verify-full",
        )
    db = PgDatabase(
        parsed,
        replica_id=replica_id,
        pool_size=pool_size,
        timeout=connect_timeout,
        prepare_threshold=prepare_threshold,
    )
    conn = await db.connect()
    err: StateError | None = None
    try:
        before = await migrate(conn)
    except SchemaTooNew:
        raise
    except psycopg.Error as exc:  # masked, and raised below: never chained
        err = parsed.error("migrate", exc)
    finally:
        await conn.close()
    if err is not None:
        raise err
    if before != SCHEMA_VERSION:
        log.info("database_migrated", database=parsed.display, old=before, new=SCHEMA_VERSION)
    await db.open()
    return PgStore(db), PgCluster(db, replica_id=replica_id, lease_ttl=lease_ttl, clock=clock)
