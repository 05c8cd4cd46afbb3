"""Blob events (SPEC §4): BlobPollers fed by one QueueHub from a real Azurite queue.

Azurite has no Event Grid, so the tests write what a subscription would write: Event Grid and
CloudEvents messages, raw or base64, one event or an array. The pollers' listing runs on a
ManualClock that the tests do not advance (polling_interval is 10 minutes): every run comes
from an event unless a test advances the clock. The hub runs on the real clock (the queue's
visibility timeouts are real time).
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog
from azure.storage.blob.aio import ContainerClient
from azure.storage.queue.aio import QueueClient

from tests.azurite import ACCOUNT, ACCOUNT_KEY
from tests.clocks import ManualClock
from tests.pollers.test_blob import (  # noqa: F401
    RecordingHealth,
    RecordingSink,
    _schedule,
    names,
    put,
    shared_azurite,
)
from watcherd.core.models import BlobDatastore, BlobEvents, Schedule
from watcherd.engine.clock import SystemClock
from watcherd.engine.metrics import Metrics
from watcherd.pollers.blob import BlobPoller
from watcherd.pollers.blob_consumer import _poison_body
from watcherd.pollers.blob_queue import VISIBILITY_ENV, QueueHub, QueueStats
from watcherd.pollers.blob_storage import account_name, queue_target

TOPIC = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg"
    f"/providers/Microsoft.Storage/storageAccounts/{ACCOUNT}"
)
TEN_MINUTES = timedelta(minutes=10)


def event_grid(container: str, name: str, **kw: str) -> dict[str, Any]:
    """A BlobCreated event in the Event Grid schema, as a storage account publishes it."""
    return {
        "topic": kw.get("topic", TOPIC),
        "subject": f"/blobServices/default/containers/{container}/blobs/{name}",
        "eventType": kw.get("event_type", "Microsoft.Storage.BlobCreated"),
        "eventTime": datetime.now(UTC).isoformat(),
        "id": str(uuid.uuid4()),
        "data": {
            "api": kw.get("api", "PutBlob"),
            "eTag": '"0x8DC000000000000"',  # never used: watcherd reads the blob's own
            "contentLength": 1,
            "blobType": "BlockBlob",
            "url": f"http://127.0.0.1:10000/{ACCOUNT}/{container}/{name}",
        },
        "dataVersion": "",
        "metadataVersion": "1",
    }


def cloud_event(container: str, name: str) -> dict[str, Any]:
    """The same event in CloudEvents 1.0."""
    return {
        "source": TOPIC,
        "subject": f"/blobServices/default/containers/{container}/blobs/{name}",
        "type": "Microsoft.Storage.BlobCreated",
        "time": datetime.now(UTC).isoformat(),
        "id": str(uuid.uuid4()),
        "specversion": "1.0",
        "data": {"api": "PutBlockList", "url": f"http://127.0.0.1:10000/{ACCOUNT}/x/y"},
    }


def text(doc: Any, *, b64: bool = False) -> str:
    raw = json.dumps(doc)
    return base64.b64encode(raw.encode()).decode() if b64 else raw


@dataclass
class Env:
    conn: str
    ds: BlobDatastore
    blobs: ContainerClient
    queue: QueueClient
    qname: str

    def schedule(self, sid: str = "s-1", **trigger: Any) -> Schedule:
        opts: dict[str, Any] = {
            "polling_interval": TEN_MINUTES,
            "events": BlobEvents(queue=self.qname),
        }
        opts.update(trigger)
        return replace(_schedule(**opts), id=sid, name=f"sched-{sid}")

    async def send(self, *messages: str) -> None:
        for m in messages:
            await self.queue.send_message(m)

    async def depth(self, name: str | None = None) -> int:
        """Messages in a queue, visible or not (0 once every message is deleted)."""
        if name is None:
            props = await self.queue.get_queue_properties()
            return int(props.approximate_message_count or 0)
        async with QueueClient.from_connection_string(self.conn, name) as q:
            props = await q.get_queue_properties()
            return int(props.approximate_message_count or 0)


@pytest.fixture
async def env(shared_azurite: str) -> AsyncIterator[Env]:  # noqa: F811
    cname, qname = f"t{uuid.uuid4().hex[:16]}", f"q{uuid.uuid4().hex[:16]}"
    async with (
        ContainerClient.from_connection_string(shared_azurite, cname) as blobs,
        QueueClient.from_connection_string(shared_azurite, qname) as queue,
    ):
        await blobs.create_container()
        await queue.create_queue()
        ds = BlobDatastore(name="lake", container=cname, connection_string=shared_azurite)
        try:
            yield Env(shared_azurite, ds, blobs, queue, qname)
        finally:
            await blobs.delete_container()
            await queue.delete_queue()


@dataclass
class Watch:
    poller: BlobPoller
    sink: RecordingSink
    health: RecordingHealth
    clock: ManualClock
    task: asyncio.Task[None]


class Watching:
    """Blob pollers of one hub, started by `start` and cancelled when the block ends."""

    def __init__(self, env: Env, hub: QueueHub) -> None:
        self.env, self.hub = env, hub
        self.watches: dict[str, Watch] = {}
        self.metrics = hub.metrics

    async def start(
        self, schedule: Schedule, sink: RecordingSink | None = None, ready: bool = True
    ) -> Watch:
        sink = sink or RecordingSink()
        health, clock = RecordingHealth(), ManualClock()
        poller = BlobPoller(
            schedule=schedule, datastore=self.env.ds, sink=sink, health=health, clock=clock,
            hub=self.hub, metrics=self.metrics,
        )  # fmt: skip
        w = Watch(poller, sink, health, clock, asyncio.create_task(poller.run()))
        self.watches[schedule.id] = w
        if ready:
            ok, _, error = await health.wait(1)
            assert ok, error
        return w

    async def stop(self, sid: str) -> None:
        w = self.watches.pop(sid)
        w.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await w.task

    @property
    def stats(self) -> QueueStats:
        events = BlobEvents(queue=self.env.qname)
        return self.hub.stats(queue_target(self.env.ds, events))


@asynccontextmanager
async def watching(env: Env, **hub_options: Any) -> AsyncIterator[Watching]:
    hub = QueueHub(SystemClock(), **({"retry_initial": 0.01} | hub_options))
    w = Watching(env, hub)
    try:
        yield w
    finally:
        for sid in list(w.watches):
            await w.stop(sid)


async def eventually(pred: Callable[[], Any], within: float = 30.0, step: float = 0.05) -> Any:
    """Poll `pred` (sync or async) until truthy, failing after `within` seconds."""
    for _ in range(int(within / step)):
        value = pred()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(step)
    raise AssertionError(f"not within {within}s: {pred}")


async def drained(env: Env) -> None:
    async def empty() -> bool:
        return await env.depth() == 0

    await eventually(empty)


def versions(sink: RecordingSink) -> list[tuple[bytes, str]]:
    return sorted((c.name, c.version) for c in sink.fired)


async def etag(env: Env, name: str) -> str:
    props = await env.blobs.get_blob_client(name).get_blob_properties()
    return str(props.etag).strip('"')


# ── the contract ─────────────────────────────────────────────────────────────


@pytest.mark.azurite
async def test_both_schemas_and_encodings_start_one_run_per_blob(env: Env) -> None:
    c = env.ds.container
    blobs = ["incoming/eg-raw.csv", "incoming/eg-b64.csv", "incoming/ce-raw.csv", "incoming/ce.b64"]
    async with watching(env) as w:
        watch = await w.start(env.schedule())
        await put(env.blobs, *blobs)
        await env.send(
            text(event_grid(c, blobs[0])),
            text([event_grid(c, blobs[1])], b64=True),
            text([cloud_event(c, blobs[2])]),
            text(cloud_event(c, blobs[3]), b64=True),
        )
        await eventually(lambda: len(watch.sink.fired) >= 4)
        await drained(env)
        expected = sorted([(b.encode(), await etag(env, b)) for b in blobs])
        assert versions(watch.sink) == expected  # each once, at the blob's own ETag
        assert len(watch.sink.runs) == 4
        assert w.stats.counts["received"] == 4 and w.stats.counts["run"] == 4
        assert w.stats.counts["deleted"] == 4 and watch.health.reports == [(True, 0, None)]


@pytest.mark.azurite
async def test_a_message_twice_and_then_the_listing_still_make_one_run(env: Env) -> None:
    msg = text(event_grid(env.ds.container, "incoming/a.csv"))
    async with watching(env) as w:
        watch = await w.start(env.schedule())
        await put(env.blobs, "incoming/a.csv")
        await env.send(msg, msg)  # a duplicate delivery, most likely in the same batch
        await eventually(lambda: w.stats.counts["deleted"] == 2)
        await env.send(msg)  # and once more, after the first ones were handled
        await eventually(lambda: w.stats.counts["deleted"] == 3)
        assert names(watch.sink.fired) == [b"incoming/a.csv"] and len(watch.sink.runs) == 1
        assert w.stats.counts["known"] >= 1
        watch.clock.advance(TEN_MINUTES.total_seconds())  # the listing finds the same blob
        ok, files, error = await watch.health.wait(2)
        assert (ok, files, error) == (True, 1, None)
        assert names(watch.sink.fired) == [b"incoming/a.csv"] and len(watch.sink.runs) == 1
        await drained(env)


@pytest.mark.azurite
async def test_two_schedules_on_one_queue_each_get_their_own_blobs(env: Env) -> None:
    c = env.ds.container
    with structlog.testing.capture_logs() as logs:
        async with watching(env) as w:
            a = await w.start(env.schedule("s-a", path_on_datastore="incoming/a"))
            b = await w.start(env.schedule("s-b", path_on_datastore="incoming/b"))
            await put(env.blobs, "incoming/a/1.csv", "incoming/b/1.csv", "incoming/a/2.csv")
            both = [event_grid(c, "incoming/a/1.csv"), event_grid(c, "incoming/b/1.csv")]
            await env.send(text(both), text(event_grid(c, "incoming/a/2.csv"), b64=True))
            await eventually(lambda: len(a.sink.fired) == 2 and len(b.sink.fired) == 1)
            await drained(env)
            assert names(a.sink.fired) == [b"incoming/a/1.csv", b"incoming/a/2.csv"]
            assert names(b.sink.fired) == [b"incoming/b/1.csv"]
            serving = [e for e in logs if e["event"] == "blob_queue_serving"]
            assert len(serving) == 1  # one consumer for the queue

            await w.stop("s-a")  # the serving schedule stops: the other one takes over
            await put(env.blobs, "incoming/b/2.csv", "incoming/a/3.csv")
            await env.send(
                text([event_grid(c, "incoming/b/2.csv"), event_grid(c, "incoming/a/3.csv")])
            )
            await eventually(lambda: len(b.sink.fired) == 2)
            await drained(env)
            assert names(b.sink.fired) == [b"incoming/b/1.csv", b"incoming/b/2.csv"]
            assert len([e for e in logs if e["event"] == "blob_queue_serving"]) == 2


@pytest.mark.azurite
async def test_sub_prefixes_other_containers_and_other_events_start_nothing(env: Env) -> None:
    c = env.ds.container
    other_account = TOPIC.replace(ACCOUNT, "someoneelse")
    present = ["incoming/sub/x.csv", "incoming/d.csv", "incoming/e.csv", "incoming/f.tmp"]
    async with watching(env) as w:
        watch = await w.start(env.schedule())
        await put(env.blobs, *present)
        await env.send(
            text(event_grid(c, "incoming/sub/x.csv")),  # a subdirectory
            text(event_grid("othercontainer", "incoming/y.csv")),
            text(event_grid(c, "incoming/d.csv", event_type="Microsoft.Storage.BlobDeleted")),
            text(event_grid(c, "incoming/d.csv", api="CreateFile")),  # ADLS Gen2, not written yet
            text(event_grid(c, "incoming/e.csv", topic=other_account)),
            text(event_grid(c, "incoming/f.tmp")),  # the default ignore globs
        )
        await eventually(lambda: w.stats.counts["deleted"] == 6)
        await drained(env)
        assert watch.sink.fired == []
        assert w.stats.counts["ignored"] == 6


@pytest.mark.azurite
async def test_a_gone_blob_is_ignored_and_its_message_deleted(env: Env) -> None:
    async with watching(env) as w:
        watch = await w.start(env.schedule())
        await env.send(text(event_grid(env.ds.container, "incoming/never-was.csv")))
        await eventually(lambda: w.stats.counts["deleted"] == 1)
        await drained(env)
        assert watch.sink.fired == []
        assert w.stats.counts["gone"] == 1 and w.stats.counts["ignored"] == 1


@pytest.mark.azurite
async def test_a_malformed_message_ends_in_the_poison_queue_with_its_reason(env: Env) -> None:
    bad = ["this is not an event!", json.dumps({"eventType": 5, "subject": "x"})]
    async with watching(env) as w:
        await w.start(env.schedule())
        await env.send(*bad)
        await eventually(lambda: w.stats.counts["poisoned"] == 2)
        await drained(env)
    async with QueueClient.from_connection_string(env.conn, f"{env.qname}-poison") as poison:
        try:
            got = [json.loads(m.content) async for m in poison.receive_messages(max_messages=10)]
        finally:
            await poison.delete_queue()
    assert sorted(g["message"] for g in got) == sorted(bad)
    reasons = {g["message"]: g["reason"] for g in got}
    assert reasons[bad[0]].startswith("unparseable: not JSON, nor base64")
    assert reasons[bad[1]] == "unparseable: eventType is a number, not a string"


@pytest.mark.azurite
async def test_a_malformed_event_does_not_hide_its_siblings(env: Env) -> None:
    """An array with one malformed event: the others start their runs now (not at the next
    listing), and the message goes to the poison queue naming the bad one."""
    c = env.ds.container
    doc = [event_grid(c, "incoming/a.csv"), {"eventType": 5}, event_grid(c, "incoming/b.csv")]
    async with watching(env) as w:
        watch = await w.start(env.schedule())
        await put(env.blobs, "incoming/a.csv", "incoming/b.csv")
        await env.send(text(doc))
        await eventually(lambda: w.stats.counts["poisoned"] == 1)
        await drained(env)
        assert names(watch.sink.fired) == [b"incoming/a.csv", b"incoming/b.csv"]
    async with QueueClient.from_connection_string(env.conn, f"{env.qname}-poison") as poison:
        try:
            got = [json.loads(m.content) async for m in poison.receive_messages(max_messages=10)]
        finally:
            await poison.delete_queue()
    assert [g["reason"] for g in got] == [
        "unparseable: event 1: eventType is a number, not a string (its other 2 handled)"
    ]
    assert json.loads(got[0]["message"]) == doc


@pytest.mark.azurite
async def test_a_message_still_failing_at_dequeue_count_5_is_poisoned(env: Env) -> None:
    class BrokenSink(RecordingSink):
        async def commit(self, *args: Any, **kw: Any) -> int:
            if args[4]:  # a commit that would start a run
                raise RuntimeError("disk I/O error")
            return await super().commit(*args, **kw)

    with structlog.testing.capture_logs() as logs:
        async with watching(env) as w:
            watch = await w.start(env.schedule(), sink=BrokenSink())
            await put(env.blobs, "incoming/a.csv")
            await env.send(text(event_grid(env.ds.container, "incoming/a.csv")))
            await eventually(lambda: w.stats.counts["poisoned"] == 1, within=60)
            await drained(env)
            assert watch.sink.fired == [] and w.stats.counts["released"] == 4
    retries = [e["dequeue_count"] for e in logs if e["event"] == "blob_event_retry"]
    assert retries == [1, 2, 3, 4]  # retried 4 times, then given up: not forever
    (poisoned,) = [e for e in logs if e["event"] == "blob_event_poisoned"]
    assert poisoned["dequeue_count"] == 5 and poisoned["poison_queue"] == f"{env.qname}-poison"
    async with QueueClient.from_connection_string(env.conn, f"{env.qname}-poison") as poison:
        (got,) = [json.loads(m.content) async for m in poison.receive_messages()]
        await poison.delete_queue()
    assert got["reason"].startswith("still failing at dequeue count 5: schedule sched-s-1: ")
    assert "disk I/O error" in got["reason"]


@pytest.mark.azurite
async def test_events_before_the_baseline_wait_for_it(env: Env) -> None:
    class SlowSink(RecordingSink):
        gate = asyncio.Event()

        async def load_snapshot(self, *args: Any) -> dict[bytes, str] | None:
            await self.gate.wait()
            return await super().load_snapshot(*args)

    sink = SlowSink()
    async with watching(env) as w:
        watch = await w.start(env.schedule(), sink=sink, ready=False)
        await put(env.blobs, "incoming/a.csv")
        await env.send(text(event_grid(env.ds.container, "incoming/a.csv")))
        await eventually(lambda: w.stats.counts["received"] == 1)
        await asyncio.sleep(0.5)
        assert w.stats.counts["deleted"] == 0  # held, waiting for the baseline
        sink.gate.set()
        await watch.health.wait(1)
        await eventually(lambda: w.stats.counts["deleted"] == 1)
        assert sink.fired == []  # the blob was there at the baseline: it starts nothing
        assert w.stats.counts["known"] == 1


@pytest.mark.azurite
async def test_a_message_in_hand_is_renewed_not_redelivered(env: Env) -> None:
    class SlowCommit(RecordingSink):
        gate = asyncio.Event()

        async def commit(self, *args: Any, **kw: Any) -> int:
            if args[4]:
                await self.gate.wait()
            return await super().commit(*args, **kw)

    sink = SlowCommit()
    async with watching(env, visibility=1) as w:
        watch = await w.start(env.schedule(), sink=sink)
        await put(env.blobs, "incoming/a.csv")
        await env.send(text(event_grid(env.ds.container, "incoming/a.csv")))
        await eventually(lambda: w.stats.counts["received"] == 1)
        for _ in range(15):  # 3 s = 3 visibility timeouts: renewed, never received again
            await asyncio.sleep(0.2)
            assert w.stats.counts["received"] == 1
        sink.gate.set()
        await eventually(lambda: w.stats.counts["deleted"] == 1)
        await drained(env)
        assert names(watch.sink.fired) == [b"incoming/a.csv"]


@pytest.mark.azurite
async def test_queue_errors_are_logged_masked_and_retried(env: Env) -> None:
    wrong = base64.b64encode(b"not the key at all").decode()
    conn = env.conn.replace(ACCOUNT_KEY, wrong)
    with structlog.testing.capture_logs() as logs:
        async with watching(env) as w:
            events = BlobEvents(queue=env.qname, queue_connection_string=conn)
            await w.start(env.schedule(events=events))
            target = queue_target(env.ds, events)
            stats = w.hub.stats(target)
            await eventually(lambda: stats.error)
            assert "access denied" in (stats.error or "")
            missing = BlobEvents(queue=f"missing{uuid.uuid4().hex[:8]}")
            await w.start(env.schedule("s-2", events=missing))
            stats2 = w.hub.stats(queue_target(env.ds, missing))
            await eventually(lambda: stats2.error)
            assert "queue not found" in (stats2.error or "")
    assert wrong not in repr(logs) and ACCOUNT_KEY not in repr(logs)
    assert any(e["event"] == "blob_queue_receive_failed" for e in logs)


@pytest.mark.azurite
async def test_metrics_count_events_ignored_poisoned_and_the_lag(env: Env) -> None:
    c = env.ds.container
    metrics = Metrics()  # the daemon's own: the blob-event metrics join its registry
    async with watching(env, metrics=metrics) as w:
        await w.start(env.schedule())
        await put(env.blobs, "incoming/a.csv")
        await env.send(
            text(event_grid(c, "incoming/a.csv")),
            text([event_grid(c, "elsewhere/b.csv"), event_grid(c, "incoming/gone.csv")]),
            "{not json",
        )
        await eventually(lambda: w.stats.counts["deleted"] == 3)
    value = metrics.registry.get_sample_value
    q = {"queue": env.qname}
    assert value("watcherd_blob_events_received_total", q) == 3
    assert value("watcherd_blob_events_ignored_total", q | {"reason": "unmatched"}) == 1
    assert value("watcherd_blob_events_ignored_total", q | {"reason": "gone"}) == 1
    assert value("watcherd_blob_messages_poisoned_total", q) == 1
    lag = {"schedule": "sched-s-1"}
    assert value("watcherd_blob_event_lag_seconds_count", lag) == 1
    exposed = metrics.render().decode()  # what /metrics serves
    for name in (
        "watcherd_blob_events_received_total",
        "watcherd_blob_events_ignored_total",
        "watcherd_blob_messages_poisoned_total",
        "watcherd_blob_event_lag_seconds_count",
    ):
        assert name + "{" in exposed
    async with QueueClient.from_connection_string(env.conn, f"{env.qname}-poison") as poison:
        await poison.delete_queue()


# ── without Azurite ──────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("conn", "url", "events", "endpoint", "error"),
    [
        ("UseDevelopmentStorage=true", None, {}, "http://127.0.0.1:10001/devstoreaccount1", None),
        (
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5;"
            "EndpointSuffix=core.windows.net",
            None, {}, "https://acct.queue.core.windows.net", None,
        ),
        (
            "AccountName=a;AccountKey=a2V5;BlobEndpoint=http://h:1/a;QueueEndpoint=http://h:2/a",
            None, {}, "http://h:2/a", None,
        ),
        ("AccountName=a;AccountKey=a2V5;BlobEndpoint=http://h:1/a", None, {}, "", "QueueEndpoint"),
        (
            None, "https://acct.blob.core.windows.net", {},
            "https://acct.queue.core.windows.net", None,
        ),
        (None, "http://127.0.0.1:10000/acct", {}, "", "queue_account_url"),
        (
            None, "http://127.0.0.1:10000/acct", {"queue_account_url": "http://127.0.0.1:10001/acct?sig=s"},
            "http://127.0.0.1:10001/acct", None,
        ),
    ],
)  # fmt: skip
def test_queue_target_finds_the_queue_service(
    conn: str | None, url: str | None, events: dict[str, str], endpoint: str, error: str | None
) -> None:
    ds = BlobDatastore(name="d", container="c", connection_string=conn, account_url=url)
    target = queue_target(ds, BlobEvents(queue="q", **events))
    if error is None:
        assert (target.endpoint, target.error, target.poison) == (endpoint, None, "q-poison")
        assert "sig=" not in target.key
    else:
        assert target.error is not None and error in target.error


def test_account_names() -> None:
    dev = BlobDatastore(name="d", container="c", connection_string="UseDevelopmentStorage=true")
    assert account_name(dev) == "devstoreaccount1"
    url = BlobDatastore(name="d", container="c", account_url="https://lake.blob.core.windows.net")
    assert account_name(url) == "lake"
    path = BlobDatastore(name="d", container="c", account_url="http://127.0.0.1:10000/acct1/")
    assert account_name(path) == "acct1"


def test_poison_body_is_json_and_fits_the_queue() -> None:
    body = json.loads(_poison_body("why", "<x>"))
    assert body == {"reason": "why", "message": "<x>"}
    huge = "<&>" * 40_000
    doc = json.loads(_poison_body("too big", huge))
    assert doc["truncated"] is True and huge.startswith(doc["message"]) and doc["message"]


def test_the_daemon_hub_takes_a_test_visibility_from_the_environment() -> None:
    clock, metrics = SystemClock(), Metrics()
    assert QueueHub.for_daemon(clock, metrics, {}).settings.visibility == 60
    assert QueueHub.for_daemon(clock, metrics, {VISIBILITY_ENV: "5"}).settings.visibility == 5
    for bad in ("0", "-3", "soon", ""):
        assert QueueHub.for_daemon(clock, metrics, {VISIBILITY_ENV: bad}).settings.visibility == 60
