"""The runner: takes Queued runs and dispatches them.

Rules (SPEC §5, §3.3, §4): at most `max_concurrent_runs` at once; runs of one file never
overlap and waiting versions coalesce to the newest; a `concurrency = "queue"` schedule runs
one at a time; retryable failures back off and try again while the run stays Running; a run
interrupted by shutdown goes back to Queued. Every status change goes through the store's
`transition_run` (one transition table, `core.runs`), durably (`retry.persist`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import structlog

from watcherd.core.durations import format_duration
from watcherd.core.errors import ClaimLost, StateError, TransientError
from watcherd.core.models import TERMINAL, Pipeline, Run, RunStatus
from watcherd.core.runs import NewRun, on_failure_run
from watcherd.core.timefmt import format_utc
from watcherd.engine.clock import Clock
from watcherd.engine.metrics import Metrics
from watcherd.engine.ports import (
    Claim,
    ClaimResult,
    DispatcherFactory,
    Outcome,
    RunContext,
    RunStore,
)
from watcherd.engine.retry import StoreHealth, backoff_delay, persist

__all__ = ["Plan", "Runner"]

log = structlog.get_logger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Plan:
    """What the engine resolved for a run from the current config."""

    pipeline: Pipeline
    schedule_name: str
    serial: bool  # the schedule's concurrency is "queue": one run at a time
    make_context: Callable[[Run, int], RunContext]


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
        self.max_concurrent = max_concurrent
        self._queued: OrderedDict[str, Run] = OrderedDict()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._queued_by_schedule: Counter[str] = Counter()
        self._running_by_schedule: Counter[str] = Counter()
        self._busy_files: set[tuple[str, bytes]] = set()
        self._queued_files: Counter[tuple[str, bytes]] = Counter()
        self._cancel_requested: set[str] = set()
        self._attempt: dict[str, int] = {}  # running run id → the attempt this replica holds
        self._busy_elsewhere: set[str] = set()  # BUSY at claim time: wait for a refresh
        self._wake = asyncio.Event()
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
        """Re-read the Queued runs (queued by another replica, or waiting on a busy file)."""
        self._busy_elsewhere.clear()
        queued = await self.store.queued_runs()
        ids = {r.id for r in queued}
        for run_id in [r for r in self._queued if r not in ids]:  # taken or ended elsewhere
            self._remove_queued(run_id)
        self._add(queued)

    async def enqueue(self, run_ids: list[str]) -> None:
        """Take Queued runs by id (runs whose rows changed: retried, re-queued)."""
        if run_ids:
            self._add(await self.store.get_runs(run_ids))

    def enqueue_new(self, runs: list[NewRun], inserted: list[str], now: datetime) -> None:
        """Take runs just inserted Queued, without reading them back from the store."""
        ids = set(inserted)
        self._add(
            [
                Run(
                    id=r.id,
                    schedule_id=r.schedule_id,
                    pipeline_id=r.pipeline_id,
                    experiment_name=r.experiment,
                    status=RunStatus.QUEUED,
                    trigger=r.trigger,
                    parameters=r.parameters,
                    file=r.file,
                    queued_at=now,
                )
                for r in runs
                if r.id in ids
            ]
        )

    def _add(self, runs: list[Run]) -> None:
        for r in runs:
            if (
                r.status is RunStatus.QUEUED
                and r.id not in self._queued
                and r.id not in self._running
            ):
                self._queued[r.id] = r
                self._queued_by_schedule[r.schedule_id] += 1
                key = _file_key(r)
                if key is not None:
                    self._queued_files[key] += 1
        self.metrics.queue_depth.set(len(self._queued))
        self._wake.set()

    def _remove_queued(self, run_id: str) -> Run | None:
        r = self._queued.pop(run_id, None)
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
                await self._start_ready()
                await self._wake.wait()
                self._wake.clear()
            await self._drained.wait()

    async def _start_ready(self) -> None:
        superseded: list[str] = []
        started = True
        while started and self._intake and len(self._running) < self.max_concurrent:
            started = False
            for run in list(self._queued.values()):
                if len(self._running) >= self.max_concurrent or self.paused:
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

    def _eligible(self, run: Run, superseded: list[str]) -> Plan | None:
        if run.id in self._busy_elsewhere:
            return None
        key = _file_key(run)
        if key is not None:
            if key in self._busy_files:
                return None
            if self._queued_files[key] > 1:  # coalesce to the newest waiting version
                superseded.append(run.id)
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
        return plan

    def _start(self, run: Run, plan: Plan) -> None:
        self._remove_queued(run.id)
        key = _file_key(run)
        if key is not None:
            self._busy_files.add(key)
        self._running_by_schedule[run.schedule_id] += 1
        assert self._tg is not None
        self._running[run.id] = self._tg.create_task(self._execute(run, plan))
        self.metrics.queue_depth.set(len(self._queued))
        self.metrics.running.set(len(self._running))

    def _release(self, run: Run) -> None:
        self._running.pop(run.id, None)
        self._attempt.pop(run.id, None)
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

    async def _move(self, run_id: str, to: RunStatus, **fields: Any) -> tuple[bool, list[str]]:
        """A durable status change (see `RunStore.transition_run`); a move out of Running is
        conditional on this replica's claim (SPEC §12)."""
        attempt = self._attempt.get(run_id)
        claim = Claim(self.replica_id, attempt) if attempt is not None else None
        return await self._persist(
            lambda: self.store.transition_run(
                run_id, to, now=self.clock.now(), claim=claim, **fields
            ),
            f"run {to.value}",
        )

    def _requeue_local(self, run: Run) -> None:
        """Claim said BUSY: keep the run Queued here, untried until the next refresh."""
        self._busy_elsewhere.add(run.id)
        self._add([run])

    async def _finish_unresolvable(self, run: Run, why: str) -> None:
        await self._move(run.id, RunStatus.FAILED, among=[RunStatus.QUEUED], error=why,
                         finished_at=self.clock.now())  # fmt: skip
        log.error("run_failed", run_id=run.id, error=why)
        self.metrics.runs.labels(status="Failed", pipeline=run.pipeline_id).inc()

    async def _execute(self, run: Run, plan: Plan) -> None:
        now = self.clock.now()
        try:
            with structlog.contextvars.bound_contextvars(
                run_id=run.id, schedule=plan.schedule_name
            ):
                claimed = await self._persist(
                    lambda: self.store.claim_run(
                        run.id, replica_id=self.replica_id, now=now, serial=plan.serial
                    ),
                    "run claim",
                )
                if claimed is ClaimResult.BUSY:  # its file or schedule runs on another replica
                    self._requeue_local(run)
                    return
                if claimed is ClaimResult.GONE:  # canceled, skipped or claimed elsewhere
                    return
                self._attempt[run.id] = run.attempt
                if run.queued_at is not None:
                    self.metrics.dispatch_lag.observe(
                        max(0.0, (now - run.queued_at).total_seconds())
                    )
                self.metrics.runs.labels(status="Running", pipeline=run.pipeline_id).inc()
                log.info(
                    "run_started", pipeline=plan.pipeline.name, attempt=run.attempt,
                    trigger=dict(run.trigger),
                )  # fmt: skip
                await self._run_to_end(run, plan)
        finally:
            self._release(run)

    async def _run_to_end(self, run: Run, plan: Plan) -> None:
        attempts: list[dict[str, object]] = [dict(a) for a in run.attempts]
        timeout = plan.pipeline.timeout
        try:
            async with asyncio.timeout(timeout.total_seconds() if timeout else None):
                outcome = await self._attempts(run, plan, attempts)
        except TimeoutError:
            text = format_duration(timeout) if timeout else "?"
            outcome = Outcome(
                status=RunStatus.FAILED,
                error=f"timeout after {text}",
                log=self._partial_log(plan, run.id),
            )
        except asyncio.CancelledError:
            with contextlib.suppress(StateError):  # the next start re-queues it anyway
                await asyncio.shield(self._interrupted(run, attempts))
            raise
        except ClaimLost:
            log.error("run_claim_lost", reason="re-queued by another replica meanwhile")
            return
        except Exception as exc:  # a dispatcher bug must not take the daemon down
            log.exception("dispatch_crashed")
            outcome = Outcome(status=RunStatus.FAILED, error=f"internal error: {exc!r}")
        try:
            await self._finish(run, plan, outcome, attempts)
        except ClaimLost:  # another replica runs it again: this outcome is not recorded
            log.error("run_claim_lost", status=outcome.status.value)

    def _partial_log(self, plan: Plan, run_id: str) -> bytes:
        """The output so far of an interrupted run, with what was stopped (command runs)."""
        partial = getattr(self.dispatchers(plan.pipeline.kind), "partial_log", None)
        return (partial(run_id) or b"") if partial is not None else b""

    async def _attempts(self, run: Run, plan: Plan, attempts: list[dict[str, object]]) -> Outcome:
        attempt = run.attempt
        dispatcher = self.dispatchers(plan.pipeline.kind)
        while True:
            ctx = plan.make_context(run, attempt)
            started = self.clock.now()
            try:
                outcome = await dispatcher.dispatch(ctx)
            except TransientError as exc:
                attempts.append(_attempt_record(attempt, started, self.clock.now(), error=str(exc)))
                if attempt >= plan.pipeline.retry.attempts:
                    return Outcome(
                        status=RunStatus.FAILED,
                        error=f"retries exhausted after {attempt} attempts: {exc}",
                    )
                delay = backoff_delay(attempt, plan.pipeline.retry.max_delay, exc.retry_after)
                attempt += 1
                nxt = self.clock.now() + timedelta(seconds=delay)
                log.warning("run_retry", attempt=attempt, delay=round(delay, 3), error=str(exc))
                await self._persist(
                    functools.partial(
                        self.store.update_running,
                        run.id,
                        claim=Claim(self.replica_id, self._attempt.get(run.id, attempt - 1)),
                        attempt=attempt,
                        next_attempt_at=nxt,
                        attempts=list(attempts),
                    ),
                    "run retry",
                )
                self._attempt[run.id] = attempt
                await self.clock.sleep(delay)
                continue
            attempts.append(
                _attempt_record(
                    attempt,
                    started,
                    self.clock.now(),
                    error=outcome.error,
                    exit_codes=list(outcome.exit_codes),
                    http_status=outcome.http_status,
                )
            )
            return outcome

    async def _interrupted(self, run: Run, attempts: list[dict[str, object]]) -> None:
        now = self.clock.now()
        attempt = self._attempt.get(run.id, run.attempt)
        claim = Claim(self.replica_id, attempt)
        if run.id in self._cancel_requested:
            self._cancel_requested.discard(run.id)
            await self.store.transition_run(
                run.id, RunStatus.CANCELED, among=[RunStatus.RUNNING], now=now, claim=claim,
                finished_at=now, error="canceled", attempts=attempts, next_attempt_at=None,
            )  # fmt: skip
            self.metrics.runs.labels(status="Canceled", pipeline=run.pipeline_id).inc()
            log.info("run_canceled")
            return
        await self.store.transition_run(
            run.id, RunStatus.QUEUED, among=[RunStatus.RUNNING], now=now, claim=claim,
            error="interrupted by shutdown", attempt=attempt + 1, attempts=attempts,
            next_attempt_at=None,
        )  # fmt: skip
        log.warning("run_requeued", reason="interrupted by shutdown")

    async def _finish(
        self, run: Run, plan: Plan, outcome: Outcome, attempts: list[dict[str, object]]
    ) -> None:
        now = self.clock.now()
        followups: list[NewRun] = []
        if (
            outcome.status is RunStatus.FAILED
            and plan.pipeline.on_failure
            and run.trigger.get("kind") != "on_failure"
        ):
            followups.append(
                on_failure_run(
                    run, plan.pipeline.on_failure, error=outcome.error, exit_code=outcome.exit_code
                )
            )
        _, new = await self._move(
            run.id,
            outcome.status,
            among=[RunStatus.RUNNING],
            followups=followups,
            finished_at=now,
            error=outcome.error,
            exit_code=outcome.exit_code,
            remote_id=outcome.remote_id,
            log=outcome.log,
            attempts=attempts,
            next_attempt_at=None,
        )
        self.metrics.runs.labels(status=outcome.status.value, pipeline=run.pipeline_id).inc()
        log.info(
            "run_finished",
            status=outcome.status.value,
            exit_code=outcome.exit_code,
            error=outcome.error,
        )
        if new:
            self.enqueue_new(followups, new, now)

    # ── control ──────────────────────────────────────────────────────────────

    async def cancel(self, run_id: str) -> bool:
        """Cancel a Queued or Running run; False when it is neither."""
        if run_id in self._running:
            self._cancel_requested.add(run_id)
            self._running[run_id].cancel()
            return True
        r = self._remove_queued(run_id)
        now = self.clock.now()
        ok, _ = await self.store.transition_run(
            run_id, RunStatus.CANCELED, among=[RunStatus.QUEUED], now=now,
            finished_at=now, error="canceled",
        )  # fmt: skip
        if r is not None or ok:
            await self._notify_changed()
        return ok

    async def cancel_here(self, run_id: str) -> None:
        """Another replica asked to cancel a run: stop it if it runs here."""
        if run_id in self._running:
            self._cancel_requested.add(run_id)
            self._running[run_id].cancel()
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


def _attempt_record(
    attempt: int, start: datetime, end: datetime, **fields: object
) -> dict[str, object]:
    rec: dict[str, object] = {
        "attempt": attempt,
        "start": format_utc(start, micro=True),
        "end": format_utc(end, micro=True),
    }
    rec.update({k: v for k, v in fields.items() if v not in (None, [])})
    return rec
