"""Local directory trigger: one-pass rescans on a fixed cadence, plus inotify on that directory.

Only regular files directly in `root / path_on_datastore` count (directories never entered;
symlinks per `follow_symlinks`, see localfs). A file's version is "size:mtime_ns:inode". When a
version becomes eligible is `localstate`'s business (SPEC §4 write completion).

One consumer on the event loop takes, in turn: inotify event batches, queued fires as the run
queue drains, settle deadlines, and rescan chunks. A rescan is a sequence of short jobs on the
shared file system pool (`fspool`), one chunk of the listing each, with the next chunk listed
while this one is handled; so an event that arrives during a rescan of a million files waits
for one chunk, never for the whole rescan, and no single step stalls the loop. While a rescan
runs, the snapshot's base is frozen for it (changes go to an overlay).

`max_pending` is a hard cap: a commit never queues more runs than the schedule has room for.
What did not fit waits (`deferred`), is not in the snapshot, and the rescan pauses where it is.

Rescans run at start, on the poll cadence, and whenever events may have been lost (inotify
overflow, our event buffer full, the directory deleted, moved or unmounted). The cadence of
each schedule has its own phase within the interval (from its id), so many schedules with the
same interval do not all rescan at once.

(~440 lines: the one consumer loop and the steps it takes share the poller's state; what is
committed, and how, is in localchanges.)
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Awaitable, Callable
from datetime import timedelta

import structlog

from watcherd.core.errors import StateError
from watcherd.core.matching import NameMatcher
from watcherd.core.models import DatastoreTrigger, LocalDatastore, Schedule
from watcherd.core.snapshot import baseline_key, trim_heap
from watcherd.engine.clock import Clock
from watcherd.engine.metrics import Metrics
from watcherd.engine.ports import ChangeSink, PollHealth
from watcherd.engine.retry import backoff_delay
from watcherd.pollers.fspool import off_loop
from watcherd.pollers.lister import HelperFailed
from watcherd.pollers.localchanges import BASELINE_MARKER, Changes, show
from watcherd.pollers.localfs import DirChanged, DirScan, ScanChunk, local_fingerprint
from watcherd.pollers.localstate import Batch, FailureLog
from watcherd.pollers.localwatch import DirEvents, EventKind

__all__ = ["BASELINE_MARKER", "DEFAULT_SETTLE", "LocalPoller"]

log = structlog.get_logger(__name__)

DEFAULT_SETTLE = timedelta(seconds=2)
_MAX_RAW = 10_000  # distinct names buffered between two event batches; more = overflow
_COMPACT_MIN = 10_000  # a loaded snapshot this large is compacted (see core/snapshot.py)


class LocalPoller:
    """Turns file changes directly in one local directory into committed `FileChange`s.

    Args:
        schedule: a schedule whose trigger is a `DatastoreTrigger` on `datastore`.
        datastore: the local datastore (its `root` and `follow_symlinks`).
        sink: where the snapshot is loaded from and changes are committed.
        health: told the outcome of every full poll attempt.
        clock: every wait goes through it.
        max_pending: never more than this many Queued runs of the schedule: what does not fit
            waits, out of the snapshot, and the rescan pauses until the queue drains.
        metrics: optional Prometheus metrics.
        on_event: called on the loop with the name (relative to the root) of every inotify
            event for a file in the directory, eligible yet or not (watch mode's debounce).
        phase: seconds into each interval at which this schedule's rescans fall (None: derived
            from the schedule id, which spreads many schedules over the interval).
    """

    def __init__(
        self,
        *,
        schedule: Schedule,
        datastore: LocalDatastore,
        sink: ChangeSink,
        health: PollHealth,
        clock: Clock,
        max_pending: int = 10000,
        metrics: Metrics | None = None,
        on_event: Callable[[bytes], None] | None = None,
        phase: float | None = None,
    ) -> None:
        trig = schedule.trigger
        if not isinstance(trig, DatastoreTrigger):
            raise TypeError(f"schedule {schedule.name!r} has no datastore trigger")
        self._schedule, self._sink, self._health, self._clock = schedule, sink, health, clock
        self._metrics, self._on_event = metrics, on_event
        rel = trig.path_on_datastore.strip("/")
        self.path = os.fsencode(os.path.join(datastore.root, rel) if rel else datastore.root)
        self._prefix = os.fsencode(rel) + b"/" if rel else b""
        within = datastore.follow_symlinks == "within_root"
        self._root = os.fsencode(datastore.root) if within else None
        self._match = match = NameMatcher(trig.pattern, trig.ignore_globs)
        root = os.fsdecode(os.path.abspath(datastore.root))
        self._key = baseline_key("local", root, rel, *trig.pattern, "\0", *trig.ignore_globs)
        self._interval = max(trig.polling_interval.total_seconds(), 0.001)
        if phase is None:
            digest = hashlib.sha256(schedule.id.encode("utf-8", "surrogateescape")).digest()
            phase = int.from_bytes(digest[:8], "big") / 2**64 * self._interval
        self._phase = phase % self._interval
        settle = (trig.settle if trig.settle is not None else DEFAULT_SETTLE).total_seconds()
        self._initial = trig.initial
        self._changes = changes = Changes(
            schedule_id=schedule.id,
            key=self._key,
            path=self.path,
            prefix=self._prefix,
            root=self._root,
            match=match,
            sink=sink,
            clock=clock,
            settle=settle,
            max_pending=max_pending,
            on_full=self._pause,
            on_committed=self._commit_ok,
        )
        self._snap, self._track = changes.snap, changes.track
        self._baseline = True  # no complete baseline committed yet
        # until it is, an unknown name no event completed was there before: record it only
        changes.silent = trig.initial == "skip"
        self._raw: dict[bytes, EventKind] = {}  # event batch being gathered: name -> kind
        self._rescan = False
        self._wake = asyncio.Event()
        events = trig.events if isinstance(trig.events, bool) else None
        self._events = DirEvents(self.path, self._post, events)
        # the rescan in progress
        self._scan: DirScan | None = None
        self._job: asyncio.Future[ScanChunk] | None = None
        self._opening = False  # its first job (which checks the directory) is not back yet
        self._gone: list[bytes] = []
        self._scan_t0 = 0.0
        self._scan_due = False  # started by the cadence (not a forced rescan)
        self._scan_paused = False
        self._next_poll = 0.0
        self._anchor = 0.0
        self._poll_log, self._commit_log = FailureLog("poll"), FailureLog("commit")
        self._retry_at = 0.0  # after a failed commit nothing commits before this
        self._drain: asyncio.Future[None] | None = None  # waiting for the run queue to drain
        self._last_was_events = False
        self._grown = 0  # snapshot entries loaded and not compacted yet

    @property
    def baseline_key(self) -> str:
        return self._key

    async def run(self) -> None:
        """Poll and watch until cancelled; the inotify watch is removed on the way out."""
        with structlog.contextvars.bound_contextvars(schedule=self._schedule.name):
            try:
                await self._load()
                await self._serve()
            finally:
                self._end_scan()
                self._events.stop()
                if self._drain is not None:
                    self._drain.cancel()

    # ── the loop: one consumer for events, drained fires, settle deadlines, rescans ──

    async def _load(self) -> None:
        failures = 0
        while True:
            try:
                loaded = await self._sink.load_snapshot(self._schedule.id, self._key)
                marker = await self._sink.load_marker(self._schedule.id, self._key)
                break
            except Exception as exc:
                failures += 1
                if failures == 1:
                    log.warning("snapshot_load_failed", error=str(exc), exc_info=True)
                self._report(ok=False, duration=0.0, error=f"snapshot load failed: {exc}")
                await self._clock.sleep(self._backoff(failures))
        if loaded is None:
            return
        self._baseline = marker == BASELINE_MARKER  # its marker: a skip-baseline interrupted
        self._changes.silent = self._baseline and self._initial == "skip"
        prefix, cut, fps = self._prefix, len(self._prefix), self._snap.fps
        for name, version in loaded.items():
            if name.startswith(prefix) and b"/" not in name[cut:]:
                fps[name[cut:]] = local_fingerprint(version)
        del loaded
        self._grown = len(fps)

    async def _serve(self) -> None:
        clock = self._clock
        start = clock.monotonic()
        self._anchor, self._next_poll = start + self._phase, start
        changes, track = self._changes, self._track
        while True:
            if self._drain is not None and self._drain.done():
                self._resumed()
            if self._scan is None and self._grown >= _COMPACT_MIN:
                await self._compact()
            now = clock.monotonic()
            chunk_ready = self._job is not None and self._job.done()
            deadline = track.next_deadline()
            if now < self._retry_at:  # a commit failed: back off
                await self._sleep(self._retry_at)
            elif self._raw and not (chunk_ready and self._last_was_events):
                self._last_was_events = True
                raw, self._raw = self._raw, {}
                await self._guarded(changes.events(raw))
                continue
            elif track.deferred and self._drain is None:
                await self._guarded(changes.deferred())
            elif deadline is not None and deadline <= now:
                await self._guarded(changes.settle())
            elif chunk_ready:
                await self._scan_step()
            elif self._scan is not None and self._job is None and self._room() > 0:
                self._submit_chunk()
            elif self._scan is None and (self._rescan or changes.rescan or now >= self._next_poll):
                self._start_scan()
            elif self._job is not None:
                # a rescan's job is in the pool: wait for it (or an event), not for a time
                self._wake.clear()  # set by the job's completion, or by an event
                await self._wake.wait()
            else:
                until = self._next_poll if self._scan is None else float("inf")
                await self._sleep(min(until, deadline) if deadline is not None else until)
            self._last_was_events = False

    async def _sleep(self, until: float) -> None:
        self._wake.clear()
        clock = self._clock
        delay = max(0.0, until - clock.monotonic())
        if delay == float("inf"):
            delay = 86400.0
        await clock.sleep_until(clock.now() + timedelta(seconds=delay), wake=self._wake)

    async def _guarded(self, step: Awaitable[None]) -> None:
        try:
            await step
        except Exception as exc:
            self._commit_failed(exc)

    def _commit_failed(self, exc: Exception) -> None:
        """Back off, and rescan to re-find what was not committed (the snapshot did not
        advance for it)."""
        now = self._clock.monotonic()
        unexpected = not isinstance(exc, StateError | OSError)
        n = self._commit_log.failed(now, str(exc), traceback=unexpected)
        self._retry_at = now + self._backoff(n)
        self._rescan = True

    def _commit_ok(self) -> None:
        self._commit_log.recovered(self._clock.monotonic())

    def _backoff(self, failures: int) -> float:
        return backoff_delay(failures, timedelta(seconds=self._interval))

    # ── max_pending ──────────────────────────────────────────────────────────

    def _room(self) -> int:
        """How many more versions the rescan may find now (0: it pauses where it is)."""
        queued = self._sink.pending(self._schedule.id)
        limit = self._changes.max_pending
        if queued >= limit:
            self._pause(queued)
            return 0
        track = self._track
        return limit - queued - len(track.pending) - len(track.deferred)

    def _pause(self, queued: int) -> None:
        if self._drain is not None:
            return
        self._scan_paused = True
        limit = self._changes.max_pending
        log.warning("poll_paused", pending=queued, max_pending=limit)
        low = limit - max(1, limit // 10)
        self._drain = asyncio.ensure_future(self._sink.wait_below(self._schedule.id, low))
        self._drain.add_done_callback(lambda _: self._wake.set())

    def _resumed(self) -> None:
        drain, self._drain = self._drain, None
        if drain is not None and not drain.cancelled() and drain.exception() is not None:
            log.warning("wait_below_failed", error=str(drain.exception()))
        log.info("poll_resumed")

    # ── rescans ──────────────────────────────────────────────────────────────

    def _start_scan(self) -> None:
        """Freeze the snapshot and list the directory in the pool; its first job checks the
        directory too (never awaited here: an event for this directory must not wait behind
        other directories' jobs)."""
        changes = self._changes
        self._scan_due = not (self._rescan or changes.rescan) or self._poll_log.count > 0
        self._rescan = changes.rescan = False
        self._scan_t0 = self._clock.monotonic()
        self._scan_paused = False
        self._opening = True
        self._gone = []
        base = self._snap.freeze()
        self._scan = DirScan(
            self.path,
            self._match,
            base,
            root=self._root,
            watched=self._events.watching(),
            quiet=self._changes.silent,
            first=self._baseline,
        )

    async def _opened(self, scan: DirScan) -> None:
        """After the first job: the directory is checked; watch it, take the baseline."""
        self._opening = False
        changes = self._changes
        assert scan.ident is not None
        changes.ident = scan.ident
        await self._events.ensure(scan.ident)
        if self._baseline and self._initial == "fire":
            await changes.commit(Batch(), force=True)  # the (empty) baseline
        changes.touched.clear()

    def _submit_chunk(self) -> None:
        assert self._scan is not None
        self._job = off_loop(self._scan.next_chunk)
        self._job.add_done_callback(lambda _: self._wake.set())

    async def _scan_step(self) -> None:
        job, self._job = self._job, None
        assert job is not None and self._scan is not None
        try:
            chunk = job.result()
            if self._opening:
                await self._opened(self._scan)
            if not chunk.done and self._room() > 0:
                self._submit_chunk()  # listed while this one is committed (a store's I/O)
            now = self._clock.monotonic()
            batch = Batch()
            changes = self._changes
            self._gone += chunk.gone
            if changes.silent:
                changes.take_silently(chunk, now, batch)
            else:
                changes.take(chunk, now, batch)
            if chunk.done:
                await changes.deletions(self._scan, self._gone, now, batch)
                await changes.writers_done(now, self._interval, batch)
            marker = ("" if chunk.done else None) if changes.silent else None
            await changes.commit(batch, marker=marker, force=chunk.done and changes.silent)
        except Exception as exc:
            if not isinstance(exc, OSError | DirChanged):
                self._commit_failed(exc)
            self._end_scan()
            self._poll_failed(exc)
            return
        if chunk.done:
            self._finish_scan()

    def _finish_scan(self) -> None:
        self._end_scan()
        duration = self._clock.monotonic() - self._scan_t0
        if self._baseline:
            self._baseline = False
            log.info("baseline_taken", files=len(self._snap), initial=self._initial)
            off_loop(trim_heap).add_done_callback(lambda f: f.cancelled() or f.exception())
        self._changes.silent = False
        self._poll_log.recovered(self._clock.monotonic(), path=show(self.path))
        if duration > self._interval and not self._scan_paused:
            log.warning("poll_overrun", duration=round(duration, 3), interval=self._interval)
            if self._metrics is not None:
                self._metrics.poll_overruns.labels(schedule=self._schedule.name).inc()
        t = self._clock.monotonic()
        if self._scan_due:
            k = (t - self._anchor) // self._interval + 1
            self._next_poll = self._anchor + k * self._interval
        self._report(ok=True, duration=duration, error=None)

    def _end_scan(self) -> None:
        """Stop the rescan in progress (if any) and thaw the snapshot."""
        scan, job = self._scan, self._job
        self._scan, self._job, self._gone = None, None, []
        self._snap.thaw()
        if scan is None:
            return

        def close(job: asyncio.Future[ScanChunk] | None) -> None:
            scan.close()
            if job is not None and not job.cancelled():
                job.exception()  # retrieved: its result is dropped

        if job is None or job.done():
            close(job)
        else:  # once the job in flight returns: never under its feet
            job.add_done_callback(close)

    def _poll_failed(self, exc: Exception) -> None:
        now = self._clock.monotonic()
        error = str(exc) if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
        traceback = not isinstance(exc, OSError)
        n = self._poll_log.failed(now, error, traceback=traceback, path=show(self.path))
        if isinstance(exc, OSError) and not isinstance(exc, HelperFailed):
            self._events.stop()  # its directory may not be the one at the path any more
        if self._metrics is not None:
            self._metrics.poll_errors.labels(schedule=self._schedule.name).inc()
        self._next_poll = now + self._backoff(n)
        self._report(ok=False, duration=now - self._scan_t0, error=error)

    def _report(self, *, ok: bool, duration: float, error: str | None) -> None:
        files = len(self._snap)
        self._health.poll_finished(
            self._schedule.id, ok=ok, duration=duration, files=files, error=error
        )
        if self._metrics is not None and ok:
            name = self._schedule.name
            self._metrics.poll_duration.labels(schedule=name).observe(duration)
            self._metrics.poll_files.labels(schedule=name).set(files)

    async def _compact(self) -> None:
        # After a big load only: a baseline committed chunk by chunk leaves no garbage
        # among its entries (measured: 125 B/file at 1M either way), and a compaction holds
        # two copies at once. Not while a rescan reads the snapshot.
        await off_loop(self._snap.compact)
        self._grown = 0

    # ── events ───────────────────────────────────────────────────────────────

    def _post(self, kind: EventKind, name: bytes) -> None:
        """Called on the event loop for each inotify event (via call_soon_threadsafe)."""
        if kind == "rescan" or kind == "overflow":
            if kind == "overflow":
                log.warning("events_overflow", path=show(self.path))
            self._track.events_lost()
            raw = self._raw  # gathered before the loss: whether a close follows is lost too
            for name, was in raw.items():
                if was == "writing" or was == "created":
                    raw[name] = "check"
            self._rescan = True
            self._wake.set()
            return
        raw = self._raw
        if kind == "attrib":
            if raw.get(name, "check") == "check":  # never weakens closed/writing/created
                raw[name] = "check"
        else:
            raw[name] = kind
        if len(raw) > _MAX_RAW:
            raw.clear()
            self._post("overflow", b"")
        if self._on_event is not None:
            self._on_event(self._prefix + name)
        self._wake.set()
