"""The narrow interface the HTTP API depends on; `manager.Manager` implements it.

Methods return JSON-ready values; every read is a coroutine that never blocks the event loop.
They raise NotFound (404), Conflict (409), ConfigErrors or ValidationError (422), and never a
third-party exception.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import partial
from typing import Any, Protocol

from watcherd.core.models import Config
from watcherd.engine.metrics import Metrics

__all__ = ["OFF_LOOP_ITEMS", "EncodedJSON", "Services", "encode"]

JSON = dict[str, Any]
encode = partial(json.dumps, ensure_ascii=False, default=str)  # every JSON body of the API


class EncodedJSON(dict[str, Any]):
    """A JSON object that carries its own encoding (`text`, by `encode`): a list item cached
    until what it shows changes, so a list of 10k is not encoded again on every request.
    Shared between answers: read it, never change it."""

    __slots__ = ("text",)

    def __init__(self, body: JSON, text: str | None = None) -> None:
        """`text`: the body's encoding when the caller has it (else encoded here)."""
        super().__init__(body)
        self.text = encode(body) if text is None else text


# A list longer than this is built and encoded on a worker thread: 10k schedules take ~0.1 s,
# which on the event loop would hold up every timer and file meanwhile.
OFF_LOOP_ITEMS = 200


class Services(Protocol):
    """What the API, the page and the SDK can see and do.

    Shapes:
    - pipeline: {"id", "name", "kind", "description", "status", "parameters",
      "continue_on_step_failure", "endpoint" (secrets redacted), "schedules": [schedule ids],
      "last_run": run | None}
    - schedule: SPEC §8 (config.schedule_to_dict + "id", "source", "created_at", "updated_at",
      "next_fire_times": [ISO UTC], "trigger_words", "last_run": run | None, "error": str|None)
    - run: {"id", "schedule_id", "schedule_name", "pipeline_id", "experiment_name", "status",
      "trigger", "parameters", "attempt", "attempts", "error", "exit_code", "remote_id",
      "queued_at", "started_at", "finished_at", "next_attempt_at", "duration"}; times ISO UTC.
    """

    @property
    def config(self) -> Config: ...

    @property
    def metrics(self) -> Metrics: ...

    async def list_pipelines(self, active_only: bool = False) -> list[JSON]: ...
    async def get_pipeline(self, ident: str) -> JSON: ...
    async def set_pipeline_status(self, ident: str, status: str) -> JSON: ...
    async def submit_pipeline(
        self,
        ident: str,
        *,
        experiment_name: str,
        parameters: Mapping[str, str] | None = None,
        continue_on_step_failure: bool | None = None,
        by: str = "api",
    ) -> JSON:
        """One run of a pipeline now with no schedule; 409 while it is Disabled."""
        ...

    async def list_experiments(self) -> list[JSON]: ...

    async def list_schedules(
        self,
        active_only: bool = False,
        pipeline_id: str | None = None,
        *,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> tuple[list[JSON], str | None]:
        """All schedules (no limit, no cursor), or a page of them ordered by name: up to
        `limit` after the one `cursor` names, with the cursor of the next page."""
        ...

    async def get_schedule(self, ident: str) -> JSON: ...
    async def next_fire_times(self, ident: str, n: int) -> list[str]: ...
    async def create_schedule(self, body: Mapping[str, Any]) -> JSON: ...
    async def create_schedule_yaml(self, text: str) -> JSON:
        """Create a schedule from Azure ML v2 schedule YAML (SPEC §13); 422 with key paths."""
        ...

    async def update_schedule(self, ident: str, body: Mapping[str, Any]) -> JSON: ...
    async def set_schedule_status(self, ident: str, status: str) -> JSON: ...
    async def delete_schedule(self, ident: str) -> None: ...
    async def trigger_schedule(
        self,
        ident: str,
        *,
        path: str | None = None,
        parameters: Mapping[str, str] | None = None,
        by: str = "api",
        idempotency_key: str | None = None,
    ) -> JSON:
        """Run a schedule now; `path` (datastore schedules) may hold undecodable bytes as
        surrogates, as os.fsdecode gives them."""
        ...

    async def list_runs(
        self,
        *,
        schedule_id: str | None = None,
        pipeline_id: str | None = None,
        status: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[JSON], str | None]: ...
    async def get_run(self, run_id: str) -> JSON: ...
    async def get_run_log(self, run_id: str) -> bytes: ...
    async def retry_run(self, run_id: str) -> JSON: ...
    async def cancel_run(self, run_id: str) -> JSON: ...

    async def list_replicas(self) -> list[JSON]:
        """SPEC §12: {"id", "host", "started", "last_heartbeat", "schedules": [ids],
        "running", "config_hash"} per live replica (one, without a shared database)."""
        ...

    def readiness(self) -> tuple[bool, JSON]:
        """(ready, body) per SPEC §8 /readyz."""
        ...
