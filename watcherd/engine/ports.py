"""The ports of the engine: the seams it is handed, never the adapters behind them.

- `RunStore`: the state store (SQLite by default, PostgreSQL for replicas). Every method is a
  coroutine that does its I/O off the event loop; every write is one transaction.
- `ChangeSink` / `PollHealth` / `FileChange` / `Poller` / `PollerFactory`: datastore pollers,
  what they report and to whom.
- `Dispatcher` / `RunContext` / `Outcome` / `DispatcherFactory`: run targets.

Only `watcherd.daemon` picks the implementations.

Size: over 400 lines, nearly all protocol signatures and their docstrings (the contract the
SQLite and PostgreSQL stores both keep); splitting it would scatter one contract.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from watcherd.core.models import (
    Datastore,
    FileRef,
    Pipeline,
    Run,
    RunStatus,
    Schedule,
    StoredSchedule,
)
from watcherd.core.runs import NewRun

__all__ = [
    "Change",
    "ChangeSink",
    "Claim",
    "ClaimResult",
    "Cluster",
    "ConfigWrite",
    "Dispatcher",
    "DispatcherFactory",
    "FileChange",
    "Membership",
    "Outcome",
    "PipelineRow",
    "PollHealth",
    "Poller",
    "PollerFactory",
    "Reading",
    "ReplicaInfo",
    "RunContext",
    "RunPage",
    "RunStore",
    "SlotBatch",
]


# ── the state store ──────────────────────────────────────────────────────────


@dataclass(frozen=True, slots=True)
class PipelineRow:
    """A pipeline's stored status and the status last seen in the config file."""

    id: str
    name: str
    status: str
    file_status: str | None


@dataclass(frozen=True, slots=True)
class SlotBatch:
    """One schedule's share of a timer commit: its new cursor and the runs of its slots.

    `epoch` fences the write (SPEC §12): the store refuses it unless this replica still holds
    the schedule's lease at that epoch. None: no fence (a single daemon, SQLite)."""

    schedule_id: str
    cursor: datetime
    runs: Sequence[NewRun]
    epoch: int | None = None
    hint: tuple[str, datetime | None] | None = None  # the next slot after `cursor` (next_hint)


class ClaimResult(Enum):
    """What `RunStore.claim_run` did."""

    CLAIMED = "claimed"  # Queued → Running, now held by this replica (and attempt)
    GONE = "gone"  # no longer Queued (canceled, skipped, claimed elsewhere): forget it
    BUSY = "busy"  # another version of the same file, or a serial schedule's run, is Running


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    """One live daemon sharing the store (SPEC §12)."""

    id: str
    host: str
    started: datetime
    last_heartbeat: datetime
    schedules: frozenset[str]  # the schedules whose timer or poller it owns
    running: int
    config_hash: str


@dataclass(frozen=True, slots=True)
class RunPage:
    """One page of a run listing, newest first; `next_cursor` continues it (None: the end)."""

    runs: list[Run]
    next_cursor: str | None


