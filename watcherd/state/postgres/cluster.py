"""`PgCluster`: replicas sharing one PostgreSQL database (SPEC §12) — membership, schedule
leases with epochs, and change notifications.

All times are the database's: a heartbeat's expiry and a lease's are `now() + lease_ttl` of
the heartbeat's transaction, and a replica is dead once its expiry passed. Each beat, in one
transaction: heartbeat; mark expired replicas dead and re-queue their Running runs; renew
this replica's leases (same epoch), release those it no longer wants or that exceed its fair
share (+1 slack), and take free or expired ones it wants up to that share (epoch + 1).

Fair share: each wanted schedule counts 1/k, k = the live replicas that want it (each
replica's `wanted` is kept in its row), rounded up. With every replica eligible for every
schedule that is ⌈n/r⌉; a local datastore only one host can read counts whole on that host,
so it is never left without an owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta

import psycopg
import structlog

from watcherd.core.errors import StateError
from watcherd.engine.clock import Clock
from watcherd.engine.ports import Change, Membership, ReplicaInfo
from watcherd.engine.retry import backoff_delay
from watcherd.state.postgres import runs as runs_sql
from watcherd.state.postgres.db import CHANNEL, Conn, PgDatabase
from watcherd.state.postgres.runs import utc

__all__ = ["LISTEN_PING", "PgCluster"]

log = structlog.get_logger(__name__)

LISTEN_PING = 2.0  # seconds between liveness checks of the LISTEN connection
RECHECK_MARGIN = 0.05  # seconds after an expiry before the beat that takes it over
FORGET_AFTER = timedelta(days=7)  # dead or departed replicas' rows are kept this long
_LISTEN_BACKOFF_CAP = timedelta(seconds=10)


class PgCluster:
    """`ports.Cluster` on the shared database (see the module doc)."""

    def __init__(
        self, db: PgDatabase, *, replica_id: str, lease_ttl: timedelta, clock: Clock
    ) -> None:
        self.db = db
        self.replica_id = replica_id
        self.lease_ttl = lease_ttl
        self._clock = clock
        self._host = socket.gethostname()
        self._hash = ""
        self._wanted_sent: tuple[str, ...] | None = None  # as last written to our row
        self._ensured: set[str] = set()  # lease rows known to exist
        self._expiry_in: float | None = None
        # Local monotonic time of the next expiry of a lease this replica wants but another
        # holds, or of another replica's heartbeat: beat again then (see `beat`).
        self.recheck_at: float | None = None
        # Set by a heartbeat that went through while LISTEN was down: the database is back,
        # so `changes` reconnects now rather than at the end of its backoff (up to 10 s, in
        # which a disable on another replica would not stop this one's slots, SPEC §12).
        self._db_back = asyncio.Event()
        self._listen_down = False

    # ── membership ───────────────────────────────────────────────────────────

    async def join(self, *, host: str, config_hash: str) -> bool:
        """Register; this replica's config becomes the deployment's (the newest starting
        replica's config wins: older ones see config_ok False and stand by). Leases a
        previous run under the same id held are released, so their epochs move on."""
        self._host, self._hash = host, config_hash
        self._wanted_sent, self._ensured = None, set()
        me, ttl = self.replica_id, self.lease_ttl

        async def go(c: Conn) -> None:
            async with c.transaction():
                cur = await c.execute(
                    "SELECT host FROM replicas WHERE id = %s AND state = 'live'"
                    " AND expires_at > now() FOR UPDATE",
                    (me,),
                )
                row = await cur.fetchone()
                if row is not None and row[0] != host:
                    raise StateError(
                        f"replica_id {me!r} is in use by a live replica on host {row[0]}: "
                        "give each replica its own replica_id"
                    )
                await c.execute(
                    "INSERT INTO replicas(id, host, started, last_heartbeat, expires_at,"
                    " config_hash, running, state, wanted) VALUES (%s, %s, now(), now(),"
                    " now() + %s, %s, 0, 'live', '{}') ON CONFLICT (id) DO UPDATE SET"
                    " host = excluded.host, started = now(), last_heartbeat = now(),"
                    " expires_at = excluded.expires_at, config_hash = excluded.config_hash,"
                    " running = 0, state = 'live', wanted = '{}'",
                    (me, host, ttl, config_hash),
                )
                await _release(c, "owner = %s", [me])
                await c.execute(
                    "UPDATE deployment SET config_hash = %s, config_by = %s, config_at = now()"
                    " WHERE id = 1",
                    (config_hash, me),
                )

        await self.db.run(go, what="join")
        log.info("replica_joined", replica_id=me, host=host, config_hash=config_hash)
        return True

    async def set_config(self, config_hash: str) -> bool:
        """A reloaded config: the deployment's from now on, as at join, leases kept."""
        self._hash = config_hash
        me = self.replica_id

        async def go(c: Conn) -> None:
            async with c.transaction():
                await c.execute(
                    "UPDATE replicas SET config_hash = %s WHERE id = %s", (config_hash, me)
                )
                await c.execute(
                    "UPDATE deployment SET config_hash = %s, config_by = %s, config_at = now()"
                    " WHERE id = 1",
                    (config_hash, me),
                )

        await self.db.run(go, what="set config")
        log.info("replica_config", replica_id=me, config_hash=config_hash)
        return True

    async def beat(self, *, wanted: Sequence[str], running: int) -> Membership:
        sent = self._clock.monotonic()
        want = tuple(sorted(set(wanted)))
        try:
            leases, ok, live, requeued, revived = await self.db.run(
                lambda c: self._beat(c, want, running), what="heartbeat"
            )
        except BaseException:
            self._wanted_sent = None  # unknown whether it was written: send it again
            raise
        if self._listen_down:
            self._db_back.set()
        expiry = self._expiry_in
        self.recheck_at = None if expiry is None else sent + expiry + RECHECK_MARGIN
        return Membership(
            leases=leases,
            valid_until=sent + self.lease_ttl.total_seconds() - 1.0,
            config_ok=ok,
            replicas=live,
            recheck_at=self.recheck_at,
            requeued=requeued,
            revived=revived,
        )

    async def _beat(
        self, c: Conn, want: tuple[str, ...], running: int
    ) -> tuple[dict[str, int], bool, int, int, bool]:
        me, ttl = self.replica_id, self.lease_ttl
        async with c.transaction():
            cur = await c.execute("SELECT state FROM replicas WHERE id = %s FOR UPDATE", (me,))
            row = await cur.fetchone()
            revived = row is not None and row[0] == "dead"  # declared dead while paused
            cur = await c.execute("SELECT config_hash FROM deployment WHERE id = 1")
            row = await cur.fetchone()
            ok = row is not None and row[0] == self._hash
            if not ok:
                want = ()  # stand by: hold nothing, count for nothing
            send = None if want == self._wanted_sent else list(want)
            await c.execute(
                "INSERT INTO replicas(id, host, started, last_heartbeat, expires_at,"
                " config_hash, running, state, wanted) VALUES (%s, %s, now(), now(),"
                " now() + %s, %s, %s, 'live', coalesce(%s::text[], '{}')) ON CONFLICT (id)"
                " DO UPDATE SET last_heartbeat = now(), expires_at = excluded.expires_at,"
                " running = excluded.running, state = 'live', config_hash ="
                " excluded.config_hash, wanted = coalesce(%s::text[], replicas.wanted)",
                (me, self._host, ttl, self._hash, running, send, send),
            )
            requeued = await self._bury_the_dead(c)
            cur = await c.execute(
                "SELECT count(*) FROM replicas WHERE state = 'live' AND expires_at > now()"
            )
            row = await cur.fetchone()
            live = int(row[0]) if row else 1
            share = await _share(c, want)
            # Ours, locked in id order (as the fenced writes lock them): renew or release.
            cur = await c.execute(
                "SELECT schedule_id, epoch, expires_at > now() FROM leases WHERE owner = %s"
                " ORDER BY schedule_id FOR UPDATE",
                (me,),
            )
            wanted_set = set(want)
            keep: list[tuple[str, int]] = []
            drop: list[str] = []
            for sid, epoch, fresh in await cur.fetchall():
                if fresh and sid in wanted_set:
                    keep.append((sid, int(epoch)))
                else:
                    drop.append(sid)
            if len(keep) > share + 1:
                drop += [sid for sid, _ in keep[share:]]
                keep = keep[:share]
            if drop:
                await c.execute(
                    "UPDATE leases SET owner = NULL, expires_at = NULL WHERE schedule_id = ANY(%s)",
                    (drop,),
                )
            if keep:
                await c.execute(
                    "UPDATE leases SET expires_at = now() + %s WHERE schedule_id = ANY(%s)",
                    (ttl, [sid for sid, _ in keep]),
                )
            leases = dict(keep)
            need = share - len(keep)
            if need > 0:
                leases.update(await self._take(c, want, need))
            # When the next lease we may want, or the next replica, expires: a beat then
            # takes over a dead replica's schedules at lease_ttl, not up to lease_ttl / 3 later.
            cur = await c.execute(
                "SELECT extract(epoch FROM least("
                " (SELECT min(expires_at) FROM leases WHERE schedule_id = ANY(%s)"
                "  AND owner <> %s AND expires_at > now()),"
                " (SELECT min(expires_at) FROM replicas WHERE state = 'live' AND id <> %s"
                "  AND expires_at > now())) - now())",
                (list(want), me, me),
            )
            row = await cur.fetchone()
            self._expiry_in = float(row[0]) if row and row[0] is not None else None
        self._wanted_sent = want
        return leases, ok, live, requeued, revived

    async def _bury_the_dead(self, c: Conn) -> int:
        """Replicas whose heartbeat expired are dead: their Running runs go back to Queued
        as the next attempt ("replica <id> lost"). Marking them is a row update, so two
        replicas noticing at once re-queue each run once."""
        cur = await c.execute(
            "UPDATE replicas SET state = 'dead' WHERE state = 'live' AND expires_at < now()"
            " AND id <> %s RETURNING id",
            (self.replica_id,),
        )
        dead = [r[0] for r in await cur.fetchall()]
        n = 0
        if dead:
            n = await runs_sql.requeue(
                c, "claimed_by = ANY(%s)", [dead], "'replica ' || claimed_by || ' lost'"
            )
            log.warning("replicas_lost", replicas=dead, requeued=n)
            if n:  # for the others; this replica learns it from Membership.requeued
                await self.db.notify(c, [("runs", "")])
        await c.execute(
            "DELETE FROM replicas WHERE state <> 'live' AND expires_at < now() - %s",
            (FORGET_AFTER,),
        )
        return n

    async def _take(self, c: Conn, want: tuple[str, ...], need: int) -> dict[str, int]:
        """Free or expired leases among `want`, at most `need`, epoch + 1; rows another
        replica is taking or renewing right now are skipped."""
        new = [sid for sid in want if sid not in self._ensured]
        if new:
            await c.execute(
                "INSERT INTO leases(schedule_id) SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING",
                (new,),
            )
        cur = await c.execute(
            "UPDATE leases l SET owner = %s, epoch = l.epoch + 1, expires_at = now() + %s"
            " FROM (SELECT schedule_id FROM leases WHERE schedule_id = ANY(%s)"
            " AND (owner IS NULL OR expires_at IS NULL OR expires_at <= now())"
            " ORDER BY random() LIMIT %s FOR UPDATE SKIP LOCKED) f"
            " WHERE l.schedule_id = f.schedule_id RETURNING l.schedule_id, l.epoch",
            (self.replica_id, self.lease_ttl, list(want), need),
        )
        got = {r[0]: int(r[1]) for r in await cur.fetchall()}
        self._ensured.update(new)
        return got

    async def release(self, schedule_ids: Sequence[str]) -> None:
        async def go(c: Conn) -> None:
            async with c.transaction():
                await _release(
                    c, "owner = %s AND schedule_id = ANY(%s)", [self.replica_id, list(schedule_ids)]
                )

        if schedule_ids:
            await self.db.run(go, what="release leases")

    async def leave(self) -> None:
        async def go(c: Conn) -> None:
            async with c.transaction():
                await _release(c, "owner = %s", [self.replica_id])
                # Runs still Running here (a write lost at shutdown) run again elsewhere.
                n = await runs_sql.requeue(
                    c, "claimed_by = %s", [self.replica_id], "'replica ' || claimed_by || ' left'"
                )
                if n:
                    await self.db.notify(c, [("runs", "")])
                await c.execute(
                    "UPDATE replicas SET state = 'left', last_heartbeat = now(),"
                    " expires_at = now(), wanted = '{}' WHERE id = %s",
                    (self.replica_id,),
                )

        await self.db.run(go, what="leave")
        log.info("replica_left", replica_id=self.replica_id)

    async def replicas(self) -> list[ReplicaInfo]:
        async def go(c: Conn) -> list[ReplicaInfo]:
            cur = await c.execute(
                "SELECT r.id, r.host, r.started, r.last_heartbeat, r.running, r.config_hash,"
                " coalesce(array_agg(l.schedule_id) FILTER (WHERE l.schedule_id IS NOT NULL),"
                " '{}') FROM replicas r LEFT JOIN leases l ON l.owner = r.id"
                " AND l.expires_at > now() WHERE r.state = 'live' AND r.expires_at > now()"
                " GROUP BY r.id ORDER BY r.id"
            )
            return [
                ReplicaInfo(
                    id=r[0],
                    host=r[1],
                    started=utc(r[2]) or datetime.min,
                    last_heartbeat=utc(r[3]) or datetime.min,
                    schedules=frozenset(r[6]),
                    running=int(r[4]),
                    config_hash=r[5],
                )
                for r in await cur.fetchall()
            ]

        return await self.db.run(go, what="replicas", retry=True)

    async def alive_until(self) -> datetime | None:
        async def go(c: Conn) -> datetime | None:
            cur = await c.execute(
                "SELECT max(expires_at) FROM replicas WHERE id <> %s", (self.replica_id,)
            )
            row = await cur.fetchone()
            return utc(row[0]) if row else None

        return await self.db.run(go, what="replicas", retry=True)

    # ── changes ──────────────────────────────────────────────────────────────

    async def changes(self) -> AsyncIterator[Change]:
        """Notifications from the other replicas, on a connection of its own. Every time it
        (re)connects it first yields Change("resync"): what was sent while it was away is
        lost (NOTIFY is not durable), and the first time closes the gap between the
        caller's initial load and the LISTEN."""
        failures = 0
        while True:
            conn: Conn | None = None
            try:
                conn = await self.db.connect()
                await conn.execute(f"LISTEN {CHANNEL}")
                if failures:
                    log.info("listen_restored", database=self.db.url.display)
                failures, self._listen_down = 0, False
                yield Change("resync")
                while True:
                    async for n in conn.notifies(timeout=LISTEN_PING):
                        change = self._parse(n.payload)
                        if change is not None:
                            yield change
                    await conn.execute("SELECT 1")  # a dead connection raises here
            except (StateError, psycopg.Error) as exc:
                failures += 1
                if failures == 1:
                    msg = (
                        str(exc)
                        if isinstance(exc, StateError)
                        else str(self.db.url.error("listen", exc))
                    )
                    log.error("listen_lost", database=self.db.url.display, error=msg)
            finally:
                if conn is not None:
                    await conn.close()
            self._listen_down = True
            self._db_back.clear()
            with contextlib.suppress(TimeoutError):  # a heartbeat through: the database is back
                async with asyncio.timeout(backoff_delay(failures, _LISTEN_BACKOFF_CAP)):
                    await self._db_back.wait()

    def _parse(self, payload: str) -> Change | None:
        try:
            doc = json.loads(payload)
            sender, kind, ident = str(doc["r"]), str(doc["k"]), str(doc.get("i", ""))
        except (ValueError, KeyError, TypeError):
            return None
        return None if sender == self.replica_id else Change(kind, ident)


async def _share(c: Conn, want: tuple[str, ...]) -> int:
    """This replica's fair share of `want` (see the module doc)."""
    if not want:
        return 0
    cur = await c.execute(
        "SELECT count(*) FROM replicas r, unnest(r.wanted) AS s(id) WHERE r.state = 'live'"
        " AND r.expires_at > now() AND s.id = ANY(%s) GROUP BY s.id",
        (list(want),),
    )
    counts = [int(r[0]) for r in await cur.fetchall()]
    missing = len(want) - len(counts)  # ours not yet in our row: counted whole
    return math.ceil(sum(1.0 / k for k in counts) + missing - 1e-9)


async def _release(c: Conn, where: str, args: list[object]) -> None:
    """Free the leases matching `where`, locking them in id order (no deadlock with fenced
    writes and heartbeats, which lock in the same order)."""
    await c.execute(
        "UPDATE leases SET owner = NULL, expires_at = NULL WHERE schedule_id IN"
        f" (SELECT schedule_id FROM leases WHERE {where} ORDER BY schedule_id FOR UPDATE)",
        args,
    )
