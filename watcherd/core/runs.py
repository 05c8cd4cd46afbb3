"""Runs before the store: identity, the lifecycle as one transition table, and the builders.

A due slot, an eligible file version, a manual trigger or a failure each become a `NewRun`
whose parameters (pipeline < schedule < trigger extras) and file are resolved here, when the
run is queued, and travel with it (SPEC §5). Its id is stable for its (schedule, dedup) key.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import MappingProxyType

from watcherd.core.errors import InvalidTransition
from watcherd.core.models import (
    NAMESPACE,
    TERMINAL,
    FileRef,
    Pipeline,
    Run,
    RunStatus,
    Schedule,
    TimeOptions,
)
from watcherd.core.timefmt import format_utc

__all__ = [
    "ALLOWED",
    "NewRun",
    "apply_gates",
    "concurrency_gate",
    "display_name",
    "file_run",
    "manual_run",
    "on_failure_run",
    "parameters_for",
    "run_id_for",
    "slot_dedup",
    "slot_run",
    "slot_runs",
    "submit_run",
    "sources_of",
    "transition",
]

Q, R = RunStatus.QUEUED, RunStatus.RUNNING

# Every status change a run may make (SPEC §5). Queued → Failed is a run whose pipeline is no
# longer configured; terminal → Queued is `runs retry`; Running → Queued is an interrupted run.
ALLOWED: Mapping[RunStatus, frozenset[RunStatus]] = {
    Q: frozenset({R, RunStatus.CANCELED, RunStatus.SKIPPED, RunStatus.FAILED}),
    R: frozenset(
        {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.SUBMITTED, RunStatus.CANCELED, Q}
    ),
    **{t: frozenset({Q}) for t in TERMINAL},
}


def transition(run_id: str, current: RunStatus, to: RunStatus) -> RunStatus:
    """`to`, when a run in `current` may move there; else raises InvalidTransition."""
    if to not in ALLOWED[current]:
        raise InvalidTransition(run_id, current.value, to.value)
    return to


def sources_of(to: RunStatus, among: Collection[RunStatus] | None = None) -> frozenset[RunStatus]:
    """The statuses a run may reach `to` from (restricted to `among` when given).

    Raises InvalidTransition when `among` names a status that may not move to `to`: asking the
    store for a refused move is a bug, not a race."""
    if among is None:
        return frozenset(s for s, targets in ALLOWED.items() if to in targets)
    for s in among:
        transition("?", s, to)
    return frozenset(among)


_NS = NAMESPACE.bytes


def run_id_for(schedule_id: str, dedup: str) -> str:
    """The run id is stable for its (schedule, dedup) key: `uuid5(NAMESPACE, "run/<schedule
    id>/<dedup>")`, spelled out (SHA-1, version and variant bits) because building a
    `uuid.UUID` for each run costs more than the hash, on the path of every run."""
    h = bytearray(hashlib.sha1(_NS + f"run/{schedule_id}/{dedup}".encode()).digest()[:16])
    h[6] = (h[6] & 0x0F) | 0x50  # version 5
    h[8] = (h[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = h.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def display_name(name: bytes) -> str:
    """A file name for people: invalid UTF-8 bytes shown as \\xNN."""
    return name.decode("utf-8", "backslashreplace")


def slot_dedup(slot: datetime) -> str:
    return f"slot:{format_utc(slot, micro=True)}"


@dataclass(frozen=True, slots=True, kw_only=True)
class NewRun:
    """A run to insert as Queued (or directly Skipped) under its dedup key."""

    schedule_id: str
    pipeline_id: str
    experiment: str
    dedup: str
    trigger: Mapping[str, object]
    parameters: Mapping[str, str]
    file: FileRef | None = None
    status: RunStatus = RunStatus.QUEUED
    error: str | None = None
    # A time schedule's "forbid"/"queue" policy: the store re-checks it against every
    # replica's Queued and Running runs in the inserting transaction (SPEC §3.3, §12).
    gate: TimeOptions | None = None
    id: str = field(init=False, repr=False, compare=False)  # run_id_for(schedule_id, dedup)

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", run_id_for(self.schedule_id, self.dedup))

    @property
    def path(self) -> bytes | None:
        return self.file.relative_path if self.file is not None else None

    def recorded(self, now: datetime) -> Run:
        """The run as the store records it when inserted at `now` (its seq aside)."""
        return Run(
            id=self.id,
            schedule_id=self.schedule_id,
            pipeline_id=self.pipeline_id,
            experiment_name=self.experiment,
            status=self.status,
            trigger=self.trigger,
            parameters=self.parameters,
            file=self.file,
            error=self.error,
            queued_at=now,
            finished_at=now if self.status in TERMINAL else None,
        )

    def skipped(self, why: str) -> NewRun:
        """The same run, recorded Skipped with a reason (concurrency, queue full)."""
        return replace(self, status=RunStatus.SKIPPED, error=why)


def parameters_for(
    pipeline: Pipeline | None, schedule: Schedule, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Pipeline `parameters` < schedule `pipeline_parameters` < `extra` (SPEC §2)."""
    out = dict(pipeline.parameters) if pipeline else {}
    out.update(schedule.pipeline_parameters)
    out.update(extra or {})
    return out


