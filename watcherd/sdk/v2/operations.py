"""`MLClient.schedules`: azure-ai-ml's ScheduleOperations over watcherd's HTTP API.

azure-ai-ml returns pollers for long-running operations; watcherd finishes each one before it
answers, so `LROPoller.result()` returns at once. Errors are the SDK's (`ValidationError` for a
422 or a client-side check, `ConflictError`, `NotFoundError`, …), raised by `begin_*` itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from watcherd.client import Client, NotFoundError, quote_id
from watcherd.sdk.objects import SDK_HEADERS, parameters_json
from watcherd.sdk.v2.constants import ScheduleListViewType
from watcherd.sdk.v2.entities import JobSchedule, ScheduleTriggerResult

__all__ = ["LROPoller", "ScheduleOperations"]

T = TypeVar("T")
JSON = dict[str, Any]


class LROPoller(Generic[T]):
    """azure-core's poller, for an operation that has already finished."""

    def __init__(self, value: T) -> None:
        self._value = value
        self._callbacks: list[Callable[[T], Any]] = []

    def result(self, timeout: float | None = None) -> T:
        return self._value

    def wait(self, timeout: float | None = None) -> None:
        return None

    def done(self) -> bool:
        return True

    def status(self) -> str:
        return "Succeeded"

    def add_done_callback(self, func: Callable[[T], Any]) -> None:
        func(self._value)


class ScheduleOperations:
    """Create, read, enable, disable, delete and trigger schedules by name."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def _path(self, name: str, suffix: str = "") -> str:
        return f"/schedules/{quote_id(name)}{suffix}"

    def _pipeline_id(self, ref: str) -> str:
        data: JSON = self._client.get(f"/pipelines/{quote_id(ref)}")
        return str(data["id"])

    def get(self, name: str, **kwargs: Any) -> JobSchedule:
        """The schedule with this name (or id). Raises NotFoundError."""
        return JobSchedule._from_api(self._client.get(self._path(name)))

    def list(
        self,
        *,
        list_view_type: ScheduleListViewType | str = ScheduleListViewType.ENABLED_ONLY,
        **kwargs: Any,
    ) -> Iterable[JobSchedule]:
        """Schedules, enabled ones only by default (as azure-ai-ml)."""
        view = ScheduleListViewType(list_view_type)
        enabled_only = view is ScheduleListViewType.ENABLED_ONLY
        items = self._client.schedules(active_only=enabled_only)
        schedules = [JobSchedule._from_api(s) for s in items]
        if view is ScheduleListViewType.DISABLED_ONLY:
            schedules = [s for s in schedules if not s.is_enabled]
        return schedules

    def begin_create_or_update(
        self, schedule: JobSchedule, **kwargs: Any
    ) -> LROPoller[JobSchedule]:
        """Create the schedule, or change the existing one of that name to match it.

        Only what differs is sent on update; a trigger read by `get` and left unchanged keeps
        its stored shape. Raises ValidationError (422), ConflictError (409: e.g. a schedule
        declared in the config file, or its pipeline Disabled).
        """
        body = schedule._to_api()
        try:
            current: JSON = self._client.get(self._path(schedule.name))
        except NotFoundError:
            data = self._client.post("/schedules", body)
            return LROPoller(JobSchedule._from_api(data))
        patch = schedule._changes(current)
        if "pipeline" in patch and self._pipeline_id(patch["pipeline"]) == current.get("pipeline"):
            del patch["pipeline"]  # the same pipeline, named another way
        data = self._client.patch(self._path(current["id"]), patch) if patch else current
        return LROPoller(JobSchedule._from_api(data))

    def begin_enable(self, name: str, **kwargs: Any) -> LROPoller[JobSchedule]:
        return LROPoller(JobSchedule._from_api(self._client.post(self._path(name, "/enable"))))

    def begin_disable(self, name: str, **kwargs: Any) -> LROPoller[JobSchedule]:
        return LROPoller(JobSchedule._from_api(self._client.post(self._path(name, "/disable"))))

    def begin_delete(self, name: str, **kwargs: Any) -> LROPoller[None]:
        """Delete a Disabled API-created schedule (409 while it is enabled, as in Azure ML)."""
        current: JSON = self._client.get(self._path(name))
        self._client.delete(self._path(current["id"]))
        return LROPoller(None)

    def trigger(self, name: str, **kwargs: Any) -> ScheduleTriggerResult:
        """Run the schedule once now; `job_name` is the run's id.

        watcherd extensions: `path=` (a file of a datastore schedule) and `parameters=`.
        """
        body: JSON = {}
        if kwargs.get("path") is not None:
            from watcherd.sdk import _file_name

            body.update(_file_name(kwargs["path"]))
        if kwargs.get("parameters") is not None:
            body["parameters"] = parameters_json(kwargs["parameters"])
        run = self._client.post(self._path(name, "/trigger"), body, headers=SDK_HEADERS)
        return ScheduleTriggerResult(job_name=run["id"], schedule_action_type="CreateJob")
