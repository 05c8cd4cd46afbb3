"""A small in-memory Services for unit tests of the API's own logic (auth, Host, errors).

Behaviour of the real engine is tested against a real daemon (tests/api/test_api_daemon.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from watcherd.core.errors import (
    ConfigError,
    ConfigErrors,
    Conflict,
    NotFound,
    StateError,
    ValidationError,
)
from watcherd.core.models import Config, DaemonSettings, LocalDatastore
from watcherd.engine.metrics import Metrics

JSON = dict[str, Any]


def _schedule(sid: str, name: str, status: str = "Active") -> JSON:
    return {
        "id": sid,
        "name": name,
        "description": "",
        "pipeline": "p1",
        "experiment_name": "E",
        "status": status,
        "pipeline_parameters": {},
        "continue_on_step_failure": None,
        "recurrence": {"frequency": "Minute", "interval": 15, "time_zone": "UTC"},
        "end_time": None,
        "catch_up": "none",
        "max_catch_up": 10,
        "concurrency": "allow",
        "max_queued": 10,
        "source": "api",
        "created_at": "2026-11-25T10:00:00Z",
        "updated_at": "2026-11-25T10:00:00Z",
        "next_fire_times": ["2026-11-25T10:15:00Z"],
        "trigger_words": "every 15 minutes",
        "last_run": None,
        "error": None,
    }


def _run(rid: str, sid: str | None, status: str = "Completed") -> JSON:
    return {
        "id": rid,
        "schedule_id": sid,
        "schedule_name": "s1",
        "pipeline_id": "p1",
        "experiment_name": "E",
        "status": status,
        "trigger": {"kind": "manual", "by": "api"},
        "parameters": {},
        "attempt": 1,
        "attempts": [],
        "error": None,
        "exit_code": 0,
        "remote_id": None,
        "queued_at": "2026-11-25T10:00:00Z",
        "started_at": None,
        "finished_at": None,
        "next_attempt_at": None,
        "duration": None,
    }


class FakeServices:
    """Implements watcherd.services.Services over dicts; `explode` makes a call raise."""

    def __init__(self) -> None:
        self._config = Config(
            path=None,
            base_dir=Path("."),
            daemon=DaemonSettings(state_dir=Path(".")),
            datastores={"inbox": LocalDatastore(name="inbox", root=Path("/srv/secret-root"))},
        )
        self._metrics = Metrics()
        self.pipelines: dict[str, JSON] = {
            "p1": {
                "id": "p1",
                "name": "train",
                "kind": "command",
                "description": "d",
                "status": "Active",
                "parameters": {},
                "continue_on_step_failure": False,
                "endpoint": None,
                "schedules": ["s1"],
                "last_run": None,
            },
        }
        self.schedules: dict[str, JSON] = {"s1": _schedule("s1", "first")}
        self.runs: dict[str, JSON] = {"r1": _run("r1", "s1")}
        self.calls: list[tuple[str, Any]] = []
        self.explode: BaseException | None = None

    def _maybe_explode(self) -> None:
        if self.explode is not None:
            raise self.explode

    @property
    def config(self) -> Config:
        return self._config

    @property
    def metrics(self) -> Metrics:
        return self._metrics

    async def list_pipelines(self, active_only: bool = False) -> list[JSON]:
        self._maybe_explode()
        return [p for p in self.pipelines.values() if not active_only or p["status"] == "Active"]

    async def get_pipeline(self, ident: str) -> JSON:
        for p in self.pipelines.values():
            if ident in (p["id"], p["name"]):
                return p
        raise NotFound("pipeline", ident)

    async def set_pipeline_status(self, ident: str, status: str) -> JSON:
        p = await self.get_pipeline(ident)
        active = [s["name"] for s in self.schedules.values() if s["status"] == "Active"]
        if status == "Disabled" and active:
            raise Conflict(
                f"pipeline has Active schedules: {', '.join(active)}",
                "pipeline_has_active_schedules",
            )
        p["status"] = status
        return p

    async def submit_pipeline(
        self,
        ident: str,
        *,
        experiment_name: str,
        parameters: Mapping[str, str] | None = None,
        continue_on_step_failure: bool | None = None,
        by: str = "api",
    ) -> JSON:
        p = await self.get_pipeline(ident)
        self.calls.append(
            ("submit", (p["id"], experiment_name, parameters, continue_on_step_failure, by))
        )
        if p["status"] != "Active":
            raise Conflict(f"pipeline {p['name']} is Disabled", "pipeline_disabled")
        if not experiment_name.strip():
            raise ValidationError("experiment_name must be a non-empty string", "experiment_name")
        rid = f"r{len(self.runs) + 1}"
        run = _run(rid, None, "Queued")
        run["trigger"] = {"kind": "manual", "by": by}
        run["experiment_name"] = experiment_name
        self.runs[rid] = run
        return run

    async def list_experiments(self) -> list[JSON]:
        return [{"name": "E"}]

    async def list_schedules(
        self,
        active_only: bool = False,
        pipeline_id: str | None = None,
        *,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> tuple[list[JSON], str | None]:
        self.calls.append(("list_schedules", (active_only, pipeline_id, limit, cursor)))
        shown = [s for s in self.schedules.values() if not active_only or s["status"] == "Active"]
        return shown, None

    async def get_schedule(self, ident: str) -> JSON:
        for s in self.schedules.values():
            if ident in (s["id"], s["name"]):
                return s
        raise NotFound("schedule", ident)

    async def next_fire_times(self, ident: str, n: int) -> list[str]:
        await self.get_schedule(ident)
        return ["2026-11-25T10:15:00Z"] * n

    async def create_schedule(self, body: Mapping[str, Any]) -> JSON:
        self._maybe_explode()
        self.calls.append(("create_schedule", dict(body)))
        problems = []
        if "name" not in body:
            problems.append(ConfigError("body.name", "required"))
        rec = body.get("recurrence")
        if isinstance(rec, dict) and rec.get("interval") == 0:
            raise ValidationError(
                "Interval must be an integer greater than 0.", "recurrence.interval"
            )
        if problems:
            raise ConfigErrors(problems, "body")
        sid = f"s{len(self.schedules) + 1}"
        self.schedules[sid] = _schedule(sid, str(body["name"]))
        return self.schedules[sid]

    async def create_schedule_yaml(self, text: str) -> JSON:
        self.calls.append(("create_schedule_yaml", text))
        if "name:" not in text:
            raise ConfigErrors(
                [ConfigError("body.name", "Missing data for required field.")], "body"
            )
        name = text.split("name:", 1)[1].split("\n", 1)[0].strip()
        sid = f"s{len(self.schedules) + 1}"
        self.schedules[sid] = _schedule(sid, name)
        return self.schedules[sid]

    async def update_schedule(self, ident: str, body: Mapping[str, Any]) -> JSON:
        s = await self.get_schedule(ident)
        s.update({k: v for k, v in body.items() if v is not None})
        return s

    async def set_schedule_status(self, ident: str, status: str) -> JSON:
        s = await self.get_schedule(ident)
        s["status"] = status
        return s

    async def delete_schedule(self, ident: str) -> None:
        s = await self.get_schedule(ident)
        if s["status"] == "Active":
            raise Conflict("schedule is Active; disable it first", "schedule_active")
        del self.schedules[s["id"]]

    async def trigger_schedule(
        self,
        ident: str,
        *,
        path: str | None = None,
        parameters: Mapping[str, str] | None = None,
        by: str = "api",
        idempotency_key: str | None = None,
    ) -> JSON:
        s = await self.get_schedule(ident)
        self.calls.append(("trigger", (path, parameters, by, idempotency_key)))
        rid = f"r-{idempotency_key}" if idempotency_key else f"r{len(self.runs) + 1}"
        self.runs.setdefault(rid, _run(rid, s["id"], "Queued"))
        return self.runs[rid]

    async def list_runs(
        self,
        *,
        schedule_id: str | None = None,
        pipeline_id: str | None = None,
        status: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[JSON], str | None]:
        self.calls.append(("list_runs", (schedule_id, pipeline_id, status, limit, cursor)))
        if cursor == "bad":
            raise ValidationError("bad cursor", "cursor")
        return list(self.runs.values())[:limit], None

    async def get_run(self, run_id: str) -> JSON:
        if run_id not in self.runs:
            raise NotFound("run", run_id)
        return self.runs[run_id]

    async def get_run_log(self, run_id: str) -> bytes:
        await self.get_run(run_id)
        return b"hello\n"

    async def retry_run(self, run_id: str) -> JSON:
        return await self.get_run(run_id)

    async def cancel_run(self, run_id: str) -> JSON:
        run = await self.get_run(run_id)
        if run["status"] not in ("Queued", "Running"):
            raise Conflict("run finished", "run_finished")
        return run

    async def list_replicas(self) -> list[JSON]:
        return [
            {
                "id": "host-a-1f2e",
                "host": "host-a",
                "started": "2026-11-25T09:00:00Z",
                "last_heartbeat": "2026-11-25T10:00:00Z",
                "schedules": sorted(self.schedules),
                "running": 0,
                "config_hash": "0123456789abcdef",
            }
        ]

    def readiness(self) -> tuple[bool, JSON]:
        if isinstance(self.explode, StateError):
            return False, {"ready": False}
        return True, {"ready": True, "waiting": [], "errors": []}
