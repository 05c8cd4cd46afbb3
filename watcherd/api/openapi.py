"""The OpenAPI 3.1 document of the HTTP API, built to match what routes.py and app.py do."""

from __future__ import annotations

from functools import cache
from typing import Any

__all__ = ["openapi_document"]

JSON = dict[str, Any]

_STR: JSON = {"type": "string"}
_OPT_STR: JSON = {"type": ["string", "null"]}
_OPT_BOOL: JSON = {"type": ["boolean", "null"]}
_OPT_INT: JSON = {"type": ["integer", "null"]}
_STATUS: JSON = {"type": "string", "enum": ["Active", "Disabled"]}
_RUN_STATUS = ["Queued", "Running", "Completed", "Failed", "Submitted", "Canceled", "Skipped"]
_STR_MAP: JSON = {"type": "object", "additionalProperties": {"type": "string"}}
_OPT_STR_MAP: JSON = {"type": ["object", "null"], "additionalProperties": {"type": "string"}}
_TIMES: JSON = {"type": "array", "items": {"type": "string"}}


def _ref(name: str) -> JSON:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable_ref(name: str) -> JSON:
    return {"anyOf": [_ref(name), {"type": "null"}]}


def _list_of(name: str | JSON) -> JSON:
    items = _ref(name) if isinstance(name, str) else name
    return {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {"items": {"type": "array", "items": items}, "next_cursor": _OPT_STR},
    }


_RECURRENCE: JSON = {
    "type": "object",
    "required": ["frequency", "interval"],
    "properties": {
        "frequency": {"type": "string", "enum": ["Minute", "Hour", "Day", "Week", "Month"]},
        "interval": {"type": "integer", "minimum": 1},
        "start_time": {**_OPT_STR, "description": "YYYY-MM-DDThh:mm[:ss], wall time"},
        "time_zone": {**_OPT_STR, "description": "a Windows (Azure ML) or IANA zone name"},
        "hours": {"type": ["array", "null"], "items": {"type": "integer"}},
        "minutes": {"type": ["array", "null"], "items": {"type": "integer"}},
        "week_days": {"type": ["array", "null"], "items": {"type": "string"}},
        "time_of_day": _OPT_STR,
    },
}

# The §2 schedule keys a client may send; every trigger key is optional here and the daemon
# checks the combination (exactly one of recurrence, cron, datastore), answering 422.
_SCHEDULE_KEYS: JSON = {
    "name": {"type": "string", "minLength": 1},
    "pipeline": {"type": "string", "description": "pipeline id or name"},
    "experiment_name": {"type": "string", "minLength": 1},
    "description": _OPT_STR,
    "status": _STATUS,
    "pipeline_parameters": _OPT_STR_MAP,
    "continue_on_step_failure": _OPT_BOOL,
    "recurrence": {"anyOf": [_ref("Recurrence"), {"type": "null"}]},
    "cron": {**_OPT_STR, "description": "five fields: MIN HOUR DOM MON DOW"},
    "time_zone": _OPT_STR,
    "start_time": _OPT_STR,
    "end_time": _OPT_STR,
    "catch_up": {"type": ["string", "null"], "enum": ["none", "last", "all", None]},
    "max_catch_up": _OPT_INT,
    "concurrency": {"type": ["string", "null"], "enum": ["allow", "forbid", "queue", None]},
    "max_queued": _OPT_INT,
    "datastore": {**_OPT_STR, "description": "a configured datastore's name"},
    "path_on_datastore": _OPT_STR,
    "polling_interval": {
        "type": ["number", "string", "null"],
        "description": 'minutes, or a duration string such as "30s"',
    },
    "data_path_parameter_name": _OPT_STR,
    "pattern": {"type": ["string", "array", "null"], "items": {"type": "string"}},
    "ignore": {"type": ["array", "null"], "items": {"type": "string"}},
    "ignore_defaults": _OPT_BOOL,
    "settle": _OPT_STR,
    "initial": {"type": ["string", "null"], "enum": ["skip", "fire", None]},
    "events": _OPT_BOOL,
}

