"""Backoff for retryable failures: tenacity's exponential wait with jitter, Retry-After honoured."""

from __future__ import annotations

from datetime import timedelta

from tenacity import RetryCallState, wait_exponential_jitter

__all__ = ["backoff_delay"]


def backoff_delay(
    attempt: int, cap: timedelta, retry_after: float | None = None, initial: float = 1.0
) -> float:
    """Seconds to wait after failed try number `attempt` (1-based).

    A server's Retry-After wins over the computed backoff, still capped at `cap`.
    """
    limit = cap.total_seconds()
    if retry_after is not None:
        return max(0.0, min(float(retry_after), limit))
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = attempt
    wait = wait_exponential_jitter(initial=initial, max=limit, jitter=min(1.0, initial))
    return min(float(wait(state)), limit)
