"""Which schedules this replica runs: the lease keeper (SPEC §12).

Every lease_ttl / 3 (or at once when woken: a schedule enabled, created or changed) it
heartbeats through the `Cluster` port, which renews, releases and takes schedule leases on
the store's clock. Schedules gained are handed to `on_gain` (the engine arms them); schedules
lost to `on_loss` (the engine disarms them). When heartbeats fail, every timer and poller is
stopped before the lease could have expired anywhere: at the send time of the last
successful beat + lease_ttl − 1 s on this replica's monotonic clock, whatever the store says
later. With one daemon (SQLite) the cluster grants every wanted schedule forever.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta

import structlog

from watcherd.core.errors import IncompatibleStore, StateError
from watcherd.engine.clock import Clock
from watcherd.engine.ports import Cluster, Membership
from watcherd.engine.retry import backoff_delay

__all__ = ["LeaseKeeper"]

log = structlog.get_logger(__name__)

OnGain = Callable[[Mapping[str, int]], Awaitable[None]]  # schedule id → epoch
OnLoss = Callable[[set[str]], None]


class LeaseKeeper:
    """Keeps this replica's schedule leases, and tells the engine what it gained or lost."""

    def __init__(
        self,
        cluster: Cluster,
        clock: Clock,
        *,
        wanted: Callable[[], Sequence[str]],
        running: Callable[[], int],
        on_gain: OnGain,
        on_loss: OnLoss,
        on_beat: Callable[[Membership], None] = lambda m: None,
    ) -> None:
        self.cluster = cluster
        self.clock = clock
        self.wanted = wanted
        self.running = running
        self.on_gain = on_gain
        self.on_loss = on_loss
        self.on_beat = on_beat  # what else a beat tells: config match, runs re-queued
        self.held: dict[str, int] = {}
        self.config_ok = True
        self.replicas = 1
        self.error: str | None = None
        self.valid_until = math.inf
        self.recheck_at: float | None = None
        self._wake = asyncio.Event()
        self._failures = 0
        self._lock = asyncio.Lock()  # the loop and an API change may beat at once

    def epoch(self, schedule_id: str) -> int | None:
        """The epoch this replica holds the schedule's lease at (None: not held)."""
        return self.held.get(schedule_id)

    def wake(self) -> None:
        """Beat now (a schedule became wanted or changed)."""
        self._wake.set()

    def lost(self, schedule_id: str, epoch: int | None) -> None:
        """A write fenced at `epoch` was refused: that lease is gone whatever the last beat
        said (a lease taken again since, at a newer epoch, stays)."""
        if epoch is not None and self.held.get(schedule_id) == epoch:
            del self.held[schedule_id]
            log.warning("lease_lost", schedule_id=schedule_id, reason="fenced write refused")
            self.on_loss({schedule_id})

    async def beat(
        self, *, wanted: Sequence[str] | None = None, limit: float | None = None
    ) -> Membership:
        """One heartbeat (the store's part bounded by `limit` seconds); applies what it says.
        Raises StateError (or TimeoutError) when the store fails."""
        async with self._lock:
            return await self._beat(wanted, limit)

    async def _beat(self, wanted: Sequence[str] | None, limit: float | None) -> Membership:
        sent = self.clock.monotonic()
        async with asyncio.timeout(limit):
            m = await self.cluster.beat(
                wanted=list(self.wanted() if wanted is None else wanted), running=self.running()
            )
        # The store computed valid_until from its own send time; never trust more than ours.
        self.valid_until = min(m.valid_until, sent + self.cluster.lease_ttl.total_seconds() - 1)
        self.config_ok, self.replicas, self.recheck_at = m.config_ok, m.replicas, m.recheck_at
        lost = set(self.held) - set(m.leases)
        gained = {sid: e for sid, e in m.leases.items() if self.held.get(sid) != e}
        if lost:
            for sid in lost:
                del self.held[sid]
            log.info("leases_released", count=len(lost))
            self.on_loss(lost)
        if gained:
            self.held.update(gained)
            try:
                await self.on_gain(gained)
            except BaseException:
                # Not armed: give the leases back to the next beat, which gains them again.
                for sid in gained:
                    self.held.pop(sid, None)
                self.on_loss(set(gained))
                raise
        self.on_beat(m)
        return m

    async def run(self) -> None:
        """Beat every lease_ttl / 3 until cancelled; on failure back off, and drop every
        lease at its local deadline."""
        interval = self.cluster.lease_ttl.total_seconds() / 3
        while True:
            wait = interval
            try:
                # A beat that hangs (a dead connection) must not outlive the lease deadline by
                # much; never less than a second (a slow start-up is not a dead store).
                remaining = self.valid_until - self.clock.monotonic()
                limit = None if math.isinf(remaining) else min(max(remaining, 1.0), interval)
                await self.beat(limit=limit)
                if self.error is not None:
                    log.info("heartbeat_recovered", failures=self._failures)
                self.error, self._failures = None, 0
            except IncompatibleStore:
                raise  # a newer watcherd migrated the store: the daemon exits
            except (StateError, TimeoutError) as exc:
                self._failures += 1
                if self.error is None:
                    log.error("heartbeat_failed", error=str(exc) or "timed out")
                self.error = str(exc) or "heartbeat timed out"
                wait = min(interval, backoff_delay(self._failures, self.cluster.lease_ttl))
            now = self.clock.monotonic()
            remaining = self.valid_until - now
            if self.held and remaining <= 0 and self.error is not None:
                self._drop_all("heartbeat failed past the lease deadline")
                remaining = math.inf
            if self.recheck_at is not None and self.error is None:
                wait = min(wait, max(0.05, self.recheck_at - now))
            await self._sleep(min(wait, max(0.0, remaining)))

    def _drop_all(self, why: str) -> None:
        lost = set(self.held)
        self.held.clear()
        log.error("leases_lost", count=len(lost), reason=why)
        self.on_loss(lost)

    async def _sleep(self, seconds: float) -> None:
        deadline = self.clock.now() + timedelta(seconds=seconds)
        await self.clock.sleep_until(deadline, self._wake)
        self._wake.clear()
