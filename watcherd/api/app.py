"""The aiohttp application: Host check, token auth and error mapping around routes and page.

Auth (SPEC §8): every request other than GET/HEAD needs `Authorization: Bearer <token>`.
`/healthz`, `/readyz`, the page and its assets never do. On a loopback address or a unix socket
the other GETs are open except a run's log; on any other address they need the token too.
A `Host` header naming something other than the bound address, localhost, 127.0.0.1, [::1] or
an `api_hosts` entry is refused with 421 (DNS rebinding); the health probes are exempt so that
orchestrators probing the pod IP keep working.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import os
import stat
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog
from aiohttp import web

from watcherd.api import page, routes
from watcherd.api.routes import SERVICES, ApiProblem, error_response
from watcherd.core.errors import (
    ConfigError,
    ConfigErrors,
    Conflict,
    NotFound,
    StateError,
    TransientError,
    ValidationError,
)
from watcherd.services import Services

__all__ = ["SETTINGS", "ApiSettings", "make_app", "parse_bind", "serve"]

log = structlog.get_logger(__name__)

DEFAULT_PORT = 8765
SETTINGS: web.AppKey[ApiSettings] = web.AppKey("watcherd_api_settings")
# Routes any client may GET without a token, wherever the API is bound.
PUBLIC_ROUTES = frozenset({"healthz", "readyz", "page", "static"})
# Routes that need the token even on loopback.
PRIVATE_ROUTES = frozenset({"run_log"})
HOST_EXEMPT_ROUTES = frozenset({"healthz", "readyz"})
_SAFE_METHODS = frozenset({"GET", "HEAD"})
_LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """What the middlewares need to know about the listening address."""

    token: str
    bind: str
    allowed_hosts: frozenset[str]  # lower-case host names, no port
    open_reads: bool  # loopback or unix socket: GETs open except run logs


def parse_bind(bind: str) -> tuple[str, int]:
    """("host", port) of a "host:port" / "[v6]:port" bind; the port defaults to 8765.

    Raises:
        ValueError: the port is not an integer in 0..65535.
    """
    if bind.startswith("["):
        host, _, rest = bind[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif bind.count(":") == 1:
        host, port_text = bind.split(":")
    else:  # a bare host name or IPv6 address
        host, port_text = bind, ""
    port = int(port_text) if port_text else DEFAULT_PORT
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {bind!r}")
    return host, port


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _settings(token: str, bind: str, api_hosts: Sequence[str]) -> ApiSettings:
    allowed = set(_LOCAL_NAMES)
    allowed.update(h.strip().lower().strip("[]") for h in api_hosts if h.strip())
    if bind.startswith("unix:"):
        open_reads = True
    else:
        host, _ = parse_bind(bind)
        host = host or "0.0.0.0"
        allowed.add(host.lower())
        open_reads = _is_loopback(host)
    return ApiSettings(token, bind, frozenset(allowed), open_reads)


def _host_name(header: str) -> str:
    """The host part of a Host header, lower-case, without brackets or port."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        return value.partition(":")[0]
    return value


def _route_name(request: web.Request) -> str | None:
    route = request.match_info.route
    return getattr(route, "name", None) or getattr(route.resource, "name", None)


