"""The SDK's objects other than Schedule: Workspace, Experiment, Datastore, PublishedPipeline,
PipelineRun, ScheduleRecurrence and TimeZone (import them from `watcherd.sdk`)."""

from __future__ import annotations

import os
import sys
import time
import weakref
from collections.abc import Mapping
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any

from watcherd.client import (
    Client,
    ValidationError,
    WatcherdError,
    discover,
    quote_id,
    read_config_json,
)
from watcherd.core import errors as _errors
from watcherd.core.recurrence import make_recurrence
from watcherd.core.timezones import WINDOWS_ZONE_NAMES, enum_member_name

__all__ = [
    "TERMINAL_STATUSES",
    "Datastore",
    "Experiment",
    "PipelineRun",
    "PublishedPipeline",
    "ScheduleRecurrence",
    "TimeZone",
    "Workspace",
]

JSON = dict[str, Any]
TERMINAL_STATUSES = frozenset({"Completed", "Failed", "Submitted", "Canceled", "Skipped"})

# Azure ML's TimeZone enum: a member's name is its value without non-alphanumerics.
TimeZone = Enum(  # type: ignore[misc]  # members computed from the 131 Windows names
    "TimeZone",
    [(enum_member_name(v), v) for v in WINDOWS_ZONE_NAMES],
    module=__name__,
)


def _invalid(message: str, key: str = "") -> ValidationError:
    return ValidationError(message, key_path=key or None)


class Workspace:
    """A connection to one watcherd daemon (Azure ML's workspace)."""

    def __init__(self, url: str, token: str | None = None, *, client: Client | None = None):
        self._client = client or Client(url, token)
        self.url = self._client.url
        self.name = self.url
        # Notebooks rarely close a workspace: close its connections when it is collected.
        weakref.finalize(self, self._client.close)

    @classmethod
    def from_config(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        url: str | None = None,
        token: str | None = None,
    ) -> Workspace:
        """Find the daemon: `$WATCHERD_URL` (+ `$WATCHERD_TOKEN`), `.watcherd/config.json`
        upward from the working directory, `/run/watcherd/config.json`.

        Args:
            path: a daemon's config.json, or a directory to search upward from.
            url: an explicit URL (then `token` or `$WATCHERD_TOKEN`).
            token: an explicit API token.
        """
        if path is not None and url is None and Path(path).is_file():
            found = read_config_json(Path(path))
            if found is None:
                raise _invalid(f"{path}: not a watcherd config.json")
            return cls(found[0], token or found[1])
        cwd = Path(path) if path is not None else None
        found_url, found_token = discover(url, token, cwd=cwd)
        return cls(found_url, found_token)

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"Workspace(url={self.url!r})"


class Experiment:
    """A name grouping runs."""

    def __init__(self, workspace: Workspace, name: str) -> None:
        self.workspace = workspace
        self.name = name

    @staticmethod
    def list(workspace: Workspace, experiment_name: str | None = None) -> list[Experiment]:
        items = workspace._client.get("/experiments")["items"]
        return [
            Experiment(workspace, e["name"])
            for e in items
            if experiment_name is None or e["name"] == experiment_name
        ]

    def __repr__(self) -> str:
        return f"Experiment(Name: {self.name})"


class Datastore:
    """A configured datastore, by name; an unknown name raises NotFoundError."""

    def __init__(self, workspace: Workspace, name: str) -> None:
        data = workspace._client.get(f"/datastores/{quote_id(name)}")
        self.workspace = workspace
        self.name: str = data["name"]
        self.datastore_type: str = data.get("kind", "")

    @staticmethod
    def get(workspace: Workspace, datastore_name: str) -> Datastore:
        return Datastore(workspace, datastore_name)

    def __repr__(self) -> str:
        return f"Datastore(Name: {self.name}, Kind: {self.datastore_type})"


class PublishedPipeline:
    """A pipeline declared in the daemon's config file."""

    def __init__(self, workspace: Workspace, data: JSON) -> None:
        self._ws = workspace
        self._load(data)

    def _load(self, data: JSON) -> None:
        self._data = data
        self.id: str = data["id"]
        self.name: str = data["name"]
        self.description: str | None = data.get("description")
        self.status: str = data["status"]
        self.endpoint: str | None = data.get("endpoint")
        self.kind: str | None = data.get("kind")
        self.parameters: dict[str, str] = dict(data.get("parameters") or {})

    @staticmethod
    def list(workspace: Workspace, active_only: bool = True) -> list[PublishedPipeline]:
        items = workspace._client.get("/pipelines", active_only=active_only)["items"]
        return [PublishedPipeline(workspace, p) for p in items]

    @staticmethod
    def get(workspace: Workspace, id: str) -> PublishedPipeline:  # noqa: A002 - Azure's name
        return PublishedPipeline(workspace, workspace._client.get(f"/pipelines/{quote_id(id)}"))

    def enable(self) -> None:
        self._load(self._ws._client.post(f"/pipelines/{quote_id(self.id)}/enable"))

    def disable(self) -> None:
        """Disable; raises ConflictError naming the Active schedules while any exist."""
        self._load(self._ws._client.post(f"/pipelines/{quote_id(self.id)}/disable"))

    def __repr__(self) -> str:
        return (
            f"PublishedPipeline(Name: {self.name}, Id: {self.id}, Status: {self.status}, "
            f"Endpoint: {self.endpoint})"
        )


