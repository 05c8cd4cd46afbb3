"""A datastore schedule whose pipeline is a `batch_endpoint`, end to end (SPEC §13): a real
daemon, blobs in a real Azurite, an Azure ML batch endpoint double and an Azure AD double, both
aiohttp servers on 127.0.0.1. No live workspace and no real Azure AD are used.

- The endpoint double is tests/dispatch/test_batch.py's `BatchEndpointDouble` (the documented
  invoke contract: bearer token, `azureml-model-deployment`, the `InputData` body, ARM errors),
  mounted three times: `ok` answers every invoke, `busy` answers 429 (Retry-After) once and
  then the job, `denied` answers 401 once.
- The daemon gets its token the way it would on Azure App Service: `DefaultAzureCredential`
  → `ManagedIdentityCredential` reads `IDENTITY_ENDPOINT` + `IDENTITY_HEADER` and asks that
  endpoint for a token (`GET ?api-version=2019-08-01&resource=…` with `X-IDENTITY-HEADER`,
  answered `{"access_token", "expires_on", "resource", "token_type"}`). `AadDouble` implements
  that wire contract; `AZURE_TOKEN_CREDENTIALS=ManagedIdentityCredential` keeps the chain from
  trying anything else, and every other Azure credential variable is removed from the daemon's
  environment.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from azure.storage.blob import ContainerClient

from tests.dispatch.test_batch import TOKEN, BatchEndpointDouble
from tests.harness import DaemonProc, wait_until

pytestmark = pytest.mark.azurite

SCOPE = "https://ml.azure.com/.default"
DEPLOYMENT = "green"
AZUREML_DATASTORE = "workspaceblobstore"
ODD_NAME = "daily report #1 ü.csv"  # spaces, '#', non-ASCII: percent-encoded in the URI
ODD_URI = "azureml://datastores/workspaceblobstore/paths/ok/daily%20report%20%231%20%C3%BC.csv"
# Every variable azure-identity's credential chain reads: none may leak in from the host.
AZURE_VARS = (
    "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID", "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_CLIENT_CERTIFICATE_PASSWORD", "AZURE_USERNAME", "AZURE_PASSWORD",
    "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST", "AZURE_POD_IDENTITY_AUTHORITY_HOST",
    "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT",
    "MSI_ENDPOINT", "MSI_SECRET", "AZURE_TOKEN_CREDENTIALS",
)  # fmt: skip


@dataclass
class AadDouble:
    """Azure App Service's managed identity endpoint: the token wire contract, one token."""

    secret: str = field(default_factory=lambda: secrets.token_hex(16))
    asked: list[tuple[dict[str, str], str | None]] = field(default_factory=list)

    async def token(self, request: web.Request) -> web.Response:
        self.asked.append((dict(request.query), request.headers.get("X-IDENTITY-HEADER")))
        if request.headers.get("X-IDENTITY-HEADER") != self.secret:
            return web.json_response({"error": "missing or wrong X-IDENTITY-HEADER"}, status=401)
        if request.query.get("api-version") != "2019-08-01" or "resource" not in request.query:
            return web.json_response({"error": "bad request"}, status=400)
        return web.json_response(
            {
                "access_token": TOKEN,
                "expires_on": str(int(time.time()) + 3600),
                "resource": request.query["resource"],
                "token_type": "Bearer",
            }
        )


class Servers:
    """The endpoint doubles and the Azure AD double in one aiohttp app, in a thread (the test
    itself waits with blocking calls, so the servers need a loop of their own)."""

    def __init__(self) -> None:
        self.aad = AadDouble()
        self.ok, self.busy, self.denied = (BatchEndpointDouble() for _ in range(3))
        self.busy.jobs, self.denied.jobs = 100, 200  # distinct job names per endpoint
        self.busy.answers = [
            (429, {"error": {"code": "TooManyRequests", "message": "slow down"}},
             {"Retry-After": "1"}),
        ]  # fmt: skip
        self.denied.answers = [
            (401, {"error": {"code": "InvalidAuthenticationToken", "message": "expired"}}, {}),
        ]
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/msi/token", self.aad.token)
        for name, double in (("ok", self.ok), ("busy", self.busy), ("denied", self.denied)):
            app.router.add_post(f"/{name}/jobs", double.invoke)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = self._runner.addresses[0][1]
        self._ready.set()
        self._loop.run_forever()

    def __enter__(self) -> Servers:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def _config(conn: str, container: str, servers: Servers) -> str:
    text = f"""
[daemon]
api = "127.0.0.1:0"
shutdown_timeout = "2s"

[datastores.landing]
kind = "azure_blob"
connection_string = "{conn}"
container = "{container}"
azureml_datastore = "{AZUREML_DATASTORE}"
"""
    for name in ("ok", "busy", "denied"):
        text += f"""
[pipelines.score-{name}]
kind = "batch_endpoint"
endpoint = "{servers.url(f"/{name}/jobs")}"
deployment = "{DEPLOYMENT}"
request_timeout = "5s"
parameters = {{ mode = "append", threshold = "0.5", input_data = "default.csv" }}
retry = {{ attempts = 3, max_delay = "200ms" }}

[[schedules]]
name = "Blobs-{name}"
pipeline = "score-{name}"
experiment_name = "Scoring"
datastore = "landing"
path_on_datastore = "{name}"
polling_interval = "1s"
data_path_parameter_name = "input_data"
pipeline_parameters = {{ threshold = "0.9" }}
"""
    return text


@dataclass
class World:
    daemon: DaemonProc
    servers: Servers
    container: ContainerClient
    schedules: dict[str, str]  # name → id

    def runs(self, schedule: str) -> list[dict[str, Any]]:
        with self.daemon.client() as c:
            r = c.get("/api/v1/runs", params={"schedule_id": self.schedules[schedule]})
            r.raise_for_status()
            items: list[dict[str, Any]] = r.json()["items"]
        return sorted(items, key=lambda run: run["trigger"]["path"])

    def finished(self, schedule: str, n: int) -> list[dict[str, Any]]:
        """The schedule's runs once `n` of them have ended (Submitted or Failed)."""

        def done() -> list[dict[str, Any]] | None:
            runs = self.runs(schedule)
            ended = [r for r in runs if r["status"] in ("Submitted", "Failed")]
            return runs if len(ended) >= n else None

        runs: list[dict[str, Any]] = wait_until(done, timeout=30)
        return runs


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, azurite: str) -> Iterator[World]:  # noqa: F811
    tmp = tmp_path_factory.mktemp("batch")
    name = f"c{uuid.uuid4().hex[:12]}"
    container = ContainerClient.from_connection_string(azurite, name)
    container.create_container()
    with Servers() as servers:
        d = DaemonProc(tmp, _config(azurite, name, servers))
        for var in AZURE_VARS:
            d.env.pop(var, None)
        d.env |= {
            "IDENTITY_ENDPOINT": servers.url("/msi/token"),
            "IDENTITY_HEADER": servers.aad.secret,
            "AZURE_TOKEN_CREDENTIALS": "ManagedIdentityCredential",
        }
        try:
            d.start()
            wait_until(lambda: len(d.events("baseline_taken")) >= 3)
            with d.client() as c:
                items = c.get("/api/v1/schedules").json()["items"]
            ids = {s["name"].removeprefix("Blobs-"): s["id"] for s in items}
            for blob in ("ok/a.csv", f"ok/{ODD_NAME}", "busy/b.csv", "denied/c.csv"):
                container.upload_blob(blob, blob.encode(), overwrite=True)
            yield World(d, servers, container, ids)
        finally:
            d.close()
            container.delete_container()
            container.close()


def test_one_invoke_per_new_blob_with_the_documented_request(world: World) -> None:
    runs = world.finished("ok", 2)
    assert [r["trigger"]["path"] for r in runs] == ["ok/a.csv", f"ok/{ODD_NAME}"]
    # One more blob, one more poll: by the time its invoke arrives, the first two blobs have
    # been listed again, and they were not invoked twice.
    for other in ("busy", "denied"):  # the whole first wave has its token by now
        world.finished(other, 1)
    tokens = len(world.servers.aad.asked)
    world.container.upload_blob("ok/z-sentinel.csv", b"z", overwrite=True)
    world.finished("ok", 3)
    assert len(world.servers.aad.asked) == tokens  # azure-identity's cache: no new token
    seen = world.servers.ok.seen
    assert len(seen) == 3
    by_run = {s.headers["x-ms-client-request-id"]: s for s in seen}
    assert set(by_run) == {r["id"] for r in world.runs("ok")}  # the run id, once each
    for run in runs:
        request = by_run[run["id"]]
        uri = ODD_URI if run["trigger"]["path"].endswith(ODD_NAME) else (
            "azureml://datastores/workspaceblobstore/paths/ok/a.csv"
        )  # fmt: skip
        sent = request.body["properties"]["InputData"]["input_data"]
        assert sent == {"JobInputType": "UriFile", "Uri": uri}, run["trigger"]
        assert request.body == {
            "properties": {
                "InputData": {
                    "input_data": {"JobInputType": "UriFile", "Uri": uri},
                    "mode": {"JobInputType": "Literal", "Value": "append"},
                    "threshold": {"JobInputType": "Literal", "Value": "0.9"},
                }
            }
        }
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        assert request.headers["azureml-model-deployment"] == DEPLOYMENT
        assert request.headers["Content-Type"].startswith("application/json")
        # The job's name is the run's remote_id; the run ends Submitted (not followed).
        assert run["status"] == "Submitted" and run["attempt"] == 1
    assert sorted(r["remote_id"] for r in runs) == ["batchjob-0001", "batchjob-0002"]


def test_the_token_comes_from_the_managed_identity_endpoint(world: World) -> None:
    world.finished("ok", 2)
    asked = world.servers.aad.asked
    assert asked, "the daemon never asked the Azure AD double for a token"
    for query, header in asked:
        assert query == {"api-version": "2019-08-01", "resource": SCOPE.removesuffix("/.default")}
        assert header == world.servers.aad.secret
    # The first invokes start together (four blobs, one poll) and may each miss the empty
    # cache; later ones use the cached token (checked with the sentinel blob above).
    assert len(asked) <= 4


def test_429_then_200_retries_once_with_the_same_request_id(world: World) -> None:
    [run] = world.finished("busy", 1)
    assert (run["status"], run["remote_id"], run["attempt"]) == ("Submitted", "batchjob-0101", 2)
    first, second = world.servers.busy.seen
    assert [first.headers["x-ms-client-request-id"], second.headers["x-ms-client-request-id"]] == [
        run["id"], run["id"],
    ]  # fmt: skip
    assert first.body == second.body
    assert first.body["properties"]["InputData"]["input_data"]["Uri"] == (
        "azureml://datastores/workspaceblobstore/paths/busy/b.csv"
    )
    assert [a["attempt"] for a in run["attempts"]] == [1, 2]
    assert run["attempts"][0]["error"].startswith("HTTP 429: "), run["attempts"]
    assert run["attempts"][1]["http_status"] == 200


def test_a_retried_attempt_keeps_its_http_status(world: World) -> None:
    [run] = world.finished("busy", 1)
    assert [a.get("http_status") for a in run["attempts"]] == [429, 200], run["attempts"]


def test_401_fails_at_once_with_a_clear_error(world: World) -> None:
    [run] = world.finished("denied", 1)
    assert (run["status"], run["attempt"], run["remote_id"]) == ("Failed", 1, None)
    assert len(world.servers.denied.seen) == 1  # no retry
    error = run["error"]
    assert error.startswith("HTTP 401"), error
    assert f"refused the Azure AD token for {SCOPE}" in error
    assert TOKEN not in error
