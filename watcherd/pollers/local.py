"""Local directory trigger: a one-level scan on a fixed cadence, plus inotify on that directory.

Only regular files directly in `root / path_on_datastore` count (symlinks to files are
followed, directories never entered). A file's version is "size:mtime_ns:inode".

Write completion (SPEC §4). A close-after-write or move-into event makes that one file
eligible at once: only that entry is stat'ed and diffed. A create/modify event without a close
marks the file in progress. Every change no event completed (events off, rescans, downtime,
a modify without its close yet) waits in `pending` until a stat at its own settle deadline,
waited on with the clock (not the next poll), shows the same size, mtime and inode as the
previous stat. A version that differs from an eligible one only by mtime, within `settle`
after that eligibility, is the same version (no second run).

Full rescans run at start, on the poll cadence, and whenever events may have been lost
(inotify overflow, our event buffer full, the directory deleted, moved or unmounted).
"""

from __future__ import annotations

import asyncio
import errno
import heapq
import os
import stat
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Literal

import structlog

from watcherd.core.matching import NameMatcher
from watcherd.core.models import DatastoreTrigger, LocalDatastore, Schedule
from watcherd.core.snapshot import FINGERPRINT_MASK, Snapshot, baseline_key
from watcherd.engine.clock import Clock
from watcherd.engine.metrics import Metrics
from watcherd.engine.ports import ChangeSink, FileChange, PollHealth
from watcherd.pollers.localfs import (
    DirEvents,
    DirScanner,
    EventKind,
    Obs,
    Scan,
    local_fingerprint,
    off_loop,
    stat_names,
    version_of,
)

__all__ = ["DEFAULT_SETTLE", "LocalPoller"]

log = structlog.get_logger(__name__)

DEFAULT_SETTLE = timedelta(seconds=2)
_MAX_RAW = 10_000  # distinct names buffered between two event batches; more = overflow
_STAT_IN_THREAD = 64  # stat batches larger than this leave the event loop
_COMPACT_MIN = 10_000  # new snapshot entries since the last compaction worth compacting for

How = Literal["closed", "writing", "check"]  # how a change was seen (see _observe)


def _show(name: bytes) -> str:
    return name.decode("utf-8", "backslashreplace")


class _Batch:
    """Changes to commit together: upserts (fires are a subset of them) and deletes."""

    __slots__ = ("deletes", "fires", "upserts")

    def __init__(self) -> None:
        self.upserts: dict[bytes, Obs] = {}
        self.fires: list[bytes] = []
        self.deletes: list[bytes] = []

    def __bool__(self) -> bool:
        return bool(self.upserts or self.deletes)


