"""The seam between datastore pollers and the engine: what a poller reports, and to whom."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

__all__ = ["ChangeSink", "FileChange", "PollHealth"]


@dataclass(frozen=True, slots=True)
class FileChange:
    """One eligible new or modified file version, directly in the watched directory.

    `name` is the raw file name relative to the datastore root (local: bytes of the path
    relative to `root`, posix separators; blob: the blob name as UTF-8 bytes).
    `version` is the blob ETag, or "size:mtime_ns:inode" locally.
    `modified` is the file's mtime / Last-Modified (for the detection-lag metric).
    """

    name: bytes
    version: str
    modified: datetime | None = None


class ChangeSink(Protocol):
    """Where a datastore schedule's poller loads and commits its snapshot.

    Implemented by the engine over the state database. Every method is safe to call from the
    event loop (SQL runs off-loop).
    """

    async def load_snapshot(self, schedule_id: str, baseline_key: str) -> dict[bytes, str] | None:
        """The persisted snapshot {name: version}, or None when no baseline exists for this
        `baseline_key` (a hash of datastore, path, pattern and ignore: a change of any of them
        means a new baseline)."""
        ...

    async def commit(
        self,
        schedule_id: str,
        baseline_key: str,
        upserts: Sequence[tuple[bytes, str]],
        deletes: Sequence[bytes],
        fire: Sequence[FileChange],
    ) -> int:
        """In one transaction: apply `upserts`/`deletes` to the snapshot, mark the baseline
        taken, and write one Queued run per `fire` entry (UNIQUE on schedule, name, version;
        nothing when the schedule's pipeline is Disabled). Returns the number of runs written.
        `fire` entries must also be in `upserts`."""
        ...

    def pending(self, schedule_id: str) -> int:
        """Queued runs of this schedule (for `max_pending` backpressure)."""
        ...

    async def wait_below(self, schedule_id: str, limit: int) -> None:
        """Return once this schedule has at most `limit` Queued runs."""
        ...


class PollHealth(Protocol):
    """Receives poll attempt outcomes for readiness, the watchdog and metrics."""

    def poll_finished(
        self, schedule_id: str, *, ok: bool, duration: float, files: int, error: str | None
    ) -> None: ...
