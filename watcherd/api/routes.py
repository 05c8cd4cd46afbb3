"""Thin JSON handlers of /api/v1: validate the request → call a Services method → serialise."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from watcherd.api import parsing
from watcherd.api.openapi import openapi_document
from watcherd.api.parsing import ApiProblem
from watcherd.core.errors import ValidationError
from watcherd.services import OFF_LOOP_ITEMS, EncodedJSON, Services, encode

__all__ = [
    "API",
    "SERVICES",
    "ApiProblem",
    "add_routes",
    "error_response",
    "json_response",
]

API = "/api/v1"
SERVICES: web.AppKey[Services] = web.AppKey("watcherd_services")
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_dumps = encode


def error_response(
    status: int, code: str, message: str, key_path: str | None = None, **extra: Any
) -> web.Response:
    """The one error shape: {"error": {"code", "message", "key_path"?, …}}."""
    err: dict[str, Any] = {"code": code, "message": message}
    if key_path is not None:
        err["key_path"] = key_path
    err.update(extra)
    headers = {"WWW-Authenticate": 'Bearer realm="watcherd"'} if status == 401 else None
    return web.json_response({"error": err}, status=status, dumps=_dumps, headers=headers)


def json_response(data: Any, status: int = 200, **headers: str) -> web.Response:
    return web.json_response(data, status=status, dumps=_dumps, headers=headers or None)


async def _page(
    request: web.Request, items: list[Any], next_cursor: str | None = None
) -> web.StreamResponse:
    if len(items) <= OFF_LOOP_ITEMS:  # cached items are joined, not encoded again
        body = _encode_page(items, next_cursor)
        return web.Response(body=body, content_type="application/json", charset="utf-8")
    body = await asyncio.to_thread(_encode_page, items, next_cursor)
    # Written in chunks, each awaiting the socket: 10k schedules are ~12 MB, and one write
    # would copy them all on the event loop at once.
    resp = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8"})
    resp.content_length = len(body)
    await resp.prepare(request)
    view = memoryview(body)
    for i in range(0, len(body), _CHUNK):
        await resp.write(view[i : i + _CHUNK])
    await resp.write_eof()
    return resp


_CHUNK = 1 << 18


def _encode_page(items: list[Any], next_cursor: str | None) -> bytes:
    """The same text as `_dumps({"items": …, "next_cursor": …})`, UTF-8, built item by item:
    a cached item's own encoding is reused, and the GIL changes hands between items (one C
    encoder call for 10k items would keep every other thread, the event loop's too, waiting)."""
    parts = [i.text if isinstance(i, EncodedJSON) else _dumps(i) for i in items]
    text = '{"items": [' + ", ".join(parts) + '], "next_cursor": ' + _dumps(next_cursor) + "}"
    return text.encode()


def _svc(request: web.Request) -> Services:
    return request.app[SERVICES]


def _ident(request: web.Request) -> str:
    return request.match_info["id"]


# ── pipelines, experiments, datastores ────────────────────────────────────────


async def list_pipelines(request: web.Request) -> web.StreamResponse:
    active_only = parsing.bool_param(request, "active_only", False)
    return await _page(request, await _svc(request).list_pipelines(active_only=active_only))


async def get_pipeline(request: web.Request) -> web.Response:
    return json_response(await _svc(request).get_pipeline(_ident(request)))


async def enable_pipeline(request: web.Request) -> web.Response:
    return json_response(await _svc(request).set_pipeline_status(_ident(request), "Active"))


async def disable_pipeline(request: web.Request) -> web.Response:
    return json_response(await _svc(request).set_pipeline_status(_ident(request), "Disabled"))


async def submit_pipeline(request: web.Request) -> web.Response:
    """`PublishedPipeline.submit`: one run now, with no schedule (409 while Disabled)."""
    body = await parsing.json_object(request)
    parsing.unknown_keys(body, parsing.SUBMIT_KEYS)
    experiment = body.get("experiment_name")
    if not isinstance(experiment, str):
        raise ApiProblem(422, "invalid", "required: a string", "body.experiment_name")
    cosf = body.get("continue_on_step_failure")
    if cosf is not None and not isinstance(cosf, bool):
        key = "body.continue_on_step_failure"
        raise ApiProblem(422, "invalid", "must be true, false or null", key)
    run = await _svc(request).submit_pipeline(
        _ident(request),
        experiment_name=experiment,
        parameters=parsing.parameters(body),
        continue_on_step_failure=cosf,
        by=parsing.by(request),
    )
    return json_response(run, status=202, Location=f"{API}/runs/{run.get('id', '')}")


