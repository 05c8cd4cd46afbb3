"""Reads one Azure Storage Queue of blob events: receive, renew, fan out, delete, poison.

SPEC §4 "Blob events", at-least-once. The consumer
- receives up to 32 messages per request (no decode policy: `parse_events` detects raw or
  base64 JSON itself), keeping at most `max_in_hand` messages; an empty answer is asked again
  after a backoff from 100 ms to 1 s (Storage Queues have no long polling);
- renews each held message's visibility (60 s) at half-time, keeping only the latest pop
  receipt (renewal, release and delete of one message are serialized; a stale receipt means
  someone else has the message now: it is dropped, not counted as a failure);
- parses each message and hands each event's blob name to every subscriber it concerns
  (`blob_events.skip_reason`: account, container, exactly the watched directory, pattern);
  the subscriber reads the blob's properties and commits (`BlobPoller.deliver`);
- deletes the message once every subscriber has answered for every name in it (a message
  that concerns nobody is counted `ignored` and deleted). A failure releases the message
  after our backoff (it comes back with dequeue count + 1); one still failing at dequeue
  count 5, or unparseable, is sent to the poison queue (created when missing) as JSON
  `{"reason", "message"}` and deleted. An array with malformed events among good ones goes
  there too, once its good events are delivered. A subscriber that is not ready (no baseline
  yet, paused by `max_pending`) makes the message come back later, never poisoned for it;
  one that stopped lets it come back at once, as does a consumer that is cancelled.

(~500 lines, one class: every method handles the life of a held message, its receipt and its
lock; split, a message's life would be read across two files.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol
from xml.sax.saxutils import escape

import structlog

from watcherd.core.errors import TransientError, WatcherdError
from watcherd.engine.clock import Clock
from watcherd.engine.retry import backoff_delay
from watcherd.pollers.blob_events import (
    BlobEvent,
    EventKind,
    ParseError,
    WatchedDirectory,
    keep_earliest,
    parse_events,
    skip_reason,
)
from watcherd.pollers.blob_storage import QueueTarget, error_code, map_azure_errors

__all__ = [
    "FOLDER",
    "GONE",
    "KNOWN",
    "MAX_DEQUEUE",
    "RUN",
    "Abandoned",
    "Consumer",
    "ConsumerSettings",
    "NotReady",
    "QueueStats",
    "Subscriber",
]

log = structlog.get_logger(__name__)

# What a subscriber answers for one blob name (or an Exception: that name failed).
RUN = "run"  # a new version: committed with a Queued run
KNOWN = "known"  # this version is already in the snapshot: nothing to do
GONE = "gone"  # no such blob now: ignored
FOLDER = "folder"  # an ADLS Gen2 directory (hdi_isfolder): ignored

MAX_DEQUEUE = 5  # still failing when received this often: poisoned (SPEC §4)
BATCH = 32  # the service's maximum per receive
EMPTY_BACKOFF = (0.1, timedelta(seconds=1))  # initial, cap of the empty-queue backoff
RECEIVE_BACKOFF_CAP = timedelta(seconds=60)
RELEASE_BACKOFF_CAP = timedelta(minutes=5)
POISON_LIMIT = 48_000  # bytes of XML-escaped poison message (the service allows 64 KiB)
REASON_LIMIT = 2_000


class NotReady(Exception):
    """The schedule cannot take events yet (no baseline, paused by max_pending): the message
    comes back later and is never poisoned for it."""


class Abandoned(Exception):
    """The schedule stopped (disabled, re-armed, shutdown) before it answered."""


class Subscriber(Protocol):
    """One schedule's side of the queue: what it watches, and how it takes blob names."""

    @property
    def label(self) -> str:
        """The schedule's name, for logs."""
        ...

    @property
    def watch(self) -> WatchedDirectory: ...

    async def deliver(self, names: Mapping[str, datetime | None]) -> Mapping[str, str | Exception]:
        """Look at each blob name (with its earliest event time) and commit what is new.

        Returns RUN, KNOWN, GONE or FOLDER per name, or the Exception that name failed with.

        Raises:
            NotReady: no baseline yet or paused; nothing was looked at.
            Abandoned: the schedule stopped.
        """
        ...


