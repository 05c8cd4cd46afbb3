"""Watches the blobs directly under an Azure Blob prefix: a paged listing, and blob events.

One `BlobPoller` serves one datastore schedule (SPEC §4). At `polling_interval` it lists the
prefix with `walk_blobs(delimiter="/")`, so sub-prefixes (subdirectories) are never entered,
and compares each blob's ETag with the persisted snapshot: a new or changed ETag is one
`FileChange`; deletions only leave the snapshot. The listing is committed page by page with
its continuation marker, and resumes there after a crash (`blob_listing`).

With `events` set on the trigger, the poller also subscribes to its queue's `QueueHub`
(`blob_queue`), which hands it the blob names of Event Grid messages (`deliver`). Only the
name is taken from an event: the poller reads the blob's properties from storage and commits
a new version as a listing would; the listing stays as the safety net. Listing pages and event
batches take turns under one lock, so each sees what the other committed and a version never
goes backwards. The Azure SDK is imported lazily: a daemon without blob datastores never loads
it. (~590 lines, one class on purpose: the listing and the events share the snapshot, the
lock, the baseline state and the client; naming, credentials and errors live in
`blob_storage`, the marker and page ranges in `blob_listing`.)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from watcherd.core.errors import PollRejected, PollUnavailable, WatcherdError
from watcherd.core.matching import NameMatcher
from watcherd.core.models import BlobDatastore, BlobEvents, DatastoreTrigger, Schedule
from watcherd.core.snapshot import Snapshot, trim_heap
from watcherd.core.snapshot import baseline_key as snapshot_key
from watcherd.engine.clock import Clock
from watcherd.engine.metrics import Metrics
from watcherd.engine.ports import ChangeSink, FileChange, PollHealth
from watcherd.engine.retry import backoff_delay
from watcherd.pollers.blob_events import WatchedDirectory, keep_earliest
from watcherd.pollers.blob_listing import (
    ListingMarker,
    Order,
    listing_order,
    needs_order,
    range_deletes,
)
from watcherd.pollers.blob_queue import (
    FOLDER,
    GONE,
    KNOWN,
    RUN,
    Abandoned,
    NotReady,
    QueueHub,
)
from watcherd.pollers.blob_storage import (
    CLIENT_OPTIONS,
    account_name,
    blob_prefix,
    blob_url,
    container_url,
    datastore_credential,
    datastore_redactor,
    is_folder,
    map_azure_errors,
    queue_target,
    strip_secrets,
)

if TYPE_CHECKING:
    from azure.storage.blob.aio import ContainerClient

__all__ = ["BlobPoller", "baseline_key", "blob_prefix", "blob_url", "container_url"]

log = structlog.get_logger(__name__)

_BACKOFF_CAP = timedelta(minutes=5)
EVENT_WAIT = 30.0  # seconds events wait for a baseline or for backpressure, then come back
_PROPERTY_READS = 16  # concurrent get_blob_properties of one event batch
_MAX_PAGE = 5000  # the service's maximum page size

Listed = tuple[bytes, str, datetime | None]  # (name, etag, last_modified)


def baseline_key(datastore: BlobDatastore, trigger: DatastoreTrigger) -> str:
    """Hash of what decides which blobs are watched: a change means a new baseline."""
    return snapshot_key(
        "azure_blob",
        container_url(datastore),
        blob_prefix(trigger.path_on_datastore),
        json.dumps(list(trigger.pattern)),
        json.dumps(list(trigger.ignore_globs)),
    )


@dataclass(slots=True)
class _Delivery:
    """Blob names from the queue consumer, and where the answer goes."""

    names: Mapping[str, datetime | None]
    answer: asyncio.Future[dict[str, str | Exception]]


class BlobPoller:
    """Lists one datastore schedule's blob prefix on a fixed cadence, and takes its blob
    events, until cancelled.

    Args:
        hub: the daemon's QueueHub, shared by every blob poller (one consumer per queue).
            None with `events` set: a hub of this poller alone, right only while no other
            schedule reads the same queue.
    """

    def __init__(
        self,
        *,
        schedule: Schedule,
        datastore: BlobDatastore,
        sink: ChangeSink,
        health: PollHealth,
        clock: Clock,
        max_pending: int = 10000,
        metrics: Metrics | None = None,
        hub: QueueHub | None = None,
    ) -> None:
        if not isinstance(schedule.trigger, DatastoreTrigger):
            raise TypeError(f"schedule {schedule.name!r} has no datastore trigger")
        self._schedule = schedule
        self._trigger: DatastoreTrigger = schedule.trigger
        self._datastore = datastore
        self._sink, self._health, self._clock = sink, health, clock
        self._max_pending = max_pending
        self._metrics = metrics
        self._hub = hub
        events = self._trigger.events
        self._events = events if isinstance(events, BlobEvents) else None
        self._prefix = blob_prefix(self._trigger.path_on_datastore)
        self._key = baseline_key(datastore, self._trigger)
        self._match = NameMatcher(self._trigger.pattern, self._trigger.ignore_globs)
        self._scrub = datastore_redactor(datastore)
        self._interval = max(self._trigger.polling_interval.total_seconds(), 0.001)
        self._page_size = max(1, min(self._trigger.list_page_size, _MAX_PAGE))
        self._where = f"container {datastore.container!r} prefix {self._prefix!r}"
        self._snapshot: Snapshot | None = None  # None: no baseline committed yet
        self._loaded = False
        self._resume: ListingMarker | None = None  # where the next listing starts
        self._marker_stored = False  # a marker is persisted and must be cleared at the end
        # Names this pass deleted as missing from a page's name range, with their fingerprint:
        # one a later page lists after all (the service orders names otherwise than bytes do:
        # Azurite by UTF-16 code units) is put back, not run as new.
        self._range_gone: dict[bytes, int] = {}
        self._order: Order | None = None  # the names' key in listing order, where bytes differ
        self._lock = asyncio.Lock()  # listing pages and event batches take turns
        self._ready = asyncio.Event()  # the baseline is complete: events may be handled
        self._inbox: asyncio.Queue[_Delivery] = asyncio.Queue()
        self._closed = False
        self._client: ContainerClient | None = None
        self._credential: Any = None
        self._watch = WatchedDirectory(
            account=account_name(datastore),
            container=datastore.container,
            prefix=self._prefix,
            matches=self._match,
        )
        self._log = log.bind(
            schedule=schedule.name,
            datastore=datastore.name,
            container=datastore.container,
            prefix=self._prefix,
        )

    async def run(self) -> None:
        """Poll (and take events) until cancelled; failures are logged, reported and retried
        with backoff."""
        try:
            if self._events is None:
                await self._poll_loop()
                return
            hub = self._hub or QueueHub(self._clock, self._metrics)
            target = queue_target(self._datastore, self._events)
            async with hub.subscribe(target, self) as serve, asyncio.TaskGroup() as tg:
                tg.create_task(serve())
                tg.create_task(self._event_worker())
                await self._poll_loop()
        finally:
            self._closed = True
            while not self._inbox.empty():
                _settle(self._inbox.get_nowait(), Abandoned("the schedule stopped"))
            await self.aclose()

    async def _poll_loop(self) -> None:
        failures = 0
        while True:
            await self._respect_backpressure()
            started = self._clock.now()
            retry_in = await self._attempt(failures + 1)
            if retry_in is None:
                if failures:
                    self._log.info("poll_recovered", failures=failures)
                failures = 0
                await self._wait_next(started)
            else:
                failures += 1
                await self._clock.sleep(retry_in)

    # ── one listing ──

    async def _attempt(self, attempt: int) -> float | None:
        """One poll; None on success, else the seconds to back off before the next try."""
        t0 = self._clock.monotonic()
        try:
            files, _ = await self.poll_once()
        except WatcherdError as exc:
            error = str(exc)
        except Exception as exc:  # a bug or a sink failure must not stop this schedule
            error = self._scrub(f"{type(exc).__name__}: {exc}")
        else:
            duration = self._clock.monotonic() - t0
            self._health.poll_finished(
                self._schedule.id, ok=True, duration=duration, files=files, error=None
            )
            if self._metrics is not None:
                self._metrics.poll_duration.labels(self._schedule.name).observe(duration)
                self._metrics.poll_files.labels(self._schedule.name).set(files)
            return None
        duration = self._clock.monotonic() - t0
        delay = self._backoff(attempt)
        self._log.warning("poll_failed", error=error, attempt=attempt, retry_in=round(delay, 3))
        self._health.poll_finished(
            self._schedule.id, ok=False, duration=duration, files=0, error=error
        )
        if self._metrics is not None:
            self._metrics.poll_errors.labels(self._schedule.name).inc()
        return delay

    async def poll_once(self) -> tuple[int, int]:
        """List (from the stored marker, if a listing was interrupted), diff and commit page
        by page. Returns (matching blobs listed, changes committed for a run).

        Raises:
            PollUnavailable: storage unreachable, timed out or answered 408/429/5xx.
            PollRejected: container missing, access denied, or invalid settings.
        """
        if not self._loaded:
            versions = await self._sink.load_snapshot(self._schedule.id, self._key)
            if versions is not None:
                self._snapshot = Snapshot.from_versions(versions)
                del versions
                self._snapshot.compact()
                stored = await self._sink.load_marker(self._schedule.id, self._key)
                self._resume = ListingMarker.decode(stored)
                self._marker_stored = bool(stored)
                if self._resume is None or not self._resume.baseline:
                    self._ready.set()
            self._loaded = True
        baseline = self._snapshot is None or (self._resume is not None and self._resume.baseline)
        seen, fired = await self._list(baseline)
        # The pages are garbage now: give their memory back, so that what stays is the
        # snapshot (a page of 5,000 blobs takes ~10 MB of SDK objects while it is read).
        if self._snapshot is not None:
            if baseline:
                self._snapshot.compact()  # also trims the heap
                self._log.info("baseline_taken", files=len(self._snapshot), fire=fired)
                self._ready.set()
            else:
                trim_heap()
        return seen, fired

    async def _list(self, baseline: bool) -> tuple[int, int]:
        """One pass over the pages, from `self._resume` if set; (listed, fired)."""
        client = self._open_client()
        resume = self._resume
        fire_new = not baseline or self._trigger.initial == "fire"
        names = list(self._snapshot) if self._snapshot is not None else []
        # Sorted (and scanned for names byte order would misplace) in a thread: at a million
        # names that is most of a second the loop must not wait for.
        known: list[bytes] = []
        self._order = None
        if names:
            known, self._order = await asyncio.to_thread(_listing_sorted, names)
        after = resume.after if resume is not None else None
        self._range_gone = {}
        # One pager per page: a pager keeps its last page (the response and every item)
        # until the next one has arrived, so one pager for the whole listing holds two pages
        # at once and the heap keeps room for both (bench/blob_events: RSS grew 3.2 KB a blob
        # from 5,000 to 10,000 blobs with one pager, 48 B with one per page).
        next_token = resume.token if resume is not None else None
        seen = fired = pages_done = 0
        while True:
            if fire_new:
                await self._respect_backpressure()
            async with self._lock:
                try:
                    pages = self._pages(client, next_token)
                    items, token = await _next_page(pages, self._where, self._scrub)
                    del pages
                except PollRejected as exc:
                    if resume is None or pages_done:
                        raise
                    # A stale or foreign continuation marker: this listing starts over.
                    self._log.warning("listing_resume_rejected", error=str(exc))
                    resume, after, next_token = None, None, None
                    continue
                listed, end = self._select(items)
                del items
                fired += await self._commit_page(
                    listed, known, after, end, token, baseline, fire_new
                )
                seen += len(listed)
                pages_done += 1
                after = end if end is not None else after
            if not token:
                return seen, fired
            next_token = token

    def _pages(self, client: ContainerClient, token: str | None) -> AsyncIterator[Any]:
        return client.walk_blobs(
            name_starts_with=self._prefix or None,
            delimiter="/",
            include=["metadata"],
            results_per_page=self._page_size,
        ).by_page(continuation_token=token)

    def _select(self, items: list[Any]) -> tuple[list[Listed], bytes | None]:
        """The page's matching blobs directly under the prefix, and its last name."""
        from azure.storage.blob import BlobProperties

        skip = len(self._prefix.encode("utf-8"))
        match = self._match
        out: list[Listed] = []
        end: bytes | None = None
        order = self._order
        for item in items:
            name: str = item.name
            raw = name.encode("utf-8")
            if end is None or (raw > end if order is None else order(raw) > order(end)):
                end = raw
            if not isinstance(item, BlobProperties):  # a BlobPrefix: a subdirectory
                continue
            # A directory marker: "dir/" (flat namespace tools) or hdi_isfolder (ADLS Gen2).
            if name.endswith("/") or is_folder(item.metadata) or not match(raw[skip:]):
                continue
            # etag, not last_modified: Last-Modified has one-second resolution, and two
            # uploads in the same second would look identical. Listings give it bare,
            # headers quoted: store it bare.
            out.append((raw, str(item.etag).strip('"'), item.last_modified))
        return out, end

    async def _commit_page(
        self,
        listed: list[Listed],
        known: list[bytes],
        after: bytes | None,
        end: bytes | None,
        token: str | None,
        baseline: bool,
        fire_new: bool,
    ) -> int:
        """Diff one page (its upserts, and the deletes of its name range) and commit it with
        the marker of the next page. Returns the changes committed for a run."""
        snap = self._snapshot
        upserts = [(n, v) for n, v, _ in listed if snap is None or snap.changed(n, v)]
        fire: list[FileChange] = []
        if fire_new and upserts:
            changed = dict(upserts)
            fire = [FileChange(n, v, m) for n, v, m in listed if changed.get(n) == v]
            if self._range_gone and snap is not None:  # put back as it was: not new
                gone, fp = self._range_gone, snap.fingerprint
                fire = [c for c in fire if gone.get(c.name) != fp(c.version)]
        deletes: list[bytes] = []
        # A page with no name (all filtered out, or none) but more to come bounds no range.
        if snap is not None and known and (end is not None or not token):
            deletes = range_deletes(
                known, after, end if token else None, {n for n, _, _ in listed}, snap, self._order
            )
            for name in deletes:
                fp_now = snap.get(name)
                if fp_now is not None:
                    self._range_gone[name] = fp_now
        resume = None
        marker: str | None = None
        if token:
            resume = ListingMarker(token, end if end is not None else after, baseline)
            marker = resume.encode()
        elif self._marker_stored:
            marker = ""  # the listing is complete: clear the stored marker
        if upserts or deletes or marker is not None or snap is None:
            await self._sink.commit(
                self._schedule.id, self._key, upserts, deletes, fire, marker=marker
            )
            self._marker_stored = bool(token)
        if snap is None:
            snap = self._snapshot = Snapshot()
        snap.apply(upserts, deletes)
        self._resume = resume
        for change in fire:
            path = change.name.decode("utf-8", "backslashreplace")
            self._log.info("file_changed", path=path, version=change.version, source="listing")
        return len(fire)

    # ── blob events (see blob_queue) ──

    @property
    def label(self) -> str:
        return self._schedule.name

    @property
    def watch(self) -> WatchedDirectory:
        return self._watch

    async def deliver(self, names: Mapping[str, datetime | None]) -> Mapping[str, str | Exception]:
        """Read each named blob's properties and commit its version if it is new.

        Returns RUN, KNOWN, GONE or FOLDER per name, or the error that name failed with.

        Raises:
            NotReady: no baseline within EVENT_WAIT, or paused by max_pending.
            Abandoned: this poller stopped.
        """
        if self._closed:
            raise Abandoned("the schedule stopped")
        answer: asyncio.Future[dict[str, str | Exception]] = (
            asyncio.get_running_loop().create_future()
        )
        self._inbox.put_nowait(_Delivery(names, answer))
        return await answer

    async def _event_worker(self) -> None:
        """Take deliveries in batches: one properties pass and one commit per batch."""
        while True:
            batch = [await self._inbox.get()]
            while not self._inbox.empty():
                batch.append(self._inbox.get_nowait())
            batch = [d for d in batch if not d.answer.done()]
            if not batch:
                continue
            try:
                results = await self._look_at(batch)
            except (NotReady, Abandoned) as exc:
                for d in batch:
                    _settle(d, exc)
            except asyncio.CancelledError:
                for d in batch:
                    _settle(d, Abandoned("the schedule stopped"))
                raise
            except Exception as exc:  # a bug: these messages come back, the poller goes on
                self._log.exception("blob_events_failed")
                for d in batch:
                    _settle(d, PollUnavailable(self._scrub(f"{type(exc).__name__}: {exc}")))
            else:
                for d in batch:
                    if not d.answer.done():
                        d.answer.set_result({n: results[n] for n in d.names})

    async def _look_at(self, batch: list[_Delivery]) -> dict[str, str | Exception]:
        names: dict[str, datetime | None] = {}
        for d in batch:
            for name, when in d.names.items():
                keep_earliest(names, name, when)
        if not self._ready.is_set():
            try:
                async with asyncio.timeout(EVENT_WAIT):
                    await self._ready.wait()
            except TimeoutError:
                raise NotReady("no baseline yet") from None
        if self._sink.pending(self._schedule.id) > self._max_pending:
            try:
                async with asyncio.timeout(EVENT_WAIT):
                    await self._sink.wait_below(self._schedule.id, self._max_pending)
            except TimeoutError:
                raise NotReady(f"paused: more than {self._max_pending} queued runs") from None
        client = self._open_client()
        async with self._lock:
            snap = self._snapshot
            assert snap is not None  # the baseline is complete
            results: dict[str, str | Exception] = {}
            changes: dict[str, FileChange] = {}
            for name, got in (await self._properties(client, list(names))).items():
                if isinstance(got, str | Exception):
                    results[name] = got
                elif snap.changed(got.name, got.version):
                    changes[name], results[name] = got, RUN
                else:
                    results[name] = KNOWN
            if changes:
                fire = list(changes.values())
                upserts = [(c.name, c.version) for c in fire]
                try:
                    await self._sink.commit(self._schedule.id, self._key, upserts, [], fire)
                except Exception as exc:  # the messages come back and try again
                    error = PollUnavailable(self._scrub(f"commit: {type(exc).__name__}: {exc}"))
                    return results | dict.fromkeys(changes, error)
                snap.apply(upserts)
                self._observe_events(changes, names)
        return results

    async def _properties(
        self, client: ContainerClient, names: list[str]
    ) -> dict[str, FileChange | str | Exception]:
        """Each blob's current version from storage: a FileChange, GONE, FOLDER or an error."""
        from azure.core.exceptions import ResourceNotFoundError

        gate = asyncio.Semaphore(_PROPERTY_READS)

        async def one(name: str) -> FileChange | str | Exception:
            async with gate:
                try:
                    with map_azure_errors(f"blob {name!r}", self._scrub):
                        try:
                            props = await client.get_blob_client(name).get_blob_properties()
                        except ResourceNotFoundError:
                            return GONE
                except WatcherdError as exc:
                    return exc
            if is_folder(props.metadata):
                return FOLDER
            return FileChange(name.encode("utf-8"), str(props.etag).strip('"'), props.last_modified)

        found = await asyncio.gather(*(one(n) for n in names))
        return dict(zip(names, found, strict=True))

    def _observe_events(
        self, changes: Mapping[str, FileChange], times: Mapping[str, datetime | None]
    ) -> None:
        now = self._clock.now()
        lag = None if self._metrics is None else self._metrics.blob_event_lag
        for name, change in changes.items():
            when = times.get(name)
            seconds = None if when is None else max(0.0, (now - when).total_seconds())
            self._log.info(
                "file_changed", path=name, version=change.version, source="event", lag=seconds
            )
            if lag is not None and seconds is not None:
                lag.labels(schedule=self._schedule.name).observe(seconds)

    # ── cadence and backpressure ──

    async def _wait_next(self, started: datetime) -> None:
        """Sleep to the next slot of the fixed cadence; a poll that overran skips slots."""
        interval = timedelta(seconds=self._interval)
        due = started + interval
        now = self._clock.now()
        if now > due:
            missed = int((now - started) / interval)
            due = started + interval * (missed + 1)
            self._log.warning(
                "poll_overrun",
                duration=round((now - started).total_seconds(), 3),
                interval=self._interval,
            )
            if self._metrics is not None:
                self._metrics.poll_overruns.labels(self._schedule.name).inc()
        await self._clock.sleep_until(due)

    async def _respect_backpressure(self) -> None:
        queued = self._sink.pending(self._schedule.id)
        if queued <= self._max_pending:
            return
        self._log.warning("poll_paused", pending=queued, max_pending=self._max_pending)
        await self._sink.wait_below(self._schedule.id, self._max_pending)
        self._log.info("poll_resumed")

    def _backoff(self, failures: int) -> float:
        cap = min(_BACKOFF_CAP, max(self._trigger.polling_interval, timedelta(seconds=30)))
        return backoff_delay(failures, cap)

    # ── the client ──

    def _open_client(self) -> ContainerClient:
        if self._client is not None:
            return self._client
        from azure.storage.blob.aio import ContainerClient

        ds = self._datastore
        with map_azure_errors(self._where, self._scrub):
            if ds.connection_string:
                client = ContainerClient.from_connection_string(
                    ds.connection_string, ds.container, **CLIENT_OPTIONS
                )
            else:
                credential, self._credential = datastore_credential(ds)
                client = ContainerClient(
                    strip_secrets(ds.account_url or ""),
                    ds.container,
                    credential=credential,
                    **CLIENT_OPTIONS,
                )
        self._client = client
        return client

    async def aclose(self) -> None:
        """Close the storage client and credential (run() does this when it ends)."""
        client, self._client = self._client, None
        credential, self._credential = self._credential, None
        for closable in (client, credential):
            if closable is None:
                continue
            try:
                await closable.close()
            except Exception as exc:  # closing must not mask why run() ended
                self._log.debug("blob_client_close_failed", error=self._scrub(str(exc)))


def _listing_sorted(names: list[bytes]) -> tuple[list[bytes], Order | None]:
    """The names in the listing's order, and the key that order needs (None: bytes)."""
    names.sort()
    if not needs_order(names):
        return names, None
    names.sort(key=listing_order)
    return names, listing_order


async def _next_page(
    pages: AsyncIterator[Any], where: str, scrub: Callable[[str], str]
) -> tuple[list[Any], str | None]:
    """One listing request: the page's items and the continuation token of the next."""
    with map_azure_errors(where, scrub):
        page = await anext(pages)
        items = [item async for item in page]
    return items, getattr(pages, "continuation_token", None) or None


def _settle(delivery: _Delivery, exc: BaseException) -> None:
    if not delivery.answer.done():
        delivery.answer.set_exception(exc)