def slot_run(schedule: Schedule, pipeline: Pipeline | None, slot: datetime) -> NewRun:
    """The run of one due slot of a time schedule."""
    return slot_runs(schedule, pipeline, (slot,))[0]


def slot_runs(
    schedule: Schedule, pipeline: Pipeline | None, slots: Sequence[datetime]
) -> list[NewRun]:
    """The runs of due slots of one time schedule (a catch-up's), oldest first; they share
    one parameters mapping (runs never change theirs)."""
    parameters = parameters_for(pipeline, schedule)
    gate = _gate(schedule)
    out = []
    for slot in slots:
        # Keyed by the UTC instant: two wall times of a zone's repeated hour compare equal.
        dedup, trigger = _slot_texts(slot if slot.tzinfo is UTC else slot.astimezone(UTC))
        out.append(
            NewRun(
                schedule_id=schedule.id,
                pipeline_id=schedule.pipeline,
                experiment=schedule.experiment_name,
                dedup=dedup,
                trigger=trigger,
                parameters=parameters,
                gate=gate,
            )
        )
    return out


@functools.lru_cache(maxsize=4096)  # > max_catch_up: one schedule's catch-up fits whole
def _slot_texts(slot: datetime) -> tuple[str, Mapping[str, object]]:
    """A slot's dedup key and trigger, shared by every run of that instant: schedules that
    share a rule fire together (a catch-up's runs, a minute's timers). The trigger is
    read-only: one run's change would be every run's."""
    text = format_utc(slot, micro=True)  # once: the trigger's is its first 19 characters
    return f"slot:{text}", MappingProxyType({"kind": "time", "slot": f"{text[:19]}Z"})


def _gate(schedule: Schedule) -> TimeOptions | None:
    opts = getattr(schedule.trigger, "options", None)
    return opts if isinstance(opts, TimeOptions) and opts.concurrency != "allow" else None


def file_run(schedule: Schedule, pipeline: Pipeline | None, file: FileRef) -> NewRun:
    """The run of one eligible file version of a datastore schedule (UNIQUE per version)."""
    return NewRun(
        schedule_id=schedule.id,
        pipeline_id=schedule.pipeline,
        experiment=schedule.experiment_name,
        dedup=f"file:{file.relative_path.hex()}:{file.version}",
        trigger={
            "kind": "file",
            "datastore": file.datastore,
            "path": display_name(file.relative_path),
            "version": file.version,
        },
        parameters=parameters_for(pipeline, schedule, _file_parameter(file)),
        file=file,
    )


def _file_parameter(file: FileRef | None) -> dict[str, str] | None:
    """The file's binding among a run's stored parameters (SPEC §5: resolved when it is
    queued): its path in the datastore, as its trigger shows it. Each dispatcher binds the
    file itself (a local path, DataPathAssignments, a blob URL): this is what is shown."""
    if file is None or not file.parameter:
        return None
    return {file.parameter: display_name(file.relative_path)}


def manual_run(
    schedule: Schedule,
    pipeline: Pipeline | None,
    *,
    by: str,
    file: FileRef | None,
    parameters: Mapping[str, str] | None,
    nonce: str,
) -> NewRun:
    """A run started by hand (`schedules trigger`); `nonce` makes its key unique."""
    trigger: dict[str, object] = {"kind": "manual", "by": by}
    if file is not None:
        trigger["path"] = display_name(file.relative_path)
    return NewRun(
        schedule_id=schedule.id,
        pipeline_id=schedule.pipeline,
        experiment=schedule.experiment_name,
        dedup=f"manual:{nonce}",
        trigger=trigger,
        parameters=parameters_for(
            pipeline, schedule, {**(parameters or {}), **(_file_parameter(file) or {})}
        ),
        file=file,
        gate=_gate(schedule),
    )


def submit_run(
    pipeline: Pipeline,
    experiment: str,
    *,
    by: str,
    parameters: Mapping[str, str] | None,
    continue_on_step_failure: bool | None,
    nonce: str,
) -> NewRun:
    """A run of a pipeline with no schedule (`PublishedPipeline.submit`, SPEC §5)."""
    trigger: dict[str, object] = {"kind": "manual", "by": by}
    if continue_on_step_failure is not None:
        trigger["continue_on_step_failure"] = continue_on_step_failure
    return NewRun(
        schedule_id="",
        pipeline_id=pipeline.id,
        experiment=experiment,
        dedup=f"submit:{nonce}",
        trigger=trigger,
        parameters={**pipeline.parameters, **(parameters or {})},
    )


def on_failure_run(
    failed: Run, pipeline_id: str, *, error: str | None, exit_code: int | None
) -> NewRun:
    """The one run of a pipeline's `on_failure` pipeline for a failed run (SPEC §5)."""
    doc = {
        "id": failed.id,
        "schedule_id": failed.schedule_id or None,  # a submit's: null, as the API shows it
        "pipeline_id": failed.pipeline_id,
        "experiment_name": failed.experiment_name,
        "error": error,
        "exit_code": exit_code,
        "trigger": dict(failed.trigger),
    }
    return NewRun(
        schedule_id=failed.schedule_id,
        pipeline_id=pipeline_id,
        experiment=failed.experiment_name,
        dedup=f"on_failure:{failed.id}",
        trigger={"kind": "on_failure", "run_id": failed.id},
        parameters={"failed_run": json.dumps(doc)},
    )


def apply_gates(runs: Sequence[NewRun], active: Mapping[str, tuple[int, int]]) -> list[NewRun]:
    """`runs` with their `gate` applied against the stored (Queued, Running) counts of their
    schedules, runs earlier in the batch counted too: those over the policy become Skipped."""
    pending: dict[str, int] = {}
    out = []
    for r in runs:
        if r.gate is not None and r.status is RunStatus.QUEUED:
            queued, running = active.get(r.schedule_id, (0, 0))
            extra = pending.get(r.schedule_id, 0)
            why = concurrency_gate(r.gate, queued=queued + extra, running=running)
            if why is not None:
                r = r.skipped(why)
            else:
                pending[r.schedule_id] = extra + 1
        out.append(r)
    return out


def concurrency_gate(opts: TimeOptions, *, queued: int, running: int) -> str | None:
    """Why a new slot or manual run of a time schedule is recorded Skipped, or None (§3.3).

    `queued` and `running` count the schedule's runs already Queued and Running (including
    runs of the same batch not yet committed)."""
    if opts.concurrency == "forbid" and queued + running:
        return "previous run still active (concurrency = forbid)"
    if opts.concurrency == "queue" and queued >= opts.max_queued:
        return "queue full"
    return None
