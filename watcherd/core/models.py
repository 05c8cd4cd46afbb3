"""Frozen values shared by every layer: config objects, schedules, triggers and runs.

Size: over 400 lines of declarations only (dataclasses and enums, no logic to speak of).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from watcherd.core.cron import CronRule
from watcherd.core.recurrence import Recurrence

__all__ = [
    "NAMESPACE",
    "AzureMLTarget",
    "BatchEndpointTarget",
    "BlobDatastore",
    "BlobEvents",
    "CommandTarget",
    "Config",
    "CronTrigger",
    "DaemonSettings",
    "Datastore",
    "DatastoreTrigger",
    "FileRef",
    "HttpTarget",
    "LocalDatastore",
    "Pipeline",
    "RecurrenceTrigger",
    "RetryPolicy",
    "Run",
    "RunStatus",
    "Schedule",
    "Source",
    "Status",
    "StoredSchedule",
    "TERMINAL",
    "TimeOptions",
    "Trigger",
    "default_pipeline_id",
    "default_schedule_id",
]

NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, "watcherd")


_NAMESPACE_BYTES = NAMESPACE.bytes


def _uuid5(name: str) -> str:
    """`str(uuid.uuid5(NAMESPACE, name))`, without building UUID objects: a config of 10k
    schedules computes 10k of these at load (issue #14); a test pins the equality."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name.encode("utf-8")).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def default_pipeline_id(name: str) -> str:
    """The id a pipeline gets when its config declares none (SPEC §1)."""
    return _uuid5("pipeline/" + name)


def default_schedule_id(name: str) -> str:
    """The id a declared schedule gets when its config declares none (SPEC §2)."""
    return _uuid5("schedule/" + name)


class Status(StrEnum):
    """Status of a pipeline or a schedule."""

    ACTIVE = "Active"
    DISABLED = "Disabled"


class Source(StrEnum):
    """Where a schedule comes from."""

    FILE = "file"
    API = "api"
    REMOVED = "removed"


class RunStatus(StrEnum):
    """Run lifecycle (SPEC §5)."""

    QUEUED = "Queued"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    SUBMITTED = "Submitted"
    CANCELED = "Canceled"
    SKIPPED = "Skipped"


TERMINAL = frozenset(
    {
        RunStatus.COMPLETED,
        RunStatus.FAILED,
        RunStatus.SUBMITTED,
        RunStatus.CANCELED,
        RunStatus.SKIPPED,
    }
)


# ── datastores ────────────────────────────────────────────────────────────────


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalDatastore:
    """A local directory whose files can trigger runs."""

    name: str
    root: Path
    # "within_root": a symlink is followed only while its target resolves inside the real
    # root (SPEC §4); "always": any target.
    follow_symlinks: Literal["within_root", "always"] = "within_root"
    kind: Literal["local"] = "local"


@dataclass(frozen=True, slots=True, kw_only=True)
class BlobDatastore:
    """An Azure Blob container; exactly one of connection_string / account_url is set."""

    name: str
    container: str
    connection_string: str | None = None
    account_url: str | None = None
    sas_token: str | None = None
    account_key: str | None = None
    azureml_datastore: str | None = None  # its name in an Azure ML workspace (SPEC §13)
    kind: Literal["azure_blob"] = "azure_blob"


Datastore = LocalDatastore | BlobDatastore


# ── pipelines ─────────────────────────────────────────────────────────────────


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Automatic tries for retryable failures: `attempts` in all, backoff capped at max_delay."""

    attempts: int = 5
    max_delay: timedelta = timedelta(minutes=5)


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandTarget:
    """Steps of argv run in order without a shell."""

    steps: tuple[tuple[str, ...], ...]
    cwd: Path | None = None  # None: the config file's directory
    env: Mapping[str, str] = field(default_factory=dict)
    inherit_env: tuple[str, ...] = ()
    retry_exit_codes: tuple[int, ...] = ()
    log_limit: int = 1024 * 1024
    kind: Literal["command"] = "command"


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpTarget:
    """POST the run (SPEC §5 body) to a webhook."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    request_timeout: timedelta = timedelta(seconds=30)
    kind: Literal["http"] = "http"


@dataclass(frozen=True, slots=True, kw_only=True)
class AzureMLTarget:
    """POST to an Azure ML published pipeline's REST endpoint with an Azure AD token."""

    endpoint: str
    scope: str = "https://management.azure.com/.default"
    kind: Literal["azureml"] = "azureml"


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchEndpointTarget:
    """Invoke an Azure ML batch endpoint (SPEC §13): the file as a UriFile input, every
    parameter as a Literal input, a bearer token for `scope`."""

    endpoint: str  # the invocation URI
    deployment: str | None = None  # azureml-model-deployment header
    input_name: str = "input_data"
    request_timeout: timedelta = timedelta(seconds=30)
    scope: str = "https://ml.azure.com/.default"
    kind: Literal["batch_endpoint"] = "batch_endpoint"


Target = CommandTarget | HttpTarget | AzureMLTarget | BatchEndpointTarget


@dataclass(frozen=True, slots=True, kw_only=True)
class Pipeline:
    """A published pipeline: something to run, declared in the config file."""

    id: str
    name: str
    target: Target
    description: str = ""
    status: Status = Status.ACTIVE
    parameters: Mapping[str, str] = field(default_factory=dict)
    continue_on_step_failure: bool = False
    retry: RetryPolicy = RetryPolicy()
    timeout: timedelta | None = None
    on_failure: str | None = None  # a pipeline id (resolved from a name at load)

    @property
    def kind(self) -> str:
        return self.target.kind


# ── triggers ──────────────────────────────────────────────────────────────────

CatchUp = Literal["none", "last", "all"]
Concurrency = Literal["allow", "forbid", "queue"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeOptions:
    """Missed-slot and overlap policy of a time schedule (SPEC §3.3)."""

    catch_up: CatchUp = "none"
    max_catch_up: int = 10
    concurrency: Concurrency = "allow"
    max_queued: int = 10


@dataclass(frozen=True, slots=True, kw_only=True)
class RecurrenceTrigger:
    """Azure ML's ScheduleRecurrence, plus end_time and the §3.3 options.

    Also an Azure ML v2 recurrence trigger (SPEC §13): then `recurrence.v2` is set and `v2`
    holds the `trigger` table as given, which the API and export show instead of
    `recurrence`."""

    recurrence: Recurrence
    end_time: datetime | None = None  # naive wall time in the recurrence's zone
    options: TimeOptions = TimeOptions()
    v2: Mapping[str, object] | None = None
    kind: Literal["recurrence"] = "recurrence"


@dataclass(frozen=True, slots=True, kw_only=True)
class CronTrigger:
    """A five-field cron expression in a time zone, plus the §3.3 options.

    Also an Azure ML v2 cron trigger (SPEC §13): then `cron.v2` is set and `v2` holds the
    `trigger` table as given."""

    cron: CronRule
    options: TimeOptions = TimeOptions()
    v2: Mapping[str, object] | None = None
    kind: Literal["cron"] = "cron"


@dataclass(frozen=True, slots=True, kw_only=True)
class BlobEvents:
    """Event Grid BlobCreated events delivered to an Azure Storage Queue (SPEC §4)."""

    queue: str
    queue_account_url: str | None = None  # default: the datastore's account
    queue_connection_string: str | None = None
    poison_queue: str | None = None  # default: "<queue>-poison"

    @property
    def poison(self) -> str:
        return self.poison_queue or f"{self.queue}-poison"


DEFAULT_IGNORE = (".*", "*.tmp", "*.part", "*.partial", "*.crdownload", "*.swp", "*~", "~$*")


@dataclass(frozen=True, slots=True, kw_only=True)
class DatastoreTrigger:
    """Start one run per new or modified file directly inside the watched directory."""

    datastore: str  # a [datastores.*] name
    path_on_datastore: str = ""  # relative, posix, no "..", "" = the root
    polling_interval: timedelta = timedelta(minutes=5)
    data_path_parameter_name: str | None = None
    pattern: tuple[str, ...] = ("*",)
    ignore: tuple[str, ...] = ()  # added to DEFAULT_IGNORE unless ignore_defaults is false
    ignore_defaults: bool = True
    settle: timedelta | None = None  # None: 2s local, 0s blob
    initial: Literal["skip", "fire"] = "skip"
    # local: True/False (None: on, on Linux); azure_blob: BlobEvents (None: no queue)
    events: bool | BlobEvents | None = None
    list_page_size: int = 5000  # blobs per listing page (SPEC §4 "Large containers")
    kind: Literal["datastore"] = "datastore"

    @property
    def ignore_globs(self) -> tuple[str, ...]:
        return (DEFAULT_IGNORE if self.ignore_defaults else ()) + self.ignore


Trigger = RecurrenceTrigger | CronTrigger | DatastoreTrigger


# ── schedules ─────────────────────────────────────────────────────────────────


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    """Ties a pipeline, an experiment and a trigger."""

    id: str
    name: str
    pipeline: str  # pipeline id
    experiment_name: str
    trigger: Trigger
    description: str = ""
    status: Status = Status.ACTIVE
    pipeline_parameters: Mapping[str, str] = field(default_factory=dict)
    continue_on_step_failure: bool | None = None
    source: Source = Source.FILE

    @property
    def kind(self) -> str:
        return self.trigger.kind


# ── daemon and whole config ───────────────────────────────────────────────────


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonSettings:
    """The [daemon] table."""

    state_dir: Path
    api: str = "127.0.0.1:8765"  # "host:port", "unix:/path", or "" (no API)
    api_hosts: tuple[str, ...] = ()
    token: str = ""  # "": generated once into state_dir/token
    max_concurrent_runs: int = 8
    max_pending: int = 10000
    shutdown_timeout: timedelta = timedelta(seconds=25)
    log_format: Literal["auto", "json", "console"] = "auto"
    retention: timedelta = timedelta(days=30)
    readyz_strict: bool = False
    database: str = ""  # a PostgreSQL libpq URL: replicas (SPEC §12); "": SQLite in state_dir
    replica_id: str = ""  # "": host name + "-" + a random suffix kept in state_dir
    lease_ttl: timedelta = timedelta(seconds=15)


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """A loaded, validated config file. Mappings are keyed by name."""

    path: Path | None
    base_dir: Path  # relative paths resolve here; default cwd of commands
    daemon: DaemonSettings
    datastores: Mapping[str, Datastore] = field(default_factory=dict)
    pipelines: Mapping[str, Pipeline] = field(default_factory=dict)
    schedules: tuple[Schedule, ...] = ()
    secrets: frozenset[str] = frozenset()  # secret values to redact wherever text is shown
    # sha256 (16 hex) of the file's datastores, pipelines and schedules as written (after
    # ${…}): what replicas compare (engine.config_hash); "" for a Config built in code
    digest: str = field(default="", compare=False, repr=False)
    # pipelines by id: every schedule resolves its pipeline, 10k of them at load (issue #14)
    _by_id: Mapping[str, Pipeline] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {p.id: p for p in self.pipelines.values()})

    def pipeline_by_id(self, ident: str) -> Pipeline | None:
        """A pipeline by id, else by name."""
        return self._by_id.get(ident) or self.pipelines.get(ident)


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredSchedule:
    """A schedule as the state store keeps it: its JSON spec and its timer state."""

    id: str
    name: str
    source: str  # file | api | removed
    status: str  # the current status (run-time enable/disable included)
    file_status: str | None  # declared schedules: the status last seen in the file
    spec: Mapping[str, Any]  # the API shape (config.schedule_to_dict), read-only keys dropped
    trigger_key: str | None  # time schedules: core.slots.trigger_key of the trigger
    anchor: datetime | None  # time schedules: see core.slots
    cursor: datetime | None  # time schedules: the last slot handled
    created_at: datetime
    updated_at: datetime
    # time schedules: (core.slots.hint_key, the next slot or None when ended) as last stored;
    # valid only while hint_key of the current trigger, anchor and cursor is the same text
    next_hint: tuple[str, datetime | None] | None = None

    def moved(
        self, cursor: datetime, next_hint: tuple[str, datetime | None] | None
    ) -> StoredSchedule:
        """This row with a new cursor and next slot (every slot recorded: a direct copy, at a
        fraction of `dataclasses.replace`'s cost)."""
        return StoredSchedule(
            id=self.id,
            name=self.name,
            source=self.source,
            status=self.status,
            file_status=self.file_status,
            spec=self.spec,
            trigger_key=self.trigger_key,
            anchor=self.anchor,
            cursor=cursor,
            created_at=self.created_at,
            updated_at=self.updated_at,
            next_hint=next_hint,
        )


# ── runs ──────────────────────────────────────────────────────────────────────


@dataclass(frozen=True, slots=True, kw_only=True)
class FileRef:
    """The file a file run was queued for, resolved when it was queued (SPEC §5)."""

    datastore: str
    relative_path: bytes  # relative to the datastore root (blob: the blob name), raw bytes
    local_path: bytes | None = None  # absolute path (local datastores)
    url: str | None = None  # the blob's URL without credentials (blob datastores)
    version: str = ""
    parameter: str | None = None  # data_path_parameter_name: the pipeline parameter it binds


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    """One execution of a pipeline for a schedule (SPEC §5).

    `trigger` is {"kind": "time", "slot"}, {"kind": "file", "datastore", "path", "version"},
    {"kind": "manual", "by"} or {"kind": "on_failure", "run_id"}; file paths are shown with
    invalid bytes as \\xNN, the raw bytes are in `file`. `parameters` (pipeline < schedule <
    trigger extras) and `file` were resolved when the run was queued and travel with it.
    """

    id: str
    schedule_id: str
    pipeline_id: str
    experiment_name: str
    status: RunStatus
    trigger: Mapping[str, object]
    parameters: Mapping[str, str] = field(default_factory=dict)
    file: FileRef | None = None
    attempt: int = 1
    attempts: tuple[Mapping[str, object], ...] = ()
    error: str | None = None
    exit_code: int | None = None
    remote_id: str | None = None
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    next_attempt_at: datetime | None = None
    seq: int = 0  # insertion order in the store (list cursors)

    @property
    def path(self) -> bytes | None:
        """The raw file name relative to the datastore root, for file and path-manual runs."""
        return self.file.relative_path if self.file is not None else None
