"""Write completion of the local poller (SPEC §4): when an observed file version may run.

Pure bookkeeping, no I/O: the poller feeds it what events, settle re-checks and rescans saw.

- A close-after-write or move-into event makes a version eligible at once ("closed").
- A file some writer has open (a modify event, or a create by open()) is `writing`: it becomes
  eligible at its close, however long the writer pauses. Nothing else (settle) may fire it
  meanwhile, but a rescan asks the kernel about the names that have had no event for `settle`:
  one no process has open for writing any more had a change no close reports (`truncate(2)`,
  an `open(O_CREAT)` for reading) and is eligible; where the kernel cannot tell, one with no
  event for a polling interval, and 5 minutes at least, is left to the settle rule.
- Events lost (a queue overflow) end every `writing` state, and bump `lost`: a modify event
  read before the loss but handled after it must not start one again (its close may be lost).
- Every other change (events off, rescans, downtime, links made without an open) is `pending`:
  eligible once a stat at its own settle deadline shows the same (size, mtime, inode).
- A version that differs from a just-fired one only by mtime, within `settle`, is the same
  version (`recent`: a copy's `copystat`, a `touch`), unless a close after a write reports it:
  then it is new content of the same size (a file rewritten while its run reads it runs again).
- `deferred`: eligible versions not queued yet because the schedule has `max_pending` runs
  Queued; they are re-checked and queued as the queue drains.
- `outside`: symlinks skipped because they lead outside the datastore root, with the version
  that was skipped, so a rescan does not look at them again until they change.
"""

from __future__ import annotations

import heapq
from typing import Any, Literal

import structlog

from watcherd.core.snapshot import FINGERPRINT_MASK
from watcherd.engine.retry import SUMMARY_EVERY
from watcherd.pollers.localfs import Obs

__all__ = ["Batch", "FailureLog", "How", "WriteCompletion"]

log = structlog.get_logger("watcherd.pollers.local")

How = Literal["closed", "check"]


class Batch:
    """Changes to commit together: upserts (fires are a subset of them) and deletes; and
    `quiet_*`, upserts recorded in bulk by a skip-baseline (never fired): names, fingerprints
    and version strings in the same order."""

    __slots__ = ("deletes", "fires", "quiet_fps", "quiet_names", "quiet_versions", "upserts")

    def __init__(self) -> None:
        self.upserts: dict[bytes, Obs] = {}
        self.fires: list[bytes] = []
        self.deletes: list[bytes] = []
        self.quiet_names: list[bytes] = []
        self.quiet_fps: list[int] = []
        self.quiet_versions: list[str] = []

    def __bool__(self) -> bool:
        return bool(self.upserts or self.deletes or self.quiet_names)

    def fire(self, name: bytes, obs: Obs) -> None:
        self.upserts[name] = obs
        self.fires.append(name)


class WriteCompletion:
    """Per-name write-completion state of one watched directory."""

    def __init__(self, settle: float) -> None:
        self.settle = settle
        self.pending: dict[bytes, tuple[Obs, float]] = {}  # obs + its settle deadline
        self._heap: list[tuple[float, bytes]] = []  # (deadline, name); stale entries skipped
        self.writing: dict[bytes, float] = {}  # name → time of its last "writing" event
        self.lost = 0  # events_lost() calls so far
        self.recent: dict[bytes, tuple[int, int, float]] = {}  # fired: size, inode, until
        self.deferred: dict[bytes, Obs] = {}
        self.outside: dict[bytes, Obs] = {}

    # ── settle deadlines ─────────────────────────────────────────────────────

    def next_deadline(self) -> float | None:
        heap, pending = self._heap, self.pending
        while heap:
            deadline, name = heap[0]
            entry = pending.get(name)
            if entry is not None and entry[1] == deadline:
                return deadline
            heapq.heappop(heap)  # superseded or done
        return None

    def pop_due(self, now: float) -> list[bytes]:
        """Names whose settle deadline has passed (they stay `pending` until resolved)."""
        due: list[bytes] = []
        heap, pending = self._heap, self.pending
        while heap and heap[0][0] <= now:
            deadline, name = heapq.heappop(heap)
            entry = pending.get(name)
            if entry is not None and entry[1] == deadline:
                due.append(name)
        return due

    # ── transitions ──────────────────────────────────────────────────────────

    def start_writing(self, name: bytes, now: float) -> None:
        """A writer has `name` open: its close makes it eligible (or `stale_writers`)."""
        self.writing[name] = now
        self.pending.pop(name, None)
        self.deferred.pop(name, None)  # superseded by what is being written

    def events_lost(self) -> None:
        """Closes may have been missed (queue overflow, watch gone): no file waits for one."""
        self.writing.clear()
        self.lost += 1

    def stale_writers(self, now: float, quiet: float) -> list[bytes]:
        """Names `writing` with no event for `quiet` seconds."""
        return [n for n, at in self.writing.items() if now - at >= quiet]

    def observe(
        self, name: bytes, obs: Obs | None, how: How, now: float, old: int | None, batch: Batch
    ) -> None:
        """Classify one observed state of a name whose committed fingerprint is `old`."""
        if obs is None:  # gone
            self.forget(name)
            if old is not None:
                batch.deletes.append(name)
            return
        if hash(obs) & FINGERPRINT_MASK == old:
            self.pending.pop(name, None)
            return
        if how == "closed":  # a close after a write: new content, whatever its size
            self.pending.pop(name, None)
            batch.fire(name, obs)
            return
        recent = self.recent.get(name)
        if recent is not None and recent[2] > now and recent[:2] == (obs[0], obs[2]):
            self.pending.pop(name, None)  # mtime-only change soon after eligibility
            batch.upserts[name] = obs
            return
        entry = self.pending.get(name)
        if entry is None or entry[0] != obs:
            deadline = now + self.settle
            self.pending[name] = (obs, deadline)
            heapq.heappush(self._heap, (deadline, name))

    def forget(self, name: bytes) -> None:
        self.pending.pop(name, None)
        self.writing.pop(name, None)
        self.deferred.pop(name, None)

    def fired(self, name: bytes, obs: Obs, until: float) -> None:
        self.recent[name] = (obs[0], obs[2], until)

    def expire_recent(self, now: float) -> None:
        if self.recent:
            self.recent = {n: r for n, r in self.recent.items() if r[2] > now}


class FailureLog:
    """A repeating failure logged once (`<what>_failed`), then summarized once a minute
    (`<what>_still_failing`), then its end (`<what>_recovered`): never a line per attempt."""

    def __init__(self, what: str) -> None:
        self._events = (f"{what}_failed", f"{what}_still_failing", f"{what}_recovered")
        self.count = 0
        self._since = self._summary = 0.0

    def failed(self, now: float, error: str, *, traceback: bool = False, **fields: Any) -> int:
        """Count one failure; returns how many in a row."""
        self.count += 1
        if self.count == 1:
            self._since = self._summary = now
            log.warning(self._events[0], error=error, exc_info=traceback, **fields)
        elif now - self._summary >= SUMMARY_EVERY:
            self._summary = now
            log.warning(
                self._events[1],
                error=error,
                failures=self.count,
                seconds=round(now - self._since),
                **fields,
            )
        return self.count

    def recovered(self, now: float, **fields: Any) -> None:
        if self.count:
            seconds = round(now - self._since)
            log.info(self._events[2], failures=self.count, seconds=seconds, **fields)
            self.count = 0
