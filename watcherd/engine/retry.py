"""The one backoff of watcherd (tenacity's exponential wait with jitter, Retry-After honoured)
and `persist`, which retries a state write on the injected clock until it is durable."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import structlog
from tenacity import RetryCallState, wait_exponential_jitter

from watcherd.core.errors import ClaimLost, IncompatibleStore, LeaseLost, StateError
from watcherd.engine.clock import Clock

__all__ = ["StoreHealth", "backoff_delay", "persist"]

log = structlog.get_logger(__name__)

T = TypeVar("T")

WRITE_BACKOFF_CAP = timedelta(seconds=30)
SUMMARY_EVERY = 60.0  # seconds between "still failing" lines while writes keep failing


def backoff_delay(
    attempt: int, cap: timedelta, retry_after: float | None = None, initial: float = 1.0
) -> float:
    """Seconds to wait after failed try number `attempt` (1-based): `initial` doubled each
    try, plus up to `initial` of jitter, at most `cap`.

    A server's Retry-After wins over the computed backoff, still capped at `cap`.
    """
    limit = cap.total_seconds()
    if retry_after is not None:
        return max(0.0, min(float(retry_after), limit))
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]  # a bare state is all wait_* reads
    state.attempt_number = attempt
    wait = wait_exponential_jitter(multiplier=initial, max=limit, jitter=initial)
    return min(float(wait(state)), limit)


@dataclass(slots=True)
class StoreHealth:
    """Whether state writes currently fail (readiness, status line), and since when."""

    error: str | None = None
    failed_writes: int = 0
    since: float = 0.0  # monotonic
    last_summary: float = 0.0
    failing: int = 0  # writes retrying now: the store has recovered once none is


async def persist(
    op: Callable[[], Awaitable[T]], *, clock: Clock, health: StoreHealth, what: str
) -> T:
    """Run a state write the engine cannot drop: while it raises StateError (disk full, a
    read-only file system, a database that went away) it is retried with backoff. The first
    failure is logged once, then a summary every minute, then the recovery; nothing is lost
    and the daemon does not crash."""
    attempt = 0
    try:
        while True:
            try:
                result = await op()
            except (LeaseLost, ClaimLost, IncompatibleStore):  # retrying cannot help
                raise
            except StateError as exc:
                attempt += 1
                _failed(health, str(exc), what, clock.monotonic(), first=attempt == 1)
                await clock.sleep(backoff_delay(attempt, WRITE_BACKOFF_CAP, initial=0.25))
                continue
            break
    except BaseException:
        if attempt:  # cancelled (shutdown) while retrying: no longer failing, not recovered
            health.failing -= 1
        raise
    if attempt:
        health.failing -= 1
    # Recovered only when no other write is still failing (one small write getting through
    # while others fail is no recovery: /readyz stays 503, and the summary goes on).
    if health.error is not None and not health.failing:
        log.info(
            "state_write_recovered",
            failed_writes=health.failed_writes,
            seconds=round(clock.monotonic() - health.since),
        )
        health.error, health.failed_writes = None, 0
    return result


def _failed(health: StoreHealth, error: str, what: str, now: float, *, first: bool) -> None:
    """Count a failed try of a write: its first failure logged while the store was fine,
    then a summary every SUMMARY_EVERY seconds while any write keeps failing."""
    health.failed_writes += 1
    if first:
        health.failing += 1
    if health.error is None:
        health.since = health.last_summary = now
        log.error("state_write_failed", error=error, write=what)
    elif now - health.last_summary >= SUMMARY_EVERY:
        health.last_summary = now
        log.error(
            "state_write_still_failing",
            error=error,
            failed_writes=health.failed_writes,
            seconds=round(now - health.since),
        )
    health.error = error
