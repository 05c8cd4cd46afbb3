"""Every route of SPEC §8 against a real daemon subprocess: answers, auth and error codes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.seed_daemon import PIPELINE_ID, SECRETS, start_daemon
from tests.harness import DaemonProc, wait_until
from tests.test_yaml_schedules import DOC_RECURRENCE

API = "/api/v1"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    d = start_daemon(tmp_path_factory.mktemp("api"))
    yield d
    d.close()


@pytest.fixture(scope="module")
def api(daemon: DaemonProc) -> Iterator[httpx.Client]:
    with daemon.client() as c:
        yield c


@pytest.fixture(scope="module")
def anon(daemon: DaemonProc) -> Iterator[httpx.Client]:
    with daemon.client(auth=False) as c:
        yield c


def _schedule(api: httpx.Client, name: str, **keys: object) -> dict:
    body = {
        "name": name,
        "pipeline": "train",
        "experiment_name": "E",
        "recurrence": {"frequency": "Hour", "interval": 2, "start_time": "2026-01-01T00:00:00"},
    } | keys
    r = api.post(f"{API}/schedules", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def _wait_terminal(api: httpx.Client, run_id: str) -> dict:
    def done() -> dict | None:
        run = api.get(f"{API}/runs/{run_id}").json()
        return run if run["status"] not in ("Queued", "Running") else None

    return wait_until(done, timeout=20)


def test_health_ready_metrics_and_page(anon: httpx.Client) -> None:
    assert anon.get("/healthz").json() == {"status": "ok"}
    ready = wait_until(lambda: anon.get("/readyz").status_code == 200)
    assert ready
    assert anon.get("/readyz").json()["ready"] is True
    metrics = anon.get("/metrics")
    assert metrics.status_code == 200 and "watcherd_" in metrics.text
    assert metrics.headers["Content-Type"].startswith("text/plain")
    page = anon.get("/")
    assert page.status_code == 200 and "<title>watcherd</title>" in page.text
    assert anon.get(f"{API}/openapi.json").json()["openapi"].startswith("3.")


def test_pipelines(anon: httpx.Client) -> None:
    items = anon.get(f"{API}/pipelines").json()
    assert items["next_cursor"] is None
    by_name = {p["name"]: p for p in items["items"]}
    assert by_name["train"]["id"] == PIPELINE_ID
    assert by_name["train"]["status"] == "Active"
    assert anon.get(f"{API}/pipelines/{PIPELINE_ID}").json()["name"] == "train"
    assert anon.get(f"{API}/pipelines/train").json()["id"] == PIPELINE_ID
    r = anon.get(f"{API}/pipelines/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_no_secret_in_any_answer(anon: httpx.Client, daemon: DaemonProc) -> None:
    texts = [anon.get(f"{API}/{p}").text for p in ("pipelines", "schedules", "runs")]
    texts.append(anon.get(f"{API}/pipelines/notify").text)
    for text in texts:
        for secret in SECRETS + (daemon.token,):
            assert secret not in text
    assert "***" in texts[-1]  # the webhook URL shows with its credentials masked


def test_schedule_lifecycle(api: httpx.Client, anon: httpx.Client) -> None:
    created = _schedule(api, "lifecycle", description="first")
    sid = created["id"]
    assert created["source"] == "api" and created["status"] == "Active"
    assert created["pipeline"] == PIPELINE_ID
    assert created["trigger_words"] and len(created["next_fire_times"]) >= 1
    assert anon.get(f"{API}/schedules/{sid}").json()["name"] == "lifecycle"
    assert anon.get(f"{API}/schedules/lifecycle").json()["id"] == sid

    r = api.patch(
        f"{API}/schedules/{sid}",
        json={"description": "second", "pipeline_parameters": {"input_data": "x"}},
    )
    assert r.status_code == 200, r.text
    assert r.json()["description"] == "second"
    assert r.json()["pipeline_parameters"] == {"input_data": "x"}
    r = api.patch(f"{API}/schedules/{sid}", json={"description": None, "pipeline_parameters": {}})
    assert r.json()["description"] == "second" and r.json()["pipeline_parameters"] == {}

    nxt = anon.get(f"{API}/schedules/{sid}/next", params={"n": 3}).json()
    assert len(nxt["items"]) == 3 and all(t.endswith("Z") for t in nxt["items"])

    assert api.post(f"{API}/schedules/{sid}/disable").json()["status"] == "Disabled"
    listed = {
        s["id"]
        for s in anon.get(f"{API}/schedules", params={"active_only": "true"}).json()["items"]
    }
    assert sid not in listed
    assert api.post(f"{API}/schedules/{sid}/enable").json()["status"] == "Active"

    r = api.delete(f"{API}/schedules/{sid}")
    assert r.status_code == 409 and r.json()["error"]["code"] == "schedule_active"
    api.post(f"{API}/schedules/{sid}/disable")
    assert api.delete(f"{API}/schedules/{sid}").status_code == 204
    assert anon.get(f"{API}/schedules/{sid}").status_code == 404


def test_trigger_runs_log_retry_cancel(api: httpx.Client, anon: httpx.Client) -> None:
    sid = _schedule(api, "manual")["id"]
    r = api.post(f"{API}/schedules/{sid}/trigger", json={"parameters": {"input_data": "a.csv"}})
    assert r.status_code == 202, r.text
    run = _wait_terminal(api, r.json()["id"])
    assert run["status"] == "Completed" and run["trigger"]["kind"] == "manual"
    assert run["exit_code"] == 0

    assert anon.get(f"{API}/runs/{run['id']}/log").status_code == 401
    log = api.get(f"{API}/runs/{run['id']}/log")
    assert log.status_code == 200 and "training on a.csv" in log.text

    runs = anon.get(f"{API}/runs", params={"schedule_id": sid}).json()
    assert [x["id"] for x in runs["items"]] == [run["id"]]
    assert anon.get(f"{API}/runs", params={"status": "Completed"}).status_code == 200
    assert anon.get(f"{API}/runs/nope").status_code == 404

    r = api.post(f"{API}/runs/{run['id']}/cancel")
    assert r.status_code == 409
    r = api.post(f"{API}/runs/{run['id']}/retry")
    assert r.status_code == 200 and r.json()["attempt"] == 2
    assert _wait_terminal(api, run["id"])["status"] == "Completed"


def test_trigger_idempotency_key(api: httpx.Client) -> None:
    sid = _schedule(api, "idempotent")["id"]
    headers = {"Idempotency-Key": "key-1"}
    first = api.post(f"{API}/schedules/{sid}/trigger", headers=headers).json()
    again = api.post(f"{API}/schedules/{sid}/trigger", headers=headers).json()
    assert first["id"] == again["id"]
    other = api.post(f"{API}/schedules/{sid}/trigger", headers={"Idempotency-Key": "key-2"})
    assert other.json()["id"] != first["id"]


def test_runs_pagination(api: httpx.Client, anon: httpx.Client) -> None:
    sid = _schedule(api, "paged")["id"]
    ids = {api.post(f"{API}/schedules/{sid}/trigger").json()["id"] for _ in range(3)}
    page1 = anon.get(f"{API}/runs", params={"schedule_id": sid, "limit": 2}).json()
    assert len(page1["items"]) == 2 and page1["next_cursor"]
    page2 = anon.get(
        f"{API}/runs", params={"schedule_id": sid, "limit": 2, "cursor": page1["next_cursor"]}
    ).json()
    assert {r["id"] for r in page1["items"] + page2["items"]} == ids


def test_experiments(api: httpx.Client, anon: httpx.Client) -> None:
    _schedule(api, "exp", experiment_name="Forecasting")
    names = [e["name"] for e in anon.get(f"{API}/experiments").json()["items"]]
    assert "Forecasting" in names and "Nightly" in names


MUTATIONS = [
    ("POST", "/pipelines/train/enable"),
    ("POST", "/pipelines/train/disable"),
    ("POST", "/schedules"),
    ("PATCH", "/schedules/Nightly"),
    ("DELETE", "/schedules/Nightly"),
    ("POST", "/schedules/Nightly/enable"),
    ("POST", "/schedules/Nightly/disable"),
    ("POST", "/schedules/Nightly/trigger"),
    ("POST", "/runs/x/retry"),
    ("POST", "/runs/x/cancel"),
]


@pytest.mark.parametrize(("method", "path"), MUTATIONS)
def test_401_without_token(anon: httpx.Client, method: str, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer not-the-token"}):
        r = anon.request(method, API + path, json={}, headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(
    ("body", "key_path", "message"),
    [
        (
            {"recurrence": {"frequency": "Minutes", "interval": 1}},
            "body.recurrence.frequency",
            "Invalid value for frequency, only one of Minute, Hour, Day, Week, or Month accepted",
        ),
        (
            {"recurrence": {"frequency": "Minute", "interval": 0}},
            "body.recurrence.interval",
            "Interval must be an integer greater than 0.",
        ),
        (
            {"recurrence": {"frequency": "Hour", "interval": 1, "hours": [1]}},
            "body.recurrence.hours",
            "Can only specify hours if frequency is Week or Day.",
        ),
        (
            {"recurrence": {"frequency": "Day", "interval": 1, "time_zone": "Mars"}},
            "body.recurrence.time_zone",
            "Time zone is not a valid TimeZone enum.",
        ),
    ],
)
def test_422_with_azure_messages(
    api: httpx.Client, body: dict, key_path: str, message: str
) -> None:
    full = {"name": "bad", "pipeline": "train", "experiment_name": "E"} | body
    r = api.post(f"{API}/schedules", json=full)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["key_path"] == key_path
    assert err["message"] == message


def test_422_other_bodies(api: httpx.Client) -> None:
    base = {"name": "bad", "pipeline": "train", "experiment_name": "E"}
    cases = [
        {
            "experiment_name": "E",
            "pipeline": "train",
            "recurrence": {"frequency": "Hour", "interval": 1},
        },  # no name
        base,  # no trigger
        base
        | {"recurrence": {"frequency": "Hour", "interval": 1}, "datastore": "workspaceblobstore"},
        base | {"recurrence": {"frequency": "Hour", "interval": 1}, "colour": "red"},
        base | {"cron": "not a cron"},
        base | {"pipeline": "nope", "recurrence": {"frequency": "Hour", "interval": 1}},
    ]
    for body in cases:
        r = api.post(f"{API}/schedules", json=body)
        assert r.status_code in (404, 422), (body, r.text)
        err = r.json()["error"]
        if r.status_code == 422:
            assert err["key_path"].startswith("body"), err
    assert api.post(f"{API}/schedules", content=b"{").status_code == 400
    assert api.post(f"{API}/schedules", json=[]).status_code == 422
    sid = _schedule(api, "trigger-kind")["id"]
    r = api.patch(f"{API}/schedules/{sid}", json={"recurrence": {"frequency": "Nope"}})
    assert r.status_code == 422
    r = api.post(f"{API}/schedules/{sid}/trigger", json={"path": "a.csv"})
    assert r.status_code == 422 and r.json()["error"]["key_path"] == "body.path"


def test_409_cases(api: httpx.Client) -> None:
    _schedule(api, "dupe")
    body = {
        "name": "dupe",
        "pipeline": "train",
        "experiment_name": "E",
        "recurrence": {"frequency": "Hour", "interval": 1},
    }
    assert api.post(f"{API}/schedules", json=body).status_code == 409

    r = api.patch(f"{API}/schedules/Nightly", json={"description": "changed"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "declared_in_config"
    r = api.delete(f"{API}/schedules/Nightly")
    assert r.status_code == 409
    # The status of a declared schedule may change at run time.
    assert api.patch(f"{API}/schedules/Nightly", json={"status": "Disabled"}).status_code == 200
    assert api.post(f"{API}/schedules/Nightly/enable").status_code == 200

    r = api.post(f"{API}/pipelines/train/disable")
    assert r.status_code == 409
    assert "Nightly" in r.json()["error"]["message"]

    r = api.post(f"{API}/pipelines/notify/disable")
    assert r.status_code == 200 and r.json()["status"] == "Disabled"
    body = {
        "name": "on-disabled",
        "pipeline": "notify",
        "experiment_name": "E",
        "recurrence": {"frequency": "Hour", "interval": 1},
    }
    assert api.post(f"{API}/schedules", json=body).status_code == 409
    assert api.post(f"{API}/pipelines/notify/enable").json()["status"] == "Active"


def test_misdirected_host(anon: httpx.Client) -> None:
    r = anon.get(f"{API}/schedules", headers={"Host": "attacker.example"})
    assert r.status_code == 421
    r = anon.get(f"{API}/schedules", headers={"Host": "localhost"})
    assert r.status_code == 200


def test_discovery_file(daemon: DaemonProc) -> None:
    import json

    data = json.loads((daemon.state_dir / "config.json").read_text())
    assert data["url"] == daemon.url and Path(data["token_file"]).exists()


def test_submit_pipeline(api: httpx.Client, anon: httpx.Client) -> None:
    body = {"experiment_name": "Submitted", "parameters": {"input_data": "s.csv"}}
    r = api.post(f"{API}/pipelines/train/submit", json=body, headers={"X-Watcherd-Client": "cli"})
    assert r.status_code == 202, r.text
    run = r.json()
    assert r.headers["Location"] == f"{API}/runs/{run['id']}"
    assert run["schedule_id"] is None and run["experiment_name"] == "Submitted"
    assert run["trigger"]["kind"] == "manual" and run["trigger"]["by"] == "cli"
    done = _wait_terminal(api, run["id"])
    assert done["status"] == "Completed"
    assert "training on s.csv" in api.get(f"{API}/runs/{run['id']}/log").text
    assert anon.post(f"{API}/pipelines/train/submit", json=body).status_code == 401
    r = api.post(f"{API}/pipelines/train/submit", json={"experiment_name": ""})
    assert r.status_code == 422 and r.json()["error"]["key_path"] == "body.experiment_name"
    assert api.post(f"{API}/pipelines/nope/submit", json=body).status_code == 404
    assert api.post(f"{API}/pipelines/notify/disable").status_code == 200
    try:
        r = api.post(f"{API}/pipelines/notify/submit", json={"experiment_name": "E"})
        assert r.status_code == 409, r.text
    finally:
        assert api.post(f"{API}/pipelines/notify/enable").status_code == 200


def test_replicas(anon: httpx.Client) -> None:
    r = anon.get(f"{API}/replicas")
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert len(items) == 1
    replica = items[0]
    assert {
        "id",
        "host",
        "started",
        "last_heartbeat",
        "schedules",
        "running",
        "config_hash",
    } <= set(replica)
    nightly = anon.get(f"{API}/schedules/Nightly").json()["id"]
    assert nightly in replica["schedules"]


# the documentation's recurrence example, create_job naming this daemon's pipeline
DOCS_RECURRENCE_YAML = DOC_RECURRENCE.replace("azureml:simple-pipeline-job", "azureml:train")


def test_create_schedule_from_yaml(api: httpx.Client) -> None:
    """Azure ML's documented v2 YAML, create_job naming a watcherd pipeline (needs the config
    layer's YAML parser, watcherd.config.yaml)."""
    yaml = {"Content-Type": "application/yaml"}
    r = api.post(f"{API}/schedules", content=DOCS_RECURRENCE_YAML.encode(), headers=yaml)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["name"] == "simple_recurrence_job_schedule"
    assert created["pipeline"] == PIPELINE_ID
    assert created["trigger"]["schedule"]["hours"] == [4, 5, 10, 11, 12]
    assert r.headers["Location"] == f"{API}/schedules/{created['id']}"
    r = api.post(f"{API}/schedules", content=b"name: [unclosed\n", headers=yaml)
    assert r.status_code in (400, 422) and r.json()["error"]["code"]
    r = api.post(f"{API}/schedules", content=b"name: x\n" + b"#" * (1 << 20), headers=yaml)
    assert r.status_code == 413
    api.post(f"{API}/schedules/{created['id']}/disable")
