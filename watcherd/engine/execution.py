"""`Execution`: one claimed run, from its first attempt to its recorded end.

It tries the dispatcher, backs off on retryable failures (the run stays Running with
`next_attempt_at`; the runner lends its slot meanwhile), bounds the whole run by the
pipeline's `timeout`, and records the end: Completed/Failed/Submitted, Canceled, or Queued
again when the daemon stops. The run's log keeps every attempt's output, each attempt that
did not succeed ended by a `watcherd: attempt N: <why>` line. Every write out of Running
carries this replica's claim (SPEC §12): refused, the outcome is not recorded and
`run_claim_lost` is logged — another replica runs it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

import structlog

from watcherd.core.durations import format_duration
from watcherd.core.errors import ClaimLost, DispatchUnavailable, StateError, TransientError
from watcherd.core.models import Pipeline, Run, RunStatus
from watcherd.core.redact import redactor_for
from watcherd.core.runs import NewRun, on_failure_run
from watcherd.core.timefmt import format_utc
from watcherd.engine.clock import Clock
from watcherd.engine.metrics import Metrics
from watcherd.engine.ports import (
    Claim,
    ClaimResult,
    Dispatcher,
    Outcome,
    RunContext,
    RunStore,
)
from watcherd.engine.retry import StoreHealth, backoff_delay, persist

__all__ = ["Execution", "Plan"]

log = structlog.get_logger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Plan:
    """What the engine resolved for a run from the current config."""

    pipeline: Pipeline
    schedule_name: str
    serial: bool  # the schedule's concurrency is "queue": one run at a time
    make_context: Callable[[Run, int], RunContext]
    secrets: frozenset[str] = frozenset()  # the config's: masked in every error recorded


class Execution:
    """Runs one claimed run to its end (`run()`), or records why it stopped."""

    # The attempt a timeout, cancel, shutdown or crash cut short: (attempt, start, end), set
    # only then (a class default: nothing to do for a run that ends normally), recorded in
    # attempts[] with why by `_record_cut` when the run's end is written.
    _cut: tuple[int, datetime, datetime] | None = None

    def __init__(
        self,
        run: Run,
        plan: Plan,
        *,
        store: RunStore,
        clock: Clock,
        metrics: Metrics,
        health: StoreHealth,
        replica_id: str,
        dispatcher: Dispatcher,
        backoff: Callable[[float], Awaitable[None]] | None = None,
        replan: Callable[[], tuple[Plan, Dispatcher] | str | None] | None = None,
    ) -> None:
        """`backoff(seconds)` waits between two attempts (the runner's lends the run's slot
        meanwhile, `engine.capacity`); the clock's sleep by default. `replan()` gives the
        plan and dispatcher of the pipeline as configured now, for the next attempt (a str:
        why the run can no longer be dispatched; None: keep the current one)."""
        self.run_ = run
        self.plan = plan
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.health = health
        self.replica_id = replica_id
        self.dispatcher = dispatcher
        self.backoff = backoff or clock.sleep
        self.replan = replan
        self._earlier = b""  # the output of this run's failed attempts, kept with its log
        self._loaded = False  # `_earlier` holds the stored log of a re-attempted run
        self.attempt = run.attempt  # the attempt this replica holds the claim at
        self.attempts: list[dict[str, object]] = [dict(a) for a in run.attempts]
        self.canceled = False  # set before the task is cancelled by `runs cancel`
        self.claiming = False  # the claim is in flight: a cancel waits for it
        self.abandoned = False  # the claim was lost while paused: end without writing

    async def _persist(self, op: Callable[[], Awaitable[T]], what: str) -> T:
        return await persist(op, clock=self.clock, health=self.health, what=what)

    async def claim(self) -> ClaimResult:
        """Queued → Running for this replica (BUSY/GONE leave it to others)."""
        now = self.clock.now()
        run = self.run_
        self.claiming = True
        try:
            claimed = await self._claim_once(run, now)
        finally:
            self.claiming = False
        if claimed is ClaimResult.CLAIMED:
            if run.queued_at is not None:
                self.metrics.dispatch_lag.observe(max(0.0, (now - run.queued_at).total_seconds()))
            self.metrics.runs.labels(status="Running", pipeline=run.pipeline_id).inc()
            log.info(
                "run_started", pipeline=self.plan.pipeline.name, attempt=run.attempt,
                trigger=dict(run.trigger),
            )  # fmt: skip
        return claimed

    async def _claim_once(self, run: Run, now: datetime) -> ClaimResult:
        return await self._persist(
            lambda: self.store.claim_run(
                run.id,
                replica_id=self.replica_id,
                now=now,
                serial=self.plan.serial,
                attempt=run.attempt,
            ),
            "run claim",
        )

    async def run(self) -> tuple[list[NewRun], list[str]]:
        """Attempt until done; returns the follow-up runs (on_failure) and their Queued ids."""
        if self.canceled:  # canceled while its claim was in flight
            await self._interrupted()
            return [], []
        timeout = self.plan.pipeline.timeout
        try:
            async with asyncio.timeout(timeout.total_seconds() if timeout else None):
                await self._load_earlier()
                outcome = await self._attempts()
        except TimeoutError:
            text = format_duration(timeout) if timeout else "?"
            error = f"timeout after {text}"
            self._record_cut(error)
            outcome = Outcome(status=RunStatus.FAILED, error=error, log=await self._cut_log(error))
        except asyncio.CancelledError:
            with contextlib.suppress(StateError):  # the next start re-queues it anyway
                await asyncio.shield(self._interrupted())
            raise
        except ClaimLost:
            log.error("run_claim_lost", reason="re-queued by another replica meanwhile")
            return [], []
        except Exception as exc:  # a dispatcher bug must not take the daemon down
            log.exception("dispatch_crashed")
            error = redactor_for(self.plan.secrets)(f"internal error: {exc!r}")
            self._record_cut(error)
            outcome = Outcome(status=RunStatus.FAILED, error=error, log=await self._cut_log(error))
        try:
            return await self._finish(outcome)
        except ClaimLost:  # another replica runs it again: this outcome is not recorded
            log.error("run_claim_lost", status=outcome.status.value)
            return [], []

    async def _partial_log(self) -> bytes:
        """The output so far of an interrupted run, with what was stopped (command runs)."""
        partial = getattr(self.dispatcher, "partial_log", None)
        if partial is None:
            return b""
        # In a thread: masking up to twice `log_limit` of output takes tens of ms.
        return await asyncio.to_thread(partial, self.run_.id) or b""

    def _record_cut(self, error: str) -> None:
        """Record the attempt that was cut short (if one was), with why, in attempts[]."""
        if (cut := self._cut) is not None:
            self._cut = None
            self.attempts.append(_record(*cut, error=error))

    def _claim(self) -> Claim:
        return Claim(self.replica_id, self.attempt)

    async def _attempts(self) -> Outcome:
        run = self.run_
        while True:
            ctx = self.plan.make_context(run, self.attempt)
            started = self.clock.now()
            try:
                outcome = self._masked(await self.dispatcher.dispatch(ctx))
            except TransientError as exc:
                failed = exc if isinstance(exc, DispatchUnavailable) else None
                codes = failed.exit_codes if failed is not None else ()
                error = redactor_for(self.plan.secrets)(str(exc))
                self.attempts.append(
                    _record(
                        self.attempt,
                        started,
                        self.clock.now(),
                        error=error,
                        exit_codes=list(codes),
                        http_status=failed.http_status if failed is not None else None,
                    )
                )
                if failed is not None and failed.log:
                    self._keep(failed.log + self._ending(error))
                if self.attempt >= self.plan.pipeline.retry.attempts:
                    return Outcome(
                        status=RunStatus.FAILED,
                        error=f"retries exhausted after {self.attempt} attempts: {error}",
                        exit_code=next((c for c in codes if c), None),
                        exit_codes=codes,
                        log=self._earlier,
                    )
                await self._back_off(exc, error)
                if (ended := self._replanned()) is not None:
                    return ended
                continue
            except BaseException:  # timeout, cancel, shutdown, a dispatcher bug: end it here
                self._cut = (self.attempt, started, self.clock.now())
                raise
            self.attempts.append(
                _record(
                    self.attempt,
                    started,
                    self.clock.now(),
                    error=outcome.error,
                    exit_codes=list(outcome.exit_codes),
                    http_status=outcome.http_status,
                )
            )
            if self._earlier:  # earlier attempts failed: their output comes first
                outcome = replace(outcome, log=self._with_earlier(outcome.log))
            return outcome

    async def _back_off(self, exc: TransientError, error: str) -> None:
        """Record the next attempt and when it starts (`next_attempt_at`), wait for it, then
        record that it runs (`next_attempt_at` cleared)."""
        delay = backoff_delay(self.attempt, self.plan.pipeline.retry.max_delay, exc.retry_after)
        nxt = self.clock.now() + timedelta(seconds=delay)
        log.warning("run_retry", attempt=self.attempt + 1, delay=round(delay, 3), error=error)
        output: dict[str, Any] = {"log": self._earlier} if self._earlier else {}
        await self._update(  # the output so far: shown meanwhile, and kept over a crash
            next_attempt_at=nxt, attempt=self.attempt + 1, what="run retry", **output
        )
        self.attempt += 1
        await self.backoff(delay)
        await self._update(next_attempt_at=None, attempt=self.attempt, what="run next attempt")

    async def _update(self, *, what: str, **fields: Any) -> None:
        await self._persist(
            functools.partial(
                self.store.update_running,
                self.run_.id,
                claim=self._claim(),
                attempts=list(self.attempts),
                **fields,
            ),
            what,
        )

    def _replanned(self) -> Outcome | None:
        """The next attempt dispatches the pipeline as configured now (SPEC §5: its target is
        the pipeline's at dispatch time: a fix reloaded during a backoff is used); an Outcome
        when the run can no longer be dispatched."""
        got = self.replan() if self.replan is not None else None
        if isinstance(got, str):
            return Outcome(status=RunStatus.FAILED, error=got, log=self._earlier)
        if got is not None:
            self.plan, self.dispatcher = got
        return None

    async def _load_earlier(self) -> None:
        """A re-queued or retried run: its log so far comes before this attempt's output."""
        if self.attempt > 1 and not self._loaded:
            self._earlier = _closed(await self.store.run_log(self.run_.id), self.attempt)
            self._loaded = True

    def _keep(self, output: bytes) -> None:
        """Add a failed attempt's output to what the run's log keeps."""
        self._earlier = self._with_earlier(output)

    def _ending(self, why: str) -> bytes:
        """The line that ends an attempt's output in the log when it did not succeed."""
        return f"watcherd: attempt {self.attempt}: {why}\n".encode()

    async def _cut_log(self, why: str) -> bytes:
        """The log of a run whose attempt was cut short: the earlier attempts' output, this
        one's so far, and why it stopped (the stored log read first if it was not yet: a
        cancel during the claim, a timeout during that read)."""
        await self._load_earlier()
        return self._with_earlier(await self._partial_log() + self._ending(why))

    def _with_earlier(self, output: bytes) -> bytes:
        """The earlier attempts' output, then `output`: the last `log_limit` bytes of it."""
        joined = self._earlier + output
        limit = getattr(self.plan.pipeline.target, "log_limit", None)
        if limit is None or len(joined) <= limit:
            return joined
        return joined[len(joined) - limit :]  # (not [-limit:]: a limit of 0 keeps nothing)

    async def _move(self, to: RunStatus, **fields: Any) -> tuple[bool, list[str]]:
        return await self._persist(
            lambda: self.store.transition_run(
                self.run_.id,
                to,
                among=[RunStatus.RUNNING],
                now=self.clock.now(),
                claim=self._claim(),
                **fields,
            ),  # fmt: skip
            f"run {to.value}",
        )

    async def _interrupted(self) -> None:
        now = self.clock.now()
        if self.abandoned:  # re-queued elsewhere while this replica was paused
            log.error("run_claim_lost", reason="this replica was declared dead meanwhile")
            return
        why = "canceled" if self.canceled else "interrupted by shutdown"
        output: dict[str, Any] = {"log": await self._cut_log(why)}
        if self.canceled:
            self._record_cut("canceled")
            await self.store.transition_run(
                self.run_.id, RunStatus.CANCELED, among=[RunStatus.RUNNING], now=now,
                claim=self._claim(), finished_at=now, error="canceled",
                attempts=self.attempts, next_attempt_at=None, **output,
            )  # fmt: skip
            self.metrics.runs.labels(status="Canceled", pipeline=self.run_.pipeline_id).inc()
            log.info("run_canceled")
            return
        self._record_cut("interrupted by shutdown")
        await self.store.transition_run(
            self.run_.id, RunStatus.QUEUED, among=[RunStatus.RUNNING], now=now,
            claim=self._claim(), error="interrupted by shutdown", attempt=self.attempt + 1,
            attempts=self.attempts, next_attempt_at=None, **output,
        )  # fmt: skip
        log.warning("run_requeued", reason="interrupted by shutdown")

    def _masked(self, outcome: Outcome) -> Outcome:
        """The outcome with the config's secrets masked in its error (SPEC §8): a target may
        echo any of them, a dispatcher masks only its own."""
        if outcome.error is None or not self.plan.secrets:
            return outcome
        error = redactor_for(self.plan.secrets)(outcome.error)
        return outcome if error == outcome.error else replace(outcome, error=error)

    async def _finish(self, outcome: Outcome) -> tuple[list[NewRun], list[str]]:
        outcome = self._masked(outcome)  # also an internal error's, a timeout's
        run, pipeline = self.run_, self.plan.pipeline
        now = self.clock.now()
        followups: list[NewRun] = []
        if (
            outcome.status is RunStatus.FAILED
            and pipeline.on_failure
            and run.trigger.get("kind") != "on_failure"
        ):
            followups.append(
                on_failure_run(
                    run, pipeline.on_failure, error=outcome.error, exit_code=outcome.exit_code
                )
            )
        _, new = await self._move(
            outcome.status,
            followups=followups,
            finished_at=now,
            error=outcome.error,
            exit_code=outcome.exit_code,
            remote_id=outcome.remote_id,
            attempts=self.attempts,
            next_attempt_at=None,
            **({"log": outcome.log} if outcome.log else {}),  # else the stored log stays
        )
        self.metrics.runs.labels(status=outcome.status.value, pipeline=run.pipeline_id).inc()
        log.info(
            "run_finished",
            status=outcome.status.value,
            exit_code=outcome.exit_code,
            error=outcome.error,
        )
        return followups, new


def _record(attempt: int, start: datetime, end: datetime, **fields: object) -> dict[str, object]:
    rec: dict[str, object] = {
        "attempt": attempt,
        "start": format_utc(start, micro=True),
        "end": format_utc(end, micro=True),
    }
    rec.update({k: v for k, v in fields.items() if v not in (None, [])})
    return rec


def _closed(stored: bytes | None, attempt: int) -> bytes:
    """A re-attempted run's stored log, its last attempt's end marked if nothing did (a crash
    mid-attempt, or `runs retry` of a finished run)."""
    if not stored:
        return b""
    last = stored.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    if last.startswith(b"watcherd: attempt "):
        return stored
    return (
        stored
        + (b"" if stored.endswith(b"\n") else b"\n")
        + (f"watcherd: attempt {attempt - 1}: ended\n".encode())
    )