def _token_ok(request: web.Request, token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def _needs_token(request: web.Request, settings: ApiSettings) -> bool:
    name = _route_name(request)
    if request.method not in _SAFE_METHODS or name in PRIVATE_ROUTES:
        return True
    if name in PUBLIC_ROUTES:
        return False
    return not settings.open_reads


@web.middleware
async def _host_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    header = request.headers.get("Host")
    if header is not None and _route_name(request) not in HOST_EXEMPT_ROUTES:
        name = _host_name(header)
        if name not in settings.allowed_hosts and header.lower() not in settings.allowed_hosts:
            return error_response(
                421,
                "misdirected_request",
                f"Host {header!r} is not served here; add it to [daemon] api_hosts",
            )
    return await handler(request)


@web.middleware
async def _auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    if _needs_token(request, settings) and not _token_ok(request, settings.token):
        return error_response(
            401, "unauthorized", "missing or wrong API token (Authorization: Bearer <token>)"
        )
    return await handler(request)


def _rooted(key_path: str) -> str:
    """A key path rooted at `body` (SPEC §8)."""
    if not key_path:
        return "body"
    if key_path == "body" or key_path.startswith(("body.", "body[")):
        return key_path
    return "body" + key_path if key_path.startswith("[") else "body." + key_path


def _config_errors_response(exc: ConfigErrors) -> web.Response:
    problems = [{"key_path": _rooted(e.key_path), "message": e.reason} for e in exc.errors]
    if not problems:
        return error_response(422, "invalid", str(exc), "body")
    first = problems[0]
    message = (
        first["message"]
        if len(problems) == 1
        else "; ".join(f"{p['key_path']}: {p['message']}" for p in problems)
    )
    return error_response(422, "invalid", message, first["key_path"], errors=problems)


def _map_error(exc: Exception, request: web.Request) -> web.Response:
    """Translate an exception into the API's error body; never leaks a traceback."""
    if isinstance(exc, ApiProblem):
        return error_response(exc.status, exc.code, exc.message, exc.key_path)
    if isinstance(exc, NotFound):
        return error_response(404, "not_found", str(exc))
    if isinstance(exc, Conflict):
        return error_response(409, exc.code, str(exc))
    if isinstance(exc, ConfigErrors):
        return _config_errors_response(exc)
    if isinstance(exc, ConfigError):
        return error_response(422, "invalid", exc.reason, _rooted(exc.key_path))
    if isinstance(exc, ValidationError):
        return error_response(422, "invalid", exc.message, _rooted(exc.key))
    if isinstance(exc, StateError | TransientError):
        return error_response(503, "unavailable", str(exc))
    log.error("api_internal_error", method=request.method, path=request.path, exc_info=exc)
    return error_response(500, "internal_error", "internal error; see the daemon's log")


@web.middleware
async def _error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        response = error_response(exc.status, code, exc.reason)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return _map_error(exc, request)


def make_app(
    services: Services, *, token: str, bind: str, api_hosts: Sequence[str] = ()
) -> web.Application:
    """The API and web page application for one daemon.

    Args:
        services: what the handlers call (the engine).
        token: the bearer token mutations need; an empty token refuses every mutation.
        bind: where it will listen ("host:port" or "unix:/path"); decides auth and Host checks.
        api_hosts: extra Host names to accept (e.g. a reverse proxy's name).
    """
    app = web.Application(
        middlewares=[_error_middleware, _host_middleware, _auth_middleware],
        client_max_size=1024 * 1024,
    )
    app[SERVICES] = services
    settings = app[SETTINGS] = _settings(token, bind, api_hosts)
    app[page.PAGE] = page.PageOptions(token_for_reads=not settings.open_reads)
    routes.add_routes(app)
    page.add_routes(app)
    return app


def _remove_stale_socket(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"  # a wildcard bind is reached locally through loopback
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


async def serve(app: web.Application, bind: str, stack: contextlib.AsyncExitStack) -> str:
    """Start listening on `bind`; cleanup is pushed on `stack`. Returns the base URL.

    "host:0" picks a free port (the URL holds the real one); "unix:/path" listens on a unix
    socket with mode 0660 and returns "unix:/path".
    """
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    if bind.startswith("unix:"):
        path = Path(bind.removeprefix("unix:"))
        _remove_stale_socket(path)
        stack.callback(_unlink_quietly, path)
        stack.push_async_callback(runner.cleanup)
        await web.UnixSite(runner, str(path)).start()
        os.chmod(path, 0o660)
        return f"unix:{path}"
    stack.push_async_callback(runner.cleanup)
    host, port = parse_bind(bind)
    await web.TCPSite(runner, host or None, port, reuse_address=True).start()
    address = runner.addresses[0]
    real_port = int(address[1]) if isinstance(address, tuple) else port
    return f"http://{_url_host(host)}:{real_port}"
