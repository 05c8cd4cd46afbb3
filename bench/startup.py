"""Start-up time: process spawn -> READY=1 on a NOTIFY_SOCKET we bind (SPEC §9, §10).

Config: 50 recurrence + 30 cron + 20 local datastore schedules (each watching its own
directory of 100 files, `events` on), on a command pipeline that is never due, API on
127.0.0.1:0, JSON logs to a file. READY=1 is sent after the state DB is open, the API bound
and every schedule armed (deadline computed or poller started).

Figures (median of ROUNDS spawns, alternating with the baseline):
- `ready_ms`: a fresh state directory each time (creates the DB, inserts every schedule);
- `ready_restart_ms`: the same config on the state directory of a previous run.
Baseline: the same daemon on an empty config (no schedule, no datastore, same [daemon]
settings, fresh state dir): the cost of Python, imports, the DB and the API, without the
100 schedules. `python -c "import watcherd"` is printed on stderr for reference.

Usage: python bench/startup.py [--rounds N]
       BENCH_TREE=/tmp/wt-before python bench/startup.py   # the same against another tree
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, daemon_env, emit  # noqa: E402  (ROOT: this tree, or $BENCH_TREE)

BENCH = "startup"


def _emit(figure: str, value: float, baseline: float | None, goal: str, met: bool) -> None:
    emit(BENCH, figure, value, baseline=baseline, goal=goal, met=met)


def _config(workdir: Path, state: Path, full: bool) -> str:
    parts = [
        f'[daemon]\nstate_dir = "{state}"\napi = "127.0.0.1:0"\nlog_format = "json"\n\n'
        '[pipelines.job]\nkind = "command"\nsteps = [["true"]]\n'
    ]
    if not full:
        return "".join(parts)
    zones = ["UTC", "Pacific Standard Time", "Europe/Paris", "W. Europe Standard Time"]
    for i in range(50):
        freq = ["Minute", "Hour", "Day", "Week", "Month"][i % 5]
        extra = ""
        if freq in ("Day", "Week"):
            extra = f", hours = [{i % 24}], minutes = [{i % 60}]"
        if freq == "Week":
            extra += ', week_days = ["Monday", "Thursday"]'
        parts.append(
            f'\n[[schedules]]\nname = "rec{i:02d}"\npipeline = "job"\n'
            'experiment_name = "bench"\n'
            f'recurrence = {{ frequency = "{freq}", interval = {1 + i % 3}, '
            f'start_time = "2099-01-01T00:00:00", time_zone = "{zones[i % 4]}"{extra} }}\n'
        )
    for i in range(30):
        parts.append(
            f'\n[[schedules]]\nname = "cron{i:02d}"\npipeline = "job"\n'
            'experiment_name = "bench"\n'
            f'cron = "{i % 60} {i % 24} * * {i % 7}"\ntime_zone = "{zones[i % 4]}"\n'
            'start_time = "2099-01-01T00:00:00"\n'
        )
    for i in range(20):
        root = workdir / f"ds{i:02d}"
        parts.append(
            f'\n[datastores.ds{i:02d}]\nkind = "local"\nroot = "{root}"\n'
            f'\n[[schedules]]\nname = "watch{i:02d}"\npipeline = "job"\n'
            'experiment_name = "bench"\n'
            f'datastore = "ds{i:02d}"\npath_on_datastore = "in"\npolling_interval = 5\n'
        )
    return "".join(parts)


def _make_dirs(workdir: Path) -> None:
    for i in range(20):
        d = workdir / f"ds{i:02d}" / "in"
        d.mkdir(parents=True)
        for j in range(100):
            (d / f"f{j:03d}.csv").write_bytes(b"x" * 64)


def spawn_to_ready(config: Path, workdir: Path, timeout: float = 30.0) -> float:
    """Seconds from Popen to READY=1; the daemon is then stopped (SIGTERM)."""
    sock_path = workdir / "notify.sock"
    sock_path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    env = daemon_env(NOTIFY_SOCKET=str(sock_path))
    log = (workdir / "daemon.log").open("ab")
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "watcherd", "run", "--config", str(config)],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = t0 + timeout
            while True:
                sock.settimeout(max(0.01, deadline - time.perf_counter()))
                try:
                    msg = sock.recv(4096)
                except TimeoutError:
                    raise SystemExit(
                        f"startup: no READY=1 within {timeout}s:\n"
                        f"{(workdir / 'daemon.log').read_text()[-3000:]}"
                    ) from None
                if b"READY=1" in msg.split(b"\n"):
                    return time.perf_counter() - t0
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        sock.close()
        log.close()


def _import_time() -> float:
    env = daemon_env()
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import watcherd"], env=env, check=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    sys.stderr.write(f"startup: watcherd tree {ROOT}\n")
    tmp = Path(tempfile.mkdtemp(prefix="watcherd-bench-startup-"))
    try:
        _make_dirs(tmp)
        full_cfg = tmp / "full.toml"
        empty_cfg = tmp / "empty.toml"
        # warm-up, not measured: page cache, .pyc files
        for cfg, full in ((empty_cfg, False), (full_cfg, True)):
            cfg.write_text(_config(tmp, tmp / f"state-warm-{cfg.stem}", full))
            spawn_to_ready(cfg, tmp)
        fresh, restart, empty, imports = [], [], [], []
        for r in range(args.rounds):
            full_cfg.write_text(_config(tmp, tmp / f"state-full-{r}", True))
            empty_cfg.write_text(_config(tmp, tmp / f"state-empty-{r}", False))
            empty.append(spawn_to_ready(empty_cfg, tmp))
            fresh.append(spawn_to_ready(full_cfg, tmp))
            restart.append(spawn_to_ready(full_cfg, tmp))
            imports.append(_import_time())
        ms = {
            k: statistics.median(v) * 1000
            for k, v in (
                ("fresh", fresh),
                ("restart", restart),
                ("empty", empty),
                ("import", imports),
            )
        }
        sys.stderr.write(
            "startup ms: "
            + ", ".join(
                f"{k} {[round(x * 1000) for x in v]}"
                for k, v in (
                    ("fresh", fresh),
                    ("restart", restart),
                    ("empty", empty),
                    ("import watcherd", imports),
                )
            )
            + "\n"
        )
        _emit("ready_ms", ms["fresh"], ms["empty"], "<= 500", ms["fresh"] <= 500)
        _emit("ready_restart_ms", ms["restart"], ms["empty"], "<= 500", ms["restart"] <= 500)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
