"""Azure ML v2 shapes (`azure.ai.ml`) for watcherd schedules (SPEC §13).

Code written for azure-ai-ml runs with its imports changed::

    from watcherd.sdk.v2 import MLClient
    from watcherd.sdk.v2.entities import JobSchedule, RecurrenceTrigger, RecurrencePattern
    from watcherd.sdk.v2.constants import TimeZone

    ml_client = MLClient.from_config(credential=DefaultAzureCredential())  # credential ignored
    schedule = JobSchedule(
        name="simple_recurrence_job_schedule",
        trigger=RecurrenceTrigger(
            frequency="day", interval=1,
            schedule=RecurrencePattern(hours=[4, 5, 10, 11, 12], minutes=[0, 30]),
            start_time="2022-07-10T10:00:00", time_zone=TimeZone.PACIFIC_STANDARD_TIME,
        ),
        create_job="azureml:train",
    )
    ml_client.schedules.begin_create_or_update(schedule).result()

The daemon is found as `watcherd.sdk` finds it (SPEC §7). `DatastoreTrigger` adds watcherd's
data trigger, which v2 lacks.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from watcherd.client import (
    Client,
    UntrustedConfig,
    ValidationError,
    find_daemon,
    log_discovery,
    read_config_json,
)
from watcherd.sdk.v2.constants import ScheduleListViewType, TimeZone
from watcherd.sdk.v2.entities import (
    CronTrigger,
    DatastoreTrigger,
    JobSchedule,
    RecurrencePattern,
    RecurrenceTrigger,
    ScheduleTriggerResult,
)
from watcherd.sdk.v2.operations import LROPoller, ScheduleOperations

__all__ = [
    "CronTrigger",
    "DatastoreTrigger",
    "JobSchedule",
    "LROPoller",
    "MLClient",
    "RecurrencePattern",
    "RecurrenceTrigger",
    "ScheduleListViewType",
    "ScheduleOperations",
    "ScheduleTriggerResult",
    "TimeZone",
]


class MLClient:
    """azure-ai-ml's client, for one watcherd daemon; only `schedules` is served.

    The credential and the workspace coordinates are accepted and ignored: the daemon is found
    by `$WATCHERD_URL`/`config.json` discovery (SPEC §7), or given as `url=` (+ `token=`).
    """

    def __init__(
        self,
        credential: Any = None,
        subscription_id: str | None = None,
        resource_group_name: str | None = None,
        workspace_name: str | None = None,
        registry_name: str | None = None,
        *,
        url: str | None = None,
        token: str | None = None,
        client: Client | None = None,
        **kwargs: Any,
    ) -> None:
        del credential  # Azure AD is not how watcherd authenticates (SPEC §13)
        if client is None:
            found = find_daemon(url, token)
            log_discovery(found)
            client = Client.for_discovery(found)
        self._client = client
        self.subscription_id = subscription_id
        self.resource_group_name = resource_group_name
        self.workspace_name = workspace_name
        self.registry_name = registry_name
        self.schedules = ScheduleOperations(client)

    @classmethod
    def from_config(
        cls,
        credential: Any = None,
        *,
        path: str | os.PathLike[str] | None = None,
        file_name: str | None = None,
        url: str | None = None,
        token: str | None = None,
        **kwargs: Any,
    ) -> MLClient:
        """Find the daemon as `watcherd.sdk.Workspace.from_config` does.

        Args:
            credential: accepted and ignored.
            path: a daemon's config.json, or a directory to search upward from.
            file_name: with a directory `path`, the name of a config.json in it.
            url, token: an explicit daemon (as the CLI's `--url`/`--token`).

        Raises:
            ValidationError: the named file is not a trusted watcherd config.json.
        """
        named = Path(path) / file_name if path is not None and file_name else None
        if named is None and path is not None and Path(path).is_file():
            named = Path(path)
        if named is not None and url is None:
            try:
                found = read_config_json(named)
            except UntrustedConfig as exc:
                raise ValidationError(exc.message) from None
            if found is None:
                raise ValidationError(f"{named}: not a watcherd config.json")
            found_url, file_token, url_only = found
            chosen = token if url_only else token or file_token
            return cls(client=Client(found_url, chosen))
        discovery = find_daemon(url, token, cwd=Path(path) if path is not None else None)
        log_discovery(discovery)
        return cls(client=Client.for_discovery(discovery))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> MLClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MLClient(url={self._client.url!r})"
