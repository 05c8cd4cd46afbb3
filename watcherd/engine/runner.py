"""The runner: takes Queued runs and dispatches them.

Rules (SPEC §5, §3.3, §4): at most `max_concurrent_runs` at once; runs of one file never
overlap and waiting versions coalesce to the newest; a `concurrency = "queue"` schedule runs
one at a time; retryable failures back off and try again while the run stays Running (its
slot lent to other runs meanwhile, `engine.capacity`); a run interrupted by shutdown goes
back to Queued. Every status change goes through the store's
`transition_run` (one transition table, `core.runs`), durably (`retry.persist`).

Size: a little over 400 lines; the intake, the eligibility rules and the slots of
`max_concurrent_runs` are one piece of state, one run's life is `execution.Execution`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from itertools import islice
from typing import TypeVar

import structlog

from watcherd.core.errors import StateError
from watcherd.core.models import TERMINAL, Run, RunStatus
from watcherd.core.runs import NewRun
from watcherd.engine.capacity import Capacity
from watcherd.engine.clock import Clock
from watcherd.engine.execution import Execution, Plan
from watcherd.engine.metrics import Metrics
from watcherd.engine.ports import (
    ClaimResult,
    Dispatcher,
    DispatcherFactory,
    RunStore,
)
from watcherd.engine.retry import StoreHealth, persist

__all__ = ["Plan", "Runner"]  # Plan: re-exported from execution

log = structlog.get_logger(__name__)

T = TypeVar("T")

HEAD = 64  # queued runs a pass of _start_ready looks at before copying the whole queue


# A Plan; or why the run cannot be dispatched (it then ends Failed); or None: not on this
# replica (a file on a root it cannot read, or a standby replica) — it stays Queued for another.
Resolver = Callable[[Run], "Plan | str | None"]


class Runner:
    """Owns every dispatching task; `run()` until `drain()` or cancellation."""

    def __init__(
        self,
        *,
        store: RunStore,
        clock: Clock,
        metrics: Metrics,
        health: StoreHealth,
        replica_id: str,
        resolve: Resolver,
        dispatchers: DispatcherFactory,
        max_concurrent: int,
    ) -> None:
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.health = health
        self.replica_id = replica_id
        self.resolve = resolve
        self.paused = False  # a standby replica claims nothing
        self.dispatchers = dispatchers
        self._wake = asyncio.Event()
        self.capacity = Capacity(max_concurrent, self._wake.set)
        self._queued: OrderedDict[str, Run] = OrderedDict()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._queued_by_schedule: Counter[str] = Counter()
        self._running_by_schedule: Counter[str] = Counter()
        self._busy_files: set[tuple[str, bytes]] = set()
        self._queued_files: Counter[tuple[str, bytes]] = Counter()
        self._executions: dict[str, Execution] = {}
        self._busy_elsewhere: set[str] = set()  # BUSY at claim time: wait for a refresh
        self._rank: dict[str, int] = {}  # queued run id → its age rank (seq, or newer)
        self._refresh_wanted = False
        self._wanted: set[str] = set()  # run ids another replica queued: read at the next turn
        self._order = 0
        self._drained = asyncio.Event()
        self._intake = True
        self._tg: asyncio.TaskGroup | None = None
        self._changed = asyncio.Condition()

    # ── queries ──────────────────────────────────────────────────────────────

    def queued(self, schedule_id: str) -> int:
        return self._queued_by_schedule[schedule_id]

    def running(self, schedule_id: str) -> int:
        return self._running_by_schedule[schedule_id]

    def active(self, schedule_id: str) -> tuple[int, int]:
        """(Queued, Running) runs of a schedule."""
        return self.queued(schedule_id), self.running(schedule_id)

    def total_queued(self) -> int:
        return len(self._queued)

    def total_running(self) -> int:
        return len(self._running)

    @property
    def max_concurrent(self) -> int:
        return self.capacity.size

    @max_concurrent.setter
    def max_concurrent(self, size: int) -> None:
        self.capacity.size = size

    async def wait_queued_below(self, schedule_id: str, limit: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.queued(schedule_id) <= limit)

    # ── intake ───────────────────────────────────────────────────────────────

    async def load(self) -> None:
        """Re-queue runs a crash left Running and load every Queued run."""
        n = await self._persist(
            lambda: self.store.requeue_interrupted(
                "interrupted by restart", replica_id=self.replica_id
            ),
            "requeue",
        )
        if n:
            log.warning("runs_requeued", count=n, reason="interrupted by restart")
        self._add(await self.store.queued_runs())

    async def refresh(self) -> None:
        """Re-read the Queued runs (queued by another replica, or waiting on a busy file).

        Copies held here are replaced (another replica may have re-queued a run as its next
        attempt); a run no longer Queued is dropped, unless it was queued here while the
        read was in flight."""
        self._busy_elsewhere.clear()
        before = set(self._queued)
        queued = await self.store.queued_runs()
        ids = {r.id for r in queued}
        for run_id in before - ids:  # taken or ended elsewhere
            self._remove_queued(run_id)
        for r in queued:
            if r.id in self._queued and self._queued[r.id] != r:
                self._remove_queued(r.id)
        self._add(queued)

    async def enqueue(self, run_ids: list[str]) -> None:
        """Take Queued runs by id (runs whose rows changed: retried, re-queued)."""
        if run_ids:
            self._add(await self.store.get_runs(run_ids))

    def enqueue_new(self, runs: list[NewRun], inserted: list[str], now: datetime) -> None:
        """Take runs just inserted Queued, without reading them back from the store."""
        ids = set(inserted)
        self._add([r.recorded(now) for r in runs if r.id in ids and r.status is RunStatus.QUEUED])

    def _add(self, runs: list[Run]) -> None:
        for r in runs:
            if (
                r.status is RunStatus.QUEUED
                and r.id not in self._queued
                and r.id not in self._running
            ):
                self._queued[r.id] = r
                self._order += 1
                self._rank[r.id] = r.seq or (1 << 62) + self._order
                self._queued_by_schedule[r.schedule_id] += 1
                key = _file_key(r)
                if key is not None:
                    self._queued_files[key] += 1
        self.metrics.queue_depth.set(len(self._queued))
        self._wake.set()

    def _remove_queued(self, run_id: str) -> Run | None:
        r = self._queued.pop(run_id, None)
        self._rank.pop(run_id, None)
        if r is not None:
            self._queued_by_schedule[r.schedule_id] -= 1
            key = _file_key(r)
            if key is not None:
                self._queued_files[key] -= 1
                if not self._queued_files[key]:
                    del self._queued_files[key]
        return r

    # ── main loop ────────────────────────────────────────────────────────────

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            while self._intake:
                if self._refresh_wanted:
                    self._refresh_wanted, self._wanted = False, set()
                    with contextlib.suppress(StateError):  # the next beat asks again
                        await self.refresh()
                elif self._wanted:
                    ids, self._wanted = sorted(self._wanted), set()
                    try:
                        await self.enqueue(ids)
                    except StateError:  # not lost: read every Queued run at the next turn
                        self._refresh_wanted = True
                await self._start_ready()
                await self._wake.wait()
                self._wake.clear()
            await self._drained.wait()

    def refresh_soon(self) -> None:
        """Re-read the Queued runs at the next turn of the loop (runs re-queued elsewhere)."""
        self._refresh_wanted = True
        self._wake.set()

    def enqueue_soon(self, run_ids: list[str]) -> None:
        """Read these runs (queued by another replica) at the next turn of the loop; the
        notices of a burst share one read."""
        self._wanted.update(run_ids)
        self._wake.set()

    async def _start_ready(self) -> None:
        superseded: list[str] = []
        started = True
        while started and self._intake and self.capacity.free:
            started = False
            for run in self._candidates():
                if not self.capacity.free or self.paused:
                    break
                plan = self._eligible(run, superseded)
                if plan is None:
                    continue
                self._start(run, plan)
                started = True
        if superseded:
            now = self.clock.now()
            await self._persist(lambda: self.store.skip_runs(superseded, "superseded", now), "skip")
            self.metrics.runs.labels(status="Skipped", pipeline="").inc(len(superseded))
        await self._notify_changed()

    def _candidates(self) -> Iterator[Run]:
        """The queued runs in order, each once, for one pass that may start or drop some.

        A pass mostly ends at the first run or two (one slot came free), while a burst of
        triggers can queue thousands: the head is copied first, the rest only when the pass
        gets past it (a full copy per finished run cost 0.13 ms of CPU per run in
        bench/dispatch.py)."""
        head = list(islice(self._queued.values(), HEAD))
        yield from head
        if len(head) == HEAD:
            seen = {r.id for r in head}
            yield from [r for r in self._queued.values() if r.id not in seen]

    def _eligible(self, run: Run, superseded: list[str]) -> Plan | None:
        if run.id in self._busy_elsewhere:
            return None
        key = _file_key(run)
        if key is not None:
            if key in self._busy_files:
                return None
            if self._queued_files[key] > 1 and self._newer_waits(run, key):
                superseded.append(run.id)  # coalesce to the newest waiting version
                self._remove_queued(run.id)
                return None
        plan = self.resolve(run)
        if plan is None:
            return None
        if isinstance(plan, str):
            self._remove_queued(run.id)
            assert self._tg is not None
            self._tg.create_task(self._finish_unresolvable(run, plan))
            return None
        if plan.serial and self._running_by_schedule[run.schedule_id]:
            return None
        if key is not None and self._queued_files[key] > 1:  # older versions: superseded
            mine = self._rank.get(run.id, 0)
            for older in [
                r.id
                for r in self._queued.values()
                if r.id != run.id and _file_key(r) == key and self._rank.get(r.id, 0) < mine
            ]:
                superseded.append(older)
                self._remove_queued(older)
        return plan

    def _newer_waits(self, run: Run, key: tuple[str, bytes]) -> bool:
        """Whether a newer version of the same file waits (newest: highest seq; runs queued
        here and not read back yet have none and are newer than any stored one)."""
        mine = self._rank.get(run.id, 0)
        return any(
            self._rank.get(r.id, 0) > mine
            for r in self._queued.values()
            if r.id != run.id and _file_key(r) == key
        )

    def _start(self, run: Run, plan: Plan) -> None:
        self._remove_queued(run.id)
        key = _file_key(run)
        if key is not None:
            self._busy_files.add(key)
        self._running_by_schedule[run.schedule_id] += 1
        self.capacity.take(run.id)
        assert self._tg is not None
        self._running[run.id] = self._tg.create_task(self._execute(run, plan))
        self.metrics.queue_depth.set(len(self._queued))
        self.metrics.running.set(len(self._running))

    def _release(self, run: Run) -> None:
        self._running.pop(run.id, None)
        self.capacity.release(run.id)
        self._busy_elsewhere.clear()  # a run ended: what was BUSY may be claimable now
        self._running_by_schedule[run.schedule_id] -= 1
        key = _file_key(run)
        if key is not None:
            self._busy_files.discard(key)
        self.metrics.running.set(len(self._running))
        if not self._running and not self._intake:
            self._drained.set()
        self._wake.set()

    async def _notify_changed(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _persist(self, op: Callable[[], Awaitable[T]], what: str) -> T:
        """A write the runner cannot drop: retried until durable (`retry.persist`)."""
        return await persist(op, clock=self.clock, health=self.health, what=what)

    # ── one run ──────────────────────────────────────────────────────────────

    def _requeue_local(self, run: Run) -> None:
        """Claim said BUSY: keep the run Queued here, untried until the next refresh."""
        self._busy_elsewhere.add(run.id)
        self._add([run])

    async def _finish_unresolvable(self, run: Run, why: str) -> None:
        now = self.clock.now()
        await self._persist(
            lambda: self.store.transition_run(
                run.id,
                RunStatus.FAILED,
                among=[RunStatus.QUEUED],
                now=now,
                error=why,
                finished_at=now,
            ),  # fmt: skip
            "run Failed",
        )
        log.error("run_failed", run_id=run.id, error=why)
        self.metrics.runs.labels(status="Failed", pipeline=run.pipeline_id).inc()

    async def _execute(self, run: Run, plan: Plan) -> None:
        execution = Execution(
            run,
            plan,
            store=self.store,
            clock=self.clock,
            metrics=self.metrics,
            health=self.health,
            replica_id=self.replica_id,
            dispatcher=self.dispatchers(plan.pipeline.kind),
            backoff=functools.partial(self._backoff, run.id),
            replan=functools.partial(self._replan, run),
        )
        self._executions[run.id] = execution
        claimed = ClaimResult.GONE
        try:
            with structlog.contextvars.bound_contextvars(
                run_id=run.id, schedule=plan.schedule_name
            ):
                claimed = await execution.claim()
                if claimed is ClaimResult.CLAIMED:  # GONE: canceled, skipped, taken elsewhere
                    followups, ids = await execution.run()
                    if ids:
                        self.enqueue_new(followups, ids, self.clock.now())
        finally:
            self._executions.pop(run.id, None)
            self._release(run)
        if claimed is ClaimResult.BUSY:  # its file or schedule runs on another replica
            self._requeue_local(run)

    def _replan(self, run: Run) -> tuple[Plan, Dispatcher] | str | None:
        """A running run's plan and dispatcher from the config as it is now (its next
        attempt); why it can no longer be dispatched; or None (keep the one it has)."""
        plan = self.resolve(run)
        return (plan, self.dispatchers(plan.pipeline.kind)) if isinstance(plan, Plan) else plan

    async def _backoff(self, run_id: str, seconds: float) -> None:
        """Wait between two attempts of a run without holding its slot (`engine.capacity`)."""
        self.capacity.lend(run_id)
        await self.clock.sleep(seconds)
        await self.capacity.take_back(run_id)

    # ── control ──────────────────────────────────────────────────────────────

    async def cancel(self, run_id: str) -> bool:
        """Cancel a Queued or Running run; False when it is neither (here)."""
        if run_id in self._running:
            self._stop_here(run_id)
            return True
        now = self.clock.now()
        ok, _ = await self.store.transition_run(
            run_id, RunStatus.CANCELED, among=[RunStatus.QUEUED], now=now,
            finished_at=now, error="canceled",
        )  # fmt: skip
        if ok:  # only now: a failed write leaves it Queued here as in the store
            self._remove_queued(run_id)
            await self._notify_changed()
        return ok

    def _stop_here(self, run_id: str) -> None:
        """Cancel a run of this replica: a run still being claimed is canceled right after
        its claim (cancelling the claim itself could leave it Running with nobody on it)."""
        execution = self._executions.get(run_id)
        if execution is not None:
            execution.canceled = True
            if execution.claiming:
                return
        self._running[run_id].cancel()

    def abandon(self) -> None:
        """This replica was declared dead while paused: its runs were re-queued and run
        elsewhere. Stop them here without writing anything (SPEC §12, run_claim_lost)."""
        for run_id, execution in list(self._executions.items()):
            execution.abandoned = True
            self._running[run_id].cancel()

    async def cancel_here(self, run_id: str) -> None:
        """Another replica asked to cancel a run: stop it if it runs here."""
        if run_id in self._running:
            self._stop_here(run_id)
        elif self._remove_queued(run_id) is not None:
            await self._notify_changed()

    def runs_here(self, run_id: str) -> bool:
        return run_id in self._running

    async def retry(self, run: Run) -> bool:
        """`runs retry`: a finished run back to Queued as its next attempt."""
        now = self.clock.now()
        ok, _ = await self.store.transition_run(
            run.id, RunStatus.QUEUED, among=sorted(TERMINAL), now=now,
            attempt=run.attempt + 1, finished_at=None, error=None, queued_at=now,
            started_at=None,
        )  # fmt: skip
        if ok:
            await self.enqueue([run.id])
        return ok

    async def wait_run(self, run_id: str) -> None:
        """Wait until a running run's task is done (cancel completes)."""
        task = self._running.get(run_id)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({task})

    async def drain(self, grace: float) -> int:
        """Stop taking runs, give running ones `grace` seconds, then stop the rest.

        Returns how many were stopped (and re-queued)."""
        self._intake = False
        self._wake.set()
        pending = set(self._running.values())
        stopped = 0
        if pending:
            _, still = await asyncio.wait(pending, timeout=grace)
            for t in still:
                t.cancel()
            stopped = len(still)
            if still:
                await asyncio.wait(still)
        self._drained.set()
        return stopped


def _file_key(run: Run) -> tuple[str, bytes] | None:
    if run.path is None or run.trigger.get("kind") != "file":
        return None
    return (run.schedule_id, run.path)
