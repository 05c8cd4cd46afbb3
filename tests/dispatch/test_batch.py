"""BatchEndpointDispatcher against a batch endpoint double on 127.0.0.1 and an injected token.

The double implements the documented invoke contract (Azure ML, "Create jobs and input data
for batch endpoints", REST; and azure-ai-ml's `BatchEndpointOperations.invoke`, read, not run):
`POST <scoring URI>` with `Authorization: Bearer <token>` (else 401; a token without the role:
403), optional `azureml-model-deployment` naming a deployment (unknown: 404), and a JSON body
`{"properties": {"InputData": {name: {"JobInputType": "UriFile"|"UriFolder", "Uri": …} |
{"JobInputType": "Literal", "Value": …}}}}` (either casing, as the service reads both; anything
else 400). It answers the created batch job, `{"id", "name", "type", "properties"}`, and errors
as ARM `{"error": {"code", "message"}}`. No live workspace is used.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer

from watcherd.core.errors import DispatchUnavailable
from watcherd.core.models import (
    BatchEndpointTarget,
    DatastoreTrigger,
    FileRef,
    Pipeline,
    Run,
    RunStatus,
    Schedule,
)
from watcherd.dispatch.batch import BatchEndpointDispatcher, batch_body
from watcherd.engine.ports import RunContext

TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOi.fake-batch-token"
NO_ROLE = "eyJ0eXAiOiJKV1QiLCJhbGciOi.token-without-role"
SCOPE = "https://ml.azure.com/.default"
RUN_ID = "8d0c1f5e-3b7a-4e2f-9c1d-2a6b5e4f3c21"
BLOB_URL = "http://127.0.0.1:10000/devstoreaccount1/data/in/daily%20report%20%231%20%C3%BC.csv"
JOB_ID = (
    "/subscriptions/sub-1/resourceGroups/rg/providers/Microsoft.MachineLearningServices/"
    "workspaces/ws/jobs/{name}"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Ctx(RunContext):
    """A RunContext with the blob datastore's Azure ML name (the field the engine will add)."""

    azureml_datastore: str | None = None


@dataclass
class Seen:
    headers: dict[str, str]
    body: Any


