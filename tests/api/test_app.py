"""The API's own logic over an in-memory Services: auth, Host check, errors, serve()."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from tests.api.fake_services import FakeServices
from watcherd.api import make_app, serve
from watcherd.api.app import parse_bind
from watcherd.api.openapi import openapi_document
from watcherd.core.errors import StateError

TOKEN = "t0ken-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@contextlib.asynccontextmanager
async def running(
    services: FakeServices,
    *,
    bind: str = "127.0.0.1:0",
    listen: str | None = None,
    api_hosts: tuple[str, ...] = (),
) -> AsyncIterator[httpx.AsyncClient]:
    """Serve make_app(bind=…) on `listen` (default: bind) and yield a client for it."""
    app = make_app(services, token=TOKEN, bind=bind, api_hosts=api_hosts)
    async with contextlib.AsyncExitStack() as stack:
        url = await serve(app, listen or bind, stack)
        if url.startswith("unix:"):
            transport = httpx.AsyncHTTPTransport(uds=url.removeprefix("unix:"))
            client = httpx.AsyncClient(base_url="http://localhost", transport=transport)
        else:
            client = httpx.AsyncClient(base_url=url)
        async with client:
            yield client


@pytest.fixture
def services() -> FakeServices:
    return FakeServices()


async def test_serve_port_zero_returns_the_real_port(services: FakeServices) -> None:
    async with running(services) as client:
        assert not str(client.base_url).endswith(":0")
        r = await client.get("/healthz")
        assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_parse_bind() -> None:
    assert parse_bind("127.0.0.1:8765") == ("127.0.0.1", 8765)
    assert parse_bind("[::1]:9") == ("::1", 9)
    assert parse_bind("localhost") == ("localhost", 8765)
    with pytest.raises(ValueError):
        parse_bind("host:99999")


MUTATIONS = [
    ("POST", "/api/v1/pipelines/p1/enable"),
    ("POST", "/api/v1/pipelines/p1/disable"),
    ("POST", "/api/v1/pipelines/p1/submit"),
    ("POST", "/api/v1/schedules"),
    ("PATCH", "/api/v1/schedules/s1"),
    ("DELETE", "/api/v1/schedules/s1"),
    ("POST", "/api/v1/schedules/s1/enable"),
    ("POST", "/api/v1/schedules/s1/disable"),
    ("POST", "/api/v1/schedules/s1/trigger"),
    ("POST", "/api/v1/runs/r1/retry"),
    ("POST", "/api/v1/runs/r1/cancel"),
]


@pytest.mark.parametrize(("method", "path"), MUTATIONS)
async def test_every_mutation_needs_the_token(
    services: FakeServices, method: str, path: str
) -> None:
    async with running(services) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            r = await client.request(method, path, headers=headers, json={})
            assert r.status_code == 401, (method, path, headers)
            assert r.json()["error"]["code"] == "unauthorized"
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert services.calls == []  # nothing reached the services


async def test_loopback_reads_are_open_except_run_logs(services: FakeServices) -> None:
    async with running(services) as client:
        for path in (
            "/api/v1/schedules",
            "/api/v1/pipelines",
            "/api/v1/runs/r1",
            "/metrics",
            "/api/v1/openapi.json",
            "/api/v1/experiments",
        ):
            assert (await client.get(path)).status_code == 200, path
        assert (await client.get("/api/v1/runs/r1/log")).status_code == 401
        r = await client.get("/api/v1/runs/r1/log", headers=AUTH)
        assert r.status_code == 200 and r.text == "hello\n"
        assert r.headers["Content-Type"].startswith("text/plain")


async def test_non_loopback_bind_needs_the_token_for_reads(services: FakeServices) -> None:
    async with running(services, bind="0.0.0.0:8765", listen="127.0.0.1:0") as client:
        for path in ("/api/v1/schedules", "/metrics", "/api/v1/runs", "/api/v1/openapi.json"):
            assert (await client.get(path)).status_code == 401, path
            assert (await client.get(path, headers=AUTH)).status_code == 200, path
        for path in ("/healthz", "/readyz", "/", "/static/app.js", "/static/style.css"):
            assert (await client.get(path)).status_code == 200, path
        page = (await client.get("/")).text
        assert 'data-token-for-reads="true"' in page


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("localhost:8765", 200),
        ("127.0.0.1", 200),
        ("[::1]:1234", 200),
        ("LOCALHOST", 200),
        ("proxy.example:443", 200),
        ("evil.example", 421),
        ("evil.example:8765", 421),
        ("127.0.0.1.evil.example", 421),
    ],
)
async def test_host_header_check(services: FakeServices, host: str, status: int) -> None:
    async with running(services, api_hosts=("proxy.example",)) as client:
        r = await client.get("/api/v1/schedules", headers={"Host": host})
        assert r.status_code == status
        if status == 421:
            assert r.json()["error"]["code"] == "misdirected_request"
        # Health probes carry the pod IP as Host: they are exempt.
        assert (await client.get("/healthz", headers={"Host": host})).status_code == 200


async def test_bound_address_is_an_allowed_host(services: FakeServices) -> None:
    async with running(services, bind="0.0.0.0:8765", listen="127.0.0.1:0") as client:
        r = await client.get("/healthz", headers={"Host": "0.0.0.0:8765"})
        assert r.status_code == 200
        r = await client.get("/api/v1/schedules", headers={"Host": "0.0.0.0:8765", **AUTH})
        assert r.status_code == 200


async def test_error_mapping(services: FakeServices) -> None:
    async with running(services) as client:
        post = client.post
        r = await post("/api/v1/schedules", content=b"{nope", headers=AUTH)
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_json"
        r = await post("/api/v1/schedules", content=b"NaN", headers=AUTH)
        assert r.status_code == 400
        r = await post("/api/v1/schedules", json=[1, 2], headers=AUTH)
        assert r.status_code == 422 and r.json()["error"]["key_path"] == "body"
        r = await post("/api/v1/schedules", content=b"", headers=AUTH)
        assert r.status_code == 422
        r = await post("/api/v1/schedules", json={"pipeline": "p1"}, headers=AUTH)
        assert r.status_code == 422
        assert r.json()["error"] == {
            "code": "invalid",
            "message": "required",
            "key_path": "body.name",
            "errors": [{"key_path": "body.name", "message": "required"}],
        }
        r = await post(
            "/api/v1/schedules", headers=AUTH, json={"name": "x", "recurrence": {"interval": 0}}
        )
        assert r.status_code == 422
        err = r.json()["error"]
        assert err["message"] == "Interval must be an integer greater than 0."
        assert err["key_path"] == "body.recurrence.interval"
        r = await client.get("/api/v1/schedules/nope")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = await post("/api/v1/pipelines/p1/disable", headers=AUTH)
        assert r.status_code == 409
        assert r.json()["error"]["code"] == "pipeline_has_active_schedules"
        assert "first" in r.json()["error"]["message"]
        r = await client.delete("/api/v1/schedules/s1", headers=AUTH)
        assert r.status_code == 409 and r.json()["error"]["code"] == "schedule_active"
        r = await client.get("/api/v1/nothing-here")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = await client.put("/api/v1/schedules", headers=AUTH)
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


async def test_unexpected_errors_are_500_without_details(services: FakeServices) -> None:
    async with running(services) as client:
        services.explode = RuntimeError("secret internals")
        r = await client.get("/api/v1/pipelines")
        assert r.status_code == 500
        assert "secret internals" not in r.text
        assert r.json()["error"]["code"] == "internal_error"
        services.explode = StateError("database is locked")
        r = await client.get("/api/v1/pipelines")
        assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
        assert (await client.get("/readyz")).status_code == 503


async def test_query_parameters_are_checked(services: FakeServices) -> None:
    async with running(services) as client:
        for path, key in [
            ("/api/v1/schedules?active_only=maybe", "query.active_only"),
            ("/api/v1/runs?limit=0", "query.limit"),
            ("/api/v1/runs?limit=x", "query.limit"),
            ("/api/v1/runs?status=Sleeping", "query.status"),
            ("/api/v1/runs?cursor=bad", "query.cursor"),
            ("/api/v1/schedules/s1/next?n=1000", "query.n"),
        ]:
            r = await client.get(path)
            assert r.status_code == 400, path
            assert r.json()["error"]["key_path"] == key
        r = await client.get("/api/v1/schedules?active_only=true")
        assert r.status_code == 200
        assert services.calls[-1] == ("list_schedules", (True, None, None, None))
        r = await client.get("/api/v1/schedules?limit=5&cursor=YQ==")
        assert services.calls[-1] == ("list_schedules", (False, None, 5, "YQ=="))
        r = await client.get("/api/v1/runs?status=failed&limit=7")
        assert services.calls[-1] == ("list_runs", (None, None, "Failed", 7, None))
        r = await client.get("/api/v1/schedules/s1/next?n=2")
        assert r.json() == {"items": ["2026-11-25T10:15:00Z"] * 2, "next_cursor": None}


async def test_trigger_passes_idempotency_key_and_client(services: FakeServices) -> None:
    async with running(services) as client:
        headers = {**AUTH, "Idempotency-Key": "abc-1", "X-Watcherd-Client": "cli"}
        r1 = await client.post(
            "/api/v1/schedules/s1/trigger", headers=headers, json={"parameters": {"k": "v"}}
        )
        r2 = await client.post(
            "/api/v1/schedules/s1/trigger", headers=headers, json={"parameters": {"k": "v"}}
        )
        assert r1.status_code == r2.status_code == 202
        assert r1.json()["id"] == r2.json()["id"] == "r-abc-1"
        assert r1.headers["Location"] == "/api/v1/runs/r-abc-1"
        assert services.calls[-1] == ("trigger", (None, {"k": "v"}, "cli", "abc-1"))
        r = await client.post("/api/v1/schedules/s1/trigger", headers=AUTH)
        assert r.status_code == 202 and services.calls[-1][1][2] == "api"
        bad = [
            ({"paht": "x"}, "body.paht"),
            ({"path": 3}, "body.path"),
            ({"parameters": {"k": 1}}, "body.parameters.k"),
            ({"parameters": []}, "body.parameters"),
        ]
        for body, key in bad:
            r = await client.post("/api/v1/schedules/s1/trigger", headers=AUTH, json=body)
            assert r.status_code == 422 and r.json()["error"]["key_path"] == key
        r = await client.post(
            "/api/v1/schedules/s1/trigger", headers={**AUTH, "Idempotency-Key": "x" * 201}
        )
        assert r.status_code == 400


async def test_datastores_show_names_and_kinds_only(services: FakeServices) -> None:
    async with running(services) as client:
        r = await client.get("/api/v1/datastores")
        assert r.json() == {"items": [{"name": "inbox", "kind": "local"}], "next_cursor": None}
        assert "secret-root" not in r.text
        assert (await client.get("/api/v1/datastores/inbox")).status_code == 200
        assert (await client.get("/api/v1/datastores/nope")).status_code == 404


async def test_page_shell_has_no_data_and_a_strict_csp(services: FakeServices) -> None:
    async with running(services) as client:
        r = await client.get("/")
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("text/html")
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert 'data-token-for-reads="false"' in r.text
        assert "first" not in r.text  # the schedule's name: data comes from the JSON API
        assert (await client.get("/static/app.js")).status_code == 200


async def test_unix_socket(services: FakeServices, tmp_path: Path) -> None:
    sock = tmp_path / "api.sock"
    sock.touch()  # a stale file is only replaced when it is a socket
    sock.unlink()
    async with running(services, bind=f"unix:{sock}") as client:
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660
        assert (await client.get("/api/v1/schedules")).status_code == 200
        assert (await client.post("/api/v1/schedules/s1/disable")).status_code == 401
        r = await client.post("/api/v1/schedules/s1/disable", headers=AUTH)
        assert r.status_code == 200 and r.json()["status"] == "Disabled"
    assert not sock.exists()


def test_openapi_covers_every_route(services: FakeServices) -> None:
    app = make_app(services, token=TOKEN, bind="127.0.0.1:0", api_hosts=())
    served = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("formatter") or info.get("path")
        if route.method == "HEAD" or path is None or path.startswith("/static"):
            continue
        served.add((route.method.lower(), path))
    doc = openapi_document()
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert served == documented
    for name in ("Schedule", "Run", "Pipeline", "Error"):
        assert name in doc["components"]["schemas"]


def test_make_app_returns_an_application(services: FakeServices) -> None:
    assert isinstance(
        make_app(services, token=TOKEN, bind="127.0.0.1:0", api_hosts=()), web.Application
    )


async def test_submit_pipeline(services: FakeServices) -> None:
    async with running(services) as client:
        url = "/api/v1/pipelines/train/submit"
        headers = {**AUTH, "X-Watcherd-Client": "sdk"}
        body = {"experiment_name": "E", "parameters": {"k": "v"}, "continue_on_step_failure": True}
        r = await client.post(url, headers=headers, json=body)
        assert r.status_code == 202, r.text
        run = r.json()
        assert r.headers["Location"] == f"/api/v1/runs/{run['id']}"
        assert run["schedule_id"] is None and run["trigger"] == {"kind": "manual", "by": "sdk"}
        assert services.calls[-1] == ("submit", ("p1", "E", {"k": "v"}, True, "sdk"))
        assert (await client.post(url, json=body)).status_code == 401
        for bad, key in [
            ({}, "body.experiment_name"),
            ({"experiment_name": 3}, "body.experiment_name"),
            ({"experiment_name": "E", "parameters": {"k": 1}}, "body.parameters.k"),
            (
                {"experiment_name": "E", "continue_on_step_failure": "yes"},
                "body.continue_on_step_failure",
            ),
            ({"experiment_name": "E", "extra": 1}, "body.extra"),
        ]:
            r = await client.post(url, headers=AUTH, json=bad)
            assert r.status_code == 422 and r.json()["error"]["key_path"] == key, (bad, r.text)
        assert (
            await client.post(url, headers=AUTH, json={"experiment_name": " "})
        ).status_code == 422
        r = await client.post("/api/v1/pipelines/nope/submit", headers=AUTH, json=body)
        assert r.status_code == 404
        services.pipelines["p1"]["status"] = "Disabled"
        r = await client.post(url, headers=AUTH, json=body)
        assert r.status_code == 409 and r.json()["error"]["code"] == "pipeline_disabled"


async def test_replicas(services: FakeServices) -> None:
    async with running(services) as client:
        r = await client.get("/api/v1/replicas")
        assert r.status_code == 200
        body = r.json()
        assert body["next_cursor"] is None and body["items"][0]["id"] == "host-a-1f2e"
    async with running(services, bind="0.0.0.0:8765", listen="127.0.0.1:0") as client:
        assert (await client.get("/api/v1/replicas")).status_code == 401
        assert (await client.get("/api/v1/replicas", headers=AUTH)).status_code == 200


async def test_schedule_yaml_body(services: FakeServices) -> None:
    async with running(services) as client:
        text = "name: from-yaml\ntrigger: {type: cron, expression: '0 * * * *'}\n"
        for ctype in ("application/yaml", "application/x-yaml", "text/yaml; charset=utf-8"):
            r = await client.post(
                "/api/v1/schedules",
                headers={**AUTH, "Content-Type": ctype},
                content=text.encode(),
            )
            assert r.status_code == 201, (ctype, r.text)
            assert r.json()["name"] == "from-yaml"
            assert services.calls[-1] == ("create_schedule_yaml", text)
        yaml = {**AUTH, "Content-Type": "application/yaml"}
        r = await client.post("/api/v1/schedules", headers=yaml, content=b"trigger: {}\n")
        assert r.status_code == 422 and r.json()["error"]["key_path"] == "body.name"
        r = await client.post("/api/v1/schedules", headers=yaml, content=b"name: \xff\n")
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_yaml"
        big = b"name: x\n" + b"#" * (1024 * 1024)
        r = await client.post("/api/v1/schedules", headers=yaml, content=big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
        calls = len(services.calls)
        no_token = {"Content-Type": "application/yaml"}
        r = await client.post("/api/v1/schedules", content=b"name: y\n", headers=no_token)
        assert r.status_code == 401 and len(services.calls) == calls


async def test_trigger_file_names(services: FakeServices) -> None:
    async with running(services) as client:
        url = "/api/v1/schedules/s1/trigger"
        r = await client.post(url, headers=AUTH, json={"path_b64": "Y2Fm6S1mZi5jc3Y="})
        assert r.status_code == 202
        assert services.calls[-1][1][0] == b"caf\xe9-ff.csv".decode("utf-8", "surrogateescape")
        r = await client.post(url, headers=AUTH, json={"path_b64": "YS5jc3Y="})
        assert services.calls[-1][1][0] == "a.csv"
        raw = {**AUTH, "Content-Type": "application/json"}
        for body, key in [
            (b'{"path": "\\udcff.csv"}', "body.path"),
            (b'{"path": "a\\u0000b"}', "body.path"),
            (b'{"path_b64": "YQBi"}', "body.path_b64"),
            (b'{"path_b64": "!!"}', "body.path_b64"),
            (b'{"path_b64": ""}', "body.path_b64"),
            (b'{"path_b64": "YQ==", "path": "a"}', "body.path_b64"),
        ]:
            r = await client.post(url, headers=raw, content=body)
            assert r.status_code == 422, body
            assert r.json()["error"]["key_path"] == key, body


async def test_long_or_odd_cursor_is_refused_before_the_services(services: FakeServices) -> None:
    async with running(services) as client:
        for cursor in ("9" * 101, "1\x00", "\u200e1"):
            services.calls.clear()
            r = await client.get("/api/v1/runs", params={"cursor": cursor})
            assert r.status_code == 400 and r.json()["error"]["key_path"] == "query.cursor"
            assert services.calls == []