async def list_experiments(request: web.Request) -> web.StreamResponse:
    return await _page(request, await _svc(request).list_experiments())


def _datastore_items(svc: Services) -> list[dict[str, str]]:
    # Names and kinds only: roots, containers and credentials stay in the config file.
    return [{"name": name, "kind": ds.kind} for name, ds in svc.config.datastores.items()]


async def list_datastores(request: web.Request) -> web.StreamResponse:
    return await _page(request, _datastore_items(_svc(request)))


async def get_datastore(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    for item in _datastore_items(_svc(request)):
        if item["name"] == name:
            return json_response(item)
    raise ApiProblem(404, "not_found", f"datastore {name!r} not found")


# ── schedules ─────────────────────────────────────────────────────────────────


async def list_schedules(request: web.Request) -> web.StreamResponse:
    active_only = parsing.bool_param(request, "active_only", False)
    pipeline_id = parsing.str_param(request, "pipeline_id")
    raw_limit = request.query.get("limit")
    limit = parsing.int_param(request, "limit", 0, 1, 1000) if raw_limit is not None else None
    try:
        items, cursor = await _svc(request).list_schedules(
            active_only=active_only,
            pipeline_id=pipeline_id,
            limit=limit,
            cursor=parsing.cursor_param(request),
        )
    except ValidationError as exc:  # a bad cursor: a query problem, not a body one
        raise ApiProblem(400, "bad_request", exc.message, f"query.{exc.key}") from exc
    return await _page(request, items, cursor)


async def create_schedule(request: web.Request) -> web.Response:
    svc = _svc(request)
    if request.content_type in parsing.YAML_TYPES:  # SPEC §13: Azure ML v2 schedule YAML
        created = await svc.create_schedule_yaml(await parsing.yaml_text(request))
    else:
        created = await svc.create_schedule(_without_shown(await parsing.json_object(request)))
    location = f"{API}/schedules/{created.get('id', '')}"
    return json_response(created, status=201, Location=location)


# What a schedule's JSON shows beside its keys and its read-only keys (the page's words, its
# last run, why it is in error): derived, so a body may carry them and they are ignored, and a
# GET's object less its read-only keys can be POSTed back (SPEC §8).
_SHOWN = ("trigger_words", "last_run", "error")


def _without_shown(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in _SHOWN}


async def get_schedule(request: web.Request) -> web.Response:
    return json_response(await _svc(request).get_schedule(_ident(request)))


async def update_schedule(request: web.Request) -> web.Response:
    body = _without_shown(await parsing.json_object(request))
    return json_response(await _svc(request).update_schedule(_ident(request), body))


async def delete_schedule(request: web.Request) -> web.Response:
    await _svc(request).delete_schedule(_ident(request))
    return web.Response(status=204)


async def enable_schedule(request: web.Request) -> web.Response:
    return json_response(await _svc(request).set_schedule_status(_ident(request), "Active"))


async def disable_schedule(request: web.Request) -> web.Response:
    return json_response(await _svc(request).set_schedule_status(_ident(request), "Disabled"))


async def trigger_schedule(request: web.Request) -> web.Response:
    key = parsing.idempotency_key(request)
    path, parameters = parsing.trigger_args(await parsing.json_object(request, optional=True))
    run = await _svc(request).trigger_schedule(
        _ident(request),
        path=path,
        parameters=parameters,
        by=parsing.by(request),
        idempotency_key=key,
    )
    return json_response(run, status=202, Location=f"{API}/runs/{run.get('id', '')}")


async def next_fire_times(request: web.Request) -> web.StreamResponse:
    n = parsing.int_param(request, "n", 5, 1, 100)
    return await _page(request, list(await _svc(request).next_fire_times(_ident(request), n)))


# ── runs ──────────────────────────────────────────────────────────────────────


async def list_runs(request: web.Request) -> web.StreamResponse:
    try:
        items, cursor = await _svc(request).list_runs(
            schedule_id=parsing.str_param(request, "schedule_id"),
            pipeline_id=parsing.str_param(request, "pipeline_id"),
            status=parsing.status_param(request),
            limit=parsing.int_param(request, "limit", 50, 1, 1000),
            cursor=parsing.cursor_param(request),
        )
    except ValidationError as exc:  # a bad filter or cursor: a query problem, not a body one
        raise ApiProblem(400, "bad_request", exc.message, f"query.{exc.key}") from exc
    return await _page(request, items, cursor)


async def get_run(request: web.Request) -> web.Response:
    return json_response(await _svc(request).get_run(_ident(request)))


async def get_run_log(request: web.Request) -> web.Response:
    body = await _svc(request).get_run_log(_ident(request))
    return web.Response(body=body, headers={"Content-Type": "text/plain; charset=utf-8"})


async def retry_run(request: web.Request) -> web.Response:
    return json_response(await _svc(request).retry_run(_ident(request)))


async def cancel_run(request: web.Request) -> web.Response:
    return json_response(await _svc(request).cancel_run(_ident(request)))


# ── replicas, operations ──────────────────────────────────────────────────────


async def list_replicas(request: web.Request) -> web.StreamResponse:
    return await _page(request, await _svc(request).list_replicas())


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ready, body = _svc(request).readiness()
    return json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    text = _svc(request).metrics.render()
    return web.Response(body=text, headers={"Content-Type": METRICS_CONTENT_TYPE})


async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document())


