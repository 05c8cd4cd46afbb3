"""In-process engine fixtures: a real SQLite store, the real engine, an injected ManualClock."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tomllib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from tests.clocks import ManualClock
from watcherd import config as config_mod
from watcherd.daemon import build_engine
from watcherd.engine.engine import Engine
from watcherd.services.manager import Manager
from watcherd.state.sqlite import runs as runs_sql
from watcherd.state.sqlite.store import SqliteStore


async def eventually(pred: Callable[[], Any], within: float = 10.0) -> Any:
    """Await until `pred()` is truthy, yielding to the loop; fail after `within` seconds."""
    async with asyncio.timeout(within):
        # Polls state owned by other components (the DB, the runner); there is no single
        # event to wait on, and the deadline bounds it.
        while not (value := pred()):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        return value


async def settles(pred: Callable[[], object], within: float = 20.0) -> None:
    """Wait until `pred()` holds, at most `within` s, without failing: the caller's assert
    then says what it saw (a timeout alone would not)."""
    with contextlib.suppress(TimeoutError):
        await eventually(pred, within)


class Harness:
    """An engine on a ManualClock, with helpers to read its runs."""

    def __init__(self, engine: Engine, clock: ManualClock, store: SqliteStore) -> None:
        self.engine = engine
        self.clock = clock
        self.store = store
        self.manager = Manager(engine)

    def runs(self, schedule: str | None = None) -> list[Any]:
        sid = None
        if schedule is not None:
            sid = next(s.id for s in self.engine.schedules.values() if s.name == schedule)
        runs, _ = self.store.db.sync(
            runs_sql.list_runs,
            schedule_id=sid,
            pipeline_id=None,
            status=None,
            limit=100000,
            before_seq=None,
        )
        return list(reversed(runs))

    def slots(self, schedule: str | None = None) -> list[str]:
        runs = self.runs(schedule)
        return [str(r.trigger["slot"]) for r in runs if r.trigger.get("kind") == "time"]

    async def advance(self, **kw: float) -> None:
        self.clock.advance(**kw)
        for _ in range(5):
            await asyncio.sleep(0)

    async def settle(self) -> None:
        """Wait until nothing is Queued or Running."""
        r = self.engine.runner
        await eventually(
            lambda: (
                r.total_queued() == 0
                and r.total_running() == 0
                and all(x.status.value not in ("Queued", "Running") for x in self.runs())
            )
        )


def load_config(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "watcherd.toml"
    path.write_text(text)
    tomllib.loads(text)  # a syntax error here is the test's fault
    return config_mod.load(path, dict(os.environ))


@asynccontextmanager
async def running_engine(
    tmp_path: Path, text: str, clock: ManualClock, state: Path | None = None
) -> AsyncIterator[Harness]:
    cfg = load_config(tmp_path, text)
    store = SqliteStore(state or tmp_path / ".watcherd")
    engine = build_engine(cfg, store, clock)
    try:
        await engine.prepare()
        task = asyncio.ensure_future(engine.run())
        await engine.started.wait()
        h = Harness(engine, clock, store)
        try:
            yield h
        finally:
            engine.stop()
            await asyncio.wait_for(task, 30)
            await engine.close()
    finally:
        await store.close()