@dataclass(slots=True)
class QueueStats:
    """Counters of one queue (also exported as metrics when the Metrics object has them)."""

    counts: Counter[str] = field(default_factory=Counter)
    error: str | None = None  # the last receive error, None once receiving works


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    """How a consumer holds messages."""

    visibility: int = 60  # seconds a received message stays invisible, renewed at half-time
    max_in_hand: int = 256  # messages held at once
    retry_initial: float = 10.0  # first backoff (seconds) before a failed message comes back


@dataclass(slots=True, eq=False)
class _Held:
    """A message in hand: its latest pop receipt, and when to renew it."""

    id: str
    content: str
    receipt: str
    dequeue_count: int
    inserted_on: datetime | None
    renew_at: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    done: bool = False  # deleted, poisoned or released by us
    lost: bool = False  # its receipt went stale: someone else has it now


def _ignore_kind(event: BlobEvent) -> str:
    if event.kind is not EventKind.BLOB_CREATED:
        return "event_type"
    if event.ignored_reason is not None:
        return "create_file"
    return "unmatched"


def _lost(exc: BaseException | None) -> bool:
    """An update/delete that found the message gone (404) or re-received (PopReceiptMismatch)."""
    status = getattr(exc, "status_code", None)
    if exc is None or status not in (400, 404):
        return False
    return status == 404 or error_code(exc) == "PopReceiptMismatch"


def _poison_body(reason: str, content: str) -> str:
    """The poison message: JSON {"reason", "message"}, the copied text cut to fit the queue."""
    reason = reason[:REASON_LIMIT]
    body = json.dumps({"reason": reason, "message": content}, ensure_ascii=False)
    keep = len(content)
    while len(escape(body).encode("utf-8")) > POISON_LIMIT and keep > 0:
        keep //= 2
        doc = {"reason": reason, "message": content[:keep], "truncated": True}
        body = json.dumps(doc, ensure_ascii=False)
    return body


