"""The ports of the engine: the seams it is handed, never the adapters behind them.

- `RunStore`: the state database (SQLite by default, PostgreSQL for replicas).
- `ChangeSink` / `PollHealth` / `FileChange`: what a datastore poller reports, and to whom.
- `Dispatcher` / `RunContext` / `Outcome` / `FileRef`: what a run target gets and returns.
- `PollerFactory` / `DispatcherFactory`: how the wiring (daemon.py) hands adapters in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

from watcherd.core.models import Pipeline, Run, RunStatus, Schedule

__all__ = [
    "ChangeSink",
    "Dispatcher",
    "FileChange",
    "FileRef",
    "Outcome",
    "PollHealth",
    "RunContext",
]


# ── dispatchers ──────────────────────────────────────────────────────────────


@dataclass(frozen=True, slots=True, kw_only=True)
class FileRef:
    """The file that triggered a file run."""

    datastore: str
    relative_path: bytes  # relative to the datastore root (blob: the blob name)
    local_path: bytes | None = None  # absolute path (local datastores)
    url: str | None = None  # blob URL without credentials (blob datastores)
    version: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunContext:
    """Everything a dispatcher needs for one attempt of one run."""

    run: Run
    pipeline: Pipeline
    schedule: Schedule | None
    parameters: Mapping[str, str]  # merged: pipeline < schedule < run extras (file excluded)
    file: FileRef | None  # bound to schedule.trigger.data_path_parameter_name
    data_path_parameter_name: str | None
    trigger_time: datetime  # the slot, file detection time, or manual trigger time
    continue_on_step_failure: bool
    config_dir: Path
    attempt: int
    extra_env: Mapping[str, str] = field(default_factory=dict)  # e.g. WATCHERD_FAILED_RUN


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """The end of one successful or permanently failed attempt."""

    status: RunStatus  # Completed | Failed | Submitted
    error: str | None = None
    exit_code: int | None = None
    exit_codes: tuple[int, ...] = ()
    http_status: int | None = None
    remote_id: str | None = None
    log: bytes = b""


class Dispatcher(Protocol):
    """Runs one attempt of a run.

    Raises `TransientError` (with `retry_after` when the target said so) for a retryable
    failure; the engine backs off and calls again with the next attempt number. Anything
    permanent is returned as a Failed Outcome. On cancellation it stops what it started
    (process group, in-flight request) and re-raises CancelledError.
    """

    async def dispatch(self, ctx: RunContext) -> Outcome: ...

    async def aclose(self) -> None: ...


# ── pollers ──────────────────────────────────────────────────────────────────


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
