"""The OpenAPI 3.1 document of the HTTP API, built to match what routes.py and app.py do."""

from __future__ import annotations

from functools import cache
from typing import Any

from watcherd.api.openapi_schemas import RUN_STATUS, SCHEMAS, STR, list_of, ref

__all__ = ["openapi_document"]

JSON = dict[str, Any]

_DESCRIPTIONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No content",
    400: "Bad request",
    401: "Missing or wrong token",
    404: "Not found",
    409: "Refused by the current state",
    413: "Body too large",
    421: "Host not served here",
    422: "Invalid value (key_path rooted at body)",
    503: "Not ready / unavailable",
}
_ERR = {"application/json": {"schema": ref("Error")}}
_OPEN_READ: list[JSON] = [{}, {"bearerAuth": []}]  # open on loopback/unix, token elsewhere
_TOKEN: list[JSON] = [{"bearerAuth": []}]


def _json(schema: JSON) -> JSON:
    return {"application/json": {"schema": schema}}


def _op(
    op_id: str,
    summary: str,
    ok: tuple[int, JSON | None],
    *,
    errors: tuple[int, ...] = (),
    params: tuple[JSON, ...] = (),
    body: str | None = None,
    security: list[JSON] | None = None,
) -> JSON:
    status, content = ok
    responses: JSON = {str(status): {"description": _DESCRIPTIONS[status]}}
    if content is not None:
        responses[str(status)]["content"] = content
    for code in sorted({400, 401, 421, *errors}):
        responses[str(code)] = {"description": _DESCRIPTIONS[code], "content": _ERR}
    op: JSON = {"operationId": op_id, "summary": summary, "responses": responses}
    if params:
        op["parameters"] = list(params)
    if body is not None:
        op["requestBody"] = {"required": body != "TriggerRequest", "content": _json(ref(body))}
    op["security"] = _TOKEN if security is None else security
    return op


def _param(name: str, where: str, schema: JSON, description: str = "") -> JSON:
    param = {"name": name, "in": where, "required": where == "path", "schema": schema}
    return param | {"description": description}


def _path_id(what: str) -> JSON:
    return _param("id", "path", {"type": "string", "minLength": 1}, f"{what} id or name")


def _query(name: str, schema: JSON, description: str = "") -> JSON:
    return _param(name, "query", schema, description)


_ACTIVE_ONLY = _query("active_only", {"type": "boolean"}, "only Active ones")


def _read(op_id: str, summary: str, schema: JSON, *params: JSON, found: bool = True) -> JSON:
    errors = (404,) if found else ()
    return {
        "get": _op(
            op_id, summary, (200, _json(schema)), errors=errors, params=params, security=_OPEN_READ
        )
    }


def _action(op_id: str, summary: str, schema: str, what: str, ok: int = 200) -> JSON:
    return {
        "post": _op(
            op_id,
            summary,
            (ok, _json(ref(schema))),
            errors=(404, 409, 422),
            params=(_path_id(what),),
        )
    }


