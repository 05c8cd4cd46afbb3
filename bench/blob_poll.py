"""bench blob_poll: a steady BlobPoller poll of 5,000 blobs vs a bare walk_blobs pass (SPEC §10).

Starts its own Azurite (`azurite-blob`, from `npm install -g azurite`), uploads 5,000 blobs
under `incoming/`, takes the poller's baseline, then times steady polls (list + diff, nothing
changed) against the same async `walk_blobs(name_starts_with="incoming/", delimiter="/")`
iterated to the end, alternating the two so drift hits both. Prints one JSON line per figure;
removes everything it made.

    python bench/blob_poll.py [--blobs 5000] [--rounds 12]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import structlog  # noqa: E402
from azure.storage.blob.aio import ContainerClient  # noqa: E402

from bench._common import MemorySink, NoHealth  # noqa: E402
from tests.azurite import Azurite, find_azurite  # noqa: E402
from watcherd.core.models import BlobDatastore, DatastoreTrigger, Schedule  # noqa: E402
from watcherd.engine.clock import SystemClock  # noqa: E402
from watcherd.pollers.blob import BlobPoller  # noqa: E402

GOAL = 1.1
PREFIX = "incoming/"


async def _upload(client: ContainerClient, n: int) -> None:
    sem = asyncio.Semaphore(64)

    async def one(i: int) -> None:
        async with sem:
            await client.upload_blob(f"{PREFIX}f{i:06d}.csv", b"x", overwrite=True)

    await asyncio.gather(*(one(i) for i in range(n)))


async def _bare(client: ContainerClient) -> int:
    n = 0
    async for _ in client.walk_blobs(name_starts_with=PREFIX, delimiter="/"):
        n += 1
    return n


async def measure(conn: str, blobs: int, rounds: int) -> dict[str, object]:
    async with ContainerClient.from_connection_string(conn, "bench", retry_total=0) as client:
        await client.create_container()
        try:
            await _upload(client, blobs)
            ds = BlobDatastore(name="bench", container="bench", connection_string=conn)
            schedule = Schedule(
                id="bench",
                name="bench",
                pipeline="p",
                experiment_name="bench",
                trigger=DatastoreTrigger(
                    datastore="bench",
                    path_on_datastore="incoming",
                    polling_interval=timedelta(minutes=5),
                ),
            )
            sink = MemorySink()
            poller = BlobPoller(
                schedule=schedule, datastore=ds, sink=sink, health=NoHealth(), clock=SystemClock()
            )
            try:
                files, _ = await poller.poll_once()  # the baseline
                assert files == blobs, (files, blobs)
                # Azurite (node) takes a few passes to warm up: unmeasured rounds first.
                for _ in range(4):
                    await poller.poll_once()
                    await _bare(client)
                ours: list[float] = []
                bare: list[float] = []
                for i in range(rounds):  # alternate which goes first: drift hits both
                    for which in ("ours", "bare") if i % 2 == 0 else ("bare", "ours"):
                        t0 = time.perf_counter()
                        if which == "ours":
                            assert await poller.poll_once() == (blobs, 0)
                            ours.append(time.perf_counter() - t0)
                        else:
                            assert await _bare(client) == blobs
                            bare.append(time.perf_counter() - t0)
                assert not sink.committed
            finally:
                await poller.aclose()
        finally:
            await client.delete_container()
    value, baseline = statistics.median(ours), statistics.median(bare)
    ratio = value / baseline
    return {
        "bench": "blob_poll",
        "figure": f"steady_poll_{blobs}_blobs_s",
        "value": round(value, 4),
        "baseline": round(baseline, 4),
        "ratio": round(ratio, 3),
        "goal": f"<= {GOAL}x bare walk_blobs",
        "met": ratio <= GOAL,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blobs", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args(argv)
    # stdout carries only the JSON figures; the poller's info logs would interleave.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    exe = find_azurite()
    if exe is None:
        print("blob_poll: azurite-blob not on PATH (npm install -g azurite)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="watcherd-bench-azurite-") as tmp:
        server = Azurite(exe, Path(tmp))
        server.start()
        try:
            result = asyncio.run(measure(server.connection_string, args.blobs, args.rounds))
        finally:
            server.stop()
    print(json.dumps(result))
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
