"""bench blob_events: Event Grid messages on an Azurite queue → a run (SPEC §10, §4).

Starts its own Azurite (blob + queue, in memory: `npm install -g azurite`) and measures, each
against a baseline in the same run:

1. event → run latency: a BlobPoller with events on (real clock, polling_interval 10 min, so
   every run comes from an event) commits into an in-memory sink; the writer uploads a blob,
   then sends the same Event Grid message to two queues at once: ours, and one read by a bare
   receive loop in the same process (one request per receive, the same 100 ms → 1 s backoff
   on an empty queue, as Storage Queues have no long polling). Latency = send → the commit
   naming the blob (ours) / send → the receive returning it (bare). Arrivals every 0.5-1.5 s.
   Goal: p50 ≤ 1 s.
2. listing cost per 1,000 blobs: a steady BlobPoller poll (nothing changed) of N blobs vs the
   same `walk_blobs(name_starts_with, delimiter="/")` iterated to the end, alternated.
3. daemon RSS: `watcherd run` (events on, a fresh state dir) on an empty prefix (the
   baseline), then on a prefix of 5,000 blobs, then of 50,000 (45,000 more uploaded), each
   measured after its baseline and one steady listing; growth per blob = ΔRSS / Δblobs,
   against the goal of big_dir (≤ 150 B/file: the snapshot and nothing else) and, as its
   baseline, the bytes per entry of a bare dict {name: ETag} of the same names (tracemalloc,
   in this process). Uploading 45,000 blobs to Azurite takes 5-20 minutes on 2 cores (it
   stores 40-150 blobs/s): this bench runs longer than the others; `--rss 0,0` skips it.

    python bench/blob_events.py [--events 100] [--list-blobs 5000] [--rss 5000,50000]
    python bench/blob_events.py --short   # 30 events, 1,000 blobs listed, RSS at 5,000/10,000

RSS growth is only meaningful once a listing page is full at both sizes (list_page_size,
5,000 by default): below that the page's own memory (the SDK's objects, ~7 KB a blob while a
page is read, and what malloc keeps of it) grows with the blob count and swamps the snapshot.
And the steady RSS of one daemon varies by about ±4 MB from run to run: over the 5,000 blobs
of --short that is ±800 B/blob, so there the growth is reported, not judged; the default
5,000/50,000 resolves it to about ±90 B/blob.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import structlog  # noqa: E402
from azure.storage.blob.aio import ContainerClient  # noqa: E402
from azure.storage.queue.aio import QueueClient  # noqa: E402

from bench._common import Daemon, MemorySink, NoHealth, emit, percentile  # noqa: E402
from tests.azurite import ACCOUNT, Azurite, find_azurite, find_azurite_queue  # noqa: E402
from watcherd.core.models import BlobDatastore, BlobEvents, DatastoreTrigger, Schedule  # noqa: E402
from watcherd.engine.clock import SystemClock  # noqa: E402
from watcherd.pollers.blob import BlobPoller  # noqa: E402

BENCH = "blob_events"
PREFIX = "incoming/"
EMPTY_INITIAL, EMPTY_CAP = 0.1, 1.0  # the consumer's empty-queue backoff (SPEC §4)
RSS_GOAL = 150  # bytes per blob, as big_dir's steady goal for local files


def _schedule(queue: str | None, interval: timedelta) -> Schedule:
    return Schedule(
        id="bench",
        name="bench",
        pipeline="p",
        experiment_name="bench",
        trigger=DatastoreTrigger(
            datastore="bench",
            path_on_datastore=PREFIX.rstrip("/"),
            polling_interval=interval,
            events=BlobEvents(queue=queue) if queue else None,
        ),
    )


def _message(container: str, name: str) -> str:
    return json.dumps(
        {
            "topic": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Storage"
            f"/storageAccounts/{ACCOUNT}",
            "subject": f"/blobServices/default/containers/{container}/blobs/{name}",
            "eventType": "Microsoft.Storage.BlobCreated",
            "eventTime": datetime.now(UTC).isoformat(),
            "id": str(uuid.uuid4()),
            "data": {"api": "PutBlob"},
        }
    )


async def _upload(client: ContainerClient, names: Sequence[str]) -> None:
    gate = asyncio.Semaphore(64)

    async def one(name: str) -> None:
        async with gate:
            await client.upload_blob(name, b"x", overwrite=True)

    await asyncio.gather(*(one(n) for n in names))


# ── 1. event → run latency ────────────────────────────────────────────────────


async def _bare_receiver(queue: QueueClient, got: dict[str, float], n: int) -> None:
    """The baseline: receive, record, delete; an empty answer backs off 100 ms → 1 s."""
    empty = 0
    while len(got) < n:
        pages = queue.receive_messages(messages_per_page=32, visibility_timeout=60).by_page()
        try:
            page = await anext(pages)
            batch = [m async for m in page]
        except StopAsyncIteration:
            batch = []
        now = time.perf_counter()
        if not batch:
            empty += 1
            delay = min(EMPTY_CAP, EMPTY_INITIAL * 2 ** (empty - 1))
            await asyncio.sleep(delay + random.uniform(0, EMPTY_INITIAL))
            continue
        empty = 0
        for m in batch:
            got[json.loads(m.content)["subject"].rsplit("/blobs/", 1)[1]] = now
            await queue.delete_message(m)


async def latency(conn: str, events: int) -> None:
    container, ours, bare = "latency", f"ours{uuid.uuid4().hex[:8]}", f"bare{uuid.uuid4().hex[:8]}"
    async with (
        ContainerClient.from_connection_string(conn, container) as blobs,
        QueueClient.from_connection_string(conn, ours) as q_ours,
        QueueClient.from_connection_string(conn, bare) as q_bare,
    ):
        await blobs.create_container()
        await q_ours.create_queue()
        await q_bare.create_queue()
        ds = BlobDatastore(name="bench", container=container, connection_string=conn)
        sink = MemorySink()
        poller = BlobPoller(
            schedule=_schedule(ours, timedelta(minutes=10)), datastore=ds, sink=sink,
            health=NoHealth(), clock=SystemClock(),
        )  # fmt: skip
        sent: dict[str, float] = {}
        got_bare: dict[str, float] = {}
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(poller.run())
            receiver = tg.create_task(_bare_receiver(q_bare, got_bare, events))
            await sink.until(lambda: sink.snapshot is not None)  # the baseline
            for i in range(events):
                name = f"{PREFIX}e{i:05d}.csv"
                await blobs.upload_blob(name, b"x", overwrite=True)
                msg = _message(container, name)
                sent[name] = time.perf_counter()
                pair = (q_ours, q_bare) if i % 2 == 0 else (q_bare, q_ours)
                await asyncio.gather(*(q.send_message(msg) for q in pair))
                await asyncio.sleep(random.uniform(0.5, 1.5))
            async with asyncio.timeout(120):
                await sink.until(lambda: len(sink.committed) >= events)
                await receiver
            task.cancel()
    ours_s = [sink.committed[n.encode()] - t for n, t in sent.items()]
    bare_s = [got_bare[n] - t for n, t in sent.items()]
    sys.stderr.write(
        f"blob_events latency: ours p50 {percentile(ours_s, 50):.3f} p99 "
        f"{percentile(ours_s, 99):.3f}; bare p50 {percentile(bare_s, 50):.3f} p99 "
        f"{percentile(bare_s, 99):.3f} (s, {events} events)\n"
    )
    for p in (50, 99):
        value, base = percentile(ours_s, p), percentile(bare_s, p)
        goal, met = ("<= 1 s", value <= 1.0) if p == 50 else ("reported", True)
        emit(BENCH, f"event_to_run_p{p}_s", value, baseline=base, goal=goal, met=met)


# ── 2. listing cost ──────────────────────────────────────────────────────────


async def listing(conn: str, n: int, rounds: int) -> None:
    async with ContainerClient.from_connection_string(conn, "listing", retry_total=0) as blobs:
        await blobs.create_container()
        await _upload(blobs, [f"{PREFIX}f{i:06d}.csv" for i in range(n)])
        ds = BlobDatastore(name="bench", container="listing", connection_string=conn)
        poller = BlobPoller(
            schedule=_schedule(None, timedelta(minutes=10)), datastore=ds, sink=MemorySink(),
            health=NoHealth(), clock=SystemClock(),
        )  # fmt: skip

        async def bare() -> int:
            count = 0
            async for _ in blobs.walk_blobs(name_starts_with=PREFIX, delimiter="/"):
                count += 1
            return count

        try:
            assert (await poller.poll_once())[0] == n  # the baseline
            for _ in range(2):  # Azurite warms up
                await poller.poll_once()
                await bare()
            ours: list[float] = []
            base: list[float] = []
            for i in range(rounds):
                for which in ("ours", "bare") if i % 2 == 0 else ("bare", "ours"):
                    t0 = time.perf_counter()
                    if which == "ours":
                        assert await poller.poll_once() == (n, 0)
                        ours.append(time.perf_counter() - t0)
                    else:
                        assert await bare() == n
                        base.append(time.perf_counter() - t0)
        finally:
            await poller.aclose()
    value = statistics.median(ours) / n * 1000
    baseline = statistics.median(base) / n * 1000
    emit(
        BENCH, "listing_s_per_1000_blobs", value, baseline=baseline,
        goal="<= 1.1x bare walk_blobs", met=value <= 1.1 * baseline,
    )  # fmt: skip


# ── 3. daemon RSS ────────────────────────────────────────────────────────────


def _daemon_config(conn: str, container: str, queue: str, interval: int) -> str:
    return f"""