def _schedule_paths() -> JSON:
    sid = _path_id("schedule")
    trigger = _action("trigger_schedule", "Run a schedule now", "Run", "schedule", ok=202)
    trigger["post"]["requestBody"] = {"required": False, "content": _json(ref("TriggerRequest"))}
    key = {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[ -~]+$"}
    why = "a retried request with the same key returns the same run"
    trigger["post"]["parameters"].append(_param("Idempotency-Key", "header", key, why))
    one = _read("get_schedule", "One schedule", ref("Schedule"), sid)
    one["patch"] = _op(
        "update_schedule",
        "Change a schedule",
        (200, _json(ref("Schedule"))),
        errors=(404, 409, 422),
        params=(sid,),
        body="ScheduleUpdate",
    )
    one["delete"] = _op(
        "delete_schedule",
        "Delete a Disabled API-created schedule",
        (204, None),
        errors=(404, 409),
        params=(sid,),
    )
    listing = _read(
        "list_schedules",
        "Schedules",
        list_of("Schedule"),
        _ACTIVE_ONLY,
        _query("pipeline_id", STR),
        _query(
            "limit",
            {"type": "integer", "minimum": 1, "maximum": 1000},
            "page size; without it (and without cursor) every schedule, unpaged",
        ),
        _query("cursor", STR, "next_cursor of the previous page (pages are ordered by name)"),
    )  # 404: an unknown pipeline_id
    listing["post"] = _op(
        "create_schedule",
        "Create a schedule (JSON, or Azure ML v2 schedule YAML, at most 1 MiB)",
        (201, _json(ref("Schedule"))),
        errors=(404, 409, 413, 422),
        body="ScheduleCreate",
    )
    listing["post"]["requestBody"]["content"]["application/yaml"] = {
        "schema": {"type": "string", "maxLength": 1024 * 1024}
    }
    n = _query("n", {"type": "integer", "minimum": 1, "maximum": 100}, "how many (5)")
    return {
        "/schedules": listing,
        "/schedules/{id}": one,
        "/schedules/{id}/enable": _action("enable_schedule", "Enable", "Schedule", "schedule"),
        "/schedules/{id}/disable": _action("disable_schedule", "Disable", "Schedule", "schedule"),
        "/schedules/{id}/trigger": trigger,
        "/schedules/{id}/next": _read(
            "next_fire_times", "Next fire times (ISO UTC)", list_of(STR), sid, n
        ),
    }


def _run_paths() -> JSON:
    rid = _path_id("run")
    status = _query("status", {"type": "string", "enum": RUN_STATUS})
    limit = _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "page size (50)")
    log = {
        "get": _op(
            "run_log",
            "A run's kept output (token always needed)",
            (200, {"text/plain": {"schema": STR}}),
            errors=(404,),
            params=(rid,),
        )
    }
    return {
        "/runs": _read(
            "list_runs",
            "Runs, newest first",
            list_of("Run"),
            _query("schedule_id", STR),
            _query("pipeline_id", STR),
            status,
            limit,
            _query("cursor", STR, "next_cursor of the previous page"),
        ),  # 404: an unknown schedule_id or pipeline_id
        "/runs/{id}": _read("get_run", "One run", ref("Run"), rid),
        "/runs/{id}/log": log,
        "/runs/{id}/retry": _action("retry_run", "Queue a terminal run again", "Run", "run"),
        "/runs/{id}/cancel": _action("cancel_run", "Cancel a Queued/Running run", "Run", "run"),
    }


def _other_paths() -> JSON:
    pid = _path_id("pipeline")
    submit = _action(
        "submit_pipeline", "Run a pipeline once now (no schedule)", "Run", "pipeline", 202
    )
    submit["post"]["requestBody"] = {"required": True, "content": _json(ref("SubmitRequest"))}
    name = _param("name", "path", STR, "datastore name")
    return {
        "/pipelines": _read(
            "list_pipelines", "Published pipelines", list_of("Pipeline"), _ACTIVE_ONLY, found=False
        ),
        "/pipelines/{id}": _read("get_pipeline", "One pipeline", ref("Pipeline"), pid),
        "/pipelines/{id}/enable": _action("enable_pipeline", "Enable", "Pipeline", "pipeline"),
        "/pipelines/{id}/disable": _action(
            "disable_pipeline", "Disable (409 names the Active schedules)", "Pipeline", "pipeline"
        ),
        "/pipelines/{id}/submit": submit,
        "/replicas": _read("list_replicas", "Live replicas (§12)", list_of("Replica"), found=False),
        "/experiments": _read(
            "list_experiments", "Experiments", list_of("Experiment"), found=False
        ),
        "/datastores": _read(
            "list_datastores",
            "Configured datastores (names and kinds)",
            list_of("Datastore"),
            found=False,
        ),
        "/datastores/{name}": _read("get_datastore", "One datastore", ref("Datastore"), name),
        "/openapi.json": _read("openapi", "This document", {"type": "object"}, found=False),
    }


def _root_paths() -> JSON:
    def public(op_id: str, summary: str, ok: JSON, *extra: tuple[int, JSON]) -> JSON:
        op = _op(op_id, summary, (200, ok), security=[])
        for code, content in extra:
            op["responses"][str(code)] = {
                "description": _DESCRIPTIONS[code],
                "content": content,
            }
        return {"get": op}

    metrics = _op(
        "metrics",
        "Prometheus metrics",
        (200, {"text/plain": {"schema": STR}}),
        security=_OPEN_READ,
    )
    return {
        "/healthz": public("healthz", "Liveness", _json(ref("Health"))),
        "/readyz": public(
            "readyz", "Readiness", _json(ref("Readiness")), (503, _json(ref("Readiness")))
        ),
        "/metrics": {"get": metrics},
        "/": public("page", "The web page", {"text/html": {"schema": STR}}),
    }


@cache
def openapi_document() -> JSON:
    """The whole document; servers are relative so it works behind any base URL."""
    api_paths = {**_other_paths(), **_schedule_paths(), **_run_paths()}
    paths = {"/api/v1" + p: ops for p, ops in api_paths.items()} | _root_paths()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "watcherd",
            "version": "1",
            "description": "Schedules pipeline runs like Azure ML's Schedule. Mutations need "
            "`Authorization: Bearer <token>`; reads are open on loopback and unix sockets "
            "(except run logs) and need the token elsewhere.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }
