"""The run engine: takes Queued runs from the outbox and dispatches them.

Rules (SPEC §5, §3.3, §4): at most `max_concurrent_runs` at once; runs of one file never
overlap and waiting versions coalesce to the newest; a `concurrency = "queue"` schedule runs
one at a time; retryable failures back off and try again while the run stays Running; a run
interrupted by shutdown goes back to Queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from watcherd.core.errors import StateError, TransientError
from watcherd.core.models import Pipeline, Run, RunStatus
from watcherd.engine.clock import Clock
from watcherd.engine.metrics import Metrics
from watcherd.engine.ports import Dispatcher, Outcome, RunContext
from watcherd.engine.retry import backoff_delay
from watcherd.state.sqlite.store import NewRun, Store, iso

__all__ = ["Plan", "Runner"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Plan:
    """What the engine resolved for a run from the current config."""

    pipeline: Pipeline
    schedule_name: str
    serial: bool  # the schedule's concurrency is "queue": one run at a time
    make_context: Callable[[Run, int], RunContext]


Resolver = Callable[[Run], "Plan | str"]  # a Plan, or why the run cannot be dispatched


class Runner:
    """Owns every dispatching task; `run()` until `drain()` or cancellation."""

    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        metrics: Metrics,
        resolve: Resolver,
        dispatchers: Mapping[str, Dispatcher],
        max_concurrent: int,
    ) -> None:
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.resolve = resolve
        self.dispatchers = dispatchers
        self.max_concurrent = max_concurrent
        self._queued: OrderedDict[str, Run] = OrderedDict()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._running_runs: dict[str, Run] = {}
        self._queued_by_schedule: Counter[str] = Counter()
        self._running_by_schedule: Counter[str] = Counter()
        self._busy_files: set[tuple[str, bytes]] = set()
        self._queued_files: Counter[tuple[str, bytes]] = Counter()
        self._cancel_requested: set[str] = set()
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
        n = await self.store.call(self.store.requeue_interrupted, "interrupted by restart")
        if n:
            log.warning("runs_requeued", count=n, reason="interrupted by restart")
        self._add(await self.store.call(self.store.queued_runs))

    async def enqueue(self, run_ids: list[str]) -> None:
        """Take freshly committed Queued runs."""
        if run_ids:
            self._add(await self.store.call(self.store.get_runs, run_ids))

    def _add(self, runs: list[Run]) -> None:
        for r in runs:
            if (
                r.status is RunStatus.QUEUED
                and r.id not in self._queued
                and r.id not in self._running
            ):
                self._queued[r.id] = r
                self._queued_by_schedule[r.schedule_id] += 1
                key = self._file_key(r)
                if key is not None:
                    self._queued_files[key] += 1
        self.metrics.queue_depth.set(len(self._queued))
        self._wake.set()

    def _remove_queued(self, run_id: str) -> Run | None:
        r = self._queued.pop(run_id, None)
        if r is not None:
            self._queued_by_schedule[r.schedule_id] -= 1
            key = self._file_key(r)
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
                if len(self._running) >= self.max_concurrent:
                    break
                plan = self._eligible(run, superseded)
                if plan is None:
                    continue
                self._start(run, plan)
                started = True
        if superseded:
            await self.store.write(self.store.skip_runs, superseded, "superseded", self.clock.now())
            self.metrics.runs.labels(status="Skipped", pipeline="").inc(len(superseded))
        await self._notify_changed()

    def _eligible(self, run: Run, superseded: list[str]) -> Plan | None:
        key = self._file_key(run)
        if key is not None:
            if key in self._busy_files:
                return None
            if self._queued_files[key] > 1:  # coalesce to the newest waiting version
                superseded.append(run.id)
                self._remove_queued(run.id)
                return None
        plan = self.resolve(run)
        if isinstance(plan, str):
            self._remove_queued(run.id)
            assert self._tg is not None
            self._tg.create_task(self._finish_unresolvable(run, plan))
            return None
        if plan.serial and self._running_by_schedule[run.schedule_id]:
            return None
        return plan

    @staticmethod
    def _file_key(run: Run) -> tuple[str, bytes] | None:
        if run.path is None or run.trigger.get("kind") != "file":
            return None
        return (run.schedule_id, run.path)

    def _start(self, run: Run, plan: Plan) -> None:
        self._remove_queued(run.id)
        key = self._file_key(run)
        if key is not None:
            self._busy_files.add(key)
        self._running_by_schedule[run.schedule_id] += 1
        self._running_runs[run.id] = run
        assert self._tg is not None
        self._running[run.id] = self._tg.create_task(self._execute(run, plan))
        self.metrics.queue_depth.set(len(self._queued))
        self.metrics.running.set(len(self._running))

    def _release(self, run: Run) -> None:
        self._running.pop(run.id, None)
        self._running_runs.pop(run.id, None)
        self._running_by_schedule[run.schedule_id] -= 1
        key = self._file_key(run)
        if key is not None:
            self._busy_files.discard(key)
        self.metrics.running.set(len(self._running))
        if not self._running and not self._intake:
            self._drained.set()
        self._wake.set()

    async def _notify_changed(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # ── one run ──────────────────────────────────────────────────────────────

    async def _finish_unresolvable(self, run: Run, why: str) -> None:
        await self.store.write(
            self.store.update_run,
            run.id,
            expect=[RunStatus.QUEUED],
            status=RunStatus.FAILED,
            error=why,
            finished_at=self.clock.now(),
        )
        log.error("run_failed", run_id=run.id, error=why)
        self.metrics.runs.labels(status="Failed", pipeline=run.pipeline_id).inc()

    async def _execute(self, run: Run, plan: Plan) -> None:
        now = self.clock.now()
        try:
            with structlog.contextvars.bound_contextvars(
                run_id=run.id, schedule=plan.schedule_name
            ):
                ok, _ = await self.store.write(
                    self.store.update_run,
                    run.id,
                    expect=[RunStatus.QUEUED],
                    status=RunStatus.RUNNING,
                    started_at=now,
                    next_attempt_at=None,
                )
                if not ok:  # canceled or skipped meanwhile
                    return
                if run.queued_at is not None:
                    self.metrics.dispatch_lag.observe(
                        max(0.0, (now - run.queued_at).total_seconds())
                    )
                self.metrics.runs.labels(status="Running", pipeline=run.pipeline_id).inc()
                log.info(
                    "run_started",
                    pipeline=plan.pipeline.name,
                    attempt=run.attempt,
                    trigger=run.trigger,
                )
                await self._run_to_end(run, plan)
        finally:
            self._release(run)

    async def _run_to_end(self, run: Run, plan: Plan) -> None:
        attempts: list[dict[str, object]] = list(run.attempts)  # type: ignore[arg-type]
        timeout = plan.pipeline.timeout
        try:
            async with asyncio.timeout(timeout.total_seconds() if timeout else None):
                outcome = await self._attempts(run, plan, attempts)
        except TimeoutError:
            outcome = Outcome(status=RunStatus.FAILED, error=f"timeout after {_fmt(timeout)}")
        except asyncio.CancelledError:
            with contextlib.suppress(StateError):  # the next start re-queues it anyway
                await asyncio.shield(self._interrupted(run, attempts))
            raise
        except Exception as exc:  # a dispatcher bug must not take the daemon down
            log.exception("dispatch_crashed")
            outcome = Outcome(status=RunStatus.FAILED, error=f"internal error: {exc!r}")
        await self._finish(run, plan, outcome, attempts)

    async def _attempts(self, run: Run, plan: Plan, attempts: list[dict[str, object]]) -> Outcome:
        attempt = run.attempt
        dispatcher = self.dispatchers[plan.pipeline.kind]
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
                await self.store.write(
                    self.store.update_run,
                    run.id,
                    attempt=attempt,
                    next_attempt_at=nxt,
                    attempts=attempts,
                )
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
        if run.id in self._cancel_requested:
            self._cancel_requested.discard(run.id)
            await self.store.call(
                self.store.update_run,
                run.id,
                expect=[RunStatus.RUNNING],
                status=RunStatus.CANCELED,
                finished_at=self.clock.now(),
                error="canceled",
                attempts=attempts,
                next_attempt_at=None,
            )
            self.metrics.runs.labels(status="Canceled", pipeline=run.pipeline_id).inc()
            log.info("run_canceled")
            return
        await self.store.call(
            self.store.update_run,
            run.id,
            expect=[RunStatus.RUNNING],
            status=RunStatus.QUEUED,
            error="interrupted by shutdown",
            attempt=run.attempt + 1,
            attempts=attempts,
            next_attempt_at=None,
        )
        log.warning("run_requeued", reason="interrupted by shutdown")

    async def _finish(
        self, run: Run, plan: Plan, outcome: Outcome, attempts: list[dict[str, object]]
    ) -> None:
        now = self.clock.now()
        followups: list[NewRun] = []
        if (
            outcome.status is RunStatus.FAILED
            and plan.pipeline.on_failure
            and (run.trigger.get("kind") != "on_failure")
        ):
            failed = {
                "id": run.id,
                "schedule_id": run.schedule_id,
                "pipeline_id": run.pipeline_id,
                "experiment_name": run.experiment_name,
                "error": outcome.error,
                "exit_code": outcome.exit_code,
                "trigger": dict(run.trigger),
            }
            blob = json.dumps(failed)
            followups.append(
                NewRun(
                    schedule_id=run.schedule_id,
                    pipeline_id=plan.pipeline.on_failure,
                    experiment=run.experiment_name,
                    dedup=f"on_failure:{run.id}",
                    trigger={"kind": "on_failure", "run_id": run.id},
                    # the dispatcher also sets WATCHERD_FAILED_RUN from this parameter
                    parameters={"failed_run": blob},
                )
            )
        _, new = await self.store.write(
            self.store.update_run,
            run.id,
            expect=[RunStatus.RUNNING],
            followups=followups,
            now=now,
            status=outcome.status,
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
            await self.enqueue(new)

    # ── control ──────────────────────────────────────────────────────────────

    async def cancel(self, run_id: str) -> bool:
        """Cancel a Queued or Running run; False when it is neither."""
        if run_id in self._running:
            self._cancel_requested.add(run_id)
            self._running[run_id].cancel()
            return True
        r = self._remove_queued(run_id)
        ok, _ = await self.store.call(
            self.store.update_run,
            run_id,
            expect=[RunStatus.QUEUED],
            status=RunStatus.CANCELED,
            finished_at=self.clock.now(),
            error="canceled",
        )
        if r is not None or ok:
            await self._notify_changed()
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


def _attempt_record(
    attempt: int, start: datetime, end: datetime, **fields: object
) -> dict[str, object]:
    rec: dict[str, object] = {"attempt": attempt, "start": iso(start), "end": iso(end)}
    rec.update({k: v for k, v in fields.items() if v not in (None, [])})
    return rec


def _fmt(d: timedelta | None) -> str:
    if d is None:
        return "?"
    from watcherd.core.durations import format_duration

    return format_duration(d)
