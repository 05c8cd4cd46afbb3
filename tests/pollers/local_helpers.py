"""Shared pieces of the local poller tests: a recording ChangeSink, a stepping clock, and
pollers on real files in tmp_path."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from tests.clocks import ManualClock
from watcherd.core.models import DatastoreTrigger, LocalDatastore, Schedule
from watcherd.engine.clock import SystemClock
from watcherd.engine.metrics import Metrics
from watcherd.engine.ports import FileChange
from watcherd.pollers.local import LocalPoller

Follow = Literal["within_root", "always"]

WAIT = 5.0
SUB = "incoming"


class RecordingSink:
    """An in-memory ChangeSink: records every commit; tests wait on it."""

    def __init__(self, snapshot: dict[bytes, str] | None = None, key: str | None = None) -> None:
        self.snapshot = snapshot
        self.key = key
        self.commits: list[tuple[list[tuple[bytes, str]], list[bytes], list[FileChange]]] = []
        self.fired: list[FileChange] = []
        self.queued = 0
        self.marker = ""
        self.markers: list[str | None] = []
        self.released = asyncio.Event()
        self.paused = asyncio.Event()
        self._changed = asyncio.Event()

    async def load_snapshot(self, schedule_id: str, baseline_key: str) -> dict[bytes, str] | None:
        if self.snapshot is None or (self.key is not None and self.key != baseline_key):
            return None
        return dict(self.snapshot)

    async def load_marker(self, schedule_id: str, baseline_key: str) -> str | None:
        if self.snapshot is None or (self.key is not None and self.key != baseline_key):
            return None
        return self.marker or None

    async def commit(
        self,
        schedule_id: str,
        baseline_key: str,
        upserts: Sequence[tuple[bytes, str]],
        deletes: Sequence[bytes],
        fire: Sequence[FileChange],
        marker: str | None = None,
    ) -> int:
        assert {(c.name, c.version) for c in fire} <= set(upserts)
        if marker is not None:
            self.marker = marker
        self.markers.append(marker)
        if self.snapshot is None or self.key != baseline_key:
            self.snapshot, self.key = {}, baseline_key
        self.snapshot.update(upserts)
        for name in deletes:
            del self.snapshot[name]
        self.commits.append((list(upserts), list(deletes), list(fire)))
        self.fired.extend(fire)
        self._changed.set()
        return len(fire)

    def pending(self, schedule_id: str) -> int:
        return self.queued

    async def wait_below(self, schedule_id: str, limit: int) -> None:
        self.paused.set()
        await self.released.wait()

    def names(self) -> list[bytes]:
        return [c.name for c in self.fired]

    async def until(self, pred: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT):
            while not pred():
                self._changed.clear()
                await self._changed.wait()


class RecordingHealth:
    def __init__(self) -> None:
        self.polls: list[tuple[bool, int, str | None]] = []
        self._changed = asyncio.Event()

    def poll_finished(
        self, schedule_id: str, *, ok: bool, duration: float, files: int, error: str | None
    ) -> None:
        self.polls.append((ok, files, error))
        self._changed.set()

    async def until_polls(self, n: int) -> None:
        async with asyncio.timeout(WAIT):
            while len(self.polls) < n:
                self._changed.clear()
                await self._changed.wait()


class StepClock(ManualClock):
    """A ManualClock that counts the poller's waits, so a test can let it run to its next one."""

    def __init__(self) -> None:
        super().__init__()
        self.waits = 0
        self._waiting = asyncio.Event()

    async def sleep_until(
        self, deadline: datetime, wake: asyncio.Event | None = None, *, precise: bool = False
    ) -> bool:
        while self._now < deadline:
            if wake is not None and wake.is_set():
                return True
            self.waits += 1
            self._waiting.set()
            waits: set[asyncio.Future[Any]] = {asyncio.ensure_future(self._changed.wait())}
            if wake is not None:
                waits.add(asyncio.ensure_future(wake.wait()))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
        return False

    async def step(self, seconds: float = 0.0) -> None:
        """Advance, then return once the poller waits again."""
        n = self.waits
        self.advance(seconds)
        await self.wait_for_wait(n + 1)

    async def wait_for_wait(self, n: int = 1) -> None:
        async with asyncio.timeout(WAIT):
            while self.waits < n:
                self._waiting.clear()
                await self._waiting.wait()


def make(
    root: Path, *, path: str = SUB, follow: Follow = "within_root", **trigger: Any
) -> tuple[Schedule, LocalDatastore]:
    trigger.setdefault("polling_interval", timedelta(hours=1))
    trig = DatastoreTrigger(datastore="inbox", path_on_datastore=path, **trigger)
    sched = Schedule(id="s1", name="reactive", pipeline="p", experiment_name="e", trigger=trig)
    return sched, LocalDatastore(name="inbox", root=root, follow_symlinks=follow)


@asynccontextmanager
async def running(poller: LocalPoller) -> AsyncIterator[None]:
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(poller.run())
        try:
            yield
        finally:
            task.cancel()


def write(path: Path, data: bytes = b"x") -> str:
    with open(path, "wb") as f:
        f.write(data)
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


@asynccontextmanager
async def evented(
    tmp_path: Path, sink: RecordingSink | None = None, **trigger: Any
) -> AsyncIterator[tuple[LocalPoller, RecordingSink]]:
    """A poller with events on, waiting until its baseline is committed."""
    sink = sink or RecordingSink()
    trigger.setdefault("settle", timedelta(minutes=10))  # fires come from events only
    sched, ds = make(tmp_path, events=True, **trigger)
    poller = LocalPoller(
        schedule=sched, datastore=ds, sink=sink, health=RecordingHealth(), clock=SystemClock()
    )
    async with running(poller):
        await sink.until(lambda: bool(sink.commits))
        yield poller, sink


async def mark(sink: RecordingSink, inbox: Path, name: str = "zz-marker.csv") -> None:
    """Write a marker file and wait for it: every earlier event has been handled then."""
    write(inbox / name)
    await sink.until(lambda: f"{SUB}/{name}".encode() in sink.names())


def polled(
    tmp_path: Path,
    sink: RecordingSink | None = None,
    *,
    max_pending: int = 10000,
    events: bool = False,
    follow: Follow = "within_root",
    **trigger: Any,
) -> tuple[LocalPoller, RecordingSink, RecordingHealth, StepClock]:
    """A poller on a StepClock whose polls fall on whole intervals from its start."""
    trigger.setdefault("polling_interval", timedelta(seconds=60))
    sched, ds = make(tmp_path, events=events, follow=follow, **trigger)
    sink, health, clock = sink or RecordingSink(), RecordingHealth(), StepClock()
    poller = LocalPoller(
        schedule=sched,
        datastore=ds,
        sink=sink,
        health=health,
        clock=clock,
        max_pending=max_pending,
        metrics=Metrics(),
        phase=0.0,
    )
    return poller, sink, health, clock


def helper_starts(monkeypatch: Any) -> list[Any]:
    """Every listing helper started from now on (None: `lister.start` declined or failed)."""
    from watcherd.pollers import lister

    started: list[lister.Lister | None] = []
    real = lister.start

    def spy(fd: int, path: bytes, chunk: int) -> lister.Lister | None:
        started.append(real(fd, path, chunk))
        return started[-1]

    monkeypatch.setattr(lister, "start", spy)
    return started