[daemon]
api = ""

[datastores.lake]
kind = "azure_blob"
connection_string = "{conn}"
container = "{container}"

[pipelines.noop]
kind = "command"
steps = [["true"]]

[[schedules]]
name = "rss"
pipeline = "noop"
experiment_name = "bench"
datastore = "lake"
path_on_datastore = "{PREFIX.rstrip("/")}"
polling_interval = "{interval}s"
events = {{ queue = "{queue}" }}
"""


def _daemon_rss(workdir: Path, conn: str, container: str, queue: str, blobs: int) -> int:
    """RSS (bytes) of a fresh daemon after its baseline of `blobs` and one steady listing."""
    interval = max(10, blobs // 500)  # longer than one listing of Azurite
    # blobs == 0: the same prefix before any upload (the baseline daemon)
    d = Daemon(workdir, f"rss{blobs}", _daemon_config(conn, container, queue, interval))
    d.start()
    try:
        d.wait_ready(600)
        started = time.monotonic()
        ev = d.wait_event("baseline_taken", timeout=1800)
        assert ev["files"] == blobs, ev
        took = time.monotonic() - started
        rss_after_baseline = d.rss()
        time.sleep(interval + took + 5)  # the next slot, and that steady listing
        rss = d.rss()
        hwm = _hwm(d.pid)
        sys.stderr.write(
            f"blob_events rss {blobs} blobs: after baseline {rss_after_baseline / 1e6:.1f} MB, "
            f"steady {rss / 1e6:.1f} MB, peak {hwm / 1e6:.1f} MB\n"
        )
        return rss
    finally:
        d.stop()


def _hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


async def _prepare(conn: str, container: str, queue: str, names: Sequence[str]) -> None:
    async with (
        ContainerClient.from_connection_string(conn, container) as blobs,
        QueueClient.from_connection_string(conn, queue) as q,
    ):
        if not await blobs.exists():
            await blobs.create_container()
            await q.create_queue()
        t0 = time.perf_counter()
        await _upload(blobs, names)
        sys.stderr.write(
            f"blob_events: {len(names)} blobs uploaded in {time.perf_counter() - t0:.0f} s\n"
        )


def _bare_dict_bytes_per_blob(names: Sequence[str]) -> float:
    """Bytes per entry of a plain dict {name bytes: ETag str}: the naive snapshot."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        snapshot = {n.encode(): f"0x8DC{i:011X}" for i, n in enumerate(names)}
        size = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(snapshot) == len(names)
    return size / len(names)


