"""PATCH /schedules/{id} and POST /pipelines/{id}/disable against the real API over a real
engine and SQLite store (SPEC §8): a rename onto a taken name is a 409 `exists`, a refused
PATCH changes nothing, and a schedule in error still holds its pipeline (its stored status
counts, and it is listed with the pipeline)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.clocks import ManualClock
from tests.engine_helpers import Harness, eventually, load_config, running_engine
from watcherd.api.app import make_app, serve
from watcherd.sdk import ConflictError, Schedule, Workspace

API = "/api/v1"
TOKEN = "t0ken-for-schedule-mutations"
NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)

HEAD = """
[daemon]
api = ""

[datastores.inbox]
kind = "local"
root = "inbox"

[pipelines.other]
kind = "command"
steps = [["true"]]

[[schedules]]
name = "declared"
pipeline = "other"
experiment_name = "E"
status = "Disabled"
cron = "0 3 * * *"
"""
COMMAND = """
[pipelines.train]
kind = "command"
steps = [["true"]]
"""
# The same config with `train` a batch endpoint: a local datastore cannot feed one, so an API
# schedule watching `inbox` with it no longer parses after a reload (it is in error).
BATCH_ENDPOINT = """
[pipelines.train]
kind = "batch_endpoint"
endpoint = "https://ep.westeurope.inference.ml.azure.com/jobs"
"""
CONFIG, BATCH = HEAD + COMMAND, HEAD + BATCH_ENDPOINT


@contextlib.asynccontextmanager
async def _api(tmp_path: Path) -> AsyncIterator[tuple[Harness, httpx.AsyncClient, str]]:
    """A running engine on CONFIG, its API on 127.0.0.1, and a client with the token."""
    await asyncio.to_thread((tmp_path / "inbox").mkdir)
    async with (
        running_engine(tmp_path, CONFIG, ManualClock(NOW)) as h,
        contextlib.AsyncExitStack() as stack,
    ):
        url = await serve(
            make_app(h.manager, token=TOKEN, bind="127.0.0.1:0"), "127.0.0.1:0", stack
        )
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
            yield h, client, url


async def _create(client: httpx.AsyncClient, name: str, **keys: Any) -> dict[str, Any]:
    body = {
        "name": name,
        "pipeline": "train",
        "experiment_name": "E",
        "recurrence": {"frequency": "Hour", "interval": 2, "start_time": "2026-01-01T00:00:00"},
    } | keys
    r = await client.post(f"{API}/schedules", json=body)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


async def test_a_rename_onto_a_taken_name_is_409_exists_and_changes_nothing(
    tmp_path: Path,
) -> None:
    async with _api(tmp_path) as (h, client, url):
        a = await _create(client, "a")
        b = await _create(client, "b", description="bee")
        for taken in ("a", "declared"):  # an API-created and a declared schedule's name
            r = await client.patch(
                f"{API}/schedules/{b['id']}", json={"name": taken, "description": "changed"}
            )
            assert r.status_code == 409, r.text
            assert r.json()["error"]["code"] == "exists"
            assert taken in r.json()["error"]["message"]
        now = (await client.get(f"{API}/schedules/{b['id']}")).json()
        assert (now["name"], now["description"]) == ("b", "bee")
        assert now["updated_at"] == b["updated_at"]
        assert (await client.get(f"{API}/schedules/{a['id']}")).json()["name"] == "a"

        # The SDK's update(name=...) gets the same answer, as a ConflictError.
        def sdk_rename() -> None:
            ws = Workspace(url, TOKEN)
            s = Schedule.get(ws, b["id"])
            with pytest.raises(ConflictError) as caught:
                s.update(name="a")
            assert caught.value.status == 409 and caught.value.code == "exists"

        await asyncio.to_thread(sdk_rename)

        # Its own name, or a free one, is fine; the old name is then free for another.
        r = await client.patch(f"{API}/schedules/{b['id']}", json={"name": "b"})
        assert r.status_code == 200, r.text
        r = await client.patch(f"{API}/schedules/{b['id']}", json={"name": "c"})
        assert r.status_code == 200 and r.json()["name"] == "c", r.text
        r = await client.patch(f"{API}/schedules/{a['id']}", json={"name": "b"})
        assert r.status_code == 200 and r.json()["name"] == "b", r.text
        assert h.engine.rows[b["id"]].name == "c"


async def test_a_patch_refused_for_a_disabled_pipeline_changes_nothing(tmp_path: Path) -> None:
    async with _api(tmp_path) as (h, client, _):
        s = await _create(client, "s", description="first", status="Disabled")
        r = await client.post(f"{API}/pipelines/train/disable")
        assert r.status_code == 200 and r.json()["status"] == "Disabled", r.text
        r = await client.patch(
            f"{API}/schedules/{s['id']}",
            json={
                "description": "changed",
                "pipeline_parameters": {"x": "1"},
                "recurrence": {"frequency": "Day", "interval": 1},
                "status": "Active",
            },
        )
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "pipeline_disabled"
        now = (await client.get(f"{API}/schedules/{s['id']}")).json()
        assert now == s  # nothing changed: description, trigger, status, updated_at
        row = h.engine.rows[s["id"]]
        assert row.spec["description"] == "first" and row.status == "Disabled"

        # Without the status the same change is allowed; with the pipeline back, the status too.
        r = await client.patch(f"{API}/schedules/{s['id']}", json={"description": "changed"})
        assert r.status_code == 200 and r.json()["description"] == "changed", r.text
        assert (await client.post(f"{API}/pipelines/train/enable")).status_code == 200
        r = await client.patch(
            f"{API}/schedules/{s['id']}", json={"description": "third", "status": "Active"}
        )
        assert r.status_code == 200, r.text
        assert (r.json()["description"], r.json()["status"]) == ("third", "Active")


async def test_a_schedule_in_error_still_holds_its_pipeline(tmp_path: Path) -> None:
    async with _api(tmp_path) as (h, client, _):
        s = await _create(
            client,
            "watcher",
            recurrence=None,
            datastore="inbox",
            polling_interval=5,
            data_path_parameter_name="input_data",
        )
        assert s["status"] == "Active"
        await h.engine.reload(load_config(tmp_path, BATCH))  # what a SIGHUP does
        await eventually(lambda: s["id"] in h.engine.broken)
        shown = (await client.get(f"{API}/schedules/{s['id']}")).json()
        assert shown["status"] == "Active" and "batch_endpoint" in shown["error"]

        # It is listed with its pipeline, in the list by pipeline and in the pipeline's own.
        listed = (await client.get(f"{API}/schedules", params={"pipeline_id": "train"})).json()
        assert [x["id"] for x in listed["items"]] == [s["id"]]
        paged = await client.get(f"{API}/schedules", params={"pipeline_id": "train", "limit": 5})
        assert [x["id"] for x in paged.json()["items"]] == [s["id"]]
        other = (await client.get(f"{API}/schedules", params={"pipeline_id": "other"})).json()
        assert s["id"] not in [x["id"] for x in other["items"]]
        assert (await client.get(f"{API}/pipelines/train")).json()["schedules"] == [s["id"]]
        by_name = {p["name"]: p for p in (await client.get(f"{API}/pipelines")).json()["items"]}
        assert by_name["train"]["schedules"] == [s["id"]]

        # Its stored status is Active: the pipeline cannot be disabled (409 naming it).
        r = await client.post(f"{API}/pipelines/train/disable")
        assert r.status_code == 409, r.text
        err = r.json()["error"]
        assert err["code"] == "pipeline_has_active_schedules"
        assert "watcher" in err["message"] and s["id"] in err["message"]
        assert (await client.get(f"{API}/pipelines/train")).json()["status"] == "Active"

        # Disabled (all a schedule in error allows), it no longer holds the pipeline.
        r = await client.post(f"{API}/schedules/{s['id']}/disable")
        assert r.status_code == 200 and r.json()["status"] == "Disabled", r.text
        r = await client.post(f"{API}/pipelines/train/disable")
        assert r.status_code == 200 and r.json()["status"] == "Disabled", r.text
        assert r.json()["schedules"] == [s["id"]]


async def test_runs_of_a_deleted_schedule_can_still_be_listed_by_its_id(tmp_path: Path) -> None:
    async with _api(tmp_path) as (h, client, _):
        made = await _create(client, "gone")
        r = await client.post(f"{API}/schedules/{made['id']}/trigger")
        assert r.status_code in (200, 201, 202), r.text
        await eventually(lambda: bool(h.runs()))
        assert (await client.post(f"{API}/schedules/{made['id']}/disable")).status_code == 200
        assert (await client.delete(f"{API}/schedules/{made['id']}")).status_code == 204
        listed = await client.get(f"{API}/runs", params={"schedule_id": made["id"]})
        assert listed.status_code == 200, listed.text
        ids = {r.id for r in h.runs()}
        assert {r["id"] for r in listed.json()["items"]} == ids and ids
        unknown = await client.get(f"{API}/runs", params={"schedule_id": "no-such-schedule"})
        assert unknown.status_code == 404
