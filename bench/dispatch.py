"""Dispatch throughput: runs/s with every status change committed (synchronous=FULL).

Builds the real Engine in-process on a temp state dir (SystemClock, JSON logs to a file,
default max_concurrent_runs = 8); CLIENTS concurrent tasks (16, like API clients) trigger N
manual runs through `Manager.trigger_schedule` (one commit each: Queued, acknowledged after
it), and the runner takes them (two more commits each: Running, then Submitted/Completed).
The figure is N / (last finished_at - first queued_at), read back from the state DB.

  (a) an `http` pipeline POSTing to a loopback aiohttp sink in a separate process;
  (b) a `command` pipeline running `true`.

Baseline, measured in the same run: a bare loop on a fresh `Store` (same schema, indexes and
pragmas: WAL, synchronous=FULL) doing the same 3 commits per run (insert_runs Queued,
update_run Running, update_run Submitted) back to back on the store's thread, with no engine,
no asyncio and no dispatch: the floor of one-fsync-per-status-change. fsync latency on a
shared VM disk drifts, so the baseline is measured right before and right after each engine
phase and averaged. ratio = value / baseline (above 1 means the engine beats serial commits).

Also, informational: `http_bare_dispatch_runs_per_s` and `command_bare_dispatch_runs_per_s`,
the dispatch alone with no store and no engine (8 tasks, as max_concurrent_runs: POSTs of a
run-sized JSON body on one aiohttp session; `true` through asyncio.create_subprocess_exec),
against the same bare commit loop; and `http_cpu_floor_runs_per_s` and
`command_cpu_floor_runs_per_s`: 1 / (the bare commit loop's CPU per run + the bare
dispatch's), the most runs/s one interpreter can reach doing both (the GIL serializes them;
only fsync waits can overlap), against the same loop. A floor ratio under 1.0 means the
1.0x goal is out of reach on this machine whatever the engine does: a disk whose fsync costs
less than a dispatch's CPU.

Also `http_cpu_ms_per_run` and `command_cpu_ms_per_run` (informational): CPU time of this
process (every thread; a command's child not counted) per run, against the bare loop's per
run. On a shared machine runs/s drifts with the disk's fsync latency; CPU per run does not
much, so it is the figure to compare two trees by (issue #12's before/after).

Usage: python bench/dispatch.py [--http-runs N] [--command-runs N] [--clients N]
       BENCH_TREE=/tmp/wt-before python bench/dispatch.py   # the same against another tree
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, emit  # noqa: E402

sys.path.insert(0, str(ROOT))
# $BENCH_TREE may name a tree from before the restructure (issue #12, commit 55f053b): flat
# modules (watcherd.state.Store, watcherd.engine.Engine, watcherd.manager.Manager). The
# measurement is the same; only the names it is reached by differ.
OLD_LAYOUT = not (ROOT / "watcherd" / "state" / "sqlite").is_dir()

BENCH = "dispatch"
T = TypeVar("T")


def _emit(figure: str, value: float, baseline: float | None, goal: str, met: bool) -> None:
    emit(BENCH, figure, value, baseline=baseline, goal=goal, met=met)


# ── the loopback sink (its own process, so it does not share our GIL) ────────


def _sink_main() -> None:
    from aiohttp import web

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=201, text='{"ok":true}', content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/hook", hook)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        print(port, flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())


@contextlib.contextmanager
def sink() -> Iterator[int]:
    proc = subprocess.Popen([sys.executable, __file__, "--sink"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ── the baseline ─────────────────────────────────────────────────────────────


def baseline_runs_per_s(tmp: Path, n: int) -> float:
    """The store's own 3 commits per run, back to back, with no engine and no dispatch.

    On a fresh `SqliteStore` (same schema, indexes and pragmas: WAL, synchronous=FULL), one
    loop on the store's writer thread does, per run, three transactions with the store's own
    SQL functions: `insert_runs` (Queued), `transition_run` (Running), `transition_run`
    (Submitted). This is the storage floor of one-commit-per-change.
    """
    if OLD_LAYOUT:
        return _baseline_old_layout(tmp, n)
    from watcherd.core.models import RunStatus
    from watcherd.core.runs import NewRun
    from watcherd.state.sqlite import runs as runs_sql
    from watcherd.state.sqlite.database import Tx
    from watcherd.state.sqlite.store import SqliteStore

    state = Path(tempfile.mkdtemp(prefix="baseline-", dir=tmp))
    store = SqliteStore(state)

    def loop(conn: sqlite3.Connection) -> float:
        t0 = time.perf_counter()
        for i in range(n):
            now = datetime.now(UTC)
            run = NewRun(
                schedule_id="s",
                pipeline_id="p",
                experiment="bench",
                dedup=f"manual:{uuid.uuid4()}",
                trigger={"kind": "manual", "by": "bench", "i": i},
                parameters={},
            )
            with Tx(conn) as cur:
                (rid,) = runs_sql.insert_runs(cur, [run], now)
            runs_sql.transition_run(
                conn, rid, RunStatus.RUNNING, None, [], now, {"started_at": now}
            )
            runs_sql.transition_run(
                conn,
                rid,
                RunStatus.SUBMITTED,
                None,
                [],
                now,
                {"finished_at": now, "attempts": [{"attempt": 1}], "next_attempt_at": None},
            )
        return n / (time.perf_counter() - t0)

    try:
        return store.db.sync(loop)
    finally:
        asyncio.run(store.close())
        shutil.rmtree(state, ignore_errors=True)


def _old(module: str) -> Any:
    """A module of the flat layout (before the restructure), untyped here on purpose."""
    return importlib.import_module(module)


def _baseline_old_layout(tmp: Path, n: int) -> float:
    """The same loop on a tree from before the restructure: `Store.insert_runs` and two
    `Store.update_run(expect=…)` calls, one transaction each, on the store's thread."""
    RunStatus = _old("watcherd.models").RunStatus
    NewRun, Store = _old("watcherd.state").NewRun, _old("watcherd.state").Store
    state = Path(tempfile.mkdtemp(prefix="baseline-", dir=tmp))
    store = Store(state)

    def loop() -> float:
        t0 = time.perf_counter()
        for i in range(n):
            now = datetime.now(UTC)
            run = NewRun(
                schedule_id="s",
                pipeline_id="p",
                experiment="bench",
                dedup=f"manual:{uuid.uuid4()}",
                trigger={"kind": "manual", "by": "bench", "i": i},
                parameters={},
            )
            (rid,) = store.insert_runs([run], now)
            store.update_run(
                rid, expect=[RunStatus.QUEUED], status=RunStatus.RUNNING, started_at=now
            )
            store.update_run(
                rid,
                expect=[RunStatus.RUNNING],
                status=RunStatus.SUBMITTED,
                finished_at=now,
                attempts=[{"attempt": 1}],
                next_attempt_at=None,
            )
        return n / (time.perf_counter() - t0)

    try:
        return float(store.sync(loop))
    finally:
        store.close()
        shutil.rmtree(state, ignore_errors=True)


# ── the dispatch alone ───────────────────────────────────────────────────────

_BODY = {  # about what the http dispatcher POSTs for a manual run
    "run_id": "7f0c2a4e-3b1d-5e6f-8a9b-0c1d2e3f4a5b",
    "schedule": "hook",
    "schedule_id": "0b8f5c2e-1d3a-5f4e-9a8b-7c6d5e4f3a2b",
    "pipeline": "hook",
    "experiment_name": "bench",
    "trigger": {"kind": "manual", "by": "bench"},
    "parameters": {},
    "attempt": 1,
}


async def bare_dispatch(port: int | None, n: int, tasks: int = 8) -> tuple[float, float]:
    """(runs/s, CPU ms per run of this process) of n dispatches by `tasks` concurrent tasks,
    with no store and no engine: POSTs to the sink on one session, or `true` spawned."""
    import aiohttp

    left = iter(range(n))

    async def post(session: aiohttp.ClientSession) -> None:
        for _ in left:
            async with session.post(f"http://127.0.0.1:{port}/hook", json=_BODY) as r:
                await r.read()

    async def spawn() -> None:
        for _ in left:
            proc = await asyncio.create_subprocess_exec("true")
            await proc.wait()

    async with aiohttp.ClientSession() as session:
        t, c = time.perf_counter(), time.process_time()
        async with asyncio.TaskGroup() as tg:
            for _ in range(tasks):
                tg.create_task(post(session) if port is not None else spawn())
        wall, cpu = time.perf_counter() - t, time.process_time() - c
    return n / wall, cpu * 1000 / n


# ── the engine ───────────────────────────────────────────────────────────────

CONFIG = """\
[daemon]
state_dir = "{state}"
api = ""
log_format = "json"

[pipelines.hook]
kind = "http"
url = "http://127.0.0.1:{port}/hook"

[pipelines.noop]
kind = "command"
steps = [["true"]]

[[schedules]]
name = "hook"
pipeline = "hook"
experiment_name = "bench"
recurrence = {{ frequency = "Month", interval = 1, start_time = "2099-01-01T00:00:00" }}

[[schedules]]
name = "noop"
pipeline = "noop"
experiment_name = "bench"
recurrence = {{ frequency = "Month", interval = 1, start_time = "2099-01-01T00:00:00" }}
"""


def _open_engine(cfg: Any) -> tuple[Any, Any, Any, Callable[[], Awaitable[None]]]:
    """(store, engine, the Manager class, close) wired as `watcherd run` wires them, in the
    tree's own layout."""
    if OLD_LAYOUT:
        old_store = _old("watcherd.state").Store(cfg.daemon.state_dir)
        clock = _old("watcherd.clock").SystemClock()
        old_engine = _old("watcherd.engine").Engine(cfg, old_store, clock)
        OldManager = _old("watcherd.manager").Manager

        async def close_old() -> None:
            old_store.close()

        return old_store, old_engine, OldManager, close_old

    from watcherd.daemon import build_engine
    from watcherd.dispatch.process import set_child_subreaper
    from watcherd.engine.clock import SystemClock
    from watcherd.services.manager import Manager
    from watcherd.state.sqlite.store import SqliteStore

    set_child_subreaper()  # as `watcherd run` does (run_daemon): orphans of runs stay ours
    store = SqliteStore(cfg.daemon.state_dir)
    engine = build_engine(cfg, store, SystemClock())

    async def close() -> None:
        try:
            await engine.close()
        finally:
            await store.close()

    return store, engine, Manager, close


async def _engine_runs(
    workdir: Path, port: int, schedule: str, n: int, clients: int
) -> tuple[float, int]:
    """Trigger n runs of `schedule` and wait for all to end; returns (runs/s, not ok)."""
    from watcherd import config as config_mod
    from watcherd import logs

    state = workdir / f"state-{schedule}"
    path = workdir / f"watcherd-{schedule}.toml"
    path.write_text(CONFIG.format(state=state, port=port))
    cfg = config_mod.load(path, dict(os.environ))
    log_file = (workdir / f"{schedule}.log").open("w")
    logs.configure("json", cfg.secrets, stream=log_file)
    store, engine, Manager, close = _open_engine(cfg)
    try:
        await engine.prepare()
        task = asyncio.create_task(engine.run())
        await engine.started.wait()
        manager = Manager(engine)
        left = iter(range(n))

        async def client() -> None:
            for _ in left:
                await manager.trigger_schedule(schedule, by="bench")

        async with asyncio.TaskGroup() as tg:
            for _ in range(clients):
                tg.create_task(client())
        runner = engine.runner
        async with asyncio.timeout(240):
            # an outside observer: the figure's end is the last finished_at in the DB
            while runner.total_queued() or runner.total_running():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        engine.stop()
        await task
    finally:
        await close()
        log_file.close()
    conn = sqlite3.connect(state / "state.db")
    first, last, done, bad = conn.execute(
        "SELECT min(queued_at), max(finished_at), count(*),"
        " sum(status NOT IN ('Submitted','Completed')) FROM runs"
    ).fetchone()
    conn.close()
    if done != n:
        raise SystemExit(f"{schedule}: expected {n} runs, found {done}")
    span = (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds()
    return n / span, int(bad or 0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--sink", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--http-runs", type=int, default=3000)
    p.add_argument("--command-runs", type=int, default=600)
    p.add_argument("--baseline-runs", type=int, default=1000)
    p.add_argument("--clients", type=int, default=16, help="concurrent triggering tasks")
    args = p.parse_args(argv)
    if args.sink:
        _sink_main()
        return 0
    import watcherd

    layout = "flat (before the restructure)" if OLD_LAYOUT else "layered"
    sys.stderr.write(f"dispatch: watcherd from {Path(watcherd.__file__).parent}, {layout}\n")
    tmp = Path(tempfile.mkdtemp(prefix="watcherd-bench-dispatch-"))
    cpu: dict[str, list[float]] = {}  # CPU ms per run of this process (every thread)
    try:  # as `watcherd run` does before its loop (a tree from before 12-01 has no such call)
        from watcherd.dispatch.process import use_pidfd_child_watcher
    except ImportError:
        pass
    else:
        sys.stderr.write(f"dispatch: pidfd child watcher: {use_pidfd_child_watcher()}\n")

    def timed(key: str, n: int, fn: Callable[[], T]) -> T:
        c = time.process_time()
        out = fn()
        cpu.setdefault(key, []).append((time.process_time() - c) * 1000 / n)
        return out

    nb = args.baseline_runs
    try:
        with sink() as port:
            b0 = timed("bare", nb, lambda: baseline_runs_per_s(tmp, nb))
            http, http_bad = timed(
                "http",
                args.http_runs,
                lambda: asyncio.run(_engine_runs(tmp, port, "hook", args.http_runs, args.clients)),
            )
            b1 = timed("bare", nb, lambda: baseline_runs_per_s(tmp, nb))
            bare_http = asyncio.run(bare_dispatch(port, args.http_runs))
        bare_cmd = asyncio.run(bare_dispatch(None, args.command_runs))
        cmd, cmd_bad = timed(
            "command",
            args.command_runs,
            lambda: asyncio.run(_engine_runs(tmp, 0, "noop", args.command_runs, args.clients)),
        )
        b2 = timed("bare", nb, lambda: baseline_runs_per_s(tmp, nb))
        if http_bad or cmd_bad:
            sys.stderr.write(f"dispatch: runs not ok: http {http_bad}, command {cmd_bad}\n")
        hb, cb = (b0 + b1) / 2, (b1 + b2) / 2
        _emit(
            "http_runs_per_s",
            http,
            hb,
            ">= 500/s and >= 1.0x bare 3-commit loop",
            http >= 500 and http >= hb and not http_bad,
        )
        _emit(
            "command_runs_per_s",
            cmd,
            cb,
            ">= 100/s and >= 1.0x bare 3-commit loop",
            cmd >= 100 and cmd >= cb and not cmd_bad,
        )
        # What a run costs this process in CPU (all its threads; a command's child not
        # counted): steadier than runs/s on a shared machine, so the figure to compare two
        # trees by (issue #12). Baseline: the bare loop's, per run.
        bare_cpu = statistics.fmean(cpu["bare"])
        for kind in ("http", "command"):
            _emit(f"{kind}_cpu_ms_per_run", cpu[kind][0], bare_cpu, "(informational)", True)
        # The dispatch alone, and the most runs/s one interpreter reaches doing it and the
        # commits (their CPU added: the GIL serializes them), against the same commit loop.
        for kind, (rate, dispatch_cpu), commits in (
            ("http", bare_http, hb),
            ("command", bare_cmd, cb),
        ):
            _emit(f"{kind}_bare_dispatch_runs_per_s", rate, commits, "(informational)", True)
            floor = 1000 / (bare_cpu + dispatch_cpu)
            _emit(f"{kind}_cpu_floor_runs_per_s", floor, commits, "(informational)", True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
