"""Request parsing for the handlers: query parameters, JSON and YAML bodies, trigger bodies.

Everything here refuses bad input with an `ApiProblem` (400/413/422 with a key path), so a
handler never passes an unchecked value to the services and never answers 500 for bad input.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from watcherd.core.models import RunStatus

__all__ = [
    "MAX_YAML",
    "SUBMIT_KEYS",
    "YAML_TYPES",
    "ApiProblem",
    "bool_param",
    "by",
    "cursor_param",
    "idempotency_key",
    "int_param",
    "json_object",
    "parameters",
    "status_param",
    "str_param",
    "trigger_args",
    "unknown_keys",
    "yaml_text",
]

_CLIENTS = frozenset({"cli", "sdk", "web"})  # X-Watcherd-Client values recorded as "by"
_MAX_KEY = 200
_MAX_CURSOR = 100  # a cursor is a short opaque token; the services check its form
MAX_YAML = 1024 * 1024  # SPEC §13: a YAML body is at most 1 MiB
YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})
_RUN_STATUSES = {s.value.lower(): s.value for s in RunStatus}
_TRIGGER_KEYS = ("path", "path_b64", "parameters")
SUBMIT_KEYS = ("experiment_name", "parameters", "continue_on_step_failure")


class ApiProblem(Exception):
    """A request the handlers refuse before reaching the services (400/422)."""

    def __init__(self, status: int, code: str, message: str, key_path: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.key_path = status, code, message, key_path


def bool_param(request: web.Request, name: str, default: bool) -> bool:
    raw = request.query.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise ApiProblem(
        400, "bad_request", f"{name} must be true or false, not {raw!r}", f"query.{name}"
    )


def int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = lo - 1
    if not lo <= value <= hi:
        raise ApiProblem(
            400, "bad_request", f"{name} must be an integer from {lo} to {hi}", f"query.{name}"
        )
    return value


def str_param(request: web.Request, name: str) -> str | None:
    raw = request.query.get(name)
    return raw if raw else None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def json_object(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        if optional:
            return {}
        raise ApiProblem(422, "invalid", "a JSON object is required", "body")
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ApiProblem(400, "bad_json", f"invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ApiProblem(422, "invalid", "must be a JSON object", "body")
    return data


def unknown_keys(body: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    for key in body:
        if key not in allowed:
            raise ApiProblem(
                422,
                "invalid",
                f"unknown key {key!r} (allowed: {', '.join(allowed)})",
                f"body.{key}",
            )


def parameters(body: Mapping[str, Any]) -> dict[str, str] | None:
    params = body.get("parameters")
    if params is None:
        return None
    if not isinstance(params, dict):
        raise ApiProblem(422, "invalid", "must be an object of strings", "body.parameters")
    for k, v in params.items():
        if not isinstance(v, str):
            raise ApiProblem(422, "invalid", "parameter values are strings", f"body.parameters.{k}")
    return dict(params)


def _file_name(body: Mapping[str, Any]) -> str | None:
    """The trigger's file name: `path` (UTF-8 text) or `path_b64` (base64 of any bytes).

    A name that is not UTF-8 travels as `path_b64` and reaches the services as a str holding
    its bytes the way os.fsdecode does (PEP 383 surrogates), so no byte is lost.
    """
    path, b64 = body.get("path"), body.get("path_b64")
    if b64 is not None:
        if path is not None:
            raise ApiProblem(422, "invalid", "give path or path_b64, not both", "body.path_b64")
        try:
            raw = base64.b64decode(b64, validate=True) if isinstance(b64, str) else None
        except (binascii.Error, ValueError):
            raw = None
        if not raw:
            raise ApiProblem(
                422, "invalid", "must be the base64 of a file name's bytes", "body.path_b64"
            )
        if b"\0" in raw:
            raise ApiProblem(422, "invalid", "a file name has no NUL byte", "body.path_b64")
        return raw.decode("utf-8", "surrogateescape")
    if path is None:
        return None
    if not isinstance(path, str):
        raise ApiProblem(422, "invalid", "must be a string", "body.path")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiProblem(
            422,
            "invalid",
            "not valid Unicode text (a lone surrogate): send the name's bytes as path_b64, "
            "their base64",
            "body.path",
        ) from None
    if "\0" in path:
        raise ApiProblem(422, "invalid", "a file name has no NUL character", "body.path")
    return path


def trigger_args(body: Mapping[str, Any]) -> tuple[str | None, dict[str, str] | None]:
    unknown_keys(body, _TRIGGER_KEYS)
    return _file_name(body), parameters(body)


def idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not key or len(key) > _MAX_KEY or not key.isprintable():
        raise ApiProblem(
            400, "bad_request", f"Idempotency-Key must be 1 to {_MAX_KEY} printable characters"
        )
    return key


def by(request: web.Request) -> str:
    client = request.headers.get("X-Watcherd-Client", "").lower()
    return client if client in _CLIENTS else "api"


async def yaml_text(request: web.Request) -> str:
    if request.content_length is not None and request.content_length > MAX_YAML:
        raise ApiProblem(413, "payload_too_large", "a schedule YAML is at most 1 MiB")
    raw = await request.read()  # the app's client_max_size (1 MiB) stops a longer stream
    if len(raw) > MAX_YAML:
        raise ApiProblem(413, "payload_too_large", "a schedule YAML is at most 1 MiB")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        message = f"YAML must be UTF-8 ({exc.reason} at byte {exc.start})"
        raise ApiProblem(400, "bad_yaml", message) from None


def status_param(request: web.Request) -> str | None:
    raw = request.query.get("status")
    if raw is None:
        return None
    status = _RUN_STATUSES.get(raw.lower())
    if status is None:
        allowed = ", ".join(_RUN_STATUSES.values())
        raise ApiProblem(400, "bad_request", f"status must be one of {allowed}", "query.status")
    return status


def cursor_param(request: web.Request) -> str | None:
    cursor = str_param(request, "cursor")
    if cursor is not None and (len(cursor) > _MAX_CURSOR or not cursor.isprintable()):
        message = "bad cursor: pass next_cursor as given"
        raise ApiProblem(400, "bad_request", message, "query.cursor")
    return cursor