_ROUTES: tuple[tuple[str, str, Any, str], ...] = (
    ("GET", "/pipelines", list_pipelines, "list_pipelines"),
    ("GET", "/pipelines/{id}", get_pipeline, "get_pipeline"),
    ("POST", "/pipelines/{id}/enable", enable_pipeline, "enable_pipeline"),
    ("POST", "/pipelines/{id}/disable", disable_pipeline, "disable_pipeline"),
    ("POST", "/pipelines/{id}/submit", submit_pipeline, "submit_pipeline"),
    ("GET", "/experiments", list_experiments, "list_experiments"),
    ("GET", "/datastores", list_datastores, "list_datastores"),
    ("GET", "/datastores/{name}", get_datastore, "get_datastore"),
    ("GET", "/schedules", list_schedules, "list_schedules"),
    ("POST", "/schedules", create_schedule, "create_schedule"),
    ("GET", "/schedules/{id}", get_schedule, "get_schedule"),
    ("PATCH", "/schedules/{id}", update_schedule, "update_schedule"),
    ("DELETE", "/schedules/{id}", delete_schedule, "delete_schedule"),
    ("POST", "/schedules/{id}/enable", enable_schedule, "enable_schedule"),
    ("POST", "/schedules/{id}/disable", disable_schedule, "disable_schedule"),
    ("POST", "/schedules/{id}/trigger", trigger_schedule, "trigger_schedule"),
    ("GET", "/schedules/{id}/next", next_fire_times, "next_fire_times"),
    ("GET", "/runs", list_runs, "list_runs"),
    ("GET", "/runs/{id}", get_run, "get_run"),
    ("GET", "/runs/{id}/log", get_run_log, "run_log"),
    ("POST", "/runs/{id}/retry", retry_run, "retry_run"),
    ("POST", "/runs/{id}/cancel", cancel_run, "cancel_run"),
    ("GET", "/replicas", list_replicas, "list_replicas"),
    ("GET", "/openapi.json", openapi, "openapi"),
)


def add_routes(app: web.Application) -> None:
    """Register /api/v1/*, /healthz, /readyz and /metrics on `app`."""
    router = app.router
    for method, path, handler, name in _ROUTES:
        router.add_route(method, API + path, handler, name=name)
    router.add_get("/healthz", healthz, name="healthz")
    router.add_get("/readyz", readyz, name="readyz")
    router.add_get("/metrics", metrics, name="metrics")
