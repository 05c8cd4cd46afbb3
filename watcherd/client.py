"""A small synchronous client of the daemon's HTTP API, shared by the CLI and the SDK.

Errors raised here (and re-exported by `watcherd.sdk`)::

    watcherd.core.errors.WatcherdError
     └── WatcherdError            an API call failed; .status .code .message .key_path
          ├── DaemonUnreachable   no daemon answered at the URL (also ConnectionError)
          ├── AuthenticationError 401: missing or wrong token
          ├── NotFoundError       404 (also LookupError)
          ├── ConflictError       409: refused by the current state
          └── ValidationError     422, or a client-side Azure ML check (also ValueError)

Discovery (first found wins): an explicit URL; `$WATCHERD_URL` (+ `$WATCHERD_TOKEN`);
`.watcherd/config.json` searched upward from the working directory; `/run/watcherd/config.json`;
else the default `http://127.0.0.1:8765`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from watcherd.core import errors as _errors

__all__ = [
    "DEFAULT_URL",
    "AuthenticationError",
    "Client",
    "ConflictError",
    "DaemonUnreachable",
    "NotFoundError",
    "ValidationError",
    "WatcherdError",
    "discover",
    "quote_id",
    "read_config_json",
]

DEFAULT_URL = "http://127.0.0.1:8765"
RUNTIME_CONFIG = Path("/run/watcherd/config.json")
API = "/api/v1"


class WatcherdError(_errors.WatcherdError):
    """An API call failed; `status` is the HTTP status (None when no response was received)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "error",
        key_path: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.key_path = key_path


class DaemonUnreachable(WatcherdError, ConnectionError):
    """No daemon answered at the URL (not running, wrong URL, socket missing)."""


class AuthenticationError(WatcherdError, PermissionError):
    """The daemon wants a (different) token: HTTP 401."""


class NotFoundError(WatcherdError, LookupError):
    """Unknown schedule, pipeline, run or datastore: HTTP 404."""


class ConflictError(WatcherdError):
    """Refused by the current state (e.g. disabling a pipeline with Active schedules): 409."""


class ValidationError(WatcherdError, _errors.ValidationError):
    """A value refused by Azure ML's rules: HTTP 422, or the same check made client-side."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "validation_error",
        key_path: str | None = None,
    ) -> None:
        WatcherdError.__init__(self, message, status=status, code=code, key_path=key_path)
        self.key = key_path or ""


_BY_STATUS: dict[int, type[WatcherdError]] = {
    401: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    422: ValidationError,
}


def read_config_json(path: Path) -> tuple[str, str | None] | None:
    """(url, token) from a daemon's config.json, or None when absent or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("url"), str) or not data["url"]:
        return None
    token: str | None = None
    token_file = data.get("token_file")
    if isinstance(token_file, str) and token_file:
        tf = Path(token_file)
        if not tf.is_absolute():
            tf = path.parent / tf
        try:
            token = tf.read_text(encoding="utf-8").strip() or None
        except OSError:
            token = None  # e.g. another user's daemon: reads still work on loopback
    return data["url"], token


def _search_config_json(cwd: Path) -> tuple[str, str | None] | None:
    for folder in (cwd, *cwd.parents):
        found = read_config_json(folder / ".watcherd" / "config.json")
        if found is not None:
            return found
    return read_config_json(RUNTIME_CONFIG)


