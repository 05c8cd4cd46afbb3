"""What the local poller saw, turned into commits (SPEC §4).

`Changes` takes what inotify events, settle deadlines and rescan chunks showed, classifies it
with `WriteCompletion`, applies the symlink rule (a version whose symlink leads outside the
root is skipped and logged once) and commits it through the `ChangeSink`, never queueing more
runs than `max_pending` allows: fires that do not fit are `deferred`, out of the snapshot, and
the poller is told to pause.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from itertools import chain, islice

import structlog

from watcherd.core.matching import NameMatcher
from watcherd.core.snapshot import FINGERPRINT_MASK, Snapshot
from watcherd.engine.clock import Clock
from watcherd.engine.ports import ChangeSink, FileChange
from watcherd.pollers.fspool import off_loop
from watcherd.pollers.localfs import (
    DirChanged,
    DirScan,
    ScanChunk,
    Stats,
    local_fingerprint,
    missing_names,
    open_for_writing,
    stat_names,
    version_of,
)
from watcherd.pollers.localstate import Batch, How, WriteCompletion
from watcherd.pollers.localwatch import EventKind

__all__ = ["BASELINE_MARKER", "Changes"]

log = structlog.get_logger("watcherd.pollers.local")

BASELINE_MARKER = "local:baseline"  # listing marker while a skip-baseline is committed in chunks
_STAT_IN_POOL = 64  # stat batches larger than this leave the event loop
_WRITER_QUIET = 1.0  # seconds without an event before a writer's file is asked about
# Without a lease to ask (not the file's owner): seconds with no event for it, and at least a
# polling interval, before a file a writer opened is taken as closed (then `settle`).
_NO_LEASE_QUIET = 300.0


def show(name: bytes) -> str:
    return name.decode("utf-8", "backslashreplace")


class Changes:
    """The committing half of one local poller; the poller sets `silent` (a skip-baseline
    is not complete yet: names it did not know are recorded, not fired, unless an event saw
    them completed) and `ident` (the directory last polled), and reads `rescan` (the
    directory was replaced: a rescan is due).
    """

    def __init__(
        self,
        *,
        schedule_id: str,
        key: str,
        path: bytes,
        prefix: bytes,
        root: bytes | None,
        match: NameMatcher,
        sink: ChangeSink,
        clock: Clock,
        settle: float,
        max_pending: int,
        on_full: Callable[[int], None],
        on_committed: Callable[[], None],
    ) -> None:
        self._sid, self._key, self.path, self._prefix = schedule_id, key, path, prefix
        self._root, self._match, self._sink, self._clock = root, match, sink, clock
        self._settle, self.max_pending = settle, max_pending
        self._on_full, self._on_committed = on_full, on_committed
        self.snap = Snapshot(local_fingerprint)
        self.track = WriteCompletion(settle)
        self.silent = False
        self.ident: tuple[int, int] | None = None
        self.rescan = False
        self.touched: set[bytes] = set()  # names committed otherwise while the scan is frozen

    def take(self, chunk: ScanChunk, now: float, batch: Batch) -> None:
        """Handle one chunk of a rescan on the loop: the snapshot may have moved on since the
        chunk was listed (events), so each change is checked against it again."""
        snap, track, mask = self.snap, self.track, FINGERPRINT_MASK
        writing, outside = track.writing, track.outside
        for name, obs in chain(chunk.changed, zip(chunk.new_names, chunk.new_obs, strict=True)):
            old = snap.get(name)
            if hash(obs) & mask == old or name in writing or outside.get(name) == obs:
                continue
            track.observe(name, obs, "check", now, old, batch)

    def take_silently(self, chunk: ScanChunk, now: float, batch: Batch) -> None:
        """`take` during a skip-baseline: new names are recorded as they are, in bulk (a
        first poll of a million files does nothing per file on the loop but this). A name an
        event has seen since (committed, being written, an outside symlink) is left to that."""
        names, fps, versions = chunk.new_names, chunk.new_fps, chunk.new_versions
        skip = self.touched | self.track.writing.keys() | self.track.outside.keys()
        if skip:
            keep = [i for i, n in enumerate(names) if n not in skip]
            names, fps = [names[i] for i in keep], [fps[i] for i in keep]
            versions = [versions[i] for i in keep]
        batch.quiet_names += names
        batch.quiet_fps += fps
        batch.quiet_versions += versions
        self.take(ScanChunk(changed=chunk.changed), now, batch)

    async def deletions(self, scan: DirScan, gone: list[bytes], now: float, batch: Batch) -> None:
        """The deletions a finished rescan found (the snapshot is still frozen for it)."""
        snap = self.snap
        base = snap.fps
        missing: list[bytes] = []
        if scan.known + len(gone) < len(base):  # some known name was not listed
            missing = await off_loop(missing_names, self.path, base)
        overlay = snap.overlay or {}
        for name in chain(gone, missing):
            if name not in overlay:  # else an event has decided since
                self.track.observe(name, None, "check", now, snap.get(name), batch)

    async def events(self, raw: dict[bytes, EventKind]) -> None:
        names = [n for n in raw if self._match(n)]
        if not names:
            return
        lost = self.track.lost
        stats = await self._stat(names)
        if stats is None:
            return
        now, batch, track, snap = self._clock.monotonic(), Batch(), self.track, self.snap
        for name in names:
            obs, kind = stats.obs[name], raw[name]
            if obs is False:
                continue  # unreadable: the next rescan decides
            if track.lost != lost and kind in ("writing", "created"):
                kind = "check"  # events were lost meanwhile: its close may be among them
            if obs is not None and (
                kind == "writing" or (kind == "created" and name not in stats.linked)
            ):
                track.start_writing(name, now)  # eligible at its close (or stale_writers)
            elif kind == "closed":
                track.writing.pop(name, None)
                track.observe(name, obs, "closed", now, snap.get(name), batch)
            elif obs is None or name not in track.writing:
                old = snap.get(name)
                if self.silent and old is None and obs is not None:
                    batch.upserts[name] = obs  # present before the baseline finished
                else:
                    track.observe(name, obs, "check", now, old, batch)
        await self.commit(batch)

    async def writers_done(self, now: float, interval: float, batch: Batch) -> None:
        """At the end of a rescan: the names `writing` with no event for `settle` that no
        process has open for writing any more are eligible now (a change no close reports:
        `truncate(2)`, an `open(O_CREAT)` for reading); where the kernel cannot tell, those
        with no event for a polling interval, and 5 minutes at least, go to the settle rule."""
        track = self.track
        names = track.stale_writers(now, max(self._settle, _WRITER_QUIET))
        if not names:
            return
        since = {n: track.writing[n] for n in names}
        open_now = await off_loop(open_for_writing, self.path, names)
        stats = await self._stat(names)
        if stats is None:
            return
        snap = self.snap
        for name in names:
            held = open_now[name]
            if track.writing.get(name) != since[name]:
                continue  # an event came meanwhile: it decides
            if held or (held is None and now - since[name] < max(interval, _NO_LEASE_QUIET)):
                continue  # a writer still has it open; or it cannot be told yet
            del track.writing[name]
            obs = stats.obs[name]
            if obs is not False:
                how: How = "closed" if held is False else "check"
                track.observe(name, obs, how, now, snap.get(name), batch)

    async def settle(self) -> None:
        track, snap = self.track, self.snap
        due = [n for n in track.pop_due(self._clock.monotonic()) if n not in track.writing]
        stats = await self._stat(due) if due else None
        if stats is None:
            for name in due:  # the directory was replaced: its rescan finds them again
                track.pending.pop(name, None)
            return
        now, batch = self._clock.monotonic(), Batch()
        for name in due:
            obs, entry = stats.obs[name], track.pending.get(name)
            if entry is None:
                continue
            if obs is False:  # unreadable: let the next full scan decide
                del track.pending[name]
            elif obs is None or obs != entry[0]:
                track.observe(name, obs, "check", now, snap.get(name), batch)
            else:  # unchanged for `settle`: eligible
                del track.pending[name]
                if snap.get(name) != hash(obs) & FINGERPRINT_MASK:
                    batch.fire(name, obs)
        await self.commit(batch)

    async def deferred(self) -> None:
        track, snap = self.track, self.snap
        room = self.max_pending - self._sink.pending(self._sid)
        if room <= 0:
            self._on_full(self._sink.pending(self._sid))
            return
        names = list(islice(track.deferred, room))
        stats = await self._stat(names)
        if stats is None:
            return
        now, batch = self._clock.monotonic(), Batch()
        for name in names:
            want, obs = track.deferred.pop(name, None), stats.obs[name]
            if want is None or obs is False or name in track.writing:
                continue
            if obs == want:
                if snap.get(name) != hash(obs) & FINGERPRINT_MASK:
                    batch.fire(name, obs)
            else:
                track.observe(name, obs, "check", now, snap.get(name), batch)
        await self.commit(batch)

    async def _stat(self, names: list[bytes]) -> Stats | None:
        """Stats of `names` (None: the directory was replaced; a rescan is due)."""
        try:
            if len(names) > _STAT_IN_POOL:
                stats = await off_loop(stat_names, self.path, names, self._root, self.ident)
            else:
                stats = stat_names(self.path, names, self._root, self.ident)
        except DirChanged:
            self.rescan = True
            return None
        track = self.track
        for name, (target, obs) in stats.outside.items():
            if track.outside.get(name) is None:
                log.warning(
                    "symlink_outside_root",
                    path=show(self._prefix + name),
                    target=show(target),
                    follow_symlinks="within_root",
                )
            track.outside[name] = obs
        if track.outside:
            for name in names:
                if name not in stats.outside:
                    track.outside.pop(name, None)
        return stats

    # ── committing ───────────────────────────────────────────────────────────

    async def commit(self, batch: Batch, *, marker: str | None = None, force: bool = False) -> None:
        track = self.track
        paused = False
        if batch.fires:
            room = self.max_pending - self._sink.pending(self._sid)
            if room < len(batch.fires):  # the rest waits, out of the snapshot
                keep = max(room, 0)
                for name in batch.fires[keep:]:
                    track.deferred[name] = batch.upserts.pop(name)
                del batch.fires[keep:]
                paused = True
        if batch or force:
            if marker is None and self.silent:
                marker = BASELINE_MARKER
            await self._write(batch, marker)
        if paused:
            self._on_full(self._sink.pending(self._sid))

    async def _write(self, batch: Batch, marker: str | None) -> None:
        p = self._prefix
        upserts = [(p + n, version_of(o)) for n, o in batch.upserts.items()]
        if batch.quiet_names:
            names = [p + n for n in batch.quiet_names] if p else batch.quiet_names
            upserts += zip(names, batch.quiet_versions, strict=True)
        fires = [
            FileChange(p + n, version_of(o), datetime.fromtimestamp(o[1] / 1e9, UTC))
            for n in batch.fires
            for o in (batch.upserts[n],)
        ]
        deletes = [p + n for n in batch.deletes]
        sid = self._sid
        await self._sink.commit(sid, self._key, upserts, deletes, fires, marker=marker)
        self._on_committed()
        snap, track, mask = self.snap, self.track, FINGERPRINT_MASK
        if batch.quiet_names:
            snap.put_many(zip(batch.quiet_names, batch.quiet_fps, strict=True))
        for name, obs in batch.upserts.items():
            snap.put(name, hash(obs) & mask)
        for name in batch.deletes:
            snap.drop(name)
            track.recent.pop(name, None)
            log.debug("file_deleted", path=show(p + name))
        if snap.frozen:  # the rescan's own chunks excepted, which never meet a name twice
            self.touched.update(batch.upserts)
            self.touched.update(batch.deletes)
        now = self._clock.monotonic()
        track.expire_recent(now)
        for name, change in zip(batch.fires, fires, strict=True):
            track.fired(name, batch.upserts[name], now + self._settle)
            log.info("file_changed", path=show(change.name), version=change.version)