class Consumer:
    """Reads one queue until cancelled; see the module docstring.

    Args:
        target: the queue, and how to open it.
        subs: the queue's subscribers, read afresh for each message (they come and go).
        clock: the injected clock (backoffs, renewal deadlines).
        settings: visibility, in-hand limit, first retry delay.
        stats: where receive errors are shown.
        count: adds to a counter: (name, n, reason).
    """

    def __init__(
        self,
        target: QueueTarget,
        subs: Mapping[int, Subscriber],
        clock: Clock,
        settings: ConsumerSettings,
        stats: QueueStats,
        count: Callable[[str, int, str], None],
    ) -> None:
        self._t, self._subs, self._clock = target, subs, clock
        self._settings, self._stats, self._count = settings, stats, count
        self._where = f"queue {target.queue!r}"
        self._held: dict[str, _Held] = {}
        self._room = asyncio.Event()
        self._nonempty = asyncio.Event()
        self._client: Any = None
        self._poison_client: Any = None
        self._closables: list[Any] = []

    async def run(self) -> None:
        self._client = self._open(self._t.queue)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._renew_loop())
                await self._receive_loop(tg)
        finally:
            for closable in self._closables:
                with contextlib.suppress(Exception):
                    await closable.close()

    def _open(self, name: str) -> Any:
        with map_azure_errors(f"queue {name!r}", self._t.scrub, not_found="queue not found"):
            client, credential = self._t.open(name)
        self._closables.append(client)
        if credential is not None:
            self._closables.append(credential)
        return client

    # ── receiving ──

    async def _receive_loop(self, tg: asyncio.TaskGroup) -> None:
        limit, stats = self._settings.max_in_hand, self._stats
        empty = failures = 0
        while True:
            while len(self._held) >= limit:
                self._room.clear()
                await self._room.wait()
            try:
                batch = await self._receive(min(BATCH, limit - len(self._held)))
            except WatcherdError as exc:
                failures += 1
                hint = exc.retry_after if isinstance(exc, TransientError) else None
                delay = backoff_delay(failures, RECEIVE_BACKOFF_CAP, hint)
                log.warning(
                    "blob_queue_receive_failed", queue=self._t.queue, error=str(exc),
                    attempt=failures, retry_in=round(delay, 3),
                )  # fmt: skip
                stats.error = str(exc)
                await self._clock.sleep(delay)
                continue
            if failures:
                log.info("blob_queue_recovered", queue=self._t.queue, failures=failures)
                failures, stats.error = 0, None
            if not batch:
                empty += 1
                initial, cap = EMPTY_BACKOFF
                await self._clock.sleep(backoff_delay(empty, cap, initial=initial))
                continue
            empty = 0
            renew_at = self._clock.monotonic() + self._settings.visibility / 2
            for m in batch:
                held = _Held(
                    id=m.id, content=m.content if isinstance(m.content, str) else str(m.content),
                    receipt=m.pop_receipt, dequeue_count=m.dequeue_count or 1,
                    inserted_on=m.inserted_on, renew_at=renew_at,
                )  # fmt: skip
                self._held[held.id] = held
                tg.create_task(self._handle(held))
            self._nonempty.set()

    async def _receive(self, n: int) -> list[Any]:
        """One receive request: up to `n` messages (an empty list when the queue is empty)."""
        with map_azure_errors(self._where, self._t.scrub, not_found="queue not found"):
            pages = self._client.receive_messages(
                messages_per_page=n, visibility_timeout=self._settings.visibility
            ).by_page()
            try:
                page = await anext(pages)
            except StopAsyncIteration:
                return []
            return [m async for m in page]

    # ── one message ──

    async def _handle(self, held: _Held) -> None:
        try:
            await self._process(held)
        except asyncio.CancelledError:  # the consumer stops: let the next one take it now
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self._release(held, 0)
            raise
        except Exception:  # a bug: log it, and let the message come back
            log.exception("blob_event_failed", queue=self._t.queue, message_id=held.id)
            with contextlib.suppress(Exception):
                await self._release(held, self._retry_delay(held))
        finally:
            self._held.pop(held.id, None)
            self._room.set()

    async def _process(self, held: _Held) -> None:
        target = self._t
        try:
            events, bad = parse_events(held.content)
        except ParseError as exc:
            await self._poison(held, f"unparseable: {exc.reason}")
            return
        if not events:
            await self._poison(held, "unparseable: " + "; ".join(bad))
            return
        self._count("received", len(events), "")
        subs = dict(self._subs)
        routes: dict[int, dict[str, datetime | None]] = {}
        hits: list[list[int]] = []
        unmatched: list[str] = []
        for event in events:
            matched = [n for n, sub in subs.items() if skip_reason(event, sub.watch) is None]
            for n in matched:
                keep_earliest(routes.setdefault(n, {}), event.name, event.time or held.inserted_on)
            if not matched:
                unmatched.append(_ignore_kind(event))
            hits.append(matched)
        order = list(routes)
        answers = await asyncio.gather(
            *(subs[n].deliver(routes[n]) for n in order), return_exceptions=True
        )
        failures: list[str] = []
        waiting: list[str] = []
        abandoned_only = True
        outcome: dict[tuple[int, str], str] = {}
        for n, answer in zip(order, answers, strict=True):
            label = subs[n].label
            if isinstance(answer, NotReady | Abandoned | asyncio.CancelledError):
                waiting.append(f"schedule {label}: {str(answer) or type(answer).__name__}")
                abandoned_only = abandoned_only and not isinstance(answer, NotReady)
            elif isinstance(answer, BaseException):
                failures.append(f"schedule {label}: {type(answer).__name__}: {answer}")
            else:
                for name, result in answer.items():
                    if isinstance(result, Exception):
                        failures.append(f"schedule {label}: blob {name!r}: {result}")
                    else:
                        outcome[n, name] = result
        if not failures and not waiting:
            self._count_outcomes(events, hits, unmatched, outcome)
            if bad:  # kept for the operator, once its well-formed siblings are delivered
                why = f"unparseable: {'; '.join(bad)} (its other {len(events)} handled)"
                await self._poison(held, why)
            else:
                await self._delete(held)
            return
        if failures and held.dequeue_count >= MAX_DEQUEUE:
            reason = f"still failing at dequeue count {held.dequeue_count}: " + "; ".join(failures)
            await self._poison(held, reason)
            return
        # A schedule that stopped (re-armed, shutdown) lets the message come back at once.
        delay = 0.0 if not failures and abandoned_only else self._retry_delay(held)
        log.warning(
            "blob_event_retry", queue=target.queue, message_id=held.id,
            dequeue_count=held.dequeue_count, failures=failures, waiting=waiting,
            retry_in=round(delay, 3),
        )  # fmt: skip
        await self._release(held, delay)

    def _count_outcomes(
        self,
        events: list[BlobEvent],
        hits: list[list[int]],
        unmatched: list[str],
        outcome: Mapping[tuple[int, str], str],
    ) -> None:
        """Count a finished message: ignored events by reason, and each answer."""
        for kind in unmatched:
            self._count("ignored", 1, kind)
        for event, matched in zip(events, hits, strict=True):
            results = {outcome.get((n, event.name)) for n in matched}
            if matched and results <= {GONE, FOLDER}:
                self._count("ignored", 1, GONE if GONE in results else FOLDER)
        for result in outcome.values():
            self._count(result, 1, "")

    def _retry_delay(self, held: _Held) -> float:
        return backoff_delay(
            held.dequeue_count, RELEASE_BACKOFF_CAP, initial=self._settings.retry_initial
        )

    # ── message operations (serialized per message, always with the latest receipt) ──

    async def _op(self, held: _Held, call: Callable[[], Awaitable[Any]]) -> Any:
        """Run an update/delete; None when the message was lost or is already gone."""
        try:
            with map_azure_errors(self._where, self._t.scrub, not_found="message not found"):
                return await call()
        except WatcherdError as exc:
            if _lost(exc.__cause__):
                held.lost = True
                return None
            raise

    async def _delete(self, held: _Held) -> None:
        async with held.lock:
            if held.done or held.lost:
                return
            held.done = True
            try:
                await self._op(held, lambda: self._client.delete_message(held.id, held.receipt))
            except WatcherdError as exc:  # it comes back, and is found already handled
                log.warning("blob_event_delete_failed", queue=self._t.queue, error=str(exc))
                return
            if not held.lost:
                self._count("deleted", 1, "")

    async def _release(self, held: _Held, delay: float) -> None:
        """Make the message visible again after `delay` seconds (it then comes back)."""
        async with held.lock:
            if held.done or held.lost:
                return
            held.done = True
            seconds = max(0, round(delay))  # ≥ 10 s in production; 0 releases at once
            try:
                await self._op(
                    held,
                    lambda: self._client.update_message(
                        held.id, pop_receipt=held.receipt, visibility_timeout=seconds
                    ),
                )
            except WatcherdError as exc:  # it comes back when its visibility runs out
                log.warning("blob_event_release_failed", queue=self._t.queue, error=str(exc))
                return
            self._count("released", 1, "")

    async def _renew_loop(self) -> None:
        vis = self._settings.visibility
        while True:
            live = [h for h in self._held.values() if not (h.done or h.lost)]
            if not live:
                self._nonempty.clear()
                await self._nonempty.wait()
                continue
            now = self._clock.monotonic()
            due = min(h.renew_at for h in live)
            if due > now:
                await self._clock.sleep(due - now)
                continue
            await asyncio.gather(*(self._renew(h, now, vis) for h in live if h.renew_at <= now))

    async def _renew(self, held: _Held, now: float, vis: int) -> None:
        async with held.lock:
            if held.done or held.lost:
                return
            try:
                new = await self._op(
                    held,
                    lambda: self._client.update_message(
                        held.id, pop_receipt=held.receipt, visibility_timeout=vis
                    ),
                )
            except WatcherdError as exc:  # try again soon, before the visibility runs out
                log.warning("blob_event_renew_failed", queue=self._t.queue, error=str(exc))
                held.renew_at = now + max(1.0, vis / 8)
                return
            if new is None:
                log.info("blob_event_lost", queue=self._t.queue, message_id=held.id)
                return
            held.receipt = new.pop_receipt
            held.renew_at = now + vis / 2

    # ── poison ──

    async def _poison(self, held: _Held, reason: str) -> None:
        reason = self._t.scrub(reason)
        try:
            await self._send_poison(_poison_body(reason, held.content))
        except WatcherdError as exc:
            log.error("blob_event_poison_failed", queue=self._t.poison, error=str(exc))
            await self._release(held, self._retry_delay(held))
            return
        log.warning(
            "blob_event_poisoned", queue=self._t.queue, poison_queue=self._t.poison,
            message_id=held.id, dequeue_count=held.dequeue_count, reason=reason[:300],
        )  # fmt: skip
        self._count("poisoned", 1, "")
        await self._delete(held)

    async def _send_poison(self, body: str) -> None:
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        if self._poison_client is None:
            self._poison_client = self._open(self._t.poison)
        client = self._poison_client
        where = f"poison queue {self._t.poison!r}"
        with map_azure_errors(where, self._t.scrub, not_found="queue not found"):
            try:
                await client.send_message(body)
                return
            except ResourceNotFoundError:
                pass
            with contextlib.suppress(ResourceExistsError):
                await client.create_queue()
            log.info("blob_poison_queue_created", queue=self._t.poison)
            await client.send_message(body)