@dataclass
class BatchEndpointDouble:
    """One batch endpoint with deployments `blue` (default) and `green`."""

    server: TestServer | None = None
    seen: list[Seen] = field(default_factory=list)
    answers: list[tuple[int, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    hang: bool = False
    jobs: int = 0

    async def invoke(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        self.seen.append(Seen(dict(request.headers), body))
        auth = request.headers.get("Authorization", "")
        if auth == f"Bearer {NO_ROLE}":
            return _error(403, "AuthorizationFailed", "The client does not have authorization")
        if auth != f"Bearer {TOKEN}":
            return _error(401, "Unauthorized", f"invalid token {auth}")
        if self.hang:
            await asyncio.Event().wait()
        if self.answers:
            status, payload, headers = self.answers.pop(0)
            return web.json_response(payload, status=status, headers=headers)
        deployment = request.headers.get("azureml-model-deployment", "blue")
        if deployment not in ("blue", "green"):
            return _error(404, "ResourceNotFound", f"deployment {deployment} not found")
        if request.content_type != "application/json" or (problem := _check(body)):
            return _error(400, "UserError", problem or "expected JSON")
        self.jobs += 1
        name = f"batchjob-{self.jobs:04d}"
        return web.json_response(
            {
                "id": JOB_ID.format(name=name),
                "name": name,
                "type": "Microsoft.MachineLearningServices/workspaces/jobs",
                "properties": {"status": "Queued", "jobType": "Pipeline"},
            }
        )

    @property
    def endpoint(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}/jobs"


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _check(body: Any) -> str | None:
    """What the service would reject in an invoke body, or None."""
    if not isinstance(body, dict) or set(body) != {"properties"}:
        return "body must be {'properties': {...}}"
    props = body["properties"]
    inputs = props.get("InputData", props.get("inputData")) if isinstance(props, dict) else None
    if not isinstance(inputs, dict):
        return "properties.InputData must be an object"
    for name, value in inputs.items():
        if not isinstance(value, dict):
            return f"input {name}: expected an object"
        kind = value.get("JobInputType", value.get("jobInputType"))
        if kind in ("UriFile", "UriFolder"):
            uri = value.get("Uri", value.get("uri"))
            if not isinstance(uri, str) or not uri.startswith(("azureml://", "https://", "http")):
                return f"input {name}: bad Uri {uri!r}"
        elif kind == "Literal":
            if "Value" not in value and "value" not in value:
                return f"input {name}: Literal without Value"
        else:
            return f"input {name}: unknown JobInputType {kind!r}"
    return None


@pytest.fixture
async def endpoint() -> AsyncIterator[BatchEndpointDouble]:
    double = BatchEndpointDouble()
    app = web.Application()
    app.router.add_post("/jobs", double.invoke)
    async with TestServer(app, host="127.0.0.1", port=0) as server:
        double.server = server
        yield double


class Tokens:
    """The injected token provider (the fake for Azure AD)."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token, self.scopes, self.error = token, list[str](), None

    async def __call__(self, scope: str) -> str:
        self.scopes.append(scope)
        if self.error is not None:
            raise self.error
        return self.token


@pytest.fixture
def tokens() -> Tokens:
    return Tokens()


@pytest.fixture
async def dispatcher(tokens: Tokens) -> AsyncIterator[BatchEndpointDispatcher]:
    d = BatchEndpointDispatcher(token_provider=tokens)
    yield d
    await d.aclose()


def make_ctx(
    endpoint: str,
    *,
    deployment: str | None = "green",
    file: str = "blob",
    azureml_datastore: str | None = "workspaceblobstore",
    timeout: float = 5.0,
) -> Ctx:
    target = BatchEndpointTarget(
        endpoint=endpoint, deployment=deployment, request_timeout=timedelta(seconds=timeout)
    )
    pipeline = Pipeline(id="p-b", name="score", target=target, parameters={"mode": "append"})
    schedule = Schedule(
        id="s-b",
        name="NewBlobs",
        pipeline="p-b",
        experiment_name="Scoring",
        trigger=DatastoreTrigger(
            datastore="landing", path_on_datastore="in", data_path_parameter_name="input_data"
        ),
    )
    refs = {
        "blob": FileRef(
            datastore="landing",
            relative_path="in/daily report #1 ü.csv".encode(),
            url=BLOB_URL,
            version="0x8DC",
            parameter="input_data",
        ),
        "local": FileRef(
            datastore="inbox",
            relative_path=b"in/a.csv",
            local_path=b"/srv/inbox/in/a.csv",
            parameter="input_data",
        ),
    }
    run = Run(
        id=RUN_ID,
        schedule_id="s-b",
        pipeline_id="p-b",
        experiment_name="Scoring",
        status=RunStatus.RUNNING,
        trigger={"kind": "file"},
    )
    return Ctx(
        run=run,
        pipeline=pipeline,
        schedule=schedule,
        parameters={"mode": "append", "threshold": "0.5", "input_data": "default.csv"},
        file=refs.get(file),
        trigger_time=datetime(2026, 11, 25, 10, 15, tzinfo=UTC),
        continue_on_step_failure=False,
        config_dir=Path("."),
        attempt=1,
        azureml_datastore=azureml_datastore,
    )


async def test_one_invoke_with_the_exact_request(
    endpoint: BatchEndpointDouble, dispatcher: BatchEndpointDispatcher, tokens: Tokens
) -> None:
    outcome = await dispatcher.dispatch(make_ctx(endpoint.endpoint))
    assert (outcome.status, outcome.http_status) == (RunStatus.SUBMITTED, 200)
    assert outcome.remote_id == "batchjob-0001"  # the job's name
    [seen] = endpoint.seen
    assert seen.body == {
        "properties": {
            "InputData": {
                "input_data": {
                    "JobInputType": "UriFile",
                    "Uri": "azureml://datastores/workspaceblobstore/paths/in/"
                    "daily%20report%20%231%20%C3%BC.csv",
                },
                "mode": {"JobInputType": "Literal", "Value": "append"},
                "threshold": {"JobInputType": "Literal", "Value": "0.5"},
            }
        }
    }
    assert seen.headers["Authorization"] == f"Bearer {TOKEN}"
    assert seen.headers["azureml-model-deployment"] == "green"
    assert seen.headers["x-ms-client-request-id"] == RUN_ID
    assert seen.headers["Content-Type"] == "application/json"
    assert tokens.scopes == [SCOPE]


async def test_without_an_azureml_datastore_the_blob_url_is_the_input(
    endpoint: BatchEndpointDouble, dispatcher: BatchEndpointDispatcher
) -> None:
    ctx = make_ctx(endpoint.endpoint, deployment=None, azureml_datastore=None)
    assert (await dispatcher.dispatch(ctx)).status is RunStatus.SUBMITTED
    [seen] = endpoint.seen
    assert seen.body["properties"]["InputData"]["input_data"] == {
        "JobInputType": "UriFile",
        "Uri": BLOB_URL,
    }
    assert "azureml-model-deployment" not in seen.headers  # the endpoint's default deployment


def test_a_time_run_sends_literals_only() -> None:
    ctx = make_ctx("http://x/jobs", file="none")
    target = ctx.pipeline.target
    assert isinstance(target, BatchEndpointTarget)
    assert batch_body(ctx, target) == {
        "properties": {
            "InputData": {
                "mode": {"JobInputType": "Literal", "Value": "append"},
                "threshold": {"JobInputType": "Literal", "Value": "0.5"},
                "input_data": {"JobInputType": "Literal", "Value": "default.csv"},
            }
        }
    }


async def test_429_then_200_retries_with_the_same_request_id(
    endpoint: BatchEndpointDouble, dispatcher: BatchEndpointDispatcher
) -> None:
    endpoint.answers = [(429, {"error": {"code": "TooManyRequests"}}, {"Retry-After": "3"})]
    with pytest.raises(DispatchUnavailable, match="HTTP 429") as info:  # the runner backs off
        await dispatcher.dispatch(make_ctx(endpoint.endpoint))
    assert info.value.retry_after == 3
    outcome = await dispatcher.dispatch(make_ctx(endpoint.endpoint))  # … and calls again
    assert (outcome.status, outcome.remote_id) == (RunStatus.SUBMITTED, "batchjob-0001")
    assert [s.headers["x-ms-client-request-id"] for s in endpoint.seen] == [RUN_ID, RUN_ID]
    assert endpoint.seen[0].body == endpoint.seen[1].body


@pytest.mark.parametrize("status", [500, 503])
async def test_server_errors_and_timeouts_are_retryable(
    endpoint: BatchEndpointDouble, dispatcher: BatchEndpointDispatcher, status: int
) -> None:
    endpoint.answers = [(status, {"error": {"code": "InternalServerError"}}, {})]
    with pytest.raises(DispatchUnavailable, match=f"HTTP {status}"):
        await dispatcher.dispatch(make_ctx(endpoint.endpoint))
    endpoint.hang = True
    with pytest.raises(DispatchUnavailable, match="timed out"):
        await dispatcher.dispatch(make_ctx(endpoint.endpoint, timeout=0.2))


@pytest.mark.parametrize(("token", "status"), [("expired-or-wrong-token", 401), (NO_ROLE, 403)])
async def test_401_and_403_fail_at_once_with_a_clear_error(
    endpoint: BatchEndpointDouble, tokens: Tokens, token: str, status: int
) -> None:
    tokens.token = token
    d = BatchEndpointDispatcher(token_provider=tokens)
    try:
        with structlog.testing.capture_logs() as logs:
            outcome = await d.dispatch(make_ctx(endpoint.endpoint))
    finally:
        await d.aclose()
    assert (outcome.status, outcome.http_status) == (RunStatus.FAILED, status)
    assert outcome.error is not None and outcome.error.startswith(f"HTTP {status}: ")
    assert "refused the Azure AD token for https://ml.azure.com/.default" in outcome.error
    assert token not in outcome.error + repr(logs)  # the 401 body echoed it; masked
    assert len(endpoint.seen) == 1


async def test_unknown_deployment_and_name_or_id(
    endpoint: BatchEndpointDouble, dispatcher: BatchEndpointDispatcher
) -> None:
    outcome = await dispatcher.dispatch(make_ctx(endpoint.endpoint, deployment="purple"))
    assert (outcome.status, outcome.http_status) == (RunStatus.FAILED, 404)
    assert outcome.error is not None and "deployment purple not found" in outcome.error
    endpoint.answers = [(201, {"id": JOB_ID.format(name="only-id")}, {})]
    outcome = await dispatcher.dispatch(make_ctx(endpoint.endpoint))
    assert outcome.remote_id == JOB_ID.format(name="only-id")
    endpoint.answers = [(200, {"properties": {}}, {})]
    outcome = await dispatcher.dispatch(make_ctx(endpoint.endpoint))
    assert (outcome.status, outcome.remote_id) == (RunStatus.SUBMITTED, None)


async def test_a_local_file_is_refused_without_a_request(
    endpoint: BatchEndpointDouble, dispatcher: BatchEndpointDispatcher
) -> None:
    outcome = await dispatcher.dispatch(make_ctx(endpoint.endpoint, file="local"))
    assert outcome.status is RunStatus.FAILED and outcome.error is not None
    assert "not a blob datastore" in outcome.error
    assert endpoint.seen == []


async def test_token_failure_is_a_failed_run(
    endpoint: BatchEndpointDouble, tokens: Tokens, dispatcher: BatchEndpointDispatcher
) -> None:
    from azure.core.exceptions import ClientAuthenticationError

    tokens.error = ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token")
    outcome = await dispatcher.dispatch(make_ctx(endpoint.endpoint))
    assert outcome.status is RunStatus.FAILED
    assert outcome.error == (
        f"Azure AD token for scope {SCOPE}: DefaultAzureCredential failed to retrieve a token"
    )
    assert endpoint.seen == []


def test_importing_the_module_does_not_import_azure() -> None:
    import subprocess
    import sys

    code = (
        "import sys, watcherd.dispatch.batch\n"
        "sys.exit(any(m.split('.')[0] == 'azure' for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_body_is_json_serialisable() -> None:
    ctx = make_ctx("http://x/jobs")
    target = ctx.pipeline.target
    assert isinstance(target, BatchEndpointTarget)
    json.dumps(batch_body(ctx, target))
