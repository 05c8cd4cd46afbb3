"""bench watch_latency: close() to the command's first action, watcherd watch vs watchmedo.

A writer creates a file, writes 4 KiB and closes it; the clock runs from close() returning to
the first thing the command does, `date +%s%N >> out` (both tools run it through `sh -c`).
`watcherd watch --debounce 0` against `watchmedo shell-command` (watchdog's CLI), whose command
acts only when `${watch_event_type}` is `closed`. One file at a time, each tool on its own
directory, a probe file first so both are warm. Prints one JSON line per figure (p50 is the
SPEC §10 goal: ≤ 20 ms and below watchmedo); removes everything it made.

    python bench/watch_latency.py [--files 60]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import emit, percentile  # noqa: E402

BENCH = "watch_latency"
GOAL_MS = 20.0
TIMEOUT = 10.0


def _lines(path: Path) -> list[int]:
    try:
        return [int(x) for x in path.read_text().split()]
    except (FileNotFoundError, ValueError):
        return []


def _wait_lines(path: Path, n: int, proc: subprocess.Popen[bytes]) -> list[int]:
    deadline = time.monotonic() + TIMEOUT
    while len(got := _lines(path)) < n:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"no output from {proc.args!r} (exit {proc.returncode})")
        time.sleep(0.001)  # the timestamps are taken by the command, not by this loop
    return got


def _write(path: Path) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, b"x" * 4096)
    finally:
        os.close(fd)
    return time.time_ns()


def measure(proc: subprocess.Popen[bytes], watched: Path, out: Path, files: int) -> list[float]:
    """Latencies in ms, one file at a time (after a probe file)."""
    _write(watched / "probe.dat")
    _wait_lines(out, 1, proc)
    lat: list[float] = []
    for i in range(files):
        closed = _write(watched / f"f{i:04d}.dat")
        acted = _wait_lines(out, i + 2, proc)[i + 1]
        lat.append((acted - closed) / 1e6)
        time.sleep(0.03)  # let the previous command and its events drain
    return lat


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_watcherd(tmp: Path, files: int) -> list[float]:
    watched, out = tmp / "w", tmp / "w.out"
    watched.mkdir()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "watcherd",
            "watch",
            str(watched),
            "--debounce",
            "0",
            "--",
            "sh",
            "-c",
            f"date +%s%N >> {out}",
        ],
        stderr=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert proc.stderr is not None
        for raw in proc.stderr:  # ready once the baseline is taken
            if b"baseline_taken" in raw:
                break
        else:
            raise RuntimeError("watcherd watch exited before it was ready")
        return measure(proc, watched, out, files)
    finally:
        _stop(proc)


def run_watchmedo(tmp: Path, files: int) -> list[float]:
    watched, out = tmp / "m", tmp / "m.out"
    watched.mkdir()
    watchmedo = shutil.which("watchmedo") or str(Path(sys.executable).parent / "watchmedo")
    command = f'if [ "${{watch_event_type}}" = "closed" ]; then date +%s%N >> {out}; fi'
    proc = subprocess.Popen(
        [watchmedo, "shell-command", "--command", command, str(watched)],
        stderr=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)  # watchmedo says nothing when it is ready; the probe confirms it
        return measure(proc, watched, out, files)
    finally:
        _stop(proc)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=60)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="watcherd-watch-latency-"))
    try:
        ours = run_watcherd(tmp, args.files)
        theirs = run_watchmedo(tmp, args.files)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    p50, p50_m = statistics.median(ours), statistics.median(theirs)
    emit(
        BENCH,
        "p50_ms_vs_watchmedo",
        p50,
        baseline=p50_m,
        goal=f"<= {GOAL_MS:g} ms and < watchmedo",
        met=p50 <= GOAL_MS and p50 < p50_m,
    )
    p90, p90_m = percentile(ours, 90), percentile(theirs, 90)
    emit(BENCH, "p90_ms_vs_watchmedo", p90, baseline=p90_m, goal="(informational)", met=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
