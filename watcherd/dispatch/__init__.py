"""The seam between the engine and run targets: what a dispatcher gets and returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

from watcherd.models import Pipeline, Run, RunStatus, Schedule

__all__ = ["Dispatcher", "FileRef", "Outcome", "RunContext"]


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