_RUN: JSON = {
    "type": "object",
    "required": ["id", "schedule_id", "status"],
    "properties": {
        "id": _STR,
        "schedule_id": _STR,
        "schedule_name": _OPT_STR,
        "pipeline_id": _OPT_STR,
        "experiment_name": _OPT_STR,
        "status": {"type": "string", "enum": _RUN_STATUS},
        "trigger": {
            "type": "object",
            "description": '{"kind": "time", "slot"} | {"kind": "file", "datastore", "path", '
            '"version"} | {"kind": "manual", "by"}',
            "properties": {"kind": _STR},
        },
        "parameters": _OPT_STR_MAP,
        "attempt": {"type": "integer"},
        "attempts": {"type": "array", "items": {"type": "object"}},
        "error": _OPT_STR,
        "exit_code": _OPT_INT,
        "remote_id": _OPT_STR,
        **dict.fromkeys(("queued_at", "started_at", "finished_at", "next_attempt_at"), _OPT_STR),
        "duration": {"type": ["number", "null"], "description": "seconds"},
    },
}

_SCHEMAS: JSON = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": _STR,
                    "message": _STR,
                    "key_path": {**_STR, "description": "rooted at `body` for request bodies"},
                    "errors": {"type": "array", "items": {"type": "object"}},
                },
            }
        },
    },
    "Recurrence": _RECURRENCE,
    "Pipeline": {
        "type": "object",
        "required": ["id", "name", "status"],
        "properties": {
            "id": _STR,
            "name": _STR,
            "kind": _STR,
            "description": _OPT_STR,
            "status": _STATUS,
            "parameters": _OPT_STR_MAP,
            "continue_on_step_failure": _OPT_BOOL,
            "endpoint": _OPT_STR,
            "schedules": {"type": "array", "items": _STR},
            "last_run": _nullable_ref("Run"),
        },
    },
    "Schedule": {
        "type": "object",
        "required": ["id", "name", "pipeline", "experiment_name", "status", "source"],
        "properties": {
            **_SCHEDULE_KEYS,
            "id": _STR,
            "source": {"type": "string", "enum": ["file", "api", "removed"]},
            "created_at": _OPT_STR,
            "updated_at": _OPT_STR,
            "next_fire_times": _TIMES,
            "trigger_words": _OPT_STR,
            "last_run": _nullable_ref("Run"),
            "error": _OPT_STR,
        },
    },
    "ScheduleCreate": {
        "type": "object",
        "required": ["name", "pipeline", "experiment_name"],
        "properties": _SCHEDULE_KEYS,
        "additionalProperties": False,
    },
    "ScheduleUpdate": {
        "type": "object",
        "description": "any subset of the schedule keys; null keeps, pipeline_parameters {} clears",
        "properties": _SCHEDULE_KEYS,
        "additionalProperties": False,
    },
    "TriggerRequest": {
        "type": "object",
        "properties": {"path": _OPT_STR, "parameters": _OPT_STR_MAP},
        "additionalProperties": False,
    },
    "Run": _RUN,
    "Experiment": {"type": "object", "required": ["name"], "properties": {"name": _STR}},
    "Datastore": {
        "type": "object",
        "required": ["name", "kind"],
        "properties": {"name": _STR, "kind": {"type": "string", "enum": ["local", "azure_blob"]}},
    },
    "Health": {"type": "object", "properties": {"status": _STR}},
    "Readiness": {"type": "object"},
}

_DESCRIPTIONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No content",
    400: "Bad request",
    401: "Missing or wrong token",
    404: "Not found",
    409: "Refused by the current state",
    421: "Host not served here",
    422: "Invalid value (key_path rooted at body)",
    503: "Not ready / unavailable",
}
_ERR = {"application/json": {"schema": _ref("Error")}}
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
        op["requestBody"] = {"required": body != "TriggerRequest", "content": _json(_ref(body))}
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
            (ok, _json(_ref(schema))),
            errors=(404, 409, 422),
            params=(_path_id(what),),
        )
    }


