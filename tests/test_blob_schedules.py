"""Blob datastore schedules end to end: a real daemon, a real Azurite, a real HTTP sink.

The daemon watches `incoming/` of a container and POSTs each new blob to an aiohttp server
on 127.0.0.1 (an `http` pipeline), while a local-directory schedule of the same daemon must
keep working when Azurite goes away.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from azure.storage.blob import ContainerClient

from tests.azurite import Azurite
from tests.harness import DaemonProc, wait_until
from tests.pollers.test_blob import shared_azurite  # noqa: F401

pytestmark = pytest.mark.azurite


class Sink:
    """An aiohttp server in a thread that records every POSTed body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.keys: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def hook(request: web.Request) -> web.Response:
            self.bodies.append(await request.json())
            self.keys.append(request.headers.get("Idempotency-Key", ""))
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_post("/hook", hook)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._started.set()
        self._loop.run_forever()

    def __enter__(self) -> Sink:
        self._thread.start()
        self._started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def _stop() -> None:
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def paths(self) -> list[str]:
        return sorted(
            b["DataPathAssignments"]["input_data"]["RelativePath"]
            for b in self.bodies
            if b.get("DataPathAssignments")
        )


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as s:
        yield s


def _config(conn: str, container: str, port: int) -> str:
    return f"""
[daemon]
api = ""

[datastores.workspaceblobstore]
kind = "azure_blob"
connection_string = "{conn}"
container = "{container}"

[datastores.inbox]
kind = "local"
root = "inbox"

[pipelines.notify]
kind = "http"
url = "http://127.0.0.1:{port}/hook"
retry = {{ attempts = 10, max_delay = "1s" }}

[pipelines.local]
kind = "command"
steps = [["sh", "-c", "echo \\"$WATCHERD_RELATIVE_PATH\\" >> local.txt", "{{f}}"]]
parameters = {{ f = "" }}

[[schedules]]
name = "MyReactiveSchedule"
pipeline = "notify"
experiment_name = "MyExperiment"
datastore = "workspaceblobstore"
path_on_datastore = "incoming"
polling_interval = "1s"
data_path_parameter_name = "input_data"

[[schedules]]
name = "LocalInbox"
pipeline = "local"
experiment_name = "MyExperiment"
datastore = "inbox"
path_on_datastore = "drop"
polling_interval = "1s"
data_path_parameter_name = "f"
"""


def _upload(client: ContainerClient, *names: str) -> None:
    for n in names:
        client.upload_blob(n, n.encode(), overwrite=True)


def test_blob_runs_outage_and_restart(
    tmp_path: Path,
    azurite_server: Azurite,  # noqa: F811
    sink: Sink,
) -> None:
    container = f"c{uuid.uuid4().hex[:12]}"
    conn = azurite_server.connection_string
    client = ContainerClient.from_connection_string(conn, container)
    client.create_container()
    (tmp_path / "inbox" / "drop").mkdir(parents=True)
    d = DaemonProc(tmp_path, _config(conn, container, sink.port))
    try:
        d.start()
        wait_until(lambda: d.events("baseline_taken"))
        _upload(client, "incoming/a.csv", "incoming/sub/deep.csv", "incoming/b.csv", "other/c.csv")
        wait_until(lambda: sink.paths() == ["incoming/a.csv", "incoming/b.csv"])
        body = sink.bodies[0]
        assert body["ExperimentName"] == "MyExperiment"
        assert body["ScheduleName"] == "MyReactiveSchedule"
        assert body["DataPathAssignments"]["input_data"]["DataStoreName"] == "workspaceblobstore"
        assert sink.keys[0] == body["RunId"]
        _upload(client, "incoming/a.csv")  # re-upload: a new ETag, one more run
        wait_until(lambda: len(sink.paths()) == 3)

        # Azurite goes away: the blob schedule logs its outage, the local one keeps working
        azurite_server.stop()
        wait_until(lambda: d.events("poll_failed"), timeout=30)
        (tmp_path / "inbox" / "drop" / "during-outage.txt").write_text("x")
        wait_until(
            lambda: (
                (tmp_path / "local.txt").exists()
                and "drop/during-outage.txt" in (tmp_path / "local.txt").read_text()
            )
        )
        azurite_server.start()
        client.close()
        client = ContainerClient.from_connection_string(conn, container)
        _upload(client, "incoming/after-outage.csv")
        wait_until(lambda: "incoming/after-outage.csv" in sink.paths(), timeout=60)
        assert d.stop() == 0

        # while stopped: one new blob; handled blobs must not run again after the restart
        _upload(client, "incoming/while-down.csv")
        d.start()
        wait_until(lambda: "incoming/while-down.csv" in sink.paths(), timeout=30)
        time.sleep(2.5)  # two more polls: nothing else arrives
    finally:
        d.close()
        client.close()
    counts = Counter(sink.paths())
    assert counts == Counter(
        {
            "incoming/a.csv": 2,
            "incoming/b.csv": 1,
            "incoming/after-outage.csv": 1,
            "incoming/while-down.csv": 1,
        }
    )
    assert len(set(sink.keys)) == len(sink.keys)  # one delivery per run
    statuses = {r["status"] for r in d.runs()}
    assert statuses == {"Submitted", "Completed"}
    assert all(json.loads(r["trigger"])["kind"] == "file" for r in d.runs())


# ── blob events (SPEC §4) ─────────────────────────────────────────────────────


