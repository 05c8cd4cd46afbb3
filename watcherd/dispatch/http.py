"""POSTs a run to a webhook as SPEC §5's HTTP body and classifies the answer for the engine.

`JsonPoster` is the HTTP plumbing shared with the Azure ML dispatcher: one lazily created
aiohttp session, aiohttp's exceptions mapped in one place, and the status rules of SPEC §5
(2xx submitted; connection errors, timeouts, 408/429/5xx retryable; any other status fails
with the status and a short body excerpt). Header values and a URL's userinfo and query
never appear in an error or a log line. Placeholders in the URL are put in by
`dispatch.urls.expand_url`, each value encoded for the part of the URL it lands in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import structlog

from watcherd.core.errors import DispatchRejected, DispatchUnavailable
from watcherd.core.models import HttpTarget, RunStatus
from watcherd.core.redact import make_redactor, redact_url, url_secrets
from watcherd.dispatch.urls import UrlError, expand_url
from watcherd.engine.ports import Outcome, RunContext

__all__ = [
    "HttpAnswer",
    "HttpDispatcher",
    "JsonPoster",
    "data_path_assignments",
    "describe",
    "http_body",
    "parameter_assignments",
    "parse_retry_after",
    "trigger_time_text",
]

log = structlog.get_logger(__name__)

EXCERPT_LIMIT = 200
_READ_LIMIT = 64 * 1024  # bytes of a response body kept; the rest is not read
_RETRYABLE = frozenset({408, 429})
Scrub = Callable[[str], str]


# ── the body ──────────────────────────────────────────────────────────────────


def trigger_time_text(when: datetime) -> str:
    """`2026-11-25T10:15:00Z`: UTC, whole seconds (as WATCHERD_TRIGGER_TIME)."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe(ctx: RunContext) -> str:
    """The run's Description: the schedule's description, else its name."""
    if ctx.schedule is not None:
        return ctx.schedule.description or ctx.schedule.name
    return ctx.pipeline.description or ctx.pipeline.name


def _is_file_run(ctx: RunContext) -> bool:
    return ctx.file is not None and bool(ctx.data_path_parameter_name)


def parameter_assignments(ctx: RunContext) -> dict[str, str]:
    """The string parameters; a file run's data path parameter goes to DataPathAssignments."""
    params = {k: str(v) for k, v in ctx.parameters.items()}
    if _is_file_run(ctx) and ctx.data_path_parameter_name:
        params.pop(ctx.data_path_parameter_name, None)
    return params


def data_path_assignments(ctx: RunContext) -> dict[str, dict[str, str]] | None:
    """{param: {"DataStoreName", "RelativePath"}} for a file run, else None."""
    if ctx.file is None or not ctx.data_path_parameter_name:
        return None
    path = ctx.file.relative_path.decode("utf-8", "surrogateescape")
    return {
        ctx.data_path_parameter_name: {"DataStoreName": ctx.file.datastore, "RelativePath": path}
    }


def http_body(ctx: RunContext) -> dict[str, Any]:
    """SPEC §5's HTTP body, exactly: Azure ML's submission shape plus run identity.

    A pipeline submit has no schedule: `ScheduleId` and `ScheduleName` are null.
    """
    schedule = ctx.schedule
    body: dict[str, Any] = {
        "ExperimentName": ctx.run.experiment_name,
        "Description": describe(ctx),
        "RunId": ctx.run.id,
        "ScheduleId": schedule.id if schedule is not None else (ctx.run.schedule_id or None),
        "ScheduleName": schedule.name if schedule is not None else None,
        "Attempt": ctx.attempt,
        "TriggerTime": trigger_time_text(ctx.trigger_time),
        "ParameterAssignments": parameter_assignments(ctx),
    }
    paths = data_path_assignments(ctx)
    if paths is not None:
        body["DataPathAssignments"] = paths
    body["ContinueRunOnStepFailure"] = ctx.continue_on_step_failure
    return body


def _placeholder_values(ctx: RunContext) -> tuple[dict[str, str], dict[str, str]]:
    values = dict(ctx.parameters)
    urls: dict[str, str] = {}
    if ctx.file is not None and ctx.data_path_parameter_name:
        f = ctx.file
        raw = f.local_path if f.local_path is not None else f.relative_path
        values[ctx.data_path_parameter_name] = raw.decode("utf-8", "surrogateescape")
        if f.url is not None:
            urls[ctx.data_path_parameter_name] = f.url
    return values, urls


