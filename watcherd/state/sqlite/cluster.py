"""The cluster of a SQLite state: one daemon (the state_dir lock), holding every lease."""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta

from watcherd.engine.clock import Clock
from watcherd.engine.ports import Change, Membership, ReplicaInfo

__all__ = ["SoloCluster"]


class SoloCluster:
    """`ports.Cluster` for one daemon: every wanted schedule is leased, forever; no other
    replica ever changes anything behind its back."""

    def __init__(self, replica_id: str, clock: Clock) -> None:
        self.replica_id = replica_id
        self.lease_ttl = timedelta(days=365)
        self._clock = clock
        self._started = clock.now()
        self._held: frozenset[str] = frozenset()
        self._running = 0

    async def join(self, *, host: str, config_hash: str) -> bool:
        self._host, self._hash = host, config_hash
        return True

    async def set_config(self, config_hash: str) -> bool:
        self._hash = config_hash
        return True

    async def beat(self, *, wanted: Sequence[str], running: int) -> Membership:
        self._held, self._running = frozenset(wanted), running
        return Membership(
            leases={sid: 1 for sid in wanted}, valid_until=math.inf, config_ok=True, replicas=1
        )

    async def release(self, schedule_ids: Sequence[str]) -> None:
        self._held = self._held - frozenset(schedule_ids)

    async def leave(self) -> None:
        self._held = frozenset()

    async def replicas(self) -> list[ReplicaInfo]:
        return [
            ReplicaInfo(
                id=self.replica_id,
                host=getattr(self, "_host", socket.gethostname()),
                started=self._started,
                last_heartbeat=self._clock.now(),
                schedules=self._held,
                running=self._running,
                config_hash=getattr(self, "_hash", ""),
            )
        ]

    async def alive_until(self) -> datetime | None:
        return None  # no other replica: missed slots follow catch_up (SPEC §3.3)

    async def changes(self) -> AsyncIterator[Change]:
        await asyncio.Event().wait()  # nobody else writes this state
        return
        yield  # an async generator that never yields
