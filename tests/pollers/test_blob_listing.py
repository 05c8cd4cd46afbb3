"""Large containers (SPEC §4): a blob listing committed page by page, resumed after a crash.

Against a real Azurite with `list_page_size` small, a RecordingSink that keeps the snapshot and
the listing marker as the store does, and a ManualClock for the cadence. A "crash" is a sink
whose commit never returns after N pages, then the poller's task cancelled: nothing after the
N-th page is committed, as with SIGKILL.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from tests.pollers.test_blob import (
    Ctr,
    RecordingSink,
    _schedule,
    container,  # noqa: F401
    names,
    put,
    running,
    shared_azurite,  # noqa: F401
)
from watcherd.pollers import blob_storage
from watcherd.pollers.blob_listing import ListingMarker, range_deletes


class CrashingSink(RecordingSink):
    """Commits normally until `crash_after` more commits, then hangs (the process "died")."""

    def __init__(self) -> None:
        super().__init__()
        self.crash_after: int | None = None
        self.hung = asyncio.Event()

    async def commit(self, *args: Any, **kw: Any) -> int:
        if self.crash_after is not None:
            if self.crash_after == 0:
                self.hung.set()
                await asyncio.Event().wait()
            self.crash_after -= 1
        return await super().commit(*args, **kw)


@pytest.fixture
def list_calls(monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """Counts List Blobs requests made by the poller's client (made after this fixture)."""
    count = [0]

    def hook(request: Any) -> None:
        if "comp=list" in request.http_request.url:
            count[0] += 1

    monkeypatch.setitem(blob_storage.CLIENT_OPTIONS, "raw_request_hook", hook)
    return lambda: count[0]


# ── pure ──────────────────────────────────────────────────────────────────────


def test_marker_round_trip_and_foreign_markers() -> None:
    m = ListingMarker(token="2!96!MDAw", after="incoming/é.csv".encode(), baseline=True)
    assert ListingMarker.decode(m.encode()) == m
    assert ListingMarker.decode(ListingMarker("t", None, False).encode()) == ListingMarker(
        "t", None, False
    )
    for text in (None, "", "not json", '{"v": 1}', '{"token": "", "after": null, "baseline": 0}'):
        assert ListingMarker.decode(text) is None


def test_range_deletes_cover_exactly_the_page_range() -> None:
    known = sorted(f"d/{c}".encode() for c in "abcdefgh")
    current = set(known)
    listed = {b"d/b", b"d/d"}
    assert range_deletes(known, None, b"d/d", listed, current) == [b"d/a", b"d/c"]
    assert range_deletes(known, b"d/d", b"d/f", {b"d/f"}, current) == [b"d/e"]
    assert range_deletes(known, b"d/f", None, set(), current) == [b"d/g", b"d/h"]  # last page
    assert range_deletes(known, b"d/f", None, set(), current - {b"d/g"}) == [b"d/h"]
    assert range_deletes(known, b"d/dd", b"d/e", set(), current) == [b"d/e"]  # between names


# ── against Azurite ───────────────────────────────────────────────────────────


@pytest.mark.azurite
async def test_listing_killed_halfway_resumes_from_its_last_committed_page(
    container: Ctr,  # noqa: F811
    list_calls: Callable[[], int],
) -> None:
    ds, client = container
    blobs = [f"incoming/f{i:05d}.csv" for i in range(2000)]
    schedule = _schedule(list_page_size=200)
    sink = CrashingSink()
    async with running(ds, schedule, sink=sink) as h:
        assert (await h.first())[0]
        await put(client, *blobs)
        sink.crash_after = 5  # pages 1-5 commit; page 6's commit never returns
        h.clock.advance(60)
        async with asyncio.timeout(60):
            await sink.hung.wait()
    first_life = names(sink.fired)
    assert first_life == [b.encode() for b in blobs[:1000]]
    stored = ListingMarker.decode(sink.markers["s-1"])
    assert stored is not None and stored.after == blobs[999].encode() and not stored.baseline

    sink.crash_after = None
    before = list_calls()
    async with running(ds, schedule, sink=sink) as h:
        ok, files, error = await h.first()  # the restart resumes where the marker says
        assert ok, error
        assert files == 1000
        assert list_calls() - before <= 5 + 1  # the remaining pages (+1)
    counts = Counter(c.name for c in sink.fired)
    assert sorted(counts) == [b.encode() for b in blobs] and set(counts.values()) == {1}
    assert sink.markers["s-1"] is None  # the listing completed: marker cleared
    assert len(sink.snapshots["s-1"]) == 2000


@pytest.mark.azurite
async def test_an_interrupted_baseline_resumes_as_a_baseline(container: Ctr) -> None:  # noqa: F811
    ds, client = container
    await put(client, *(f"incoming/b{i:04d}" for i in range(600)))
    schedule = _schedule(list_page_size=200)
    sink = CrashingSink()
    sink.crash_after = 1
    async with running(ds, schedule, sink=sink):
        async with asyncio.timeout(60):
            await sink.hung.wait()
    assert len(sink.snapshots["s-1"]) == 200
    marker = ListingMarker.decode(sink.markers["s-1"])
    assert marker is not None and marker.baseline
    sink.crash_after = None
    async with running(ds, schedule, sink=sink) as h:
        assert (await h.first())[:2] == (True, 400)
        assert sink.fired == []  # still the baseline: nothing starts
        assert len(sink.snapshots["s-1"]) == 600 and sink.markers["s-1"] is None
        await put(client, "incoming/new")
        assert names(await h.changes()) == [b"incoming/new"]


@pytest.mark.azurite
async def test_each_page_carries_the_deletes_of_its_name_range(container: Ctr) -> None:  # noqa: F811
    ds, client = container
    blobs = [f"incoming/p{i:03d}" for i in range(600)]
    await put(client, *blobs)
    async with running(ds, _schedule(list_page_size=200)) as h:
        assert (await h.first())[:2] == (True, 600)
        gone = [blobs[10], blobs[250], blobs[590]]
        for name in gone:
            await client.delete_blob(name)
        before = len(h.sink.commits)
        assert await h.changes() == []
        per_page = [deletes for _, deletes, _ in h.sink.commits[before:]]
        # pages of 200 listed blobs: each deleted name falls in the range of one page
        assert [d for d in per_page if d] == [[n.encode()] for n in gone]
        assert set(h.sink.snapshots["s-1"]) == {b.encode() for b in blobs} - {
            n.encode() for n in gone
        }
