"""BlobPoller against a real Azurite, with a recording ChangeSink and a ManualClock."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
import structlog
from azure.core import exceptions as az
from azure.storage.blob.aio import ContainerClient

from tests.azurite import ACCOUNT_KEY, Azurite, _require
from tests.clocks import ManualClock
from watcherd.core.errors import PollRejected, PollUnavailable
from watcherd.core.models import BlobDatastore, DatastoreTrigger, Schedule
from watcherd.engine.metrics import Metrics
from watcherd.engine.ports import FileChange
from watcherd.pollers.blob import (
    BlobPoller,
    baseline_key,
    blob_prefix,
    blob_url,
    container_url,
)
from watcherd.pollers.blob_storage import map_azure_errors

INTERVAL = 60.0
WAIT = 60.0  # seconds a test waits for one poll (generous: the machine is shared)


class RecordingSink:
    """An in-memory ChangeSink with the store's semantics: snapshot and listing marker per
    baseline key, one run per (name, version) (the UNIQUE key); it records every commit and
    lets a test wait for polls."""

    def __init__(self) -> None:
        self.keys: dict[str, str] = {}
        self.snapshots: dict[str, dict[bytes, str]] = {}
        self.markers: dict[str, str | None] = {}
        self.commits: list[tuple[list[tuple[bytes, str]], list[bytes], list[FileChange]]] = []
        self.fired: list[FileChange] = []
        self.runs: set[tuple[str, bytes, str]] = set()
        self.queued = 0
        self.loads = 0
        self._changed = asyncio.Condition()

    async def load_snapshot(self, schedule_id: str, baseline_key: str) -> dict[bytes, str] | None:
        self.loads += 1
        if self.keys.get(schedule_id) != baseline_key:
            return None
        return dict(self.snapshots[schedule_id])

    async def load_marker(self, schedule_id: str, baseline_key: str) -> str | None:
        if self.keys.get(schedule_id) != baseline_key:
            return None
        return self.markers.get(schedule_id)

    async def commit(
        self,
        schedule_id: str,
        baseline_key: str,
        upserts: Sequence[tuple[bytes, str]],
        deletes: Sequence[bytes],
        fire: Sequence[FileChange],
        marker: str | None = None,
    ) -> int:
        if self.keys.get(schedule_id) != baseline_key:
            self.keys[schedule_id] = baseline_key
            self.snapshots[schedule_id] = {}
            self.markers[schedule_id] = None
        snap = self.snapshots[schedule_id]
        snap.update(upserts)
        for name in deletes:
            del snap[name]
        if marker is not None:
            self.markers[schedule_id] = marker or None
        assert {(c.name, c.version) for c in fire} <= set(upserts)
        self.commits.append((list(upserts), list(deletes), list(fire)))
        self.fired.extend(fire)
        written = {(schedule_id, c.name, c.version) for c in fire} - self.runs
        self.runs |= written
        self.queued += len(written)
        return len(written)

    def pending(self, schedule_id: str) -> int:
        return self.queued

    async def wait_below(self, schedule_id: str, limit: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.queued <= limit)

    async def drain(self, n: int) -> None:
        async with self._changed:
            self.queued -= n
            self._changed.notify_all()


class RecordingHealth:
    """A PollHealth recording (ok, files, error) per attempt."""

    def __init__(self) -> None:
        self.reports: list[tuple[bool, int, str | None]] = []
        self._event = asyncio.Event()

    def poll_finished(
        self, schedule_id: str, *, ok: bool, duration: float, files: int, error: str | None
    ) -> None:
        self.reports.append((ok, files, error))
        self._event.set()

    async def wait(self, n: int) -> tuple[bool, int, str | None]:
        """The n-th report (1-based), once it exists."""
        async with asyncio.timeout(WAIT):
            while len(self.reports) < n:
                self._event.clear()
                await self._event.wait()
        return self.reports[n - 1]


def _schedule(**trigger: object) -> Schedule:
    opts: dict[str, object] = {
        "datastore": "lake",
        "path_on_datastore": "incoming",
        "polling_interval": timedelta(seconds=INTERVAL),
    }
    opts.update(trigger)
    return Schedule(
        id="s-1",
        name="blobby",
        pipeline="p-1",
        experiment_name="exp",
        trigger=DatastoreTrigger(**opts),  # type: ignore[arg-type]
    )


class Harness:
    """A running poller plus the handles a test drives it with."""

    def __init__(
        self,
        poller: BlobPoller,
        sink: RecordingSink,
        health: RecordingHealth,
        clock: ManualClock,
        metrics: Metrics,
    ) -> None:
        self.poller, self.sink, self.health, self.clock = poller, sink, health, clock
        self.metrics = metrics

    async def first(self) -> tuple[bool, int, str | None]:
        return await self.health.wait(1)

    async def next_poll(self, seconds: float = INTERVAL) -> tuple[bool, int, str | None]:
        """Advance to the next slot and return that attempt's report."""
        n = len(self.health.reports)
        self.clock.advance(seconds)
        return await self.health.wait(n + 1)

    async def changes(self, seconds: float = INTERVAL) -> list[FileChange]:
        before = len(self.sink.fired)
        ok, _, error = await self.next_poll(seconds)
        assert ok, error
        return self.sink.fired[before:]


