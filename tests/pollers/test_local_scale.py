"""Issue #14, local poller: rescans never hold events back, one pass per rescan, a baseline
committed in chunks, a bounded thread pool, rescans spread over the interval. Functional
checks only (the timings are in bench/big_dir.py and bench/many_dirs.py)."""

from __future__ import annotations

import asyncio
import os
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.clocks import ManualClock
from tests.pollers.local_helpers import (
    SUB,
    WAIT,
    RecordingHealth,
    RecordingSink,
    evented,
    make,
    polled,
    running,
    write,
)
from watcherd.core.models import DatastoreTrigger, LocalDatastore, Schedule
from watcherd.pollers import fspool, local, localfs
from watcherd.pollers.local import BASELINE_MARKER, LocalPoller


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    (tmp_path / SUB).mkdir()
    return tmp_path / SUB


async def test_an_event_is_handled_while_a_rescan_is_blocked(
    tmp_path: Path, inbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate, entered, block = threading.Event(), threading.Event(), [False]

    class BlockedScan(localfs.DirScan):
        def next_chunk(self) -> localfs.ScanChunk:
            if block[0]:
                entered.set()
                gate.wait(WAIT)
            return super().next_chunk()

    monkeypatch.setattr(local, "DirScan", BlockedScan)
    try:
        async with evented(tmp_path) as (poller, sink):
            block[0] = True
            watch = poller._events.watch
            assert watch is not None
            watch.on_queue_overflow()  # forces a rescan, which blocks in its listing
            async with asyncio.timeout(WAIT):
                while not entered.is_set():  # noqa: ASYNC110  (a thread's event)
                    await asyncio.sleep(0.01)
            write(inbox / "a.csv")
            await sink.until(lambda: b"incoming/a.csv" in sink.names())
            assert not gate.is_set() and poller._scan is not None  # still listing
    finally:
        gate.set()


@pytest.fixture
def listings(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """The path of every os.scandir call while the test runs."""
    seen: list[bytes] = []
    real = os.scandir

    def counting(path: Any = ".") -> Any:
        seen.append(os.fsencode(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", counting)
    yield seen


async def test_a_rescan_after_an_event_handled_change_lists_once(
    tmp_path: Path, inbox: Path, listings: list[bytes]
) -> None:
    for i in range(20):
        write(inbox / f"old{i}.csv")
    health = RecordingHealth()
    sched, ds = make(tmp_path, events=True, settle=timedelta(minutes=10))
    sink = RecordingSink()
    poller = LocalPoller(
        schedule=sched, datastore=ds, sink=sink, health=health, clock=ManualClock(), phase=0
    )
    async with running(poller):
        await health.until_polls(1)
        write(inbox / "a.csv")  # handled by its event
        (inbox / "old3.csv").unlink()  # a deletion seen by its event too
        await sink.until(lambda: b"incoming/a.csv" in sink.names())
        await sink.until(lambda: b"incoming/old3.csv" not in (sink.snapshot or {}))
        listings.clear()
        watch = poller._events.watch
        assert watch is not None
        watch.on_queue_overflow()  # a full rescan
        await health.until_polls(2)
    assert listings.count(os.fsencode(inbox)) == 1


async def test_a_deletion_no_event_saw_is_found_by_a_names_only_listing(
    tmp_path: Path, inbox: Path, listings: list[bytes]
) -> None:
    for n in ("a.csv", "b.csv"):
        write(inbox / n)
    poller, sink, health, clock = polled(tmp_path)
    async with running(poller):
        await clock.wait_for_wait()
        (inbox / "a.csv").unlink()
        listings.clear()
        await clock.step(60)
    assert sink.commits[-1] == ([], [b"incoming/a.csv"], [])
    assert listings.count(os.fsencode(inbox)) == 2  # the pass, then names only


async def test_the_first_poll_is_committed_in_chunks_and_resumes_where_a_crash_left_it(
    tmp_path: Path, inbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(localfs, "CHUNK", 16)
    for i in range(200):
        write(inbox / f"f{i:03d}.csv")
    poller, sink, _, clock = polled(tmp_path)
    async with running(poller):
        await clock.wait_for_wait()
    assert len(sink.commits) >= 200 // 16
    assert sink.markers[:-1] == [BASELINE_MARKER] * (len(sink.markers) - 1)
    assert sink.markers[-1] == ""  # the baseline is complete
    assert len(sink.snapshot or {}) == 200 and sink.fired == []

    # a crash after the first chunks: the next start completes the baseline, silently
    first = {n: v for c in sink.commits[:3] for n, v in c[0]}
    partial = RecordingSink(dict(first), sink.key)
    partial.marker = BASELINE_MARKER
    known = next(iter(first))  # recorded before the crash, then changed while down
    write(tmp_path / os.fsdecode(known), b"changed while down")
    poller, _, _, clock = polled(tmp_path, sink=partial)
    async with running(poller):
        await clock.wait_for_wait()
        await clock.step(2)  # settle
    assert partial.names() == [known]  # only the known file that changed runs
    assert len(partial.snapshot or {}) == 200 and partial.marker == ""


def _schedules(root: Path, n: int, interval: timedelta) -> list[tuple[Schedule, LocalDatastore]]:
    out = []
    for i in range(n):
        d = root / f"d{i:03d}"
        d.mkdir()
        for j in range(3):
            (d / f"f{j}.csv").write_bytes(b"x")
        trig = DatastoreTrigger(
            datastore="ds", path_on_datastore=d.name, polling_interval=interval, events=False
        )
        sched = Schedule(
            id=f"sched-{i}", name=f"s{i}", pipeline="p", experiment_name="e", trigger=trig
        )
        out.append((sched, LocalDatastore(name="ds", root=root)))
    return out


class TimedHealth(RecordingHealth):
    def __init__(self, clock: ManualClock) -> None:
        super().__init__()
        self.clock = clock
        self.at: dict[str, list[float]] = {}

    def poll_finished(
        self, schedule_id: str, *, ok: bool, duration: float, files: int, error: str | None
    ) -> None:
        self.at.setdefault(schedule_id, []).append(self.clock.monotonic())
        super().poll_finished(schedule_id, ok=ok, duration=duration, files=files, error=error)


async def test_200_pollers_share_a_bounded_pool_and_spread_their_rescans(tmp_path: Path) -> None:
    clock = ManualClock()
    health = TimedHealth(clock)
    before, pool = threading.active_count(), fspool.pool_threads()
    pollers = [
        LocalPoller(schedule=s, datastore=d, sink=RecordingSink(), health=health, clock=clock)
        for s, d in _schedules(tmp_path, 200, timedelta(seconds=60))
    ]
    start = clock.monotonic()
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(p.run()) for p in pollers]
        try:
            await health.until_polls(200)  # every baseline
            assert threading.active_count() - before <= fspool.SIZE
            assert fspool.pool_threads() <= max(pool, fspool.SIZE)
            for second in range(1, 61):  # one interval, a second at a time
                clock.advance(1)
                due = sum(1 for p in pollers if p._phase <= second)
                async with asyncio.timeout(WAIT):
                    while sum(len(v) >= 2 for v in health.at.values()) < due:  # noqa: ASYNC110
                        await asyncio.sleep(0.001)
        finally:
            for t in tasks:
                t.cancel()
    assert threading.active_count() - before <= fspool.SIZE
    per_second = Counter(int(v[1] - start) for v in health.at.values())
    assert len(per_second) >= 40  # spread over the minute, not all at 60 s
    assert max(per_second.values()) <= 15


async def test_the_directory_watch_starts_off_the_loop(
    tmp_path: Path, inbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # inotify_add_watch flags every cached entry of the directory: 0.13 s at 1M files
    from watcherd.pollers import localwatch

    threads: list[int] = []
    real = localwatch.start_dir_watch

    def recording(*args: Any, **kw: Any) -> Any:
        threads.append(threading.get_ident())
        return real(*args, **kw)

    monkeypatch.setattr(localwatch, "start_dir_watch", recording)
    async with evented(tmp_path) as (poller, sink):
        write(inbox / "a.csv")
        await sink.until(lambda: b"incoming/a.csv" in sink.names())
    assert threads and threading.get_ident() not in threads


async def test_a_watch_started_while_its_poller_is_cancelled_is_removed(
    tmp_path: Path, inbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from watcherd.pollers import localwatch

    gate, entered = threading.Event(), threading.Event()
    started: list[localwatch.DirWatch] = []
    real = localwatch.start_dir_watch

    def slow(*args: Any, **kw: Any) -> localwatch.DirWatch:
        entered.set()
        gate.wait(WAIT)
        watch = real(*args, **kw)
        started.append(watch)
        return watch

    monkeypatch.setattr(localwatch, "start_dir_watch", slow)
    events = localwatch.DirEvents(os.fsencode(inbox), lambda kind, name: None, True)
    st = os.stat(inbox)
    task = asyncio.create_task(events.ensure((st.st_dev, st.st_ino)))
    async with asyncio.timeout(WAIT):
        while not entered.is_set():  # noqa: ASYNC110  (a thread's event)
            await asyncio.sleep(0.01)
    task.cancel()
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(WAIT):
        while not started or started[0].alive:  # noqa: ASYNC110  (a pool thread ends it)
            await asyncio.sleep(0.01)
    assert events.watch is None