class RunStore(Protocol):
    """The durable state of one deployment: schedules, pipelines, snapshots and runs.

    Runs are an outbox: a due slot or an eligible file version is inserted Queued under
    UNIQUE(schedule, dedup) in the same transaction that advances the timer cursor or the
    snapshot, so a crash neither loses nor duplicates a run. Writes raise `StateError` when
    the store cannot be written; reads never wait behind a long write.
    """

    # pipelines and schedules
    async def load_pipelines(self) -> dict[str, PipelineRow]: ...
    async def save_pipelines(self, rows: Sequence[PipelineRow]) -> None: ...
    async def set_pipeline_status(self, pipeline_id: str, status: str) -> None: ...
    async def load_schedules(self) -> list[StoredSchedule]: ...
    async def load_schedule(self, schedule_id: str) -> StoredSchedule | None: ...
    async def save_schedules(
        self, rows: Sequence[StoredSchedule], *, reset_snapshots: Sequence[str] = ()
    ) -> None:
        """Upsert rows; `reset_snapshots` (schedule ids) drop their snapshot and baseline in
        the same transaction (enabling a datastore schedule takes a fresh baseline)."""
        ...

    async def apply_config(self, compute: Callable[[Reading], ConfigWrite]) -> ConfigWrite:
        """Read the stored schedules and pipelines, call `compute` (pure) on them and write
        what it returns, as one serialized step: replicas starting together never compute
        from each other's half-written state (PostgreSQL: one transaction under an advisory
        lock)."""
        ...

    async def delete_schedule(self, schedule_id: str) -> None:
        """Remove a schedule with its snapshot (its runs stay)."""
        ...

    # the outbox
    async def record_slots(self, batches: Sequence[SlotBatch], now: datetime) -> list[str]:
        """Insert each batch's runs and advance its cursor (and store its `hint`), in one
        transaction; returns the ids of the runs inserted Queued (a run already recorded is
        not inserted again). Raises LeaseLost (nothing written) when a batch's `epoch`
        fence fails."""
        ...

    async def save_timer_hints(self, hints: Sequence[tuple[str, str, datetime | None]]) -> None:
        """Store (schedule id, hint key, next slot) as the schedules' `next_hint`, so that a
        restart (or a replica gaining the schedule) need not compute them again."""
        ...

    async def load_snapshot(self, schedule_id: str, key: str) -> dict[bytes, str] | None:
        """The snapshot {name: version}, or None when its baseline key is not `key`."""
        ...

    async def load_marker(self, schedule_id: str, key: str) -> str | None:
        """The continuation marker of a listing interrupted mid-way (None: start afresh)."""
        ...

    async def commit_changes(
        self,
        schedule_id: str,
        key: str,
        upserts: Sequence[tuple[bytes, str]],
        deletes: Sequence[bytes],
        runs: Sequence[NewRun],
        now: datetime,
        marker: str | None = None,
        epoch: int | None = None,
    ) -> list[str]:
        """Apply a snapshot delta under baseline `key` (another key starts it afresh), set the
        listing `marker` ("" clears it, None leaves it) and insert runs, in one transaction;
        returns the ids inserted Queued. `epoch` fences it as in `record_slots`."""
        ...

    async def drop_baseline(self, schedule_id: str) -> None: ...

    async def insert_manual(self, run: NewRun, idempotency_key: str | None, now: datetime) -> str:
        """Insert a manual run once per idempotency key; returns the run id (the first one
        inserted under that key)."""
        ...

    # runs
    async def requeue_interrupted(self, reason: str, *, replica_id: str) -> int:
        """This replica's Running runs (left by a crash) back to Queued as their next attempt
        (with one daemon: every Running run)."""
        ...

    async def queued_runs(self) -> list[Run]: ...
    async def get_runs(self, run_ids: Sequence[str]) -> list[Run]: ...
    async def get_run(self, run_id: str) -> Run | None: ...
    async def run_log(self, run_id: str) -> bytes | None: ...
    async def list_runs(
        self,
        *,
        schedule_id: str | None = None,
        pipeline_id: str | None = None,
        status: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage: ...
    async def last_runs(self, schedule_ids: Sequence[str] | None = None) -> dict[str, Run]:
        """The newest run of each schedule (of those named: one index probe each)."""
        ...

    async def last_pipeline_runs(self, pipeline_ids: Sequence[str]) -> dict[str, Run]:
        """The newest run of each named pipeline, submitted or scheduled (one probe each)."""
        ...

    async def experiments(self) -> list[str]: ...

    async def claim_run(
        self,
        run_id: str,
        *,
        replica_id: str,
        now: datetime,
        serial: bool,
        attempt: int | None = None,
    ) -> ClaimResult:
        """Queued → Running for this replica (`claimed_by`, started_at = now), only at
        `attempt` when given (a copy of the run held since it was re-queued elsewhere is
        GONE). BUSY, without change, while a run of the same file (file runs) or of the same
        schedule (`serial`: concurrency "queue") is Running anywhere; PostgreSQL claims with
        FOR UPDATE SKIP LOCKED so replicas never take the same run. With `attempt`, claiming a
        run this replica already holds at that attempt is CLAIMED (a retried write)."""
        ...

    async def transition_run(
        self,
        run_id: str,
        to: RunStatus,
        *,
        among: Sequence[RunStatus] | None = None,
        followups: Sequence[NewRun] = (),
        now: datetime,
        claim: Claim | None = None,
        **fields: Any,
    ) -> tuple[bool, list[str]]:
        """Move a run to `to` (checked by `core.runs.transition`; `among` narrows the statuses
        it may come from) and set `fields`, inserting `followups` in the same transaction.
        Returns (moved, ids of followups inserted Queued); moved is False when the run was no
        longer in one of those statuses (another writer moved it first). With `claim`, a move
        out of Running also requires the run to be still held by that replica and attempt:
        refused, it raises ClaimLost."""
        ...

    async def update_running(
        self, run_id: str, *, claim: Claim | None = None, **fields: Any
    ) -> bool:
        """Set fields of a Running run (attempt, next_attempt_at, attempts) without moving it
        (raises ClaimLost as `transition_run`)."""
        ...

    async def skip_runs(self, run_ids: Sequence[str], reason: str, now: datetime) -> None: ...

    async def request_cancel(self, run_id: str) -> str | None:
        """Ask the replica running `run_id` to stop it (SPEC §12: within 1 s); returns that
        replica's id, or None when the run is not Running. The request is kept on the run
        (`cancel_requests`), and a run whose holder dies then ends Canceled."""
        ...

    async def cancel_requests(self) -> list[str]:
        """This replica's Running runs with a cancel pending (after a resync)."""
        ...

    async def prune(self, before: datetime) -> int:
        """Delete runs finished before `before` (in small batches); returns how many."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Claim:
    """Who holds a Running run: status writes are conditional on it (SPEC §12)."""

    replica_id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Reading:
    """What `RunStore.apply_config` reads for its computation."""

    schedules: dict[str, StoredSchedule]
    pipelines: dict[str, PipelineRow]
    # what the last apply_config wrote as `ConfigWrite.applied` (None: nothing, or a store
    # that keeps no such mark); a store must clear it whenever a declared row's spec, trigger,
    # file status or source is written by anything else
    applied: str | None = None


@dataclass(slots=True)
class ConfigWrite:
    """What the computation of `RunStore.apply_config` asks to write (and carries back)."""

    pipelines: Sequence[PipelineRow]
    schedules: Sequence[StoredSchedule]  # changed rows only
    result: Any = None  # anything the caller wants back (the reconcile plan)
    applied: str | None = None  # kept by the store with the rows, read back as Reading.applied


# ── replicas ─────────────────────────────────────────────────────────────────


@dataclass(frozen=True, slots=True)
class Membership:
    """One heartbeat round's outcome for this replica."""

    leases: Mapping[str, int]  # schedule id → epoch, every lease held after this round
    valid_until: float  # local monotonic: the send time + lease_ttl − 1 s (SPEC §12)
    config_ok: bool  # this replica's config hash is the deployment's
    replicas: int  # live replicas, this one included
    # Local monotonic: beat again by then (a lease this replica wants, or another replica's
    # heartbeat, expires): a dead owner's schedules are taken within lease_ttl + 1 s.
    recheck_at: float | None = None
    requeued: int = 0  # Running runs of dead replicas this beat put back to Queued
    revived: bool = False  # this replica had been declared dead: its runs run elsewhere now


@dataclass(frozen=True, slots=True)
class Change:
    """A change another replica made (SPEC §12): re-read what it names.

    kind: "schedule" (ident: schedule id), "pipeline" (pipeline id), "runs" (Queued runs:
    their ids, comma-separated; "" to re-read every Queued run), "cancel" (run id), "resync"
    (notifications may have been missed: re-read everything cached)."""

    kind: str
    ident: str = ""


class Cluster(Protocol):
    """The replicas sharing one store: membership, schedule leases, change notifications.

    With SQLite there is one daemon (the state_dir lock): it holds every lease forever and
    never hears of a change. With PostgreSQL each replica heartbeats every lease_ttl / 3."""

    replica_id: str
    lease_ttl: timedelta

    async def join(self, *, host: str, config_hash: str) -> bool:
        """Register this replica; True when its config is now the deployment's (the newest
        starting replica's config wins; older ones then stand by)."""
        ...

    async def set_config(self, config_hash: str) -> bool:
        """A reloaded config (SIGHUP): record its hash as join does, keeping the leases; True
        when it is now the deployment's."""
        ...

    async def beat(self, *, wanted: Sequence[str], running: int) -> Membership:
        """One round: heartbeat (expiry = the database's now() + lease_ttl), re-queue the
        Running runs of replicas dead for longer than lease_ttl ("replica <id> lost"), renew
        this replica's leases, release those above its fair share (⌈n/r⌉ of the `wanted`,
        +1 slack) and take free or expired ones among `wanted` up to it. Raises StateError
        when the store is unreachable (leases then lapse at `valid_until`)."""
        ...

    async def release(self, schedule_ids: Sequence[str]) -> None:
        """Give up leases (after their timers and pollers are stopped)."""
        ...

    async def leave(self) -> None:
        """Release every lease and deregister (clean shutdown)."""
        ...

    async def replicas(self) -> list[ReplicaInfo]: ...

    async def alive_until(self) -> datetime | None:
        """The latest instant any other replica was known alive (its last heartbeat +
        lease_ttl), for SPEC §12's "no slot lost to a failover": slots due before it are
        queued whatever `catch_up` says. None: no other replica ever ran."""
        ...

    def changes(self) -> AsyncIterator[Change]:
        """Changes made by other replicas, until cancelled (LISTEN/NOTIFY; after a reconnect
        it yields Change("resync"))."""
        ...


# ── dispatchers ──────────────────────────────────────────────────────────────


@dataclass(frozen=True, slots=True, kw_only=True)
class RunContext:
    """Everything a dispatcher needs for one attempt of one run."""

    run: Run
    pipeline: Pipeline
    schedule: Schedule | None
    parameters: Mapping[str, str]  # the run's: pipeline < schedule < extras (file excluded)
    file: FileRef | None  # the run's file, bound to `file.parameter`
    trigger_time: datetime  # the slot, file detection time, or manual trigger time
    continue_on_step_failure: bool
    config_dir: Path
    attempt: int
    extra_env: Mapping[str, str] = field(default_factory=dict)  # e.g. WATCHERD_FAILED_RUN
    azureml_datastore: str | None = None  # the file's blob datastore's Azure ML name (§13)
    # Every secret of the config (SPEC §8): what the run's log must never show, whoever's
    # (a command may print a header token or the daemon token it inherited).
    secrets: frozenset[str] = frozenset()

    @property
    def data_path_parameter_name(self) -> str | None:
        """The pipeline parameter the run's file is bound to."""
        return self.file.parameter if self.file is not None else None


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


class DispatcherFactory(Protocol):
    """The dispatcher of a pipeline kind (created on first use)."""

    def __call__(self, kind: str) -> Dispatcher: ...

    async def aclose(self) -> None:
        """Close every dispatcher made (the engine's `close`)."""
        ...


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

    async def load_marker(self, schedule_id: str, baseline_key: str) -> str | None:
        """Where an interrupted paged listing resumes (None: from the start)."""
        ...

    async def commit(
        self,
        schedule_id: str,
        baseline_key: str,
        upserts: Sequence[tuple[bytes, str]],
        deletes: Sequence[bytes],
        fire: Sequence[FileChange],
        marker: str | None = None,
    ) -> int:
        """In one transaction: apply `upserts`/`deletes` to the snapshot, mark the baseline
        taken, set the listing `marker` ("" clears it, None leaves it) and write one Queued
        run per `fire` entry (UNIQUE on schedule, name, version; nothing when the schedule or
        its pipeline is Disabled). Returns the number of runs written. The write is retried
        until durable. `fire` entries must also be in `upserts`."""
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


class Poller(Protocol):
    """One datastore schedule's poller: runs until cancelled."""

    async def run(self) -> None: ...


class PollerFactory(Protocol):
    """Makes pollers for datastore schedules, and says where a datastore's file lives."""

    def poller(
        self,
        schedule: Schedule,
        datastore: Datastore,
        *,
        sink: ChangeSink,
        health: PollHealth,
        max_pending: int,
    ) -> Poller: ...

    def locate(self, datastore: Datastore, name: bytes) -> tuple[bytes | None, str | None]:
        """(absolute local path, blob URL without credentials) of a file in a datastore."""
        ...

    def can_serve(self, datastore: Datastore) -> bool:
        """Whether this replica can watch it (a local root it can read; SPEC §12)."""
        ...