class LocalPoller:
    """Turns file changes directly in one local directory into committed `FileChange`s.

    Args:
        schedule: a schedule whose trigger is a `DatastoreTrigger` on `datastore`.
        datastore: the local datastore (its `root`).
        sink: where the snapshot is loaded from and changes are committed.
        health: told the outcome of every full poll attempt.
        clock: every wait goes through it.
        max_pending: above this many Queued runs of the schedule, stop diffing until the
            queue drains (the snapshot does not advance meanwhile).
        metrics: optional Prometheus metrics.
        on_event: called on the loop with the name (relative to the root) of every inotify
            event for a file in the directory, eligible yet or not (watch mode's debounce).
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
    ) -> None:
        trig = schedule.trigger
        if not isinstance(trig, DatastoreTrigger):
            raise TypeError(f"schedule {schedule.name!r} has no datastore trigger")
        self._schedule, self._sink, self._health, self._clock = schedule, sink, health, clock
        self._max_pending, self._metrics, self._on_event = max_pending, metrics, on_event
        rel = trig.path_on_datastore.strip("/")
        self.path = os.fsencode(os.path.join(datastore.root, rel) if rel else datastore.root)
        self._prefix = os.fsencode(rel) + b"/" if rel else b""
        self._match = NameMatcher(trig.pattern, trig.ignore_globs)
        root = os.fsdecode(os.path.abspath(datastore.root))
        self._key = baseline_key("local", root, rel, *trig.pattern, "\0", *trig.ignore_globs)
        self._interval = max(trig.polling_interval.total_seconds(), 0.001)
        self._settle = (trig.settle if trig.settle is not None else DEFAULT_SETTLE).total_seconds()
        self._initial = trig.initial
        self._snap = Snapshot(local_fingerprint)
        self._scanner = DirScanner(self.path, self._match, self._snap)
        self._baseline = True  # no baseline committed yet
        self._pending: dict[bytes, tuple[int, int, int, float]] = {}  # obs + settle deadline
        self._heap: list[tuple[float, bytes]] = []  # (deadline, name); stale entries skipped
        self._recent: dict[bytes, tuple[int, int, float]] = {}  # fired: size, ino, until
        self._raw: dict[bytes, How] = {}  # event batch being gathered: name -> how
        self._rescan = False
        self._wake = asyncio.Event()
        events = trig.events if isinstance(trig.events, bool) else None
        self._events = DirEvents(self.path, self._post, events)
        self._failures = 0
        self._grown = 0  # snapshot entries written since the last compaction

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
                self._events.stop()

    # ── the loop: one consumer for events, settle deadlines and polls ────────

    async def _load(self) -> None:
        failures = 0
        while True:
            try:
                loaded = await self._sink.load_snapshot(self._schedule.id, self._key)
                break
            except Exception as exc:
                failures += 1
                if failures == 1:
                    log.warning("snapshot_load_failed", error=str(exc), exc_info=True)
                self._report(ok=False, duration=0.0, error=f"snapshot load failed: {exc}")
                await self._clock.sleep(self._backoff(failures))
        if loaded is None:
            return
        self._baseline = False
        prefix, cut, fps = self._prefix, len(self._prefix), self._snap.fps
        for name, version in loaded.items():
            if name.startswith(prefix) and b"/" not in name[cut:]:
                fps[name[cut:]] = local_fingerprint(version)
        self._grown = len(fps)

    async def _serve(self) -> None:
        clock = self._clock
        start = next_poll = clock.monotonic()
        while True:
            if self._grown >= _COMPACT_MIN and self._grown * 4 >= len(self._snap):
                self._grown = 0  # after a big load or baseline (see snapshot.py)
                await asyncio.to_thread(self._snap.compact)
            now = clock.monotonic()
            if self._raw and not self._baseline:
                await self._guarded(self._on_events())
            elif self._heap and self._heap[0][0] <= now:
                await self._guarded(self._on_settle())
            elif self._rescan or now >= next_poll:
                self._rescan = False
                ok = await self._poll()
                t = clock.monotonic()
                if not ok:
                    next_poll = t + self._backoff(self._failures)
                elif now >= next_poll or self._failures:
                    next_poll = start + ((t - start) // self._interval + 1) * self._interval
                if ok:
                    self._failures = 0
            else:
                deadline = min(next_poll, self._heap[0][0]) if self._heap else next_poll
                self._wake.clear()
                delay = max(0.0, deadline - clock.monotonic())
                await clock.sleep_until(clock.now() + timedelta(seconds=delay), wake=self._wake)

    async def _guarded(self, step: Awaitable[None]) -> None:
        try:
            await step
        except Exception as exc:
            # Most likely the state DB. Forget the digest so the next scan re-finds what
            # was not committed, and rescan now (a failing rescan then backs off).
            log.warning("commit_failed", error=str(exc), exc_info=True)
            self._scanner.digest = None
            self._rescan = True

    def _backoff(self, failures: int) -> float:
        return float(min(self._interval, 2.0 ** max(0, failures - 1)))

    async def _backpressure(self) -> None:
        sid = self._schedule.id
        pending = self._sink.pending(sid)
        if pending <= self._max_pending:
            return
        log.warning("poll_paused", pending=pending, max_pending=self._max_pending)
        await self._sink.wait_below(sid, self._max_pending)
        log.info("poll_resumed")

    async def _poll(self) -> bool:
        started = self._clock.monotonic()
        try:
            await self._backpressure()
            started = self._clock.monotonic()
            info = await off_loop(os.stat, self.path)
            if not stat.S_ISDIR(info.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "Not a directory", os.fsdecode(self.path))
            if self._events.ensure((info.st_dev, info.st_ino)):
                self._scanner.digest = None  # changes while unwatched may have been missed
            scan = await off_loop(self._scanner.scan)
            await self._apply_scan(scan)
        except Exception as exc:
            self._poll_failed(exc, self._clock.monotonic() - started)
            return False
        duration = self._clock.monotonic() - started
        if self._failures:
            log.info("poll_recovered", failures=self._failures, path=_show(self.path))
        if duration > self._interval:
            log.warning("poll_overrun", duration=round(duration, 3), interval=self._interval)
            if self._metrics is not None:
                self._metrics.poll_overruns.labels(schedule=self._schedule.name).inc()
        self._report(ok=True, duration=duration, error=None)
        return True

    def _poll_failed(self, exc: Exception, duration: float) -> None:
        self._failures += 1
        error = str(exc) if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
        if self._failures == 1:
            log.warning(
                "poll_failed",
                error=error,
                path=_show(self.path),
                exc_info=not isinstance(exc, OSError),
            )
        if self._metrics is not None:
            self._metrics.poll_errors.labels(schedule=self._schedule.name).inc()
        self._report(ok=False, duration=duration, error=error)

    def _report(self, *, ok: bool, duration: float, error: str | None) -> None:
        files = len(self._snap)
        self._health.poll_finished(
            self._schedule.id, ok=ok, duration=duration, files=files, error=error
        )
        if self._metrics is not None and ok:
            name = self._schedule.name
            self._metrics.poll_duration.labels(schedule=name).observe(duration)
            self._metrics.poll_files.labels(schedule=name).set(files)

    # ── diffing ──────────────────────────────────────────────────────────────

    async def _apply_scan(self, scan: Scan) -> None:
        now = self._clock.monotonic()
        if self._recent:
            self._recent = {n: r for n, r in self._recent.items() if r[2] > now}
        if scan.unchanged:
            return
        batch = _Batch()
        silent = self._baseline and self._initial == "skip"
        for name, obs in scan.changed:
            if silent:
                batch.upserts[name] = obs
            else:
                self._observe(name, obs, "check", now, batch)
        for name in scan.deleted:
            self._observe(name, None, "check", now, batch)
        await self._commit(batch)
        self._scanner.digest = scan.digest

    async def _on_events(self) -> None:
        await self._backpressure()
        raw, self._raw = self._raw, {}
        names = [n for n in raw if self._match(n)]
        if not names:
            return
        found = await self._stat(names)
        now = self._clock.monotonic()
        batch = _Batch()
        for name in names:
            obs = found[name]
            if obs is not False:
                self._observe(name, obs, raw[name], now, batch)
        await self._commit(batch)

    async def _on_settle(self) -> None:
        await self._backpressure()
        now = self._clock.monotonic()
        due: list[bytes] = []
        while self._heap and self._heap[0][0] <= now:
            deadline, name = heapq.heappop(self._heap)
            entry = self._pending.get(name)
            if entry is not None and entry[3] == deadline:
                due.append(name)
        found = await self._stat(due)
        now = self._clock.monotonic()
        batch = _Batch()
        for name in due:
            obs, entry = found[name], self._pending.get(name)
            if entry is None:
                continue
            if obs is False:  # unreadable: let the next full scan decide
                del self._pending[name]
                self._scanner.digest = None
            elif obs is None or obs != entry[:3]:
                self._observe(name, obs, "writing", now, batch)
            else:  # unchanged for `settle`: eligible
                del self._pending[name]
                if self._snap.fps.get(name) != hash(obs) & FINGERPRINT_MASK:
                    batch.upserts[name] = obs
                    batch.fires.append(name)
        await self._commit(batch)

    async def _stat(self, names: list[bytes]) -> dict[bytes, Obs | None | Literal[False]]:
        if len(names) > _STAT_IN_THREAD:
            return await off_loop(stat_names, self.path, names)
        return stat_names(self.path, names)

    def _observe(self, name: bytes, obs: Obs | None, how: How, now: float, batch: _Batch) -> None:
        """Classify one observed state of an eligible name (SPEC §4 write completion)."""
        old = self._snap.fps.get(name)
        if obs is None:  # gone
            self._pending.pop(name, None)
            if old is not None:
                batch.deletes.append(name)
            return
        if hash(obs) & FINGERPRINT_MASK == old:
            self._pending.pop(name, None)
            return
        recent = self._recent.get(name)
        if recent is not None and recent[2] > now and recent[:2] == (obs[0], obs[2]):
            self._pending.pop(name, None)  # mtime-only change soon after eligibility
            batch.upserts[name] = obs
            return
        if how == "closed":
            self._pending.pop(name, None)
            batch.upserts[name] = obs
            batch.fires.append(name)
            return
        entry = self._pending.get(name)
        if entry is None or entry[:3] != obs:
            deadline = now + self._settle
            self._pending[name] = (*obs, deadline)
            heapq.heappush(self._heap, (deadline, name))

    async def _commit(self, batch: _Batch) -> None:
        if not batch and not self._baseline:
            return
        p = self._prefix
        upserts = [(p + n, version_of(o)) for n, o in batch.upserts.items()]
        fires = [
            FileChange(p + n, version_of(o), datetime.fromtimestamp(o[1] / 1e9, UTC))
            for n in batch.fires
            for o in (batch.upserts[n],)
        ]
        deletes = [p + n for n in batch.deletes]
        await self._sink.commit(self._schedule.id, self._key, upserts, deletes, fires)
        fps = self._snap.fps
        self._grown += len(batch.upserts)
        for name, obs in batch.upserts.items():
            fps[name] = hash(obs) & FINGERPRINT_MASK
        for name in batch.deletes:
            fps.pop(name, None)
            self._recent.pop(name, None)
            log.debug("file_deleted", path=_show(p + name))
        until, now = self._clock.monotonic() + self._settle, self._clock.now()
        lag = self._metrics.detection_lag.labels(self._schedule.name) if self._metrics else None
        for name, change in zip(batch.fires, fires, strict=True):
            obs = batch.upserts[name]
            self._recent[name] = (obs[0], obs[2], until)
            log.info("file_changed", path=_show(change.name), version=change.version)
            if lag is not None and change.modified is not None:
                lag.observe(max(0.0, (now - change.modified).total_seconds()))
        if self._baseline:
            self._baseline = False
            log.info("baseline_taken", files=len(fps), initial=self._initial)

    # ── events ───────────────────────────────────────────────────────────────

    def _post(self, kind: EventKind, name: bytes) -> None:
        """Called on the event loop for each inotify event (via call_soon_threadsafe)."""
        if kind == "rescan" or kind == "overflow":
            if kind == "overflow":
                log.warning("events_overflow", path=_show(self.path))
            self._scanner.digest = None
            self._rescan = True
            self._wake.set()
            return
        if kind == "attrib":
            if self._raw.get(name) != "closed":  # utime after close keeps it complete
                self._raw[name] = "check"
        else:
            self._raw[name] = kind
        if len(self._raw) > _MAX_RAW:
            self._raw.clear()
            self._post("overflow", b"")
        if self._on_event is not None:
            self._on_event(self._prefix + name)
        self._wake.set()
