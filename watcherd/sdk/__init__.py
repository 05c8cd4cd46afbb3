"""The Azure ML-shaped Python client (SPEC §7): the seed's snippets run with only imports changed.

    from watcherd.sdk import (Workspace, Experiment, PublishedPipeline, Schedule,
                              ScheduleRecurrence, TimeZone, Datastore)
    ws = Workspace.from_config()

Everything is synchronous (httpx, no event loop), so it works inside Jupyter. Errors:
`WatcherdError` (.status .code .message), `ValidationError` (422 or a client-side Azure ML
check; also a ValueError), `DaemonUnreachable` (also a ConnectionError), `NotFoundError`,
`ConflictError`, `AuthenticationError`, `ActivityFailedException` (a run waited for ended
Failed or Canceled). The Azure ML v2 shapes are in `watcherd.sdk.v2` (SPEC §13).
"""

from __future__ import annotations

import base64
import builtins
import os
from collections.abc import Mapping
from datetime import datetime
from enum import Enum
from typing import Any

from watcherd.client import (
    AuthenticationError,
    ConflictError,
    DaemonUnreachable,
    NotFoundError,
    ValidationError,
    WatcherdError,
    quote_id,
)
from watcherd.sdk.objects import (
    SDK_HEADERS,
    Datastore,
    Experiment,
    PublishedPipeline,
    Workspace,
    parameters_json,
)
from watcherd.sdk.recurrence import ScheduleRecurrence, TimeZone
from watcherd.sdk.runs import ActivityFailedException, PipelineRun

__all__ = [
    "ActivityFailedException",
    "AuthenticationError",
    "ConflictError",
    "DaemonUnreachable",
    "Datastore",
    "Experiment",
    "NotFoundError",
    "PipelineRun",
    "PublishedPipeline",
    "Schedule",
    "ScheduleRecurrence",
    "TimeZone",
    "ValidationError",
    "WatcherdError",
    "Workspace",
]

JSON = dict[str, Any]


def _invalid(message: str) -> ValidationError:
    return ValidationError(message)


def _text(value: object) -> object:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return value


def _recurrence(value: ScheduleRecurrence | Mapping[str, Any]) -> JSON:
    if isinstance(value, ScheduleRecurrence):
        value.validate()  # as Azure ML's Schedule.create and update do
        return value.to_dict()
    return {k: _text(v) for k, v in value.items() if v is not None}