class ScheduleRecurrence:
    """How often and when a time schedule fires; checked at construction (SPEC §3.1).

    Raises:
        ValidationError: with Azure ML's message, e.g. "Interval must be an integer greater
            than 0."
    """

    def __init__(
        self,
        frequency: str,
        interval: int,
        start_time: datetime | str | None = None,
        time_zone: Enum | str | None = None,
        hours: list[int] | None = None,
        minutes: list[int] | None = None,
        week_days: list[str] | None = None,
        time_of_day: str | None = None,
    ) -> None:
        self.frequency = frequency
        self.interval = interval
        self.start_time = start_time
        self.time_zone = time_zone
        self.hours = hours
        self.minutes = minutes
        self.week_days = week_days
        self.time_of_day = time_of_day
        self.validate()

    def validate(self) -> None:
        """Check every rule of §3.1; the first failure raises ValidationError."""
        try:
            rec = make_recurrence(
                self.frequency,
                self.interval,
                self.start_time,
                _zone_name(self.time_zone),
                self.hours,
                self.minutes,
                self.week_days,
                self.time_of_day,
            )
        except _errors.ValidationError as exc:
            raise _invalid(exc.message, exc.key) from None
        if self.time_of_day is not None:
            self.hours, self.minutes = list(rec.hours or ()), list(rec.minutes or ())

    @classmethod
    def _from_dict(cls, data: Mapping[str, Any]) -> ScheduleRecurrence:
        """The daemon's (already valid) recurrence, without re-checking it."""
        self = cls.__new__(cls)
        self.frequency = data["frequency"]
        self.interval = data["interval"]
        self.start_time = data.get("start_time")
        self.time_zone = data.get("time_zone")
        self.hours = data.get("hours")
        self.minutes = data.get("minutes")
        self.week_days = data.get("week_days")
        self.time_of_day = None
        return self

    def to_dict(self) -> JSON:
        """The `recurrence` object of the API (unset keys left out)."""
        start = self.start_time
        if isinstance(start, datetime):
            start = start.isoformat(timespec="seconds")
        out: JSON = {"frequency": self.frequency, "interval": self.interval}
        extra = {
            "start_time": start,
            "time_zone": _zone_name(self.time_zone),
            "hours": self.hours,
            "minutes": self.minutes,
            "week_days": self.week_days,
        }
        out.update({k: v for k, v in extra.items() if v is not None})
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"ScheduleRecurrence({args})"


def _zone_name(value: object) -> Any:
    return value.value if isinstance(value, Enum) else value


class PipelineRun:
    """One run of a pipeline for a schedule."""

    def __init__(self, workspace: Workspace, data: JSON) -> None:
        self._ws = workspace
        self._load(data)

    def _load(self, data: JSON) -> None:
        self._data = data
        self.id: str = data["id"]
        self.status: str = data["status"]
        self.schedule_id: str | None = data.get("schedule_id")
        self.experiment_name: str | None = data.get("experiment_name")

    def _path(self, suffix: str = "") -> str:
        return f"/runs/{quote_id(self.id)}{suffix}"

    def refresh(self) -> PipelineRun:
        self._load(self._ws._client.get(self._path()))
        return self

    def get_status(self) -> str:
        """The current status (asks the daemon)."""
        return self.refresh().status

    def get_details(self) -> JSON:
        """Everything the daemon knows about the run: trigger, attempts, error, times…"""
        return dict(self.refresh()._data)

    def get_log(self) -> str:
        """The run's kept output (needs the token)."""
        return self._ws._client.log(self.id).decode("utf-8", "replace")

    def cancel(self) -> None:
        self._load(self._ws._client.post(self._path("/cancel")))

    def retry(self) -> None:
        self._load(self._ws._client.post(self._path("/retry")))

    def wait_for_completion(
        self,
        timeout: float | None = None,
        show_output: bool = False,
        raise_on_error: bool = False,
    ) -> str:
        """Poll until the run is terminal; returns its status.

        Raises:
            TimeoutError: still not finished after `timeout` seconds.
            WatcherdError: the run Failed and `raise_on_error` is true.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay, last = 0.1, None
        while self.get_status() not in TERMINAL_STATUSES:
            if show_output and self.status != last:
                sys.stdout.write(f"{self.id}: {self.status}\n")
            last = self.status
            if deadline is not None and time.monotonic() + delay > deadline:
                raise TimeoutError(f"run {self.id} still {self.status} after {timeout}s")
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)
        if show_output:
            sys.stdout.write(f"{self.id}: {self.status}\n")
        if raise_on_error and self.status == "Failed":
            raise WatcherdError(f"run {self.id} failed: {self._data.get('error')}", code="failed")
        return self.status

    def __repr__(self) -> str:
        return f"PipelineRun(Id: {self.id}, Status: {self.status})"
