"""bench many_dirs: 2,000 local schedules on 2,000 directories, arrivals while they rescan.

A child process (a fresh interpreter) runs DIRS `LocalPoller`s in one event loop, as the
daemon does: events on, `polling_interval` INTERVAL (60 s: a third of the directories are
rescanned during the arrivals, ~33 rescans a second; each schedule has its own phase in the
interval; `--interval 5` is a stress run, 400 rescans a second), one
in-memory sink shared by all that notes when each run would be queued. Each directory holds
FILES files. Once every baseline is taken, this script writes ARRIVALS new files at RATE/s
(open, write 4 KiB, close), each into the next directory round-robin, and notes
time.time_ns() after each close(); latency = the sink's commit of that file's run - close().
Meanwhile it samples the child's thread count (/proc/<pid>/status) every 20 ms.

Baseline, in the same run: the same with one directory and one schedule.

Figures (SPEC §10 `many_dirs`):
- `arrival_p99_ms`: vs one directory's p99; goal <= 2x. (p50 too.)
- `threads_max`: the most threads the child had at once, vs one directory's; goal: at most
  the main thread, watchdog's inotify reader and the file system pool (`fspool.SIZE`).
Progress and details go to stderr.

    python bench/many_dirs.py [--dirs 2000] [--files 100] [--arrivals 400] [--rate 20]
    MANY_DIRS=200 python bench/many_dirs.py   # a quick run (BENCH_QUICK=1: 500 dirs)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import FiringSink, emit, percentile  # noqa: E402
from watcherd.pollers.fspool import SIZE  # noqa: E402

BENCH = "many_dirs"
THREADS_GOAL = SIZE + 2  # + the main thread and watchdog's inotify reader


def _say(*parts: object) -> None:
    print(f"[{BENCH}]", *parts, file=sys.stderr, flush=True)


# ── the child: DIRS pollers, one sink ─────────────────────────────────────────


class _Health:
    def __init__(self) -> None:
        self.polls = 0
        self.changed = asyncio.Event()

    def poll_finished(
        self, schedule_id: str, *, ok: bool, duration: float, files: int, error: str | None
    ) -> None:
        assert ok, error
        self.polls += 1
        self.changed.set()


def child(root: str, dirs: int, interval: float, arrivals: int, timeout: float) -> None:
    import structlog

    from watcherd.core.models import DatastoreTrigger, LocalDatastore, Schedule
    from watcherd.engine.clock import SystemClock
    from watcherd.pollers.local import LocalPoller

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))

    async def run() -> dict[str, object]:
        sink, health = FiringSink(), _Health()
        ds = LocalDatastore(name="d", root=Path(root))
        pollers = []
        for i in range(dirs):
            trig = DatastoreTrigger(
                datastore="d",
                path_on_datastore=f"d{i:04d}",
                polling_interval=timedelta(seconds=interval),
                events=True,
            )
            sched = Schedule(
                id=f"dir-{i}", name=f"dir-{i}", pipeline="p", experiment_name="e", trigger=trig
            )
            pollers.append(
                LocalPoller(
                    schedule=sched,
                    datastore=ds,
                    sink=sink,  # type: ignore[arg-type]
                    health=health,
                    clock=SystemClock(),
                )
            )
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(p.run()) for p in pollers]
            t = time.perf_counter()
            while health.polls < dirs:
                health.changed.clear()
                await health.changed.wait()
            print(json.dumps({"event": "ready", "s": time.perf_counter() - t}), flush=True)
            before = health.polls
            deadline = time.monotonic() + timeout
            while len(sink.fired) < arrivals and time.monotonic() < deadline:
                sink.changed.clear()
                try:
                    await asyncio.wait_for(sink.changed.wait(), 1.0)
                except TimeoutError:
                    pass
            rescans = health.polls - before
            for task in tasks:
                task.cancel()
        return {"event": "done", "rescans": rescans, "fired": sink.fired}

    print(json.dumps(asyncio.run(run())), flush=True)


# ── the parent ────────────────────────────────────────────────────────────────


def _threads(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_child(root: Path, dirs: int, args: argparse.Namespace) -> dict:
    timeout = args.arrivals / args.rate + 60
    cmd = [sys.executable, __file__, "--child", str(root), "--dirs", str(dirs)]
    cmd += ["--interval", str(args.interval), "--arrivals", str(args.arrivals)]
    cmd += ["--timeout", str(timeout)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    most = [0]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            most[0] = max(most[0], _threads(proc.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    assert proc.stdout is not None
    ready = json.loads(proc.stdout.readline())
    _say(f"{dirs} dirs: every baseline in {ready['s']:.2f}s; writing arrivals")
    closed: dict[str, int] = {}
    start = time.monotonic()
    for i in range(args.arrivals):
        delay = start + i / args.rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        name = f"d{i % dirs:04d}/arrival_{dirs}_{i:05d}.csv"
        with open(root / name, "wb") as f:
            f.write(b"x" * 4096)
        closed[name] = time.time_ns()
    done = json.loads(proc.stdout.readline())
    proc.wait(timeout=60)
    sampling.set()
    sampler.join()
    fired = done["fired"]
    lat = sorted((fired[n] - t) / 1e6 for n, t in closed.items() if n in fired)
    missing = len(closed) - len(lat)
    _say(
        f"{dirs} dirs: {len(lat)} arrivals ({missing} missing), {done['rescans']} rescans "
        f"meanwhile, p50 {percentile(lat, 50):.1f} ms p99 {percentile(lat, 99):.1f} "
        f"max {max(lat):.1f}; threads at most {most[0]}"
    )
    assert not missing, f"{missing} arrivals never fired"
    return {"latencies_ms": lat, "threads": most[0]}


def make_dirs(root: Path, dirs: int, files: int) -> None:
    for i in range(dirs):
        d = os.fsencode(root / f"d{i:04d}")
        os.mkdir(d)
        for j in range(files):
            os.close(os.open(d + b"/file_%05d.csv" % j, os.O_CREAT | os.O_WRONLY, 0o644))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    quick = 500 if os.environ.get("BENCH_QUICK") else 2000  # bench/run's quick run
    ap.add_argument("--dirs", type=int, default=int(os.environ.get("MANY_DIRS", quick)))
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--arrivals", type=int, default=400)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--interval", type=float, default=60.0)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=float, default=60.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.dirs, args.interval, args.arrivals, args.timeout)
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="watcherd-many-dirs-"))
    try:
        t = time.perf_counter()
        make_dirs(tmp, args.dirs, args.files)
        _say(f"{args.dirs} dirs of {args.files} files made in {time.perf_counter() - t:.1f}s")
        one = run_child(tmp, 1, args)
        many = run_child(tmp, args.dirs, args)
        for q in (99, 50):
            v, b = percentile(many["latencies_ms"], q), percentile(one["latencies_ms"], q)
            goal = "<= 2x one directory's" if q == 99 else "-"
            emit(BENCH, f"arrival_p{q}_ms", v, baseline=b, goal=goal, met=q != 99 or v <= 2 * b)
        emit(BENCH, "threads_max", many["threads"], baseline=one["threads"],
             goal=f"<= {THREADS_GOAL} (main, inotify reader, pool)",
             met=many["threads"] <= THREADS_GOAL)  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
