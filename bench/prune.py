"""Retention prune: removing half of RUNS runs must not stall the daemon (SPEC §10).

One real `watcherd run` (subprocess, JSON logs, API on 127.0.0.1:0, READY=1 on our own
NOTIFY_SOCKET, the `_common` loop-lag probe inside its event loop) on MINUTE `Minute/1`
recurrences whose start_times fall on every whole second (one slot due each second with the
default 60) on a `command` pipeline `true`, plus 40 time schedules not due for hours. The
daemon is started once to create its state and stopped; RUNS finished runs are written
straight into state.db (`_common.fill_runs`), the older half queued 90 to 60 days ago and the
newer half in the last 20 days; retention is the default 30 days. On the next start the
daemon's retention task prunes right after READY=1 (and then hourly), so the prune window is
`daemon_ready` → `runs_pruned` in its log. CLIENTS page clients (`_common.page_clients`: what
the web page fetches every 3 s) poll throughout, as a page left open would.

Figures, each with its baseline measured in the same daemon right after the prune, in a
window as long as the prune (at least 20 s, at most 60 s), with the same clients polling:
- `max_loop_stall_ms`: the longest event-loop stall (a probe task sleeping 5 ms at a time:
  how late its wake-up was) during the prune; goal <= 50 ms;
- `max_slot_delay_ms`: the latest slot due during the prune (its batch's first `slot_fired`
  log line, written right after its COMMIT, minus the slot); goal <= 50 ms;
- `prune_rows_per_s` and `wal_peak_mib` (informational): rows removed per second of the
  prune window, and the largest state.db-wal seen (sampled every 50 ms) during it.

And the start-up cost of a big state (informational, SPEC §10 has no goal for it):
- `quick_check_s`: what opening the state costs at RUNS runs: `state.sqlite.schema.migrate`
  (the daemon's own call at open: PRAGMA quick_check, then no migration to run) on a fresh
  connection, page cache warm, median of 3; baseline: reading state.db end to end (1 MiB
  reads), the floor of any whole-file check.
- `ready_ms`: spawn to READY=1 of the daemon at RUNS runs (the start the prune follows);
  baseline: the same daemon restarted on the same state before the runs were written.

Usage: python bench/prune.py [--runs N] [--minute N] [--clients N] [--keep]
The size also from $BENCH_RUNS. About 4 minutes at 1M runs on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    ROOT,
    Daemon,
    collect,
    days_ago,
    emit,
    fill_runs,
    loop_lags,
    page_clients,
    py_spy,
    slot_lateness,
    stored_ids,
    time_schedules,
    ts,
)

BENCH = "prune"
GOAL_MS = 50.0


def _quick_check(db: Path, rounds: int = 3) -> tuple[float, float]:
    """(median seconds of the daemon's open-time check, median seconds of a bare read)."""
    sys.path.insert(0, str(ROOT))
    from watcherd import logs
    from watcherd.state.sqlite.schema import migrate

    logs.configure("json", stream=sys.stderr)  # stdout carries only the figures

    checks, reads = [], []
    for _ in range(rounds):
        conn = sqlite3.connect(db, isolation_level=None)
        try:
            t = time.perf_counter()
            migrate(conn)
            checks.append(time.perf_counter() - t)
        finally:
            conn.close()
        t = time.perf_counter()
        with db.open("rb", buffering=0) as f:
            while f.read(1 << 20):
                pass
        reads.append(time.perf_counter() - t)
    return statistics.median(checks), statistics.median(reads)


def _config(state: Path, minute: int) -> tuple[str, list[tuple[str, str, str]]]:
    parts = [
        f'[daemon]\nstate_dir = "{state}"\napi = "127.0.0.1:0"\nlog_format = "json"\n\n'
        '[pipelines.noop]\nkind = "command"\nsteps = [["true"]]\n'
    ]
    made = []
    for i in range(minute):
        made.append((f"m{i:03d}", "noop", "minute"))
        parts.append(
            f'\n[[schedules]]\nname = "m{i:03d}"\npipeline = "noop"\nexperiment_name = "minute"\n'
            f'recurrence = {{ frequency = "Minute", interval = 1, '
            f'start_time = "2020-01-01T00:00:{i % 60:02d}" }}\n'
        )
    rest, more = time_schedules(40, ["noop"])
    return "".join(parts) + rest, made + more


class WalWatch:
    """Samples the size of state.db-wal every 50 ms: [(time, bytes)]."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.samples.append((time.time(), self.path.stat().st_size))
            except FileNotFoundError:
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", 1_000_000)))
    p.add_argument("--minute", type=int, default=60, help="Minute/1 schedules")
    p.add_argument("--clients", type=int, default=1, help="page clients polling throughout")
    p.add_argument("--timeout", type=float, default=1800.0, help="longest prune waited for")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (prints its path)")
    p.add_argument(
        "--profile",
        type=Path,
        help="diagnosis: py-spy the daemon for --profile-seconds after READY (skews figures)",
    )
    p.add_argument("--profile-seconds", type=float, default=20.0)
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="watcherd-bench-prune-"))
    d: Daemon | None = None
    wal: WalWatch | None = None
    clients = []
    try:
        state = tmp / "d" / "state"
        text, made = _config(state, args.minute)
        d = Daemon(tmp, "d", text, probe=True)
        d.start()
        d.wait_ready()
        d.stop()
        d.start()  # a restart on the state with no runs: the ready_ms baseline
        ready_empty = d.wait_ready()
        d.stop()
        sids, pids = stored_ids(state / "state.db")
        rows = [(sids[n], pids[pl], e, "time") for n, pl, e in made]
        old, new, half = days_ago(90), days_ago(20), args.runs // 2
        step_old, step_new = (
            (days_ago(60) - old) / max(1, half),
            (days_ago(0.05) - new) / max(1, args.runs - half),
        )
        took = fill_runs(
            state / "state.db",
            args.runs,
            rows,
            [(0, old, step_old), (half, new, step_new)],
        )
        size = sum(f.stat().st_size for f in state.glob("state.db*")) / 2**20
        sys.stderr.write(
            f"prune: {args.runs} runs written in {took:.1f} s, state.db {size:.0f} MiB; "
            f"{half} older than the 30-day retention\n"
        )
        check_s, read_s = _quick_check(state / "state.db")
        sys.stderr.write(
            f"prune: open-time check {check_s:.2f} s, bare read of state.db {read_s:.2f} s\n"
        )
        wal = WalWatch(state / "state.db-wal")
        d.start()
        ready_full = d.wait_ready()
        clients = page_clients(d.api(state), args.timeout, args.clients)
        if args.profile is not None:
            py_spy(d.pid, args.profile_seconds, args.profile)
        ready_ev = d.wait_event("daemon_ready", 30, after=d.spawned)
        pruned = d.wait_event("runs_pruned", args.timeout, after=d.spawned)
        p0, p1 = ts(str(ready_ev["timestamp"])), ts(str(pruned["timestamp"]))
        q0 = p1 + 2.0
        q1 = q0 + min(60.0, max(20.0, p1 - p0))
        time.sleep(max(0.0, q1 + 1.0 - time.time()))
        for c in clients:
            c.terminate()
        collect(clients)
        clients = []
        wal.stop()
        d.stop()
        _report(d, wal, int(str(pruned.get("count", 0))), half, (p0, p1), (q0, q1))
        emit(BENCH, "quick_check_s", check_s, baseline=read_s, goal="(informational)", met=True)
        emit(
            BENCH,
            "ready_ms",
            ready_full * 1000,
            baseline=ready_empty * 1000,
            goal="(informational)",
            met=True,
        )
    finally:
        for c in clients:
            c.kill()
            c.wait()
        if wal is not None:
            wal.stop()
        if d is not None:
            d.stop()
        if args.keep:
            sys.stderr.write(f"prune: kept {tmp}\n")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _report(
    d: Daemon,
    wal: WalWatch,
    count: int,
    expected: int,
    prune: tuple[float, float],
    quiet: tuple[float, float],
) -> None:
    def within(w: tuple[float, float], pairs: list[tuple[float, float]]) -> list[float]:
        return [v * 1000 for t, v in pairs if w[0] <= t < w[1]]

    lags, slots = loop_lags(d), slot_lateness(d)
    stall_p, stall_q = within(prune, lags), within(quiet, lags)
    late_p, late_q = within(prune, slots), within(quiet, slots)
    secs = prune[1] - prune[0]
    wal_peak = max((b for t, b in wal.samples if prune[0] - 1 <= t <= prune[1] + 1), default=0)
    top = sorted(stall_p, reverse=True)[:5]
    worst = sorted(((v, t) for t, v in slots if prune[0] <= t < prune[1]), reverse=True)[:5]
    sys.stderr.write(
        "prune: latest slots during it (ms late @ s after READY, of "
        f"{prune[1] - prune[0]:.1f} s): "
        + ", ".join(f"{v * 1000:.0f} @ {t - prune[0]:.1f}" for v, t in worst)
        + "\n"
    )
    sys.stderr.write(
        f"prune: {count} runs pruned (expected {expected}) in {secs:.2f} s; stalls > 2 ms "
        f"during it {len(stall_p)} (total {sum(stall_p) / 1000:.2f} s, worst "
        f"{', '.join(f'{x:.0f}' for x in top)} ms), after it {len(stall_q)}; slots during it "
        f"{len(late_p)}, max {max(late_p, default=0):.1f} ms; after it {len(late_q)}, max "
        f"{max(late_q, default=0):.1f} ms; WAL peak {wal_peak / 2**20:.1f} MiB\n"
    )
    sp, sq = max(stall_p, default=0.0), max(stall_q, default=0.0)
    lp, lq = max(late_p, default=0.0), max(late_q, default=0.0)
    ok = count == expected
    emit(BENCH, "max_loop_stall_ms", sp, baseline=sq, goal="<= 50", met=sp <= GOAL_MS and ok)
    emit(BENCH, "max_slot_delay_ms", lp, baseline=lq, goal="<= 50", met=lp <= GOAL_MS and ok)
    emit(
        BENCH, "prune_rows_per_s", count / secs if secs > 0 else 0.0, goal="(informational)", met=ok
    )
    emit(BENCH, "wal_peak_mib", wal_peak / 2**20, goal="(informational)", met=True)


if __name__ == "__main__":
    sys.exit(main())
