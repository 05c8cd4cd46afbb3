"""AzureMLDispatcher against a fake Azure ML PipelineSubmit endpoint and an injected token.

The fake speaks the contract we rely on: POST
`/pipelines/v1.0/subscriptions/{sub}/resourceGroups/{rg}/providers/
Microsoft.MachineLearningServices/workspaces/{ws}/PipelineRuns/PipelineSubmit/{pipeline_id}`
with `Authorization: Bearer <token>` (else 401) and a JSON body of known keys only (else 400);
it answers a PipelineRun entity with `Id`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestServer
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError

from watcherd.core.errors import DispatchUnavailable
from watcherd.core.models import (
    AzureMLTarget,
    DatastoreTrigger,
    FileRef,
    Pipeline,
    RecurrenceTrigger,
    Run,
    RunStatus,
    Schedule,
)
from watcherd.core.recurrence import Recurrence
from watcherd.dispatch.azureml import AzureMLDispatcher, azureml_body
from watcherd.engine.ports import RunContext

TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOi.fake-aad-token"
SCOPE = "https://management.azure.com/.default"
PIPELINE_ID = "75a219db-0ec0-4f93-a6ac-4fc402da809f"
RUN_ID = "6c1f0a4e-2a51-4f0e-8a3e-0c7f2b9d1e22"
ROUTE = (
    "/pipelines/v1.0/subscriptions/{sub}/resourceGroups/{rg}/providers/"
    "Microsoft.MachineLearningServices/workspaces/{ws}/PipelineRuns/PipelineSubmit/{pipeline_id}"
)
KNOWN = {
    "ExperimentName",
    "Description",
    "ParameterAssignments",
    "DataPathAssignments",
    "ContinueRunOnStepFailure",
    "RunSource",
    "tags",
}


@dataclass
class FakeAzureML:
    """A published pipeline's REST endpoint, minus everything we do not use."""

    server: BaseTestServer | None = None
    bodies: list[dict[str, Any]] = field(default_factory=list)
    answers: list[tuple[int, str, dict[str, str]]] = field(default_factory=list)

    async def submit(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            msg = f"invalid token {request.headers.get('Authorization')}"
            return web.json_response(
                {"error": {"code": "InvalidAuthenticationToken", "message": msg}}, status=401
            )
        if request.match_info["pipeline_id"] != PIPELINE_ID:
            return web.json_response({"error": {"code": "NotFound"}}, status=404)
        body = await request.json()
        self.bodies.append(body)
        if self.answers:
            status, text, headers = self.answers.pop(0)
            return web.Response(status=status, text=text, headers=headers)
        unknown = set(body) - KNOWN
        if unknown or "ExperimentName" not in body:
            return web.json_response({"error": {"message": f"unknown {unknown}"}}, status=400)
        run_id = str(uuid.uuid4())
        return web.json_response(
            {
                "Id": run_id,
                "Status": {"StatusCode": "NotStarted", "StatusDetail": None},
                "ExperimentName": body["ExperimentName"],
                "PipelineId": PIPELINE_ID,
                "RunSource": body.get("RunSource"),
                "Description": body.get("Description"),
                "tags": body.get("tags", {}),
                "RunNumber": 1,
            }
        )

    def endpoint(self, pipeline_id: str = PIPELINE_ID) -> str:
        assert self.server is not None
        path = ROUTE.format(sub="sub-1", rg="rg", ws="ws", pipeline_id=pipeline_id)
        return f"http://127.0.0.1:{self.server.port}{path}"


@pytest.fixture
async def aml() -> AsyncIterator[FakeAzureML]:
    fake = FakeAzureML()
    app = web.Application()
    app.router.add_post(ROUTE, fake.submit)
    async with TestServer(app, host="127.0.0.1", port=0) as server:
        fake.server = server
        yield fake


class Tokens:
    """The injected token provider (the fake for Azure AD)."""

    def __init__(self, token: str = TOKEN, error: Exception | None = None) -> None:
        self.token, self.error, self.scopes = token, error, list[str]()

    async def __call__(self, scope: str) -> str:
        self.scopes.append(scope)
        if self.error is not None:
            raise self.error
        return self.token


@pytest.fixture
async def tokens() -> Tokens:
    return Tokens()


@pytest.fixture
async def dispatcher(tokens: Tokens) -> AsyncIterator[AzureMLDispatcher]:
    d = AzureMLDispatcher(token_provider=tokens)
    yield d
    await d.aclose()


def make_ctx(
    endpoint: str,
    *,
    file: bool = True,
    schedule_cosf: bool | None = None,
    pipeline_cosf: bool = False,
) -> RunContext:
    pipeline = Pipeline(
        id="p-aml",
        name="train-aml",
        target=AzureMLTarget(endpoint=endpoint),
        parameters={"epochs": "10"},
        continue_on_step_failure=pipeline_cosf,
    )
    if file:
        trigger: Any = DatastoreTrigger(
            datastore="workspaceblobstore",
            path_on_datastore="in",
            data_path_parameter_name="input_data",
        )
    else:
        trigger = RecurrenceTrigger(recurrence=Recurrence(frequency="Hour", interval=1))
    schedule = Schedule(
        id="s-aml",
        name="MyAmlSchedule",
        pipeline="p-aml",
        experiment_name="MyExperiment",
        trigger=trigger,
        continue_on_step_failure=schedule_cosf,
    )
    ref = FileRef(
        datastore="workspaceblobstore",
        relative_path=b"in/a.csv",
        url="http://127.0.0.1:10000/devstoreaccount1/data/in/a.csv",
        parameter="input_data",
    )
    run = Run(
        id=RUN_ID,
        schedule_id="s-aml",
        pipeline_id="p-aml",
        experiment_name="MyExperiment",
        status=RunStatus.RUNNING,
        trigger={"kind": "file"},
    )
    return RunContext(
        run=run,
        pipeline=pipeline,
        schedule=schedule,
        parameters={"epochs": "10"},
        file=ref if file else None,
        trigger_time=datetime(2026, 11, 25, 10, 15, 30, 123456, tzinfo=UTC),
        continue_on_step_failure=bool(
            schedule_cosf if schedule_cosf is not None else pipeline_cosf
        ),
        config_dir=Path("."),
        attempt=1,
    )


async def test_submits_exactly_the_contract_and_keeps_the_remote_id(
    aml: FakeAzureML, dispatcher: AzureMLDispatcher, tokens: Tokens
) -> None:
    outcome = await dispatcher.dispatch(make_ctx(aml.endpoint()))
    assert outcome.status is RunStatus.SUBMITTED and outcome.http_status == 200
    [body] = aml.bodies
    assert body == {
        "ExperimentName": "MyExperiment",
        "Description": "MyAmlSchedule",
        "ParameterAssignments": {"epochs": "10"},
        "DataPathAssignments": {
            "input_data": {"DataStoreName": "workspaceblobstore", "RelativePath": "in/a.csv"}
        },
        "RunSource": "API",
        "tags": {
            "watcherd_run_id": RUN_ID,
            "watcherd_schedule_id": "s-aml",
            "watcherd_trigger_time": "2026-11-25T10:15:30Z",
        },
    }
    assert outcome.remote_id is not None and uuid.UUID(outcome.remote_id)
    assert tokens.scopes == [SCOPE]


@pytest.mark.parametrize(
    ("schedule_cosf", "pipeline_cosf", "expected"),
    [(None, False, None), (None, True, True), (False, True, False), (True, False, True)],
)
def test_continue_on_step_failure_only_when_set(
    schedule_cosf: bool | None, pipeline_cosf: bool, expected: bool | None
) -> None:
    ctx = make_ctx(
        "http://x/", file=False, schedule_cosf=schedule_cosf, pipeline_cosf=pipeline_cosf
    )
    body = azureml_body(ctx)
    assert body.get("ContinueRunOnStepFailure") == expected
    assert ("ContinueRunOnStepFailure" in body) is (expected is not None)
    assert "DataPathAssignments" not in body


async def test_invalid_token_is_a_failed_run_with_the_status(
    aml: FakeAzureML, tokens: Tokens, dispatcher: AzureMLDispatcher
) -> None:
    tokens.token = "wrong-token-value"
    outcome = await dispatcher.dispatch(make_ctx(aml.endpoint()))
    assert outcome.status is RunStatus.FAILED and outcome.http_status == 401
    assert outcome.error is not None and outcome.error.startswith("HTTP 401: ")
    assert "InvalidAuthenticationToken" in outcome.error
    assert "wrong-token-value" not in outcome.error  # the server echoed it; we mask it


async def test_token_failure_is_a_failed_run_not_a_crash(
    aml: FakeAzureML, tokens: Tokens, dispatcher: AzureMLDispatcher
) -> None:
    tokens.error = ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token")
    with structlog.testing.capture_logs() as logs:
        outcome = await dispatcher.dispatch(make_ctx(aml.endpoint()))
    assert outcome.status is RunStatus.FAILED and outcome.http_status is None
    assert outcome.error == (
        f"Azure AD token for scope {SCOPE}: DefaultAzureCredential failed to retrieve a token"
    )
    assert aml.bodies == []
    assert [e["event"] for e in logs] == ["azureml_token_failed"]
    tokens.error = RuntimeError("no credential")
    assert (await dispatcher.dispatch(make_ctx(aml.endpoint()))).status is RunStatus.FAILED


async def test_unreachable_azure_ad_is_retryable(
    tokens: Tokens, dispatcher: AzureMLDispatcher
) -> None:
    tokens.error = ServiceRequestError("Cannot connect to host login.microsoftonline.com")
    with pytest.raises(DispatchUnavailable, match="Azure AD token for scope"):
        await dispatcher.dispatch(make_ctx("http://127.0.0.1:9/never"))


async def test_throttled_and_server_errors_are_retryable(
    aml: FakeAzureML, dispatcher: AzureMLDispatcher
) -> None:
    aml.answers = [(429, "slow", {"Retry-After": "7"}), (500, "oops", {})]
    with pytest.raises(DispatchUnavailable) as info:
        await dispatcher.dispatch(make_ctx(aml.endpoint()))
    assert info.value.retry_after == 7
    with pytest.raises(DispatchUnavailable, match="HTTP 500: oops"):
        await dispatcher.dispatch(make_ctx(aml.endpoint()))


async def test_unknown_pipeline_and_2xx_without_id(
    aml: FakeAzureML, dispatcher: AzureMLDispatcher
) -> None:
    outcome = await dispatcher.dispatch(make_ctx(aml.endpoint("no-such-pipeline")))
    assert (outcome.status, outcome.http_status) == (RunStatus.FAILED, 404)
    aml.answers = [(202, json.dumps({"Status": "Queued"}), {})]
    outcome = await dispatcher.dispatch(make_ctx(aml.endpoint()))
    assert (outcome.status, outcome.remote_id) == (RunStatus.SUBMITTED, None)


async def test_default_provider_uses_default_azure_credential(
    aml: FakeAzureML, monkeypatch: pytest.MonkeyPatch
) -> None:
    import azure.identity.aio

    made: list[FakeCredential] = []

    class FakeCredential:
        def __init__(self) -> None:
            self.scopes: list[str] = []
            self.closed = False
            made.append(self)

        async def get_token(self, *scopes: str) -> AccessToken:
            self.scopes.extend(scopes)
            return AccessToken(TOKEN, 2**31)

        async def close(self) -> None:
            self.closed = True

    monkeypatch.setattr(azure.identity.aio, "DefaultAzureCredential", FakeCredential)
    d = AzureMLDispatcher()
    for _ in range(2):
        assert (await d.dispatch(make_ctx(aml.endpoint()))).status is RunStatus.SUBMITTED
    await d.aclose()
    [cred] = made  # one credential, reused
    assert cred.scopes == [SCOPE, SCOPE] and cred.closed


def test_importing_the_module_does_not_import_azure() -> None:
    import subprocess
    import sys

    code = (
        "import sys, watcherd.dispatch.azureml\n"
        "sys.exit(any(m.split('.')[0] == 'azure' for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_a_pipeline_submit_has_no_schedule_tag() -> None:
    import dataclasses

    ctx = make_ctx("http://x/", file=False)
    run = dataclasses.replace(ctx.run, schedule_id="")
    body = azureml_body(dataclasses.replace(ctx, run=run, schedule=None))
    assert body["Description"] == "train-aml"
    assert body["tags"] == {
        "watcherd_run_id": RUN_ID,
        "watcherd_trigger_time": "2026-11-25T10:15:30Z",
    }