@asynccontextmanager
async def running(
    datastore: BlobDatastore,
    schedule: Schedule | None = None,
    sink: RecordingSink | None = None,
    max_pending: int = 10000,
) -> AsyncIterator[Harness]:
    sink = sink or RecordingSink()
    health, clock, metrics = RecordingHealth(), ManualClock(), Metrics()
    poller = BlobPoller(
        schedule=schedule or _schedule(),
        datastore=datastore,
        sink=sink,
        health=health,
        clock=clock,
        max_pending=max_pending,
        metrics=metrics,
    )
    task = asyncio.create_task(poller.run())
    try:
        yield Harness(poller, sink, health, clock, metrics)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


Ctr = tuple[BlobDatastore, ContainerClient]


_SHARED: list[Azurite] = []  # the one Azurite of shared_azurite, however many modules use it


@pytest.fixture(scope="session")
def shared_azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A connection string (blob and queue) to one Azurite for every blob test module.

    tests.azurite's session fixtures, imported into several modules, are one fixture per
    module: each module would start its own Azurite. Modules that import this one share the
    process here; the first finalizer (all run at the session's end) stops it.
    """
    if not _SHARED:
        blob, queue = _require(queue=True)
        server = Azurite(blob, tmp_path_factory.mktemp("azurite"), queue_executable=queue)
        server.start()
        _SHARED.append(server)
    try:
        yield _SHARED[0].connection_string
    finally:
        if _SHARED:
            _SHARED.pop().stop()


@pytest.fixture
async def container(shared_azurite: str) -> AsyncIterator[Ctr]:
    """A fresh container on the shared Azurite."""
    conn, name = shared_azurite, f"t{uuid.uuid4().hex[:16]}"
    async with ContainerClient.from_connection_string(conn, name) as client:
        await client.create_container()
        yield BlobDatastore(name="lake", container=name, connection_string=conn), client
        await client.delete_container()


async def put(client: ContainerClient, *names: str, data: bytes = b"x", **kw: object) -> None:
    """Upload blobs; many plain ones as bare PUTs with a container SAS (the SDK spends ~4 ms of
    CPU per upload, which a shared 2-core machine feels at 2,000 blobs)."""
    if len(names) > 50 and not kw:
        await _put_many(client, names, data)
        return
    sem = asyncio.Semaphore(64)

    async def one(name: str) -> None:
        async with sem:
            await client.upload_blob(name, data, overwrite=True, **kw)  # type: ignore[arg-type]

    await asyncio.gather(*(one(n) for n in names))


async def _put_many(client: ContainerClient, names: Sequence[str], data: bytes) -> None:
    import aiohttp
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    sas = generate_container_sas(
        client.account_name or "", client.container_name,
        account_key=client.credential.account_key,
        permission=ContainerSasPermissions(write=True, create=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )  # fmt: skip
    headers = {"x-ms-blob-type": "BlockBlob"}
    connector = aiohttp.TCPConnector(limit=32)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(name: str) -> None:
            url = f"{client.url}/{quote(name)}?{sas}"
            async with session.put(url, data=data, headers=headers) as response:
                assert response.status == 201, (response.status, await response.text())

        await asyncio.gather(*(one(n) for n in names))


def _last(logs: Sequence[Mapping[str, Any]], event: str) -> Mapping[str, Any]:
    return [e for e in logs if e["event"] == event][-1]


def names(changes: Sequence[FileChange]) -> list[bytes]:
    return sorted(c.name for c in changes)


# ── against Azurite ───────────────────────────────────────────────────────────


@pytest.mark.azurite
async def test_new_blob_starts_one_change_named_by_blob(container: Ctr) -> None:
    ds, client = container
    async with running(ds) as h:
        assert await h.first() == (True, 0, None)
        await put(client, "incoming/a.csv", "elsewhere/b.csv", "incoming.csv")
        changes = await h.changes()
        assert names(changes) == [b"incoming/a.csv"]
        props = await client.get_blob_client("incoming/a.csv").get_blob_properties()
        assert changes[0].version == str(props.etag).strip('"')
        assert changes[0].modified == props.last_modified
        assert await h.changes() == []  # a steady poll fires nothing


@pytest.mark.azurite
async def test_blob_under_sub_prefix_never_triggers(container: Ctr) -> None:
    ds, client = container
    async with running(ds) as h:
        await h.first()
        await put(client, "incoming/sub/a.csv", "incoming/sub/deeper/b.csv")
        assert await h.changes() == []
        assert h.sink.snapshots["s-1"] == {}


@pytest.mark.azurite
async def test_reupload_with_new_etag_starts_one_more(container: Ctr) -> None:
    ds, client = container
    async with running(ds) as h:
        await h.first()
        await put(client, "incoming/a.csv", data=b"v1")
        first = await h.changes()
        await put(client, "incoming/a.csv", data=b"v2")
        second = await h.changes()
        assert names(first) == names(second) == [b"incoming/a.csv"]
        assert first[0].version != second[0].version


@pytest.mark.azurite
async def test_three_blobs_three_changes_and_deletion_fires_nothing(container: Ctr) -> None:
    ds, client = container
    async with running(ds) as h:
        await h.first()
        await put(client, "incoming/a", "incoming/b", "incoming/c")
        assert names(await h.changes()) == [b"incoming/a", b"incoming/b", b"incoming/c"]
        await client.delete_blob("incoming/b")
        assert await h.changes() == []
        assert set(h.sink.snapshots["s-1"]) == {b"incoming/a", b"incoming/c"}
        await put(client, "incoming/b")
        assert names(await h.changes()) == [b"incoming/b"]


@pytest.mark.azurite
async def test_directory_markers_fire_nothing_but_empty_files_do(container: Ctr) -> None:
    ds, client = container
    async with running(ds) as h:
        await h.first()
        await put(client, "incoming/dir1/", data=b"")
        await put(client, "incoming/dir2", data=b"", metadata={"hdi_isfolder": "true"})
        await put(client, "incoming/empty.csv", data=b"")
        assert names(await h.changes()) == [b"incoming/empty.csv"]


@pytest.mark.azurite
async def test_pattern_and_default_ignores_match_the_file_name(container: Ctr) -> None:
    ds, client = container
    schedule = _schedule(pattern=("*.csv", "data-*"))
    async with running(ds, schedule) as h:
        await h.first()
        await put(
            client,
            "incoming/a.csv",
            "incoming/data-1",
            "incoming/b.txt",
            "incoming/.hidden.csv",
            "incoming/c.csv.tmp",
            "incoming/x.csv~",
        )
        assert names(await h.changes()) == [b"incoming/a.csv", b"incoming/data-1"]


@pytest.mark.azurite
async def test_initial_fire_and_container_root(container: Ctr) -> None:
    ds, client = container
    await put(client, "top.csv", "incoming/a.csv")
    async with running(ds, _schedule(path_on_datastore="", initial="fire")) as h:
        ok, files, _ = await h.first()
        assert (ok, files) == (True, 1)
        assert names(h.sink.fired) == [b"top.csv"]


@pytest.mark.azurite
async def test_account_url_with_key_or_sas_and_a_wrong_key(container: Ctr) -> None:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    ds, client = container
    await put(client, "incoming/a")
    account_url = client.url.rsplit("/", 1)[0]
    sas = generate_container_sas(
        "devstoreaccount1",
        ds.container,
        account_key=ACCOUNT_KEY,
        permission=ContainerSasPermissions(list=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    wrong = base64.b64encode(b"not the key").decode()
    with structlog.testing.capture_logs() as logs:
        for creds, ok in (
            ({"account_key": ACCOUNT_KEY}, True),
            ({"sas_token": "?" + sas}, True),
            ({"account_key": wrong}, False),
        ):
            other = replace(ds, connection_string=None, account_url=account_url)
            other = replace(other, **creds)  # type: ignore[arg-type]
            async with running(other, _schedule(initial="fire")) as h:
                first = await h.first()
                assert first[0] is ok, first
                assert names(h.sink.fired) == ([b"incoming/a"] if ok else [])
                assert ok or "access denied" in (first[2] or "")
    assert sas not in repr(logs) and wrong not in repr(logs)
    assert "sig=" not in blob_url(replace(ds, account_url=account_url + "?" + sas), "incoming/a")


@pytest.mark.azurite
async def test_restart_keeps_snapshot_and_reports_changes_made_while_down(container: Ctr) -> None:
    ds, client = container
    sink = RecordingSink()
    await put(client, "incoming/old")
    async with running(ds, sink=sink) as h:
        await h.first()
    await put(client, "incoming/new")
    async with running(ds, sink=sink) as h:
        await h.first()
        assert names(sink.fired) == [b"incoming/new"]


@pytest.mark.azurite
async def test_blobs_span_pages_and_each_is_seen_once(container: Ctr) -> None:
    ds, client = container
    # Few blobs, small pages: the same paging as 5,000 per page (test_blob_listing has 2,000).
    expected = [f"incoming/f{i:05d}.csv".encode() for i in range(120)]
    async with running(ds, _schedule(list_page_size=50)) as h:
        await h.first()
        await put(client, *(n.decode() for n in expected))
        changes = await h.changes()
        assert len(changes) == 120
        assert names(changes) == expected
        assert len(h.sink.commits) == 1 + 3  # the baseline, then one commit per page
        assert await h.changes() == []
        files = h.metrics.registry.get_sample_value("watcherd_poll_files", {"schedule": "blobby"})
        assert files == 120


@pytest.mark.azurite
async def test_names_the_service_orders_otherwise_than_bytes_never_fire_unchanged(
    container: Ctr,
) -> None:
    """Azurite lists by UTF-16 code units: an emoji (a surrogate pair) before U+FF71, which
    UTF-8 bytes order the other way. A page's name range then misses a name a later page
    lists: it is put back, not run as new (USERS 11: nothing is reprocessed)."""
    ds, client = container
    odd = ["incoming/1.csv", "incoming/z.csv", "incoming/\U0001f600.csv", "incoming/\uff71.csv"]
    await put(client, *odd)
    async with running(ds, _schedule(list_page_size=1)) as h:
        assert (await h.first())[0]
        for _ in range(2):
            assert await h.changes() == []  # steady polls: nothing changed
        await put(client, "incoming/\U0001f601.csv", "incoming/\uff72.csv")
        assert sorted(c.name.decode() for c in await h.changes()) == sorted(
            ["incoming/\U0001f601.csv", "incoming/\uff72.csv"]
        )
        assert await h.changes() == []
        assert [len(snap) for snap in h.sink.snapshots.values()] == [6]


@pytest.mark.azurite
async def test_an_empty_page_before_the_end_deletes_nothing(
    container: Ctr, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Azure may answer a listing page with no blob but a continuation marker (a server-side
    timeout): such a page bounds no name range, so nothing after it is taken for deleted
    (and then run again as new). Azurite never does: one empty answer is given here in place
    of the second page, with that page's own marker, which the next request then uses."""
    from watcherd.pollers import blob as blob_mod

    ds, client = container
    await put(client, *(f"incoming/{c}.csv" for c in "abcdef"))
    real_pages, real_next = blob_mod.BlobPoller._pages, blob_mod._next_page
    asked: list[str | None] = []
    inject = {"on": False}

    def pages(self: BlobPoller, client: ContainerClient, token: str | None) -> Any:
        asked.append(token)
        return real_pages(self, client, token)

    async def next_page(pages: Any, where: str, scrub: Any) -> tuple[list[Any], str | None]:
        if inject["on"] and asked[-1] is not None:  # the second page: once
            inject["on"] = False
            return [], asked[-1]
        return await real_next(pages, where, scrub)

    async with running(ds, _schedule(list_page_size=2)) as h:
        assert (await h.first())[0]
        monkeypatch.setattr(blob_mod.BlobPoller, "_pages", pages)
        monkeypatch.setattr(blob_mod, "_next_page", next_page)
        inject["on"] = True
        assert await h.changes() == []
        assert not inject["on"]  # the empty page was given
        assert [len(snap) for snap in h.sink.snapshots.values()] == [6]


@pytest.mark.azurite
async def test_missing_container_is_retried_until_it_exists(container: Ctr) -> None:
    ds, client = container
    missing = replace(ds, container=f"m{uuid.uuid4().hex[:16]}")
    with structlog.testing.capture_logs() as logs:
        async with running(missing) as h:
            ok, _, error = await h.first()
            assert not ok and error and "container not found" in error
            async with ContainerClient.from_connection_string(
                ds.connection_string or "", missing.container
            ) as other:
                await other.create_container()
                try:
                    assert (await h.next_poll(30))[0]  # backoff ≤ 30 s at this interval
                finally:
                    await other.delete_container()
    failed = [e for e in logs if e["event"] == "poll_failed"]
    assert [e["attempt"] for e in failed] == [1]
    assert failed[0]["log_level"] == "warning"


@pytest.mark.azurite
async def test_a_failing_sink_is_this_schedules_error_and_nothing_is_lost(container: Ctr) -> None:
    ds, client = container

    class FlakySink(RecordingSink):
        fail = False

        async def commit(self, *args: Any, **kw: Any) -> int:
            if self.fail:
                self.fail = False
                raise RuntimeError("disk I/O error")
            return await super().commit(*args, **kw)

    sink = FlakySink()
    async with running(ds, sink=sink) as h:
        await h.first()
        await put(client, "incoming/a")
        sink.fail = True
        ok, _, error = await h.next_poll()
        assert (ok, error) == (False, "RuntimeError: disk I/O error")
        assert names(await h.changes(30)) == [b"incoming/a"]  # retried on the backoff
        assert await h.changes() == []


@pytest.mark.azurite
async def test_backpressure_pauses_without_advancing_the_snapshot(container: Ctr) -> None:
    ds, client = container
    async with running(ds, max_pending=1) as h:
        await h.first()
        await put(client, "incoming/a", "incoming/b")
        assert len(await h.changes()) == 2
        await put(client, "incoming/c")
        h.clock.advance(INTERVAL)
        for _ in range(20):  # the poller is parked in wait_below: no attempt happens
            await asyncio.sleep(0)
        assert len(h.health.reports) == 2 and h.sink.snapshots["s-1"].keys() == {
            b"incoming/a",
            b"incoming/b",
        }
        await h.sink.drain(2)
        await h.health.wait(3)
        assert names(h.sink.fired[2:]) == [b"incoming/c"]


@pytest.mark.azurite
async def test_outage_backs_off_then_recovers_and_reports_each_change_once(
    azurite_server: Azurite,  # noqa: F811
) -> None:
    ds = BlobDatastore(
        name="lake", container="data", connection_string=azurite_server.connection_string
    )
    async with ContainerClient.from_connection_string(ds.connection_string or "", "data") as c:
        await c.create_container()
        with structlog.testing.capture_logs() as logs:
            async with running(ds) as h:
                await h.first()
                await put(c, "incoming/a", "incoming/b")
                await asyncio.to_thread(azurite_server.stop)
                ok, _, error = await h.next_poll(INTERVAL)  # the cadence slot fails
                assert not ok and error and "cannot reach storage" in error
                for _ in range(2):  # retries come on the backoff, not on the cadence
                    await h.next_poll(_last(logs, "poll_failed")["retry_in"] + 0.01)
                await asyncio.to_thread(azurite_server.start)
                recovered = False
                while not recovered:  # a stale pooled connection may fail once more
                    assert len(h.health.reports) < 8
                    recovered = (await h.next_poll(_last(logs, "poll_failed")["retry_in"] + 0.01))[
                        0
                    ]
                assert names(h.sink.fired) == [b"incoming/a", b"incoming/b"]
                await put(c, "incoming/c")
                assert names(await h.changes()) == [b"incoming/c"]
                assert names(h.sink.fired) == [b"incoming/a", b"incoming/b", b"incoming/c"]
    failed = [e for e in logs if e["event"] == "poll_failed"]
    assert [e["attempt"] for e in failed][:3] == [1, 2, 3]
    delays = [e["retry_in"] for e in failed[:3]]
    assert delays == sorted(delays) and delays[0] <= 2 and delays[2] <= 5
    assert all(not ok for ok, _, _ in h.health.reports[1:4])
    assert ACCOUNT_KEY not in repr(logs) and "AccountKey" not in repr(logs)
    errors = h.metrics.registry.get_sample_value(
        "watcherd_poll_errors_total", {"schedule": "blobby"}
    )
    assert errors is not None and errors >= 3


# ── without Azurite ───────────────────────────────────────────────────────────


async def test_overrun_is_logged_counted_and_skips_to_the_next_slot() -> None:
    clock, metrics = ManualClock(), Metrics()
    ds = BlobDatastore(name="lake", container="c", connection_string="UseDevelopmentStorage=true")
    poller = BlobPoller(
        schedule=_schedule(),
        datastore=ds,
        sink=RecordingSink(),
        health=RecordingHealth(),
        clock=clock,
        metrics=metrics,
    )
    started = clock.now()
    clock.advance(INTERVAL * 2.5)  # the poll took 2.5 intervals
    with structlog.testing.capture_logs() as logs:
        waiting = asyncio.create_task(poller._wait_next(started))
        await asyncio.sleep(0)
        assert not waiting.done()
        clock.advance(INTERVAL * 0.5)  # the next slot is at 3 intervals, not 1 or 2
        async with asyncio.timeout(3):
            await waiting
    assert [e["event"] for e in logs] == ["poll_overrun"]
    count = metrics.registry.get_sample_value(
        "watcherd_poll_overruns_total", {"schedule": "blobby"}
    )
    assert count == 1


def test_blob_url_never_carries_credentials() -> None:
    conn = (
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0;"
        "EndpointSuffix=core.windows.net"
    )
    ds = BlobDatastore(name="x", container="data", connection_string=conn)
    assert blob_url(ds, b"incoming/a b.csv") == (
        "https://acct.blob.core.windows.net/data/incoming/a%20b.csv"
    )
    sas = BlobDatastore(
        name="x",
        container="data",
        account_url="https://u:p@acct.example/?sig=1",
        sas_token="sv=1&sig=abc",
    )
    assert blob_url(sas, "a") == "https://acct.example/data/a"
    dev = BlobDatastore(name="x", container="c", connection_string="UseDevelopmentStorage=true")
    assert container_url(dev) == "http://127.0.0.1:10000/devstoreaccount1/c"
    conn = "BlobEndpoint=http://h:1/acct;SharedAccessSignature=sig=z"
    ep = BlobDatastore(name="x", container="c", connection_string=conn)
    assert blob_url(ep, "n") == "http://h:1/acct/c/n"


def test_prefix_and_baseline_key() -> None:
    assert blob_prefix("") == "" and blob_prefix("/incoming/") == "incoming/"
    ds = BlobDatastore(name="x", container="c", connection_string="UseDevelopmentStorage=true")
    base = DatastoreTrigger(datastore="x", path_on_datastore="in")
    key = baseline_key(ds, base)
    assert key == baseline_key(ds, replace(base, polling_interval=timedelta(seconds=1)))
    assert key != baseline_key(ds, replace(base, path_on_datastore="out"))
    assert key != baseline_key(ds, replace(base, pattern=("*.csv",)))
    assert key != baseline_key(ds, replace(base, ignore=("*.bak",)))
    assert key != baseline_key(replace(ds, container="d"), base)


@pytest.mark.parametrize(
    ("exc", "kind", "text"),
    [
        (az.ServiceRequestError("Cannot connect to host"), PollUnavailable, "cannot reach"),
        (az.ServiceResponseTimeoutError("read timed out"), PollUnavailable, "cannot reach"),
        (az.ResourceNotFoundError("nope"), PollRejected, "container not found"),
        (az.ClientAuthenticationError("key=Zm9vYmFy bad"), PollRejected, "access denied"),
        (TimeoutError(), PollUnavailable, "TimeoutError"),
        (ValueError("Connection string missing"), PollRejected, "invalid datastore settings"),
    ],
)
def test_azure_errors_map_to_our_tree(exc: Exception, kind: type, text: str) -> None:
    where = "container 'c' prefix 'p/'"
    with pytest.raises(kind, match=text) as info, map_azure_errors(where, lambda s: s):
        raise exc
    assert info.value.__cause__ is exc


@pytest.mark.parametrize(
    ("status", "kind"),
    [(500, PollUnavailable), (503, PollUnavailable), (429, PollUnavailable), (403, PollRejected)],
)
def test_http_status_decides_transient_or_permanent(status: int, kind: type) -> None:
    err = az.HttpResponseError("boom Zm9vYmFy")
    err.status_code = status
    with (
        pytest.raises(kind, match=rf"HTTP {status}") as info,
        map_azure_errors("container 'c' prefix 'p/'", lambda s: s.replace("Zm9vYmFy", "***")),
    ):
        raise err
    assert "Zm9vYmFy" not in str(info.value)


def test_importing_the_module_does_not_import_azure() -> None:
    code = (
        "import sys, watcherd.pollers.blob\n"
        "sys.exit(any(m.split('.')[0] == 'azure' for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
