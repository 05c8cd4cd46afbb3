"""`watcherd state copy`: a SQLite state moved into PostgreSQL, and a daemon carrying on from
it with no slot, creation run or handled file fired again (SPEC §12). Real engine, real
SQLite, real PostgreSQL (tests/postgres.py), one ManualClock across both daemons.
"""

# ruff: noqa: F811  (the imported fixtures are test parameters)

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.clocks import ManualClock
from tests.engine_helpers import eventually, load_config, running_engine
from tests.postgres import PASSWORD, PostgresServer
from watcherd.cli import state_copy
from watcherd.core.models import Run
from watcherd.daemon import build_engine
from watcherd.engine.engine import Engine
from watcherd.services.manager import Manager
from watcherd.state.postgres import PgStore, open_pg

START = datetime(2026, 11, 25, 10, 0, 30, tzinfo=UTC)


def _config(root: Path) -> str:
    return f"""
[daemon]
api = ""

[datastores.inbox]
kind = "local"
root = {json.dumps(str(root))}

[pipelines.p]
kind = "command"
steps = [[{json.dumps(sys.executable)}, "-c", "pass"]]

[[schedules]]
name = "minute"
pipeline = "p"
experiment_name = "E"
recurrence = {{ frequency = "Minute", interval = 1, start_time = "2026-11-25T10:00:00" }}

[[schedules]]
name = "paused"
pipeline = "p"
experiment_name = "E"
recurrence = {{ frequency = "Minute", interval = 1, start_time = "2026-11-25T10:00:00" }}

[[schedules]]
name = "files"
pipeline = "p"
experiment_name = "E"
datastore = "inbox"
path_on_datastore = "in"
polling_interval = "1h"
"""


def _keys(runs: list[Run]) -> list[tuple[str, str]]:
    return sorted((r.schedule_id, json.dumps(dict(r.trigger), sort_keys=True)) for r in runs)


async def _all_runs(store: PgStore) -> list[Run]:
    return (await store.list_runs(limit=10_000)).runs


@asynccontextmanager
async def _pg_engine(
    tmp_path: Path, text: str, url: str, clock: ManualClock
) -> AsyncIterator[tuple[Engine, PgStore]]:
    store, cluster = await open_pg(
        url, replica_id="r1", lease_ttl=timedelta(seconds=15), clock=clock
    )
    engine = build_engine(load_config(tmp_path, text), store, clock, cluster)
    try:
        await engine.prepare()
        task = asyncio.ensure_future(engine.run())
        await engine.started.wait()
        try:
            yield engine, store
        finally:
            engine.stop()
            await asyncio.wait_for(task, 30)
            await engine.close()
    finally:
        await store.close()


