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
else the default `http://127.0.0.1:8765`. A discovered config.json is used only under SPEC §7's
trust rule (`read_config_json`), since it says where the token goes.

This module is longer than 400 lines on purpose: discovery decides where the token is sent,
and keeping it beside the one client that sends it keeps that decision in one place.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
import structlog

from watcherd.core import errors as _errors
from watcherd.core.redact import redact_url, redact_urls_in_text

__all__ = [
    "DEFAULT_URL",
    "AuthenticationError",
    "Client",
    "ConflictError",
    "DaemonUnreachable",
    "Discovery",
    "NotFoundError",
    "UntrustedConfig",
    "ValidationError",
    "WatcherdError",
    "discover",
    "find_daemon",
    "log_discovery",
    "quote_id",
    "read_config_json",
]

log = structlog.get_logger("watcherd.client")

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


_AUTH_HINT = "pass --token, set $WATCHERD_TOKEN, or run where the token file is readable"
_BY_STATUS: dict[int, type[WatcherdError]] = {
    401: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    422: ValidationError,
}


class UntrustedConfig(WatcherdError):
    """A config.json failed SPEC §7's trust rule (`reason` says which check)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: not trusted: {reason}", code="untrusted_config")
        self.path = path
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Discovery:
    """Where the daemon was found and what to send it.

    `url_only` names a config.json without a token file: its URL is used, but never with a
    token (SPEC §7), so mutations answer 401 until `--url` and `--token` are given together.
    `skipped` lists the untrusted config.json files passed over, with the reason.
    """

    url: str
    token: str | None
    source: str  # "argument", "environment", a config.json path, or "default"
    url_only: bool = False
    withheld_token: bool = False
    skipped: tuple[tuple[Path, str], ...] = ()

    def auth_hint(self) -> str | None:
        """What to tell the user on a 401, given how the daemon was found."""
        if self.url_only:
            return (
                f"{self.source} names no token file, so no token is sent to its URL: pass "
                "--url with --token, or set $WATCHERD_URL and $WATCHERD_TOKEN"
            )
        return None


_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_MAX_FILE = 64 * 1024


def _unsafe_mode(st: os.stat_result, what: str, *, check_owner: bool) -> str | None:
    """Why `st` may not be trusted, or None: owned by us or root, not group/world-writable."""
    if check_owner and st.st_uid not in (os.geteuid(), 0):
        return f"{what} belongs to uid {st.st_uid}, not to you or root"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{what} is group- or world-writable (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _read_at(name: str, dir_fd: int, what: str) -> tuple[bytes, os.stat_result]:
    """The bytes and fstat of a regular file in `dir_fd`, never through a symlink or a FIFO."""
    try:
        fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Refused(f"{what} is a symlink") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Refused(f"{what} is not a regular file")
        return os.read(fd, _MAX_FILE), st
    finally:
        os.close(fd)


class _Refused(Exception):
    """One trust check failed; the message is the reason."""


def _token_beside(folder: Path, dir_fd: int, dir_st: os.stat_result, token_file: str) -> str | None:
    """The token when `token_file` is the `token` beside config.json and passes the checks."""
    named = Path(token_file) if os.path.isabs(token_file) else folder / token_file
    try:
        same = named.name == "token" and os.path.samestat(os.stat(named.parent), dir_st)
    except OSError:
        same = False
    if not same:
        raise _Refused(f"token_file {token_file!r} is not the token file beside it")
    try:
        st = os.stat("token", dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        raise _Refused("its token file is a symlink")
    why = _unsafe_mode(st, "its token file", check_owner=True)
    if why:
        raise _Refused(why)
    try:
        data, _ = _read_at("token", dir_fd, "its token file")
    except PermissionError:
        return None  # another user's daemon: reads still work on loopback
    return data.decode("utf-8", "replace").strip() or None


def read_config_json(path: Path) -> tuple[str, str | None, bool] | None:
    """(url, token, url_only) from a daemon's config.json, under SPEC §7's trust rule.

    A file naming a `token_file` is trusted only when that file is the `token` beside it and
    both, and their directory, belong to the current user or root and are not group- or
    world-writable. A URL-only file needs only to be not group- or world-writable. Nothing is
    followed through a symlink, and a FIFO never blocks the read.

    Returns:
        None when the file is absent, unreadable or not a watcherd config.json.

    Raises:
        UntrustedConfig: the file exists but fails the rule.
    """
    folder = path.parent
    try:
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(folder):
            raise UntrustedConfig(path, "its directory is a symlink") from None
        return None
    try:
        try:
            raw, st = _read_at(path.name, dir_fd, "the file")
        except _Refused as exc:
            raise UntrustedConfig(path, str(exc)) from None
        except OSError:
            return None
        try:
            data = json.loads(raw.decode("utf-8"))
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("url"), str) or not data["url"]:
            return None
        token_file = data.get("token_file")
        try:
            if not (isinstance(token_file, str) and token_file):
                why = _unsafe_mode(st, "the file", check_owner=False)
                if why:
                    raise _Refused(why)
                return data["url"], None, True
            dir_st = os.fstat(dir_fd)
            why = _unsafe_mode(st, "the file", check_owner=True) or _unsafe_mode(
                dir_st, "its directory", check_owner=True
            )
            if why:
                raise _Refused(why)
            return data["url"], _token_beside(folder, dir_fd, dir_st, token_file), False
        except _Refused as exc:
            raise UntrustedConfig(path, str(exc)) from None
    finally:
        os.close(dir_fd)


def _candidates(cwd: Path) -> Iterator[Path]:
    for folder in (cwd, *cwd.parents):
        yield folder / ".watcherd" / "config.json"
    yield RUNTIME_CONFIG


def find_daemon(
    url: str | None = None,
    token: str | None = None,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Discovery:
    """Find the daemon as SPEC §7 says; explicit arguments win. Logs nothing (see discover).

    Order: `url` (with `token`, else `$WATCHERD_TOKEN`); `$WATCHERD_URL` (same); the first
    trusted `.watcherd/config.json` upward from `cwd`, then `/run/watcherd/config.json`
    (its token file's token unless `token` or `$WATCHERD_TOKEN` is given; a URL-only file never
    gets a token); else the default URL.
    """
    env = os.environ if env is None else env
    given = token or env.get("WATCHERD_TOKEN") or None
    if url:
        return Discovery(url, given, "argument")
    if env.get("WATCHERD_URL"):
        return Discovery(env["WATCHERD_URL"], given, "environment")
    skipped: list[tuple[Path, str]] = []
    for path in _candidates(cwd or Path.cwd()):
        try:
            found = read_config_json(path)
        except UntrustedConfig as exc:
            skipped.append((path, exc.reason))
            continue
        if found is None:
            continue
        found_url, file_token, url_only = found
        if url_only:
            return Discovery(
                found_url,
                None,
                str(path),
                url_only=True,
                withheld_token=given is not None,
                skipped=tuple(skipped),
            )
        return Discovery(found_url, given or file_token, str(path), skipped=tuple(skipped))
    return Discovery(DEFAULT_URL, given, "default", skipped=tuple(skipped))


def discover(
    url: str | None = None,
    token: str | None = None,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[str, str | None]:
    """(url, token or None) as `find_daemon` finds them; untrusted files are logged.

    Args:
        url: an explicit URL (CLI `--url`), used as is.
        token: an explicit token (CLI `--token`); otherwise `$WATCHERD_TOKEN`, then the
            discovered config.json's token file.
        cwd: where the upward search for `.watcherd/config.json` starts (default: cwd).
        env: the environment (default: os.environ).
    """
    found = find_daemon(url, token, cwd=cwd, env=env)
    log_discovery(found)
    return found.url, found.token


def log_discovery(found: Discovery) -> None:
    """Log the skipped files and a withheld token (structlog events)."""
    for path, reason in found.skipped:
        log.warning("discovery_config_untrusted", path=str(path), reason=reason)
    if found.withheld_token:
        log.warning("discovery_token_withheld", path=found.source, reason="URL-only config.json")


def _error_from(response: httpx.Response, url: str, auth_hint: str | None) -> WatcherdError:
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
        message = f"HTTP {response.status_code} from {redact_url(url)}"
    if response.status_code == 401:
        message += f" ({auth_hint or _AUTH_HINT})"
    cls = _BY_STATUS.get(response.status_code, WatcherdError)
    return cls(message, status=response.status_code, code=code, key_path=key_path)


LIST_PAGE = 500  # items per request when a whole list is read (the API's limit is 1,000)


class Client:
    """Synchronous JSON client of `/api/v1`; never starts an event loop (works in Jupyter).

    Args:
        url: `http://host:port` or `unix:/path/to/socket`.
        token: the API token, sent as `Authorization: Bearer` when given.
        timeout: seconds per request.
        transport: an httpx transport (tests pass `httpx.MockTransport`).
        auth_hint: what a 401's message should advise (see `Discovery.auth_hint`).
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        auth_hint: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.auth_hint = auth_hint
        headers = {"User-Agent": "watcherd-client", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if self.url.startswith("unix:"):
            transport = transport or httpx.HTTPTransport(uds=self.url[len("unix:") :])
            base = "http://localhost"
        else:
            base = self.url
        try:
            httpx.URL(base)
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise WatcherdError(
                f"invalid daemon URL {redact_url(self.url)}: {redact_url(str(exc))}", code="bad_url"
            ) from None
        self._http = httpx.Client(
            base_url=base, headers=headers, timeout=timeout, transport=transport
        )

    @classmethod
    def discover(cls, url: str | None = None, token: str | None = None) -> Client:
        """A client for the daemon found by `find_daemon()` (untrusted files logged)."""
        return cls.for_discovery(find_daemon(url, token), log_skipped=True)

    @classmethod
    def for_discovery(cls, found: Discovery, *, log_skipped: bool = False) -> Client:
        """A client for a `Discovery`, with its 401 advice."""
        if log_skipped:
            log_discovery(found)
        return cls(found.url, found.token, auth_hint=found.auth_hint())

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
        content: bytes | None = None,
    ) -> httpx.Response:
        """Send one request to an absolute `path` (e.g. "/healthz"); raise on 4xx/5xx.

        `content` is a raw body (its Content-Type in `headers`), sent instead of `json_body`.
        """
        clean = {k: _param(v) for k, v in (params or {}).items() if v is not None}
        try:
            response = self._http.request(
                method,
                path,
                params=clean,
                json=json_body if content is None else None,
                content=content,
                headers=dict(headers or {}),
            )
        except httpx.HTTPError as exc:
            reason = redact_urls_in_text(str(exc)) or type(exc).__name__
            raise DaemonUnreachable(
                f"daemon not reachable at {redact_url(self.url)} ({reason})", code="unreachable"
            ) from exc
        if response.status_code >= 400:
            raise _error_from(response, self.url, self.auth_hint)
        return response

    def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
    ) -> Any:
        """`request()` under /api/v1, returning the decoded JSON body (None for 204)."""
        response = self.request(
            method,
            API + path,
            params=params,
            json_body=json_body,
            headers=headers,
            content=content,
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

    def schedules(self, **params: Any) -> list[dict[str, Any]]:
        """Every schedule (filtered by `params`), a page of LIST_PAGE at a time: 10,000 in
        one answer would be 12 MB built at once (issue #14)."""
        return list(self.items("/schedules", **params, limit=LIST_PAGE))

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