def rss(conn: str, workdir: Path, small: int, large: int, *, judged: bool = True) -> None:
    container, queue = "rss", f"rss{uuid.uuid4().hex[:8]}"
    names = [f"{PREFIX}r{i:07d}.csv" for i in range(large)]
    asyncio.run(_prepare(conn, container, queue, []))
    at_empty = _daemon_rss(workdir, conn, container, queue, 0)
    asyncio.run(_prepare(conn, container, queue, names[:small]))
    at_small = _daemon_rss(workdir, conn, container, queue, small)
    asyncio.run(_prepare(conn, container, queue, names[small:]))
    at_large = _daemon_rss(workdir, conn, container, queue, large)
    per_blob = (at_large - at_small) / (large - small)
    bare = _bare_dict_bytes_per_blob(names[small:])
    for n, value in ((small, at_small), (large, at_large)):
        emit(
            BENCH, f"daemon_rss_{n}_blobs_mb", value / 1e6, baseline=at_empty / 1e6,
            goal="reported (baseline: the same daemon on an empty prefix)", met=True,
        )  # fmt: skip
    goal = f"<= {RSS_GOAL} B/blob (baseline: a bare dict name -> ETag)"
    if not judged:
        goal = f"reported: {large - small} blobs are too few to judge {goal}"
    emit(
        BENCH, "rss_growth_bytes_per_blob", per_blob, baseline=bare,
        goal=goal, met=per_blob <= RSS_GOAL or not judged,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--list-blobs", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--rss", default="5000,50000", help="SMALL,LARGE blob counts (0,0: skip)")
    parser.add_argument(
        "--short", action="store_true", help="30 events, 1,000 blobs listed, RSS at 5,000/10,000"
    )
    args = parser.parse_args(argv)
    if args.short:
        args.events, args.list_blobs, args.rounds, args.rss = 30, 1000, 6, "5000,10000"
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    blob_exe, queue_exe = find_azurite(), find_azurite_queue()
    if blob_exe is None or queue_exe is None:
        print(f"{BENCH}: azurite-blob/azurite-queue not on PATH", file=sys.stderr)
        return 2
    small, large = (int(x) for x in args.rss.split(","))
    with tempfile.TemporaryDirectory(prefix="watcherd-bench-blob-events-") as tmp:
        server = Azurite(
            blob_exe, Path(tmp) / "azurite", queue_executable=queue_exe, in_memory=True
        )
        server.start()
        try:
            conn = server.connection_string
            if args.events:
                asyncio.run(latency(conn, args.events))
            if args.list_blobs:
                asyncio.run(listing(conn, args.list_blobs, args.rounds))
            if large > small:
                rss(conn, Path(tmp), small, large, judged=large - small >= 20_000)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