def discover(
    url: str | None = None,
    token: str | None = None,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[str, str | None]:
    """Find the daemon's URL and token as SPEC §7 says; explicit arguments win.

    Args:
        url: an explicit URL (CLI `--url`), used as is.
        token: an explicit token (CLI `--token`); otherwise `$WATCHERD_TOKEN`, then the
            discovered config.json's token_file.
        cwd: where the upward search for `.watcherd/config.json` starts (default: cwd).
        env: the environment (default: os.environ).

    Returns:
        (url, token or None).
    """
    env = os.environ if env is None else env
    env_token = env.get("WATCHERD_TOKEN") or None
    if url:
        return url, token or env_token
    if env.get("WATCHERD_URL"):
        return env["WATCHERD_URL"], token or env_token
    found = _search_config_json(cwd or Path.cwd())
    if found is not None:
        return found[0], token or env_token or found[1]
    return DEFAULT_URL, token or env_token


def _error_from(response: httpx.Response, url: str) -> WatcherdError:
    code, message, key_path = "http_error", "", None
    try:
        body = response.json()
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            code = str(err.get("code") or code)
            message = str(err.get("message") or "")
            key_path = err.get("key_path") if isinstance(err.get("key_path"), str) else None
    except ValueError:
        pass
    if not message:
        message = f"HTTP {response.status_code} from {url}"
    if response.status_code == 401:
        message += " (pass --token, set $WATCHERD_TOKEN, or run where the token file is readable)"
    cls = _BY_STATUS.get(response.status_code, WatcherdError)
    return cls(message, status=response.status_code, code=code, key_path=key_path)


class Client:
    """Synchronous JSON client of `/api/v1`; never starts an event loop (works in Jupyter).

    Args:
        url: `http://host:port` or `unix:/path/to/socket`.
        token: the API token, sent as `Authorization: Bearer` when given.
        timeout: seconds per request.
        transport: an httpx transport (tests pass `httpx.MockTransport`).
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        headers = {"User-Agent": "watcherd-client", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if self.url.startswith("unix:"):
            transport = transport or httpx.HTTPTransport(uds=self.url[len("unix:") :])
            base = "http://localhost"
        else:
            base = self.url
        self._http = httpx.Client(
            base_url=base, headers=headers, timeout=timeout, transport=transport
        )

    @classmethod
    def discover(cls, url: str | None = None, token: str | None = None) -> Client:
        """A client for the daemon found by `discover()`."""
        found_url, found_token = discover(url, token)
        return cls(found_url, found_token)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send one request to an absolute `path` (e.g. "/healthz"); raise on 4xx/5xx."""
        clean = {k: _param(v) for k, v in (params or {}).items() if v is not None}
        try:
            response = self._http.request(
                method,
                path,
                params=clean,
                json=json_body,
                headers=dict(headers or {}),
            )
        except httpx.HTTPError as exc:
            reason = str(exc) or type(exc).__name__
            raise DaemonUnreachable(
                f"daemon not reachable at {self.url} ({reason})", code="unreachable"
            ) from exc
        if response.status_code >= 400:
            raise _error_from(response, self.url)
        return response

    def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """`request()` under /api/v1, returning the decoded JSON body (None for 204)."""
        response = self.request(
            method, API + path, params=params, json_body=json_body, headers=headers
        )
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise WatcherdError(
                f"{method} {path}: the daemon answered with invalid JSON",
                status=response.status_code,
                code="bad_response",
            ) from exc

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params=params)

    def post(self, path: str, body: Any = None, headers: Mapping[str, str] | None = None) -> Any:
        return self.call("POST", path, json_body=body, headers=headers)

    def patch(self, path: str, body: Any) -> Any:
        return self.call("PATCH", path, json_body=body)

    def delete(self, path: str) -> Any:
        return self.call("DELETE", path)

    def items(self, path: str, **params: Any) -> Iterator[dict[str, Any]]:
        """Every item of a list endpoint, following `next_cursor`."""
        cursor: str | None = None
        while True:
            page = self.get(path, **params, cursor=cursor) if cursor else self.get(path, **params)
            yield from page.get("items", [])
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def log(self, run_id: str) -> bytes:
        """A run's kept stdout/stderr."""
        return self.request("GET", f"{API}/runs/{quote_id(run_id)}/log").content


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def quote_id(segment: str) -> str:
    """Percent-encode one path segment (ids and names may hold any character)."""
    return quote(segment, safe="")
