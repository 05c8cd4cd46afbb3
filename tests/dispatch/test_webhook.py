"""HttpDispatcher against a real aiohttp server on 127.0.0.1 that records what it received."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestServer

from watcherd.core.errors import DispatchUnavailable
from watcherd.core.models import (
    DatastoreTrigger,
    FileRef,
    HttpTarget,
    Pipeline,
    Run,
    RunStatus,
    Schedule,
)
from watcherd.dispatch.http import HttpDispatcher, http_body, parse_retry_after
from watcherd.engine.ports import Outcome, RunContext

SECRET = "Bearer s3cr3t-hook-token"
RUN_ID = "0b7e2f1c-7d0e-4a57-9a5e-6f0f6b1b3c11"
TRIGGER = datetime(2026, 11, 25, 10, 15, tzinfo=UTC)


@dataclass
class Seen:
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: dict[str, object]


@dataclass
class Hook:
    """Answers with the queued (status, text, headers), then 200; records every request."""

    server: BaseTestServer | None = None
    seen: list[Seen] = field(default_factory=list)
    answers: list[tuple[int, str, dict[str, str]]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    hang: bool = False
    aborted: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.seen.append(
            Seen(
                request.method,
                request.path,
                dict(request.query),
                dict(request.headers),
                json.loads(raw),
            )
        )
        self.arrived.set()
        if self.hang:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.aborted.set()
                raise
        status, text, headers = self.answers.pop(0) if self.answers else (200, "ok", {})
        return web.Response(status=status, text=text, headers=headers)

    def url(self, path: str = "/hooks/run") -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}{path}"  # unquoted: placeholders stay


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    rec = Hook()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    # handler_cancellation: a client that hangs up cancels the handler, so a test can see it.
    async with TestServer(app, host="127.0.0.1", port=0, handler_cancellation=True) as server:
        rec.server = server
        yield rec


@pytest.fixture
async def dispatcher() -> AsyncIterator[HttpDispatcher]:
    d = HttpDispatcher()
    yield d
    await d.aclose()


def make_ctx(
    url: str,
    *,
    file: bool = True,
    attempt: int = 1,
    description: str = "",
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> RunContext:
    target = HttpTarget(
        url=url,
        headers=dict(headers or {"Authorization": SECRET}),
        request_timeout=timedelta(seconds=timeout),
    )
    pipeline = Pipeline(
        id="p-1",
        name="notify",
        target=target,
        parameters={"epochs": "10", "input_data": "data/latest.csv"},
    )
    schedule = Schedule(
        id="s-1",
        name="MyReactiveSchedule",
        pipeline="p-1",
        experiment_name="MyExperiment",
        description=description,
        trigger=DatastoreTrigger(
            datastore="inbox", path_on_datastore="incoming", data_path_parameter_name="input_data"
        ),
    )
    ref = FileRef(
        datastore="inbox",
        relative_path=b"incoming/a.csv",
        local_path=b"/srv/inbox/incoming/a.csv",
        version="1:2:3",
        parameter="input_data",
    )
    run = Run(
        id=RUN_ID,
        schedule_id="s-1",
        pipeline_id="p-1",
        experiment_name="MyExperiment",
        status=RunStatus.RUNNING,
        trigger={"kind": "file"},
        attempt=attempt,
    )
    return RunContext(
        run=run,
        pipeline=pipeline,
        schedule=schedule,
        parameters={"epochs": "10", "input_data": "data/latest.csv"},
        file=ref if file else None,
        trigger_time=TRIGGER,
        continue_on_step_failure=False,
        config_dir=Path("."),
        attempt=attempt,
    )


async def test_body_and_headers_match_spec_exactly(hook: Hook, dispatcher: HttpDispatcher) -> None:
    outcome = await dispatcher.dispatch(make_ctx(hook.url()))
    assert outcome == Outcome(status=RunStatus.SUBMITTED, http_status=200)
    [seen] = hook.seen
    assert (seen.method, seen.path) == ("POST", "/hooks/run")
    assert seen.body == {
        "ExperimentName": "MyExperiment",
        "Description": "MyReactiveSchedule",
        "RunId": RUN_ID,
        "ScheduleId": "s-1",
        "ScheduleName": "MyReactiveSchedule",
        "Attempt": 1,
        "TriggerTime": "2026-11-25T10:15:00Z",
        "ParameterAssignments": {"epochs": "10"},
        "DataPathAssignments": {
            "input_data": {"DataStoreName": "inbox", "RelativePath": "incoming/a.csv"}
        },
        "ContinueRunOnStepFailure": False,
    }
    assert list(seen.body) == list(http_body(make_ctx(hook.url())))  # the documented order
    assert seen.headers["Idempotency-Key"] == RUN_ID
    assert seen.headers["Authorization"] == SECRET
    assert seen.headers["Content-Type"] == "application/json"


async def test_time_run_has_no_data_paths_and_uses_the_description(
    hook: Hook, dispatcher: HttpDispatcher
) -> None:
    await dispatcher.dispatch(make_ctx(hook.url(), file=False, description="nightly"))
    body = hook.seen[0].body
    assert "DataPathAssignments" not in body
    assert body["Description"] == "nightly"
    assert body["ParameterAssignments"] == {"epochs": "10", "input_data": "data/latest.csv"}


async def test_a_pipeline_submit_has_a_null_schedule(
    hook: Hook, dispatcher: HttpDispatcher
) -> None:
    ctx = make_ctx(hook.url(), file=False)
    run = dataclasses.replace(ctx.run, schedule_id="", trigger={"kind": "manual", "by": "api"})
    await dispatcher.dispatch(dataclasses.replace(ctx, run=run, schedule=None))
    body = hook.seen[0].body
    assert (body["ScheduleId"], body["ScheduleName"]) == (None, None)
    assert body["Description"] == "notify"  # the pipeline's description, else its name


async def test_500_500_200_two_retryable_then_submitted_with_one_key(
    hook: Hook, dispatcher: HttpDispatcher
) -> None:
    hook.answers = [(500, "boom", {}), (503, "busy", {})]
    for attempt in (1, 2):  # the engine's loop: same run, next attempt number
        with pytest.raises(DispatchUnavailable, match=r"HTTP 50\d: (boom|busy)") as info:
            await dispatcher.dispatch(make_ctx(hook.url(), attempt=attempt))
        assert info.value.retry_after is None
    outcome = await dispatcher.dispatch(make_ctx(hook.url(), attempt=3))
    assert (outcome.status, outcome.http_status) == (RunStatus.SUBMITTED, 200)
    assert [s.headers["Idempotency-Key"] for s in hook.seen] == [RUN_ID] * 3
    assert [s.body["Attempt"] for s in hook.seen] == [1, 2, 3]


async def test_429_and_408_honour_retry_after(hook: Hook, dispatcher: HttpDispatcher) -> None:
    later = "Wed, 25 Nov 2099 10:15:00 GMT"
    hook.answers = [(429, "slow down", {"Retry-After": "1"}), (408, "", {"Retry-After": later})]
    with pytest.raises(DispatchUnavailable) as first:
        await dispatcher.dispatch(make_ctx(hook.url()))
    assert first.value.retry_after == 1
    with pytest.raises(DispatchUnavailable, match=r"^HTTP 408$") as second:
        await dispatcher.dispatch(make_ctx(hook.url()))
    assert second.value.retry_after is not None and second.value.retry_after > 1e9


async def test_400_fails_at_once_with_status_and_short_excerpt(
    hook: Hook, dispatcher: HttpDispatcher
) -> None:
    text = '{"error": "bad input",\n "echo": "' + SECRET + '", "pad": "' + "x" * 500 + '"}'
    hook.answers = [(400, text, {}), (404, "", {})]
    outcome = await dispatcher.dispatch(make_ctx(hook.url()))
    assert outcome.status is RunStatus.FAILED and outcome.http_status == 400
    assert outcome.error is not None and outcome.error.startswith(
        'HTTP 400: {"error": "bad input",'
    )
    assert len(outcome.error) <= len("HTTP 400: ") + 200
    assert SECRET not in outcome.error and "***" in outcome.error
    assert (await dispatcher.dispatch(make_ctx(hook.url()))).error == "HTTP 404"


async def test_redirect_is_not_followed(hook: Hook, dispatcher: HttpDispatcher) -> None:
    hook.answers = [(307, "", {"Location": "http://127.0.0.1:9/elsewhere"})]
    outcome = await dispatcher.dispatch(make_ctx(hook.url()))
    assert (outcome.status, outcome.error) == (RunStatus.FAILED, "HTTP 307")
    assert len(hook.seen) == 1


async def test_placeholders_in_the_url_are_expanded(hook: Hook, dispatcher: HttpDispatcher) -> None:
    await dispatcher.dispatch(make_ctx(hook.url("/hooks/{epochs}?f={input_data}&b={{x}}")))
    seen = hook.seen[0]
    assert seen.path == "/hooks/10"
    assert seen.query == {"f": "/srv/inbox/incoming/a.csv", "b": "{x}"}
    outcome = await dispatcher.dispatch(make_ctx(hook.url("/hooks/{nope}")))
    assert outcome.status is RunStatus.FAILED and outcome.error is not None
    assert "{nope}" in outcome.error and len(hook.seen) == 1


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_connection_error_is_retryable_and_hides_url_secrets(
    dispatcher: HttpDispatcher,
) -> None:
    url = f"http://user:pa55word@127.0.0.1:{_closed_port()}/hook?sig=t0ps3cret"
    with structlog.testing.capture_logs() as logs, pytest.raises(DispatchUnavailable) as info:
        await dispatcher.dispatch(make_ctx(url, headers={"X-Hook": "h3ader-value"}))
    text = str(info.value) + repr(logs)
    assert "pa55word" not in text and "t0ps3cret" not in text and "h3ader-value" not in text
    assert "127.0.0.1" in str(info.value)
    # Credentials in the URL and an Authorization header: aiohttp refuses, permanently.
    with structlog.testing.capture_logs() as logs:
        outcome = await dispatcher.dispatch(make_ctx(url))
    assert outcome.status is RunStatus.FAILED and outcome.error is not None
    text = outcome.error + repr(logs)
    assert "pa55word" not in text and "t0ps3cret" not in text and SECRET not in text


async def test_timeout_is_retryable(hook: Hook, dispatcher: HttpDispatcher) -> None:
    hook.hang = True
    with pytest.raises(DispatchUnavailable, match="timed out"):
        await dispatcher.dispatch(make_ctx(hook.url(), timeout=0.2))


async def test_cancellation_aborts_the_request(hook: Hook, dispatcher: HttpDispatcher) -> None:
    hook.hang = True
    task = asyncio.create_task(dispatcher.dispatch(make_ctx(hook.url())))
    async with asyncio.timeout(3):
        await hook.arrived.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await hook.aborted.wait()  # the server saw the client hang up


async def test_secrets_never_logged(hook: Hook, dispatcher: HttpDispatcher) -> None:
    hook.answers = [(400, SECRET, {})]
    with structlog.testing.capture_logs() as logs:
        await dispatcher.dispatch(make_ctx(hook.url("/h?token=qu3ry-secret")))
    assert logs and SECRET not in repr(logs) and "qu3ry-secret" not in repr(logs)


async def test_one_session_lazily_created_and_closed() -> None:
    d = HttpDispatcher()
    assert d._poster._session is None
    await d.aclose()  # nothing to close yet
    with pytest.raises(DispatchUnavailable):
        await d.dispatch(make_ctx(f"http://127.0.0.1:{_closed_port()}/"))
    session = d._poster._session
    assert session is not None
    await d.aclose()
    assert session.closed and d._poster._session is None


def test_parse_retry_after() -> None:
    now = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    assert parse_retry_after("1") == 1.0
    assert parse_retry_after("Wed, 25 Nov 2026 10:00:30 GMT", now) == 30.0
    assert parse_retry_after("Wed, 25 Nov 2026 09:00:00 GMT", now) == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