# ── the wire ──────────────────────────────────────────────────────────────────


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP-date; None if absent/bad."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _excerpt(body: bytes, scrub: Scrub) -> str:
    text = re.sub(r"\s+", " ", body.decode("utf-8", "replace")).strip()
    text = scrub(text)
    return text if len(text) <= EXCERPT_LIMIT else text[: EXCERPT_LIMIT - 1] + "…"


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """A target's answer: status, the first 64 KiB of the body, and Retry-After seconds."""

    status: int
    body: bytes
    retry_after: float | None = None

    def outcome(self, scrub: Scrub, remote_id: str | None = None) -> Outcome:
        """Submitted for 2xx, Failed for other non-retryable statuses.

        Raises:
            DispatchUnavailable: 408, 429 or 5xx (with the server's Retry-After).
        """
        if 200 <= self.status < 300:
            return Outcome(status=RunStatus.SUBMITTED, http_status=self.status, remote_id=remote_id)
        excerpt = _excerpt(self.body, scrub)
        message = f"HTTP {self.status}: {excerpt}" if excerpt else f"HTTP {self.status}"
        if self.status in _RETRYABLE or self.status >= 500:
            raise DispatchUnavailable(
                message, retry_after=self.retry_after, http_status=self.status
            )
        return Outcome(status=RunStatus.FAILED, http_status=self.status, error=message)


@contextmanager
def _map_aiohttp_errors(url: str, scrub: Scrub) -> Iterator[None]:
    """Translate aiohttp and socket exceptions into DispatchUnavailable / DispatchRejected."""
    where = redact_url(url)
    try:
        yield
    except aiohttp.InvalidURL as exc:  # before ClientError: it is one, but never transient
        raise DispatchRejected(f"invalid URL {where}") from exc
    except TimeoutError as exc:  # aiohttp's ServerTimeoutError is one too
        raise DispatchUnavailable(f"POST {where}: timed out") from exc
    except (aiohttp.ClientError, OSError) as exc:
        detail = scrub(str(exc)) or type(exc).__name__
        raise DispatchUnavailable(f"POST {where}: {detail}") from exc
    except ValueError as exc:  # e.g. a header value aiohttp refuses to send
        raise DispatchRejected(f"POST {where}: {scrub(str(exc))}") from exc


class JsonPoster:
    """POSTs JSON over one aiohttp session, created on first use and closed by aclose()."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def post(
        self,
        url: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        request_timeout: timedelta,
        scrub: Scrub,
    ) -> HttpAnswer:
        """POST `body` as JSON; cancellation aborts the request.

        Raises:
            DispatchUnavailable: the target could not be reached or did not answer in time.
            DispatchRejected: the URL is invalid.
        """
        data = json.dumps(body).encode()
        sent = {"Content-Type": "application/json", **headers}
        limit = aiohttp.ClientTimeout(total=request_timeout.total_seconds())
        with _map_aiohttp_errors(url, scrub):
            # No redirects: following one would re-send the headers (tokens) to another URL.
            async with self._get_session().post(
                url, data=data, headers=sent, timeout=limit, allow_redirects=False
            ) as resp:
                content = bytearray()
                async for chunk in resp.content.iter_chunked(16 * 1024):
                    content += chunk
                    if len(content) >= _READ_LIMIT:
                        break
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                return HttpAnswer(resp.status, bytes(content[:_READ_LIMIT]), retry_after)

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()


# ── the dispatcher ────────────────────────────────────────────────────────────


class HttpDispatcher:
    """Dispatcher for `http` pipelines: one POST per attempt, `Idempotency-Key` = run id."""

    def __init__(self) -> None:
        self._poster = JsonPoster()

    async def dispatch(self, ctx: RunContext) -> Outcome:
        """POST the run; see the module docstring for how answers are classified.

        Raises:
            DispatchUnavailable: retryable (connection error, timeout, 408, 429, 5xx).
        """
        target = ctx.pipeline.target
        if not isinstance(target, HttpTarget):
            raise TypeError(f"pipeline {ctx.pipeline.name!r} is not an http pipeline")
        # The template's query values are secrets; values put in by placeholders are not.
        secrets = [*target.headers.values(), *url_secrets(target.url)]
        values, urls = _placeholder_values(ctx)
        try:
            url = expand_url(target.url, values, urls)
        except KeyError as exc:
            error = f"url: no value for placeholder {{{exc.args[0]}}}"
            return Outcome(status=RunStatus.FAILED, error=error)
        except UrlError as exc:
            log.warning("http_url_refused", run_id=ctx.run.id, error=str(exc))
            return Outcome(status=RunStatus.FAILED, error=f"url: {exc}")
        scrub = make_redactor([*secrets, *url_secrets(url, values=False)])
        headers = {k: v for k, v in target.headers.items() if k.lower() != "idempotency-key"}
        headers["Idempotency-Key"] = ctx.run.id
        bound = log.bind(run_id=ctx.run.id, url=redact_url(url), attempt=ctx.attempt)
        try:
            answer = await self._poster.post(
                url, http_body(ctx), headers, target.request_timeout, scrub
            )
        except DispatchRejected as exc:
            bound.warning("http_rejected", error=str(exc))
            return Outcome(status=RunStatus.FAILED, error=str(exc))
        bound.debug("http_answered", status=answer.status)
        return answer.outcome(scrub)

    async def aclose(self) -> None:
        """Close the HTTP session."""
        await self._poster.aclose()
