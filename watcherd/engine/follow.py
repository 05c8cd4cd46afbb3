"""Changes other replicas make, applied here (SPEC §12): notifications name what changed, and
the follower re-reads it from the store (notifications carry no state and are not durable:
after a reconnect the cluster says "resync" and everything cached is read again)."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import structlog

from watcherd.core.errors import ConfigErrors, IncompatibleStore, StateError
from watcherd.core.models import Status
from watcherd.engine.arming import Arming
from watcherd.engine.book import ScheduleBook
from watcherd.engine.clock import Clock
from watcherd.engine.ports import Change, Cluster, RunStore
from watcherd.engine.reconcile import reconcile
from watcherd.engine.retry import backoff_delay
from watcherd.engine.runner import Runner

__all__ = ["ChangeFollower"]

log = structlog.get_logger(__name__)


class ChangeFollower:
    """Keeps the book, the armed schedules and the run queue in step with other replicas."""

    def __init__(
        self,
        book: ScheduleBook,
        *,
        cluster: Cluster,
        store: RunStore,
        arming: Arming,
        runner: Runner,
        clock: Clock,
    ) -> None:
        self.book, self.cluster, self.store = book, cluster, store
        self.arming, self.runner, self.clock = arming, runner, clock

    async def run(self) -> None:
        """Apply changes until cancelled. A change whose re-read fails is never dropped:
        everything is read again (`resync`), with backoff, until that succeeds."""
        async for change in self.cluster.changes():
            try:
                await self.apply(change)
            except IncompatibleStore:
                raise  # a newer watcherd migrated the store: the daemon exits
            except StateError as exc:
                log.warning("change_not_applied", kind=change.kind, error=str(exc))
                await self._resync_until_done()

    async def _resync_until_done(self) -> None:
        attempt = 0
        while True:
            try:
                await self.resync()
                return
            except IncompatibleStore:
                raise
            except StateError as exc:
                attempt += 1
                if attempt == 1:
                    log.warning("resync_failed", error=str(exc))
                await self.clock.sleep(backoff_delay(attempt, timedelta(seconds=10), initial=0.2))

    async def apply(self, change: Change) -> None:
        if change.kind == "schedule":
            row = await self.store.load_schedule(change.ident)
            if row is None:
                self.arming.disarm(change.ident)
                self.book.drop(change.ident)
            elif self.book.rows.get(row.id) != row:
                self.book.put(row, self.book.from_row(row))
                await self.arming.refresh(row.id)
        elif change.kind == "pipeline":
            for pid, prow in (await self.store.load_pipelines()).items():
                self.book.pipeline_status[pid] = Status(prow.status)
            self.book.changed()
        elif change.kind == "runs":
            # Read at the runner's next turn, together with every notice that arrived
            # meanwhile: the runs named, or (no names) every Queued run.
            if change.ident:
                self.runner.enqueue_soon(change.ident.split(","))
            else:
                self.runner.refresh_soon()
        elif change.kind == "cancel":
            await self.runner.cancel_here(change.ident)
        elif change.kind == "resync":
            await self.resync()

    async def resync(self) -> None:
        """Notifications may have been missed: re-read everything cached."""
        rows = {r.id: r for r in await self.store.load_schedules()}
        cfg = self.book.config
        try:
            plan = reconcile(cfg, rows, await self.store.load_pipelines(), self.clock.now())
        except ConfigErrors as exc:  # stored schedules this config cannot run (a newer one's)
            log.error("resync_config_mismatch", errors=[str(e) for e in exc.errors])
            return
        old, old_rows = dict(self.book.schedules), dict(self.book.rows)
        self.book.load(cfg, dataclasses.replace(plan, rows=rows))
        for sid in set(old) | set(self.book.schedules):
            if old.get(sid) != self.book.schedules.get(sid) or old_rows.get(sid) != rows.get(sid):
                await self.arming.refresh(sid)
        await self.runner.refresh()
        for run_id in await self.store.cancel_requests():  # asked while we were not listening
            await self.runner.cancel_here(run_id)
