"""Blob events from Azure Storage Queues: one consumer per queue, shared by its schedules.

SPEC §4 "Blob events". An Event Grid subscription writes `BlobCreated` events to a Storage
Queue; every blob schedule whose trigger names that queue subscribes to one `QueueHub` (the
daemon's poller factory keeps one hub and hands it to every `BlobPoller`). Per queue the hub
keeps the subscribers and a lease, so one `Consumer` (`blob_consumer`) reads the queue
however many schedules share it.

Who runs the consumer (structured concurrency): the hub owns no task. Each subscribed
poller's `run()` runs `serve()` in its own TaskGroup beside its listing loop. `serve()` first
takes the queue's lease (an asyncio.Lock): the first subscriber serves, the others wait in
FIFO order. When the serving poller stops (schedule disabled, re-armed by a reload, daemon
shutdown), its TaskGroup cancels its `serve()`, the consumer releases the messages it held
(visibility 0) and the lease passes to the next waiter, which takes them at once. Every task
therefore has an owner, and there is nothing to start or stop beside the pollers: at
shutdown the engine cancels the pollers, each consumer releases what it holds and closes its
clients, and the hub holds nothing more. (With replicas, §12, the lease will also be taken in
the store; not yet.)

Metrics (SPEC §9): events received, ignored (by reason) and poisoned per queue, and the
event-to-run lag per schedule, in the daemon's `Metrics`.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import structlog

from watcherd.core.errors import WatcherdError
from watcherd.engine.clock import Clock
from watcherd.engine.metrics import Metrics
from watcherd.engine.retry import backoff_delay
from watcherd.pollers.blob_consumer import (
    FOLDER,
    GONE,
    KNOWN,
    RUN,
    Abandoned,
    Consumer,
    ConsumerSettings,
    NotReady,
    QueueStats,
    Subscriber,
)
from watcherd.pollers.blob_storage import QueueTarget

__all__ = [
    "FOLDER",
    "GONE",
    "KNOWN",
    "RUN",
    "VISIBILITY_ENV",
    "Abandoned",
    "NotReady",
    "QueueHub",
    "QueueStats",
    "Subscriber",
]

log = structlog.get_logger(__name__)

CRASH_BACKOFF_CAP = timedelta(seconds=60)
VISIBILITY = 60  # seconds a received message stays invisible (SPEC §4)
# Tests only, like $WATCHERD_TEST_CLOCK: a shorter visibility, so that an end-to-end test of
# a SIGKILLed daemon sees the messages it held come back in seconds, not in a minute.
VISIBILITY_ENV = "WATCHERD_TEST_QUEUE_VISIBILITY"


@dataclass(slots=True)
class _Queue:
    """The subscribers of one queue and its consumer lease."""

    subs: dict[int, Subscriber] = field(default_factory=dict)
    lease: asyncio.Lock = field(default_factory=asyncio.Lock)


class QueueHub:
    """The blob-event queues of one daemon: one consumer per queue, shared by its schedules.

    Args:
        clock: the injected clock (backoffs, renewal deadlines).
        metrics: the daemon's metrics (the blob-event counters), or None.
        visibility: seconds a received message stays invisible, renewed at half-time.
        max_in_hand: messages held at once per queue.
        retry_initial: first backoff (seconds) before a failed message comes back.
    """

    def __init__(
        self,
        clock: Clock,
        metrics: Metrics | None = None,
        *,
        visibility: int = VISIBILITY,
        max_in_hand: int = 256,
        retry_initial: float = 10.0,
    ) -> None:
        self.clock, self.metrics = clock, metrics
        self.settings = ConsumerSettings(visibility, max_in_hand, retry_initial)
        self._queues: dict[str, _Queue] = {}
        self._stats: dict[str, QueueStats] = {}
        self._ids = itertools.count()

    @classmethod
    def for_daemon(
        cls, clock: Clock, metrics: Metrics, env: Mapping[str, str] | None = None
    ) -> QueueHub:
        """The hub a daemon shares between its blob pollers (`$WATCHERD_TEST_QUEUE_VISIBILITY`
        shortens the visibility timeout, for tests only)."""
        value = (env if env is not None else os.environ).get(VISIBILITY_ENV, "")
        visibility = int(value) if value.strip().isdigit() and int(value) > 0 else VISIBILITY
        return cls(clock, metrics, visibility=visibility)

    def stats(self, target: QueueTarget) -> QueueStats:
        """The counters of a queue: received and ignored (per event); deleted, released and
        poisoned (per message); run, known, gone and folder (per answer of a schedule)."""
        return self._stats.setdefault(target.key, QueueStats())

    @asynccontextmanager
    async def subscribe(
        self, target: QueueTarget, sub: Subscriber
    ) -> AsyncIterator[Callable[[], Coroutine[Any, Any, None]]]:
        """Register `sub` for `target`'s events while the block runs.

        Yields `serve`: the subscriber runs it in its own TaskGroup; it serves the queue
        whenever this subscriber holds the queue's lease, and runs until cancelled.
        """
        q = self._queues.setdefault(target.key, _Queue())
        n = next(self._ids)
        q.subs[n] = sub
        try:
            yield lambda: self._serve(q, target)
        finally:
            del q.subs[n]
            if not q.subs and self._queues.get(target.key) is q:
                del self._queues[target.key]

    async def _serve(self, q: _Queue, target: QueueTarget) -> None:
        if target.error is not None:
            log.error("blob_events_unavailable", queue=target.queue, error=target.error)
            self.stats(target).error = target.error
            await asyncio.Event().wait()  # the listing still runs: the safety net
        async with q.lease:
            failures = 0
            while True:
                log.info("blob_queue_serving", queue=target.queue, endpoint=target.endpoint)
                consumer = Consumer(
                    target, q.subs, self.clock, self.settings, self.stats(target),
                    lambda what, n, reason: self.count(target, what, n, reason),
                )  # fmt: skip
                error = "the consumer ended"  # it never does but by an exception
                try:
                    await consumer.run()
                except WatcherdError as exc:  # e.g. a connection string the SDK refuses
                    error = str(exc)
                    log.error("blob_queue_unusable", queue=target.queue, error=error)
                except Exception as exc:  # a bug must not end the schedule's poller
                    error = target.scrub(f"{type(exc).__name__}: {exc}")
                    log.exception("blob_queue_consumer_failed", queue=target.queue)
                failures += 1
                self.stats(target).error = error
                await self.clock.sleep(backoff_delay(failures, CRASH_BACKOFF_CAP))

    def count(self, target: QueueTarget, what: str, n: int = 1, reason: str = "") -> None:
        """Add to a counter, and to its metric when the hub has the daemon's Metrics."""
        self.stats(target).counts[what] += n
        m = self.metrics
        if m is None:
            return
        if what == "received":
            m.blob_events_received.labels(queue=target.queue).inc(n)
        elif what == "ignored":
            m.blob_events_ignored.labels(queue=target.queue, reason=reason).inc(n)
        elif what == "poisoned":
            m.blob_messages_poisoned.labels(queue=target.queue).inc(n)