def _file_name(path: str | bytes) -> JSON:
    """`path`, or `path_b64` for a name that is not UTF-8 (bytes, or a str holding undecodable
    bytes as os.fsdecode does)."""
    raw = os.fsencode(path)
    try:
        return {"path": raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {"path_b64": base64.b64encode(raw).decode("ascii")}


class _TriggerMethod(dict[str, Any]):
    """`Schedule.trigger`: the v1 method `s.trigger(path=None, parameters=None)`, and also the
    v2 trigger's dict of a `trigger` schedule (SPEC §13; empty for the other kinds)."""

    def __init__(self, schedule: Schedule, data: Mapping[str, Any] | None) -> None:
        super().__init__(data or {})
        self._schedule = schedule

    def __call__(
        self, path: str | bytes | None = None, parameters: Mapping[str, Any] | None = None
    ) -> PipelineRun:
        return self._schedule._trigger_now(path, parameters)


def _common(
    name: str | None,
    description: str | None,
    pipeline_parameters: Mapping[str, Any] | None,
    continue_on_step_failure: bool | None,
    status: str | None,
) -> JSON:
    body: JSON = {
        "name": name,
        "description": description,
        "pipeline_parameters": parameters_json(pipeline_parameters),
        "continue_on_step_failure": continue_on_step_failure,
        "status": status,
    }
    return {k: v for k, v in body.items() if v is not None}


def _extra(extra: Mapping[str, Any]) -> JSON:
    # Azure ML's private `_workflow_provider` / `_service_endpoint` are accepted and dropped.
    return {k: _text(v) for k, v in extra.items() if not k.startswith("_")}


class Schedule:
    """A schedule: a pipeline, an experiment and one trigger (recurrence, cron or datastore).

    Attributes follow Azure ML: `id`, `name`, `description`, `status`, `pipeline_id`,
    `recurrence`, `datastore_name`, `polling_interval`, `data_path_parameter_name`,
    `path_on_datastore`, `continue_on_step_failure`; plus `experiment_name`, `cron`,
    `time_zone`, `pipeline_parameters`, `source`, `trigger_words`, `next_fire_times`.
    A schedule with a v2 `trigger` (SPEC §13) has `recurrence` None and its trigger's dict in
    `trigger`, which is also the method that runs the schedule now.
    """

    trigger: _TriggerMethod

    def __init__(self, workspace: Workspace, data: JSON) -> None:
        self._ws = workspace
        self._load(data)

    def _load(self, data: JSON) -> None:
        self._data = data
        self.id: str = data["id"]
        self.name: str = data["name"]
        self.description: str | None = data.get("description")
        self.status: str = data["status"]
        self.pipeline_id: str = data["pipeline"]
        self.experiment_name: str = data["experiment_name"]
        rec = data.get("recurrence")
        self.recurrence = ScheduleRecurrence._from_dict(rec) if rec else None
        self.trigger = _TriggerMethod(self, data.get("trigger"))
        self.cron: str | None = data.get("cron")
        self.time_zone: str | None = data.get("time_zone")
        self.datastore_name: str | None = data.get("datastore")
        self.polling_interval: float | str | None = data.get("polling_interval")
        self.data_path_parameter_name: str | None = data.get("data_path_parameter_name")
        self.path_on_datastore: str | None = data.get("path_on_datastore")
        self.continue_on_step_failure: bool | None = data.get("continue_on_step_failure")
        self.pipeline_parameters: dict[str, str] = dict(data.get("pipeline_parameters") or {})
        self.source: str | None = data.get("source")
        self.trigger_words: str | None = data.get("trigger_words")
        self.next_fire_times: list[str] = list(data.get("next_fire_times") or [])

    @property
    def schedule_type(self) -> str:
        """ "Recurrence", "Cron", "DataStore", or the v2 trigger's type ("recurrence", "cron")."""
        if self.datastore_name is not None:
            return "DataStore"
        if self.trigger:
            return str(self.trigger.get("type", "trigger"))
        return "Cron" if self.cron is not None else "Recurrence"

    def _path(self, suffix: str = "") -> str:
        return f"/schedules/{quote_id(self.id)}{suffix}"

    # ── creating and finding ──────────────────────────────────────────────────

    @staticmethod
    def create(
        workspace: Workspace,
        name: str,
        pipeline_id: str,
        experiment_name: str,
        recurrence: ScheduleRecurrence | Mapping[str, Any] | None = None,
        description: str | None = None,
        pipeline_parameters: Mapping[str, Any] | None = None,
        wait_for_provisioning: bool = False,
        wait_timeout: int = 3600,
        datastore: Datastore | str | None = None,
        polling_interval: float | str | None = 5,
        data_path_parameter_name: str | None = None,
        continue_on_step_failure: bool | None = None,
        path_on_datastore: str | None = None,
        status: str = "Active",
        **extra: Any,
    ) -> Schedule:
        """Create a time schedule (`recurrence`) or a file schedule (`datastore`).

        `extra` takes the other trigger keys of the config file (`end_time`, `catch_up`,
        `concurrency`, `pattern`, `settle`, …). `wait_for_provisioning` and `wait_timeout` are
        accepted and ignored: nothing needs provisioning.

        Raises:
            ValidationError: Azure ML's client-side checks, or the daemon's (422).
            ConflictError: the name exists, or the pipeline is Disabled (409).
        """
        del wait_for_provisioning, wait_timeout
        if recurrence is not None and datastore is not None:
            raise _invalid("Can not specify both a Recurrence and a Datastore")
        if recurrence is None and datastore is None and "cron" not in extra:
            raise _invalid("Must specify either a Recurrence or a Datastore.")
        if datastore is None and data_path_parameter_name is not None:
            raise _invalid(
                "Data Path parameter name can only be specified for Datastore schedules."
            )
        if datastore is None and path_on_datastore is not None:
            raise _invalid(
                "Path on datastore parameter can only be specified for Datastore schedules."
            )
        body: JSON = {"pipeline": pipeline_id, "experiment_name": experiment_name}
        body |= _common(name, description, pipeline_parameters, continue_on_step_failure, status)
        if recurrence is not None:
            body["recurrence"] = _recurrence(recurrence)
        elif datastore is not None:
            body["datastore"] = datastore.name if isinstance(datastore, Datastore) else datastore
            trigger = {
                "polling_interval": polling_interval,
                "path_on_datastore": path_on_datastore,
                "data_path_parameter_name": data_path_parameter_name,
            }
            body |= {k: v for k, v in trigger.items() if v is not None}
        body |= _extra(extra)
        return Schedule(workspace, workspace._client.post("/schedules", body))

    @staticmethod
    def create_cron(
        workspace: Workspace,
        name: str,
        pipeline_id: str,
        experiment_name: str,
        expression: str,
        time_zone: Enum | str | None = None,
        start_time: datetime | str | None = None,
        end_time: datetime | str | None = None,
        description: str | None = None,
        pipeline_parameters: Mapping[str, Any] | None = None,
        continue_on_step_failure: bool | None = None,
        status: str = "Active",
    ) -> Schedule:
        """Create a schedule from a five-field cron expression evaluated in `time_zone`."""
        extra: dict[str, Any] = {
            "time_zone": time_zone,
            "start_time": start_time,
            "end_time": end_time,
        }
        return Schedule.create(
            workspace,
            name,
            pipeline_id,
            experiment_name,
            description=description,
            pipeline_parameters=pipeline_parameters,
            continue_on_step_failure=continue_on_step_failure,
            status=status,
            cron=expression,
            **{k: v for k, v in extra.items() if v is not None},
        )

    @staticmethod
    def list(
        workspace: Workspace, active_only: bool = True, pipeline_id: str | None = None
    ) -> list[Schedule]:
        """Schedules; with `pipeline_id`, that pipeline's schedules of every status."""
        if pipeline_id is not None:
            return Schedule.get_schedules_for_pipeline_id(workspace, pipeline_id)
        items = workspace._client.schedules(active_only=active_only)
        return [Schedule(workspace, s) for s in items]

    @staticmethod
    def get_schedules_for_pipeline_id(
        workspace: Workspace, pipeline_id: str
    ) -> builtins.list[Schedule]:
        items = workspace._client.schedules(pipeline_id=pipeline_id, active_only=False)
        return [Schedule(workspace, s) for s in items]

    @staticmethod
    def get(workspace: Workspace, id: str) -> Schedule:  # noqa: A002 - Azure ML's name
        """The schedule with this id (or name)."""
        return Schedule(workspace, workspace._client.get(f"/schedules/{quote_id(id)}"))

    # ── changing ──────────────────────────────────────────────────────────────

    def enable(self, wait_for_provisioning: bool = False, wait_timeout: int = 3600) -> None:
        """Set the schedule Active (409 while its pipeline is Disabled)."""
        self._load(self._ws._client.post(self._path("/enable")))

    def disable(self, wait_for_provisioning: bool = False, wait_timeout: int = 3600) -> None:
        """Set the schedule Disabled: it starts nothing until enabled again."""
        self._load(self._ws._client.post(self._path("/disable")))

    def update(
        self,
        name: str | None = None,
        description: str | None = None,
        recurrence: ScheduleRecurrence | Mapping[str, Any] | None = None,
        pipeline_parameters: Mapping[str, Any] | None = None,
        status: str | None = None,
        wait_for_provisioning: bool = False,
        wait_timeout: int = 3600,
        datastore: Datastore | str | None = None,
        polling_interval: float | str | None = None,
        data_path_parameter_name: str | None = None,
        continue_on_step_failure: bool | None = None,
        path_on_datastore: str | None = None,
        **extra: Any,
    ) -> None:
        """Change the given keys (None keeps; `pipeline_parameters={}` clears).

        The trigger kind is fixed at creation: a recurrence for a datastore schedule, or a
        datastore for a time schedule, raises ValidationError with Azure ML's message.
        """
        del wait_for_provisioning, wait_timeout
        if recurrence is not None and self.datastore_name is not None:
            raise _invalid("Can not specify a recurrence for a Datastore schedule.")
        if datastore is not None and self.datastore_name is None:
            raise _invalid("Can not specify a Datastore for a Recurrence schedule.")
        if status is not None and status not in ("Active", "Disabled"):
            raise _invalid("Status must be either Active or Disabled")
        body = _common(name, description, pipeline_parameters, continue_on_step_failure, status)
        if recurrence is not None:
            body["recurrence"] = _recurrence(recurrence)
        if datastore is not None:
            body["datastore"] = datastore.name if isinstance(datastore, Datastore) else datastore
        trigger = {
            "polling_interval": polling_interval,
            "data_path_parameter_name": data_path_parameter_name,
            "path_on_datastore": path_on_datastore,
        }
        body |= {k: v for k, v in trigger.items() if v is not None} | _extra(extra)
        self._load(self._ws._client.patch(self._path(), body))

    def delete(self) -> None:
        """Delete a Disabled API-created schedule (declared ones belong to the config file)."""
        self._ws._client.delete(self._path())

    def refresh(self) -> Schedule:
        self._load(self._ws._client.get(self._path()))
        return self

    # ── runs ──────────────────────────────────────────────────────────────────

    def _trigger_now(
        self, path: str | bytes | None = None, parameters: Mapping[str, Any] | None = None
    ) -> PipelineRun:
        """`s.trigger(path=None, parameters=None)`: run now; a datastore schedule needs `path`,
        a file directly in its directory (bytes, or str; any name, UTF-8 or not)."""
        body: JSON = {} if path is None else _file_name(path)
        if parameters is not None:
            body["parameters"] = parameters_json(parameters)
        data = self._ws._client.post(self._path("/trigger"), body, headers=SDK_HEADERS)
        return PipelineRun(self._ws, data)

    def get_pipeline_runs(self) -> builtins.list[PipelineRun]:
        """Every run of this schedule, newest first."""
        return [
            PipelineRun(self._ws, r) for r in self._ws._client.items("/runs", schedule_id=self.id)
        ]

    def get_last_pipeline_run(self) -> PipelineRun | None:
        """The newest run, or None when the schedule never ran."""
        items = self._ws._client.get("/runs", schedule_id=self.id, limit=1)["items"]
        return PipelineRun(self._ws, items[0]) if items else None

    def __repr__(self) -> str:
        trigger = self.trigger_words or self.schedule_type
        return (
            f"Schedule(Name: {self.name}, Id: {self.id}, Status: {self.status}, "
            f"Pipeline Id: {self.pipeline_id}, Experiment: {self.experiment_name}, "
            f"Trigger: {trigger})"
        )