def _schedule_paths() -> JSON:
    sid = _path_id("schedule")
    trigger = _action("trigger_schedule", "Run a schedule now", "Run", "schedule", ok=202)
    trigger["post"]["requestBody"] = {"required": False, "content": _json(_ref("TriggerRequest"))}
    key = {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[ -~]+$"}
    why = "a retried request with the same key returns the same run"
    trigger["post"]["parameters"].append(_param("Idempotency-Key", "header", key, why))
    one = _read("get_schedule", "One schedule", _ref("Schedule"), sid)
    one["patch"] = _op(
        "update_schedule",
        "Change a schedule",
        (200, _json(_ref("Schedule"))),
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
        _list_of("Schedule"),
        _ACTIVE_ONLY,
        _query("pipeline_id", _STR),
    )  # 404: an unknown pipeline_id
    listing["post"] = _op(
        "create_schedule",
        "Create a schedule",
        (201, _json(_ref("Schedule"))),
        errors=(404, 409, 422),
        body="ScheduleCreate",
    )
    n = _query("n", {"type": "integer", "minimum": 1, "maximum": 100}, "how many (5)")
    return {
        "/schedules": listing,
        "/schedules/{id}": one,
        "/schedules/{id}/enable": _action("enable_schedule", "Enable", "Schedule", "schedule"),
        "/schedules/{id}/disable": _action("disable_schedule", "Disable", "Schedule", "schedule"),
        "/schedules/{id}/trigger": trigger,
        "/schedules/{id}/next": _read(
            "next_fire_times", "Next fire times (ISO UTC)", _list_of(_STR), sid, n
        ),
    }


def _run_paths() -> JSON:
    rid = _path_id("run")
    status = _query("status", {"type": "string", "enum": _RUN_STATUS})
    limit = _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "page size (50)")
    log = {
        "get": _op(
            "run_log",
            "A run's kept output (token always needed)",
            (200, {"text/plain": {"schema": _STR}}),
            errors=(404,),
            params=(rid,),
        )
    }
    return {
        "/runs": _read(
            "list_runs",
            "Runs, newest first",
            _list_of("Run"),
            _query("schedule_id", _STR),
            _query("pipeline_id", _STR),
            status,
            limit,
            _query("cursor", _STR, "next_cursor of the previous page"),
        ),  # 404: an unknown schedule_id or pipeline_id
        "/runs/{id}": _read("get_run", "One run", _ref("Run"), rid),
        "/runs/{id}/log": log,
        "/runs/{id}/retry": _action("retry_run", "Queue a terminal run again", "Run", "run"),
        "/runs/{id}/cancel": _action("cancel_run", "Cancel a Queued/Running run", "Run", "run"),
    }


def _other_paths() -> JSON:
    pid = _path_id("pipeline")
    name = _param("name", "path", _STR, "datastore name")
    return {
        "/pipelines": _read(
            "list_pipelines", "Published pipelines", _list_of("Pipeline"), _ACTIVE_ONLY, found=False
        ),
        "/pipelines/{id}": _read("get_pipeline", "One pipeline", _ref("Pipeline"), pid),
        "/pipelines/{id}/enable": _action("enable_pipeline", "Enable", "Pipeline", "pipeline"),
        "/pipelines/{id}/disable": _action(
            "disable_pipeline", "Disable (409 names the Active schedules)", "Pipeline", "pipeline"
        ),
        "/experiments": _read(
            "list_experiments", "Experiments", _list_of("Experiment"), found=False
        ),
        "/datastores": _read(
            "list_datastores",
            "Configured datastores (names and kinds)",
            _list_of("Datastore"),
            found=False,
        ),
        "/datastores/{name}": _read("get_datastore", "One datastore", _ref("Datastore"), name),
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
        (200, {"text/plain": {"schema": _STR}}),
        security=_OPEN_READ,
    )
    return {
        "/healthz": public("healthz", "Liveness", _json(_ref("Health"))),
        "/readyz": public(
            "readyz", "Readiness", _json(_ref("Readiness")), (503, _json(_ref("Readiness")))
        ),
        "/metrics": {"get": metrics},
        "/": public("page", "The web page", {"text/html": {"schema": _STR}}),
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
            "schemas": _SCHEMAS,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }
