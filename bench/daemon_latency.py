"""File arrival -> command exec'd, through a real `watcherd run` on a busy directory.

A local datastore schedule watches `inbox/in`, which holds 10,000 files before the daemon
starts (default `polling_interval` of 5 min, events on, `initial = "skip"`). After READY=1
(our own NOTIFY_SOCKET) and the first poll, a writer creates ARRIVALS new files at RATE/s
(open, write 4 KiB, close; a fixed timetable, not sleep-after-work) and notes time.time_ns()
right after each close(). The pipeline is
    ["sh", "-c", 'echo "$(date +%s%N) $WATCHERD_RELATIVE_PATH" >> out']
so the first thing the exec'd child does is read the clock. Latency = that - close().
Every run is committed (Queued, then Running: two synchronous=FULL commits) before the exec.

Baseline, measured in the same run on the same directory: the bare mechanism without the
durable outbox, one process: a watchdog Observer on the directory (non-recursive) whose
FileClosedEvent is handed to asyncio (call_soon_threadsafe), which starts the same `sh -c`
command with asyncio.create_subprocess_exec. Same writer, same rate, its own file names.

Usage: python bench/daemon_latency.py [--files N] [--arrivals N] [--rate PER_S]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import daemon_env, emit, percentile  # noqa: E402

BENCH = "daemon_latency"
SCRIPT = 'echo "$(date +%s%N) $WATCHERD_RELATIVE_PATH" >> "$OUT"'


def _emit(figure: str, value: float, baseline: float | None, goal: str, met: bool) -> None:
    emit(BENCH, figure, value, baseline=baseline, goal=goal, met=met)


def _pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1), interpolated (bench/_common.percentile)."""
    return percentile(values, q * 100)


# ── the baseline watcher (a subprocess of this script) ───────────────────────


def _baseline_main(directory: str, out: str) -> None:
    from watchdog.events import FileClosedEvent, FileSystemEventHandler
    from watchdog.observers import Observer

    async def main() -> None:
        loop = asyncio.get_running_loop()
        names: asyncio.Queue[str] = asyncio.Queue()
        env = {**os.environ, "OUT": out}

        class Handler(FileSystemEventHandler):
            def on_closed(self, event: FileClosedEvent) -> None:
                loop.call_soon_threadsafe(names.put_nowait, os.path.basename(event.src_path))

        obs = Observer()
        obs.schedule(Handler(), directory, recursive=False)
        obs.start()
        procs: set[asyncio.Task[None]] = set()

        async def run(name: str) -> None:
            p = await asyncio.create_subprocess_exec(
                "sh",
                "-c",
                SCRIPT,
                env={**env, "WATCHERD_RELATIVE_PATH": name},
                start_new_session=True,
            )
            await p.wait()

        print("ready", flush=True)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        getter = asyncio.ensure_future(names.get())
        stopper = asyncio.ensure_future(stop.wait())
        while True:
            done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if stopper in done:
                break
            t = asyncio.ensure_future(run(getter.result()))
            procs.add(t)
            t.add_done_callback(procs.discard)
            getter = asyncio.ensure_future(names.get())
        getter.cancel()
        obs.stop()
        obs.join()
        if procs:
            await asyncio.wait(procs)

    asyncio.run(main())


# ── the writer ───────────────────────────────────────────────────────────────


def write_arrivals(directory: Path, prefix: str, n: int, rate: float) -> dict[str, int]:
    """Create n files at `rate`/s on a fixed timetable; {name: close() time in ns}."""
    closed: dict[str, int] = {}
    data = os.urandom(4096)
    t0 = time.monotonic() + 0.05
    for i in range(n):
        time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
        name = f"{prefix}-{i:04d}.csv"
        with open(directory / name, "wb") as f:
            f.write(data)
        closed[name] = time.time_ns()
    return closed


def _read_out(out: Path, prefix: str) -> dict[str, int]:
    seen: dict[str, int] = {}
    if out.exists():
        for line in out.read_text().splitlines():
            ns, _, rel = line.partition(" ")
            name = os.path.basename(rel)
            if name.startswith(prefix) and ns.isdigit():
                seen.setdefault(name, int(ns))
    return seen


def _wait_all(out: Path, prefix: str, n: int, timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        seen = _read_out(out, prefix)
        if len(seen) >= n or time.monotonic() > deadline:
            return seen
        time.sleep(0.1)


def _latencies(closed: dict[str, int], seen: dict[str, int]) -> list[float]:
    return [(seen[k] - closed[k]) / 1e6 for k in closed if k in seen]


# ── the daemon ───────────────────────────────────────────────────────────────


def _config(tmp: Path, out: Path) -> str:
    return f"""\
[daemon]
state_dir = "{tmp / "state"}"
api = "127.0.0.1:0"
log_format = "json"

[datastores.inbox]
kind = "local"
root = "{tmp / "inbox"}"

[pipelines.stamp]
kind = "command"
steps = [["sh", "-c", {json.dumps(SCRIPT)}]]
env = {{ OUT = "{out}" }}

[[schedules]]
name = "arrivals"
pipeline = "stamp"
experiment_name = "bench"
datastore = "inbox"
path_on_datastore = "in"
"""


def run_daemon(tmp: Path, watched: Path, out: Path, n: int, rate: float) -> list[float]:
    cfg = tmp / "watcherd.toml"
    cfg.write_text(_config(tmp, out))
    sock_path = tmp / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    env = daemon_env(NOTIFY_SOCKET=str(sock_path))
    log_path = tmp / "daemon.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "watcherd", "run", "--config", str(cfg)],
            cwd=tmp,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        sock.settimeout(60)
        while b"READY=1" not in sock.recv(4096).split(b"\n"):
            pass
        _wait_first_poll(log_path, 60)
        closed = write_arrivals(watched, "d", n, rate)
        seen = _wait_all(out, "d-", n, 30)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        sock.close()
    if len(seen) < n:
        sys.stderr.write(f"daemon_latency: daemon ran {len(seen)} of {n}\n")
    return _latencies(closed, seen)


def _wait_first_poll(log_path: Path, timeout: float) -> None:
    """The first poll records the baseline (10,000 files); arrivals start after it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                ev = json.loads(line)
                if ev.get("event") in ("baseline_taken", "poll_done", "poll_finished"):
                    return
        time.sleep(0.05)
    # no such log line: give the first scan of the directory a generous moment instead
    time.sleep(2.0)


def run_baseline(watched: Path, out: Path, n: int, rate: float) -> list[float]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--baseline", str(watched), str(out)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # "ready"
        closed = write_arrivals(watched, "b", n, rate)
        seen = _wait_all(out, "b-", n, 30)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return _latencies(closed, seen)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--baseline", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--files", type=int, default=10_000)
    p.add_argument("--arrivals", type=int, default=200)
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--keep", action="store_true", help="keep the temp dir (prints its path)")
    args = p.parse_args(argv)
    if args.baseline:
        _baseline_main(*args.baseline)
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="watcherd-bench-daemon-latency-"))
    try:
        watched = tmp / "inbox" / "in"
        watched.mkdir(parents=True)
        blob = b"x" * 1024
        for i in range(args.files):
            (watched / f"present-{i:05d}.dat").write_bytes(blob)
        out = tmp / "out.txt"
        daemon = run_daemon(tmp, watched, out, args.arrivals, args.rate)
        base = run_baseline(watched, out, args.arrivals, args.rate)
        if not daemon or not base:
            raise SystemExit("daemon_latency: no measurement")
        p50, p99 = _pct(daemon, 0.5), _pct(daemon, 0.99)
        b50, b99 = _pct(base, 0.5), _pct(base, 0.99)
        sys.stderr.write(
            f"daemon_latency ms: daemon n={len(daemon)} p50 {p50:.2f} p90 "
            f"{_pct(daemon, 0.9):.2f} p99 {p99:.2f} max {max(daemon):.2f}; baseline "
            f"n={len(base)} p50 {b50:.2f} p90 {_pct(base, 0.9):.2f} p99 {b99:.2f} "
            f"max {max(base):.2f}\n"
        )
        full = len(daemon) == args.arrivals
        _emit("p50_ms", p50, b50, "<= 50", p50 <= 50 and full)
        _emit("p99_ms", p99, b99, "<= 200", p99 <= 200 and full)
    finally:
        if args.keep:
            sys.stderr.write(f"daemon_latency: kept {tmp}\n")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