def _events_config(conn: str, container: str, queue: str) -> str:
    schedules = "".join(
        f"""
[[schedules]]
name = "{name}"
pipeline = "noop"
experiment_name = "MyExperiment"
datastore = "lake"
path_on_datastore = "{path}"
polling_interval = 10
events = {{ queue = "{queue}" }}
"""
        for name, path in (("Events", "incoming"), ("Other", "other"))
    )
    return f"""
[daemon]
api = "127.0.0.1:0"

[datastores.lake]
kind = "azure_blob"
connection_string = "{conn}"
container = "{container}"

[pipelines.noop]
kind = "command"
steps = [["true"]]
{schedules}"""


def _event(container: str, name: str) -> str:
    return json.dumps(
        {
            "topic": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Storage"
            "/storageAccounts/devstoreaccount1",
            "subject": f"/blobServices/default/containers/{container}/blobs/{name}",
            "eventType": "Microsoft.Storage.BlobCreated",
            "eventTime": "2026-01-01T00:00:00Z",
            "id": str(uuid.uuid4()),
            "data": {"api": "PutBlob"},
        }
    )


VISIBILITY = 4  # seconds (WATCHERD_TEST_QUEUE_VISIBILITY): held messages come back soon


@pytest.mark.timeout(120)
def test_sigkill_during_a_burst_of_500_events_loses_and_doubles_nothing(
    tmp_path: Path,
    shared_azurite: str,  # noqa: F811
) -> None:
    """Two schedules on one queue (one consumer per daemon), 500 + 20 events, SIGKILL
    mid-burst: after the restart every blob has exactly one run, the queue drains, and the
    daemon's /metrics shows the blob-event metrics."""
    from azure.storage.queue import QueueClient

    container, queue = f"c{uuid.uuid4().hex[:12]}", f"q{uuid.uuid4().hex[:12]}"
    conn = shared_azurite
    burst = [f"incoming/burst-{i:03d}.csv" for i in range(500)]
    other = [f"other/o-{i:02d}.csv" for i in range(20)]
    blobs = burst + other
    order: list[str] = []  # the other schedule's events interleaved with the burst
    for i, name in enumerate(burst):
        order += [other[i // 25], name] if i % 25 == 0 else [name]
    client = ContainerClient.from_connection_string(conn, container)
    client.create_container()
    q = QueueClient.from_connection_string(conn, queue)
    q.create_queue()
    d = DaemonProc(
        tmp_path, _events_config(conn, container, queue),
        env={"WATCHERD_TEST_QUEUE_VISIBILITY": str(VISIBILITY)},
    )  # fmt: skip

    def runs_per_blob() -> Counter[str]:
        return Counter(bytes(r["path"]).decode() for r in d.runs() if r["path"] is not None)

    def depth() -> int:
        return int(q.get_queue_properties().approximate_message_count or 0)

    def send_all() -> None:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda b: q.send_message(_event(container, b)), order))

    sending = ThreadPoolExecutor(1)  # sends while the daemon is killed and restarted
    try:
        d.start()
        wait_until(lambda: len(d.events("baseline_taken")) == 2)
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda b: client.upload_blob(b, b"x", overwrite=True), blobs))
        sent = sending.submit(send_all)
        wait_until(lambda: sum(runs_per_blob().values()) >= 100, timeout=60, step=0.02)
        d.kill()  # SIGKILL mid-burst: messages in hand, runs half written
        killed_at = sum(runs_per_blob().values())
        assert killed_at < len(blobs)
        d.start()
        sent.result(60)  # every event was sent (a failed send fails the test here)
        # the listing at start catches what the killed daemon held; the held messages come
        # back when their visibility timeout runs out and are found already handled
        wait_until(lambda: len(runs_per_blob()) == len(blobs), timeout=60)
        wait_until(lambda: depth() == 0, timeout=60, step=0.2)
        counts = runs_per_blob()
        assert sorted(counts) == sorted(blobs) and set(counts.values()) == {1}
        # one consumer for the queue in each life of the daemon, though two schedules read it
        assert len(d.events("blob_queue_serving")) == 2

        # the metrics: one run from an event (lag), one ignored (a subdirectory), one poisoned
        client.upload_blob("incoming/late.csv", b"x")
        for m in (_event(container, "incoming/late.csv"), _event(container, "incoming/sub/x"), "?"):
            q.send_message(m)
        wait_until(lambda: "incoming/late.csv" in runs_per_blob())
        wait_until(lambda: depth() == 0 and d.events("blob_event_poisoned"))
        with d.client() as api:
            text = api.get("/metrics").text
        assert d.stop() == 0  # SIGTERM: the consumer lets go of the queue, exit 0
    finally:
        sending.shutdown(wait=True)
        d.close()
        client.close()
        q.close()
    assert not any(r["trigger"] and '"kind": "manual"' in r["trigger"] for r in d.runs())
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("watcherd_blob_")
    }
    q_label = f'queue="{queue}"'
    assert samples[f"watcherd_blob_events_received_total{{{q_label}}}"] >= 3
    assert samples[f'watcherd_blob_events_ignored_total{{{q_label},reason="unmatched"}}'] >= 1
    assert samples[f"watcherd_blob_messages_poisoned_total{{{q_label}}}"] == 1
    assert samples['watcherd_blob_event_lag_seconds_count{schedule="Events"}'] >= 1
