"""The SDK's objects other than Schedule: Workspace, Experiment, Datastore, PublishedPipeline
(import them from `watcherd.sdk`); PipelineRun, ScheduleRecurrence and TimeZone live in
`runs` and `recurrence` and are re-exported here for older imports."""

from __future__ import annotations

import os
import sys
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from watcherd.client import (
    Client,
    UntrustedConfig,
    ValidationError,
    find_daemon,
    log_discovery,
    quote_id,
    read_config_json,
)
from watcherd.core.redact import redact_url
from watcherd.sdk.recurrence import ScheduleRecurrence, TimeZone
from watcherd.sdk.runs import TERMINAL_STATUSES, PipelineRun, page_link

__all__ = [
    "TERMINAL_STATUSES",
    "Datastore",
    "Experiment",
    "PipelineRun",
    "PublishedPipeline",
    "ScheduleRecurrence",
    "TimeZone",
    "Workspace",
    "parameters_json",
]

JSON = dict[str, Any]
SDK_HEADERS = {"X-Watcherd-Client": "sdk"}


def _invalid(message: str, key: str = "") -> ValidationError:
    return ValidationError(message, key_path=key or None)


def parameters_json(params: Mapping[str, Any] | None) -> dict[str, str] | None:
    """Parameter values as the daemon keeps them: Azure ML accepts numbers, watcherd strings."""
    if params is None:
        return None
    return {str(k): v if isinstance(v, str) else str(v) for k, v in params.items()}


class Workspace:
    """A connection to one watcherd daemon (Azure ML's workspace)."""

    def __init__(self, url: str, token: str | None = None, *, client: Client | None = None):
        self._client = client or Client(url, token)
        self.url = self._client.url
        self.name = redact_url(self.url)  # shown (repr, errors): its credentials masked
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
        upward from the working directory, `/run/watcherd/config.json` (SPEC §7's trust rule:
        untrusted files are skipped and logged).

        Args:
            path: a daemon's config.json, or a directory to search upward from.
            url: an explicit URL (then `token` or `$WATCHERD_TOKEN`).
            token: an explicit API token.

        Raises:
            ValidationError: `path` is a file that is not a trusted watcherd config.json.
        """
        if path is not None and url is None and Path(path).is_file():
            return cls._from_file(Path(path), token)
        found = find_daemon(url, token, cwd=Path(path) if path is not None else None)
        log_discovery(found)
        return cls(found.url, found.token, client=Client.for_discovery(found))

    @classmethod
    def _from_file(cls, path: Path, token: str | None) -> Workspace:
        try:
            found = read_config_json(path)
        except UntrustedConfig as exc:
            raise _invalid(exc.message) from None
        if found is None:
            raise _invalid(f"{path}: not a watcherd config.json")
        url, file_token, url_only = found
        # An explicit token goes with a URL-only file the user named: it is not "found".
        return cls(url, token if url_only else token or file_token)

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"Workspace(url={self.name!r})"


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

    def submit(
        self,
        workspace: Workspace,
        experiment_name: str,
        pipeline_parameters: Mapping[str, Any] | None = None,
        continue_on_step_failure: bool | None = None,
        *,
        parent_run_id: str | None = None,
        _workflow_provider: object = None,
        _service_endpoint: object = None,
    ) -> PipelineRun:
        """Start one run of this pipeline now, with no schedule (a manual run).

        Azure ML's `PublishedPipeline.submit`; `parent_run_id` and the private arguments are
        accepted and ignored. Prints `Submitted PipelineRun <id>` and a link, as Azure ML does.

        Raises:
            ConflictError: the pipeline is Disabled (409).
            ValidationError: a bad experiment name or parameter (422).
        """
        del parent_run_id, _workflow_provider, _service_endpoint
        body: JSON = {"experiment_name": experiment_name}
        if pipeline_parameters is not None:
            body["parameters"] = parameters_json(pipeline_parameters)
        if continue_on_step_failure is not None:
            body["continue_on_step_failure"] = continue_on_step_failure
        path = f"/pipelines/{quote_id(self.id)}/submit"
        run = PipelineRun(workspace, workspace._client.post(path, body, headers=SDK_HEADERS))
        sys.stdout.write(f"Submitted PipelineRun {run.id}\n")
        link = page_link(workspace.url, run.id)
        if link:
            sys.stdout.write(f"Link to the watcherd page: {link}\n")
        return run

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