async def test_a_daemon_on_the_copy_fires_nothing_again(
    tmp_path: Path, pg_server: PostgresServer, pg_store_url: str
) -> None:
    inbox = tmp_path / "inbox" / "in"
    inbox.mkdir(parents=True)
    (inbox / "old.csv").write_text("there before: baseline")
    text = _config(tmp_path / "inbox")
    clock = ManualClock(START)
    state = tmp_path / "state"
    dbname = pg_store_url.rsplit("/", 1)[1]
    url = pg_server.password_dsn(dbname)  # the password is in the URL: it must not show

    async with running_engine(tmp_path, text, clock, state=state) as h:
        await eventually(lambda: any(st.attempts for st in h.engine.poll.values()))
        created = await h.manager.create_schedule(
            {"name": "api", "pipeline": "p", "experiment_name": "E",
             "recurrence": {"frequency": "Hour", "interval": 1}}
        )  # fmt: skip
        await h.manager.set_schedule_status("paused", "Disabled")
        (inbox / "a.csv").write_text("handled")
        await eventually(lambda: len(h.runs("files")) == 1)
        await eventually(lambda: len(h.runs("api")) == 1)  # the creation fire
        for _ in range(2):
            await h.advance(seconds=60)
        await eventually(lambda: len(h.runs("minute")) >= 2)
        await h.settle()
        # A daemon holds the state's lock: the copy refuses to run.
        code = await asyncio.to_thread(state_copy.main, ["--to", url, "--from", str(state)])
        assert code == 1
        before = list(h.runs())
        statuses = {s["name"]: s["status"] for s in (await h.manager.list_schedules())[0]}

    rc = await asyncio.to_thread(state_copy.main, ["--to", url, "--from", str(state)])
    assert rc == 0
    # Into a database that already holds state: refused.
    assert await asyncio.to_thread(state_copy.main, ["--to", url, "--from", str(state)]) == 1

    async with _pg_engine(tmp_path, text, pg_store_url, clock) as (engine, store):
        manager = Manager(engine)
        assert {s["name"]: s["status"] for s in (await manager.list_schedules())[0]} == statuses
        assert (await manager.get_schedule(created["id"]))["name"] == "api"
        await eventually(lambda: any(st.attempts for st in engine.poll.values()))
        await asyncio.sleep(0.3)  # give a wrongly re-fired slot or file the time to show
        copied = await _all_runs(store)
        assert _keys(copied) == _keys(before)
        assert [(r.id, r.seq, r.status) for r in sorted(copied, key=lambda r: r.seq)] == [
            (r.id, r.seq, r.status) for r in sorted(before, key=lambda r: r.seq)
        ]
        # It carries on: the next slot once, a new file once, nothing else.
        keeper = engine.arming.leases
        for _ in range(60):  # a second at a time: the lease keeper beats on this clock
            clock.advance(seconds=1)
            await eventually(lambda: keeper.valid_until - clock.monotonic() > 8)
        (inbox / "b.csv").write_text("new")
        minute = next(s.id for s in engine.schedules.values() if s.name == "minute")
        files = next(s.id for s in engine.schedules.values() if s.name == "files")

        async def count(sid: str) -> int:
            return len([r for r in await _all_runs(store) if r.schedule_id == sid])

        n_minute = len([r for r in before if r.schedule_id == minute])
        n_files = len([r for r in before if r.schedule_id == files])
        async with asyncio.timeout(20):
            # The runs are in the shared database, not an in-process structure to wait on.
            while await count(minute) < n_minute + 1 or await count(files) < n_files + 1:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        after = await _all_runs(store)
        new = [r for r in after if r.id not in {b.id for b in before}]
        assert sorted(
            (r.schedule_id, str(r.trigger.get("slot") or r.trigger.get("path"))) for r in new
        ) == sorted([(minute, "2026-11-25T10:03:00Z"), (files, "in/b.csv")])
        assert max(r.seq for r in new) > max(r.seq for r in before)


def test_copy_output_and_errors_never_show_the_password(
    tmp_path: Path,
    pg_server: PostgresServer,
    pg_store_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dbname = pg_store_url.rsplit("/", 1)[1]
    url = pg_server.password_dsn(dbname)
    assert state_copy.main(["--to", url, "--from", str(tmp_path / "nothing")]) == 1
    from watcherd.state.sqlite.store import SqliteStore

    asyncio.run(SqliteStore(tmp_path / "empty").close())
    assert state_copy.main(["--to", url, "--from", str(tmp_path / "empty")]) == 0
    bad = pg_server.dsn(dbname, "watcherd_pw", "Wrong-Pw-123")
    assert state_copy.main(["--to", bad, "--from", str(tmp_path / "empty")]) == 1
    assert state_copy.main(["--bogus"]) == 2
    out = capsys.readouterr()
    text = out.out + out.err
    assert "no watcherd state in" in text
    assert f"into postgresql://***@127.0.0.1:{pg_server.port}/{dbname}" in text
    assert "password authentication failed" in text
    for secret in (PASSWORD, "s3cr", "Wrong-Pw-123", "watcherd_pw"):
        assert secret not in text


@pytest.mark.parametrize("url", ["bogus://x", "postgresql://h:notaport/db", "mysql://u:pw@h/db"])
def test_a_target_that_is_no_postgresql_url_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    assert state_copy.main(["--to", url, "--from", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("watcherd: --to: ") and err.count("\n") == 1
    assert "pw@" not in err and "notaport" not in err  # the value is never shown
