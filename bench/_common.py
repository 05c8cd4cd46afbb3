"""Helpers shared by the benches: SPEC §10's JSON line, timing and memory probes, a real
`watcherd run` subprocess (READY=1 on our own NOTIFY_SOCKET, optionally with an event-loop
lag probe inside it), a replay of the web page's polling, and runs written straight into a
state DB (1M runs in a minute instead of hours of real dispatch).

Also a script, for the subprocesses the benches start:
    python bench/_common.py probe LAGFILE ARGS…   `watcherd ARGS…` with the loop-lag probe
    python bench/_common.py page URL SECONDS OFFSET   the page's polling; JSON samples on stdout
`$BENCH_TREE` names the watcherd tree the benches start and import (default: this checkout),
so that today's bench runs against a worktree of an older commit (issue #12's before/after).
One module on purpose (~580 lines): each bench imports one file, and these pieces are the
benches' shared vocabulary (the daemon, its logs, its clients, its data).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

__all__ = [
    "SCHEDULES_PAGE",
    "ROOT",
    "Daemon",
    "FiringSink",
    "MemorySink",
    "NoHealth",
    "api_get",
    "api_probe",
    "best_of",
    "collect",
    "daemon_env",
    "days_ago",
    "emit",
    "fill_runs",
    "loop_lags",
    "page_clients",
    "percentile",
    "py_spy",
    "rss_bytes",
    "slot_lateness",
    "stored_ids",
    "time_schedules",
    "ts",
    "utc",
]

HERE = Path(__file__).resolve()
# The watcherd tree under test: this checkout, or $BENCH_TREE (e.g. a `git worktree` of an
# older commit) to run today's benches against older code, same machine, back to back.
ROOT = Path(os.environ.get("BENCH_TREE") or HERE.parents[1]).resolve()
_COMPILED = False


def daemon_env(**extra: str) -> dict[str, str]:
    """The environment a bench daemon runs in: the tree under test on PYTHONPATH, its
    bytecode compiled once beforehand, and bytecode caching on whatever this shell says.

    An installed watcherd runs from compiled bytecode (pip, a wheel, the image all compile
    at install). With PYTHONDONTWRITEBYTECODE set, as in some sandboxes, each spawn would
    compile every module from source again (~0.2 s of a start-up), a cost no deployment has.
    """
    global _COMPILED
    if not _COMPILED:
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(ROOT / "watcherd")],
            check=True,
            env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
        )
        _COMPILED = True
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(PYTHONPATH=str(ROOT), **extra)
    return env


def emit(
    bench: str,
    figure: str,
    value: float,
    *,
    goal: str,
    met: bool,
    baseline: float | None = None,
    ratio: float | None = None,
) -> dict[str, object]:
    """Print one figure as a JSON line `{"bench", "figure", "value", "baseline", "ratio",
    "goal", "met"}` (ratio defaults to value / baseline) and return it."""
    if ratio is None and baseline:
        ratio = value / baseline
    line: dict[str, object] = {
        "bench": bench,
        "figure": figure,
        "value": _round(value),
        "baseline": None if baseline is None else _round(baseline),
        "ratio": None if ratio is None else round(ratio, 3),
        "goal": goal,
        "met": bool(met),
    }
    print(json.dumps(line), flush=True)
    return line


def _round(x: float) -> float:
    return float(f"{x:.6g}")


def best_of(fns: Sequence[Callable[[], object]], rounds: int) -> list[float]:
    """Run each function once per round, interleaved so drift hits all; the fastest of each."""
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t)
    return best


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100), interpolated."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, int(p) - 1))]


def rss_bytes() -> int:
    """This process's resident set size."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def ts(text: str) -> float:
    """An ISO 8601 instant (a `Z` or an offset) as epoch seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


_EPOCH = datetime(1970, 1, 1)


def utc(t: float) -> str:
    """Epoch seconds as the state store's sortable UTC text (core.timefmt's micro form);
    isoformat, not strftime: fill_runs formats three of these per run."""
    return (_EPOCH + timedelta(seconds=t)).isoformat(timespec="microseconds") + "Z"


# ── a real daemon ────────────────────────────────────────────────────────────


class Daemon:
    """`watcherd run` on a config in its own dir, READY=1 read from our own NOTIFY_SOCKET.

    With `probe=True` the daemon runs under `_common.py probe`: a task in its event loop
    sleeps 5 ms at a time and logs every wake-up later than 2 ms (see `loop_lags`)."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        config: str,
        *,
        probe: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        self.dir = workdir / name
        self.env = env or {}
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "watcherd.toml"
        self.config.write_text(config)
        self.log_path = self.dir / "daemon.log"
        self.lag_path = self.dir / "lag.txt" if probe else None
        self.sock_path = self.dir / "notify.sock"
        self.sock: socket.socket | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.spawned = self.ready_at = 0.0

    def start(self) -> None:
        self.sock_path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.sock_path))
        env = daemon_env(**self.env, NOTIFY_SOCKET=str(self.sock_path))
        argv = [sys.executable, "-m", "watcherd"]
        if self.lag_path is not None:
            argv = [sys.executable, str(HERE), "probe", str(self.lag_path)]
        with self.log_path.open("ab") as log:
            self.spawned = time.time()
            self.proc = subprocess.Popen(
                [*argv, "run", "--config", str(self.config)],
                cwd=self.dir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 600.0) -> float:
        """Seconds from spawn to READY=1."""
        assert self.proc is not None and self.sock is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(0.5)
            try:
                msg = self.sock.recv(4096)
            except TimeoutError:
                if self.proc.poll() is not None:
                    break
                continue
            if b"READY=1" in msg.split(b"\n"):
                self.ready_at = time.time()
                return self.ready_at - self.spawned
        raise SystemExit(f"{self.dir.name}: not ready:\n{self.log_path.read_text()[-3000:]}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def api(self, state_dir: Path) -> str:
        """The API's base URL, from the discovery file the daemon writes."""
        return str(json.loads((state_dir / "config.json").read_text())["url"]).rstrip("/")

    def rss(self) -> int:
        with open(f"/proc/{self.pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def cpu_seconds(self) -> float:
        """CPU time of every thread: schedstat (ns) where present, else utime+stime (ticks)."""
        tasks = Path(f"/proc/{self.pid}/task")
        try:
            return sum(int((t / "schedstat").read_text().split()[0]) for t in tasks.iterdir()) / 1e9
        except (OSError, ValueError, IndexError):
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def events(self, *names: str) -> Iterator[dict[str, object]]:
        """JSON log events with one of these names, in order."""
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{") and any(f'"{n}"' in line for n in names):
                ev = json.loads(line)
                if ev.get("event") in names:
                    yield ev

    def wait_event(self, name: str, timeout: float, after: float = 0.0) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in self.events(name):
                if ts(str(ev["timestamp"])) >= after:
                    return ev
            time.sleep(0.1)
        raise SystemExit(f"{self.dir.name}: no {name} within {timeout}s")


def slot_lateness(d: Daemon) -> list[tuple[float, float]]:
    """(due, lateness s) of every slot batch: the batch's first `slot_fired` log line (written
    right after its COMMIT returns) minus the slot's instant (whole seconds in the log)."""
    first: dict[str, float] = {}
    for ev in d.events("slot_fired"):
        slot, at = str(ev["slot"]), ts(str(ev["timestamp"]))
        first[slot] = min(first.get(slot, at), at)
    return sorted((ts(s), at - ts(s)) for s, at in first.items())


def loop_lags(d: Daemon) -> list[tuple[float, float]]:
    """(wall time of the late wake-up, lag s) of every probe wake-up later than 2 ms."""
    out: list[tuple[float, float]] = []
    if d.lag_path is not None and d.lag_path.exists():
        for line in d.lag_path.read_text().splitlines():
            if line and not line.startswith("#"):
                t, lag = line.split()
                out.append((float(t), float(lag)))
    return out


def py_spy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """`py-spy record` of a process (raw collapsed stacks, per thread) for diagnosis runs
    only: sampling pauses the process, so never in a measured run. None without py-spy."""
    exe = Path(sys.executable).with_name("py-spy")
    if not exe.exists():
        sys.stderr.write("py-spy not installed (pip install py-spy): no profile\n")
        return None
    return subprocess.Popen(
        [str(exe), "record", "-p", str(pid), "-d", str(max(1, round(seconds))), "-r", "200"]
        + ["-f", "raw", "-t", "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


# ── the loop-lag probe (runs inside the daemon process) ──────────────────────

PROBE_PERIOD = 0.005
PROBE_REPORT = 0.002


async def _lag_probe(f: TextIO) -> None:
    loop = asyncio.get_running_loop()
    late: list[str] = []
    n, flushed = 0, loop.time()
    with f:
        try:
            while True:
                target = loop.time() + PROBE_PERIOD
                await asyncio.sleep(PROBE_PERIOD)
                now = loop.time()
                n += 1
                if now - target > PROBE_REPORT:
                    late.append(f"{time.time():.6f} {now - target:.6f}\n")
                if late and now - flushed > 5.0:
                    f.write("".join(late))
                    f.flush()
                    late.clear()
                    flushed = now
        finally:
            f.write("".join(late) + f"# {os.getpid()} wake-ups {n}\n")


def _trace_writes(path: str) -> None:
    """Diagnosis (`$BENCH_TRACE_WRITES`): every call on the state DB's writer thread, as
    `I name enqueued start end` (epoch s) and every group commit as `D start end calls`, by
    wrapping `Database.write` and `Database._drain` from outside (watcherd is not changed).
    A call's answer comes after its group's COMMIT, i.e. at the `D` line's end."""
    from watcherd.state.sqlite import database as dbm

    out = open(path, "a")  # noqa: SIM115 - flushed after every group, closed at exit
    orig_write, orig_drain = dbm.Database.write, dbm.Database._drain

    async def write(self: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        queued, name = time.time(), getattr(fn, "__name__", "?")

        def traced(conn: Any, *a: Any, **k: Any) -> Any:
            t0 = time.time()
            try:
                return fn(conn, *a, **k)
            finally:
                out.write(f"I {name} {queued:.6f} {t0:.6f} {time.time():.6f}\n")

        return await orig_write(self, traced, *args, **kwargs)

    def drain(self: Any) -> None:
        t0, n = time.time(), len(self._pending)
        orig_drain(self)
        out.write(f"D {t0:.6f} {time.time():.6f} {n}\n")
        out.flush()

    dbm.Database.write = write  # type: ignore[method-assign]
    dbm.Database._drain = drain  # type: ignore[method-assign]


def _probe_main(argv: list[str]) -> int:
    path, args = argv[0], argv[1:]
    sys.path.insert(0, str(ROOT))
    if os.environ.get("BENCH_TRACE_WRITES"):
        _trace_writes(os.environ["BENCH_TRACE_WRITES"])

    class Policy(asyncio.DefaultEventLoopPolicy):
        def new_event_loop(self) -> asyncio.AbstractEventLoop:
            loop = super().new_event_loop()
            f = open(path, "a")  # noqa: SIM115 - closed by the probe task
            loop.call_soon(lambda: loop.create_task(_lag_probe(f)))
            return loop

    asyncio.set_event_loop_policy(Policy())
    from watcherd.cli import main

    return int(main(args) or 0)


# ── the web page's polling (watcherd/api/static/app.js `load()`) ─────────────

PAGE_PERIOD = 3.0  # app.js POLL_MS: the next refresh is armed 3 s after the last one ended
SCHEDULES_PAGE = 100  # app.js SCHEDULES_PAGE: the schedules a page asks for until "Show more"


async def _page_client(base: str, seconds: float, offset: float) -> list[list[object]]:
    """Every 3 s after the previous round ended: /pipelines, /schedules?limit=100 (its first
    page, as app.js asks), /runs?limit=50 and
    /replicas at once (Promise.all; a 404 from /replicas is fine, as in app.js), then /readyz;
    each body read to its end. Samples: [path, start, s]."""
    import aiohttp

    headers = {"Accept": "application/json", "X-Watcherd-Client": "web"}
    samples: list[list[object]] = []
    await asyncio.sleep(offset)
    end = time.monotonic() + seconds - offset

    async def get(s: aiohttp.ClientSession, path: str) -> None:
        t0, w0 = time.perf_counter(), time.time()
        async with s.get(base + path) as r:
            await r.read()
            if r.status not in (200, 503) and not (r.status == 404 and "replicas" in path):
                raise SystemExit(f"page client: {path} answered {r.status}")
        samples.append([path.split("?")[0], w0, time.perf_counter() - t0])

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as s:
        while time.monotonic() < end:
            await asyncio.gather(
                get(s, "/api/v1/pipelines"),
                get(s, f"/api/v1/schedules?limit={SCHEDULES_PAGE}"),
                get(s, "/api/v1/runs?limit=50"),
                get(s, "/api/v1/replicas"),
            )
            await get(s, "/readyz")
            await asyncio.sleep(PAGE_PERIOD)
    return samples


def _page_main(argv: list[str]) -> int:
    print(json.dumps(asyncio.run(_page_client(argv[0], float(argv[1]), float(argv[2])))))
    return 0


def page_clients(base: str, seconds: float, n: int) -> list[subprocess.Popen[str]]:
    """Start n page clients (own processes), offset by 3 s / n; `collect` their samples."""
    return [
        subprocess.Popen(
            [sys.executable, str(HERE), "page", base, str(seconds), str(i * PAGE_PERIOD / n)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]


def collect(clients: Sequence[subprocess.Popen[str]]) -> list[tuple[str, float, float]]:
    out: list[tuple[str, float, float]] = []
    for c in clients:
        text, _ = c.communicate(timeout=600)
        out += [(str(p), float(w), float(s)) for p, w, s in json.loads(text or "[]")]
    return out


# ── API requests one at a time ───────────────────────────────────────────────

API_HEADERS = {"Accept": "application/json", "X-Watcherd-Client": "web"}


def api_get(base: str, path: str) -> bytes:
    """One GET (a fresh connection); the body, or SystemExit on a non-200 answer."""
    u = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=300)
    try:
        conn.request("GET", path, headers=API_HEADERS)
        r = conn.getresponse()
        body = r.read()
    finally:
        conn.close()
    if r.status != 200:
        raise SystemExit(f"GET {path}: {r.status} {body[:300]!r}")
    return body


def api_probe(
    base: str,
    paths: dict[str, str],
    rounds: int,
    budget: float = 30.0,
    min_rounds: int = 10,
    token: str | None = None,
) -> dict[str, list[float]]:
    """Seconds of each GET (the body read to its end) over `rounds` rounds of every path in
    turn, one request at a time on one keep-alive connection, nothing else in flight. A path
    stops once its requests took `budget` s in all (after at least `min_rounds`): a 2 s
    endpoint must not make the bench run for minutes. `token`: sent as a bearer token (a
    run's log needs it even on loopback)."""
    u = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=300)
    headers = dict(API_HEADERS)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    out: dict[str, list[float]] = {k: [] for k in paths}
    spent = dict.fromkeys(paths, 0.0)
    try:
        conn.request("GET", "/healthz", headers=API_HEADERS)  # connect: not part of a figure
        conn.getresponse().read()
        for r in range(rounds):
            for k, path in paths.items():
                if r >= min_rounds and spent[k] > budget:
                    continue
                t = time.perf_counter()
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                took = time.perf_counter() - t
                if resp.status != 200:
                    raise SystemExit(f"GET {path}: {resp.status} {body[:300]!r}")
                out[k].append(took)
                spent[k] += took
    finally:
        conn.close()
    return out


# ── runs written straight into a state DB ────────────────────────────────────


def _ts_sql(x: str) -> str:
    """SQL for epoch seconds `x` as the store's UTC text (core.timefmt's micro form)."""
    us = f"CAST(round(({x}) * 1000000) AS INTEGER)"
    day = f"strftime('%Y-%m-%dT%H:%M:%S', {us} / 1000000, 'unixepoch')"
    return f"{day} || printf('.%06dZ', {us} % 1000000)"


# One chunk of generated runs, all in SQLite (a Python loop formatting 3 instants per run
# took ~75 s for 1M runs on a loaded 2-core machine; this takes a fraction of it). Run i:
# h = a fixed hash of i (statuses and durations, the same on every run of a bench); queued
# at :t0 + (i - :first) * :step; schedule i % :nsched of the temp table bench_sched.
_FILL_SQL = f"""
WITH RECURSIVE c(i) AS (SELECT :lo UNION ALL SELECT i + 1 FROM c WHERE i + 1 < :hi),
g AS (
    SELECT i, (i * 2654435761 + :seed) % 4294967291 AS h, :t0 + (i - :first) * :step AS q
    FROM c),
r AS (
    SELECT i, h, {_ts_sql("q")} AS qs, {_ts_sql("q + 0.01")} AS ss,
        {_ts_sql("q + 0.06 + (h / 100 % 59951) / 1000.0")} AS fs,
        CASE WHEN h % 100 < 90 THEN 'Completed' WHEN h % 100 < 95 THEN 'Failed'
             WHEN h % 100 < 98 THEN 'Skipped' ELSE 'Submitted' END AS st
    FROM g)
INSERT INTO runs(id, schedule_id, pipeline_id, experiment, dedup, status, trigger, parameters,
                 path, attempt, attempts, error, exit_code, queued_at, started_at, finished_at,
                 log)
SELECT
    printf('%08x-%04x-4%03x-%x%03x-%012x', i >> 16, i & 65535, h & 4095, 8 + (h >> 12 & 3),
           h >> 14 & 4095, (h * 40503 + i) & 281474976710655),
    s.sid, s.pid, s.exp, 'gen:' || i, st,
    CASE s.kind WHEN 'time' THEN '{{"kind": "time", "slot": "' || substr(qs, 1, 19) || 'Z"}}'
        ELSE '{{"kind": "file", "datastore": "inbox", "path": "in/f' || printf('%07d', i)
             || '.csv", "version": "v' || i || '"}}' END,
    '{{}}',
    CASE s.kind WHEN 'time' THEN NULL ELSE CAST('in/f' || printf('%07d', i) || '.csv' AS BLOB)
        END,
    1,
    CASE st WHEN 'Skipped' THEN '[]'
        ELSE '[{{"attempt": 1, "started_at": "' || ss || '", "exit_code": '
             || (st = 'Failed') || '}}]' END,
    CASE st WHEN 'Failed' THEN 'exit code 1' END,
    CASE WHEN st IN ('Skipped', 'Submitted') THEN NULL ELSE (st = 'Failed') END,
    qs,
    CASE st WHEN 'Skipped' THEN NULL ELSE ss END,
    CASE st WHEN 'Skipped' THEN qs ELSE fs END,
    CASE WHEN st IN ('Completed', 'Failed') THEN :log END
FROM r JOIN temp.bench_sched AS s ON s.k = r.i % :nsched
"""


def fill_runs(
    db: Path,
    n: int,
    schedules: Sequence[tuple[str, str, str, str]],
    timeline: Sequence[tuple[int, float, float]],
    *,
    seed: int = 1,
    chunk: int = 100_000,
) -> float:
    """Insert n finished runs (seq order = time order) into an existing state DB; returns the
    seconds it took. `schedules`: (schedule id, pipeline id, experiment, "time"|"file"), run i
    of schedule i % len; `timeline`: segments (first run index, its epoch second, seconds
    between runs), by first index, the first one at 0. Statuses ~90 % Completed, 5 % Failed,
    3 % Skipped, 2 % Submitted (a fixed hash of i and `seed`); a 99-byte log on Completed
    and Failed runs; ids are UUID-shaped with the run index in their top 48 bits (as a
    UUIDv7's time: the UNIQUE(id) index grows at its end, not at 1M random places). Written
    with synchronous=OFF in transactions of `chunk` rows (a fixture, not a daemon write)."""
    t0 = time.perf_counter()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-262144")  # 256 MiB: the indexes' working set fits
    cols = (
        "id schedule_id pipeline_id experiment dedup status trigger parameters path attempt "
        "attempts error exit_code queued_at started_at finished_at log"
    ).split()
    have = {r[1] for r in conn.execute("PRAGMA table_info(runs)")}
    if not have >= set(cols):
        raise SystemExit(f"fill_runs: the runs table lacks {sorted(set(cols) - have)}")
    conn.execute("CREATE TEMP TABLE bench_sched(k INTEGER PRIMARY KEY, sid, pid, exp, kind)")
    conn.executemany(
        "INSERT INTO temp.bench_sched VALUES (?,?,?,?,?)",
        [(k, *row) for k, row in enumerate(schedules)],
    )
    log = b"bench: generated run output line\n" * 3
    bounds = [*(seg[0] for seg in timeline[1:]), n]
    for (first, start, step), end in zip(timeline, bounds, strict=True):
        for lo in range(first, min(end, n), chunk):
            args: dict[str, object] = {"lo": lo, "hi": min(end, n, lo + chunk), "first": first}
            args |= {"t0": start, "step": step, "seed": seed, "log": log, "nsched": len(schedules)}
            conn.execute("BEGIN")
            conn.execute(_FILL_SQL, args)
            conn.execute("COMMIT")
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name='experiments'").fetchone():
        conn.execute("INSERT OR IGNORE INTO experiments(name) SELECT DISTINCT experiment FROM runs")
    conn.execute("DROP TABLE temp.bench_sched")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    took = time.perf_counter() - t0
    # Written with synchronous=OFF, the fixture sits in the page cache as ~1 GB of dirty
    # pages that the kernel writes back over the next ~30 s: a daemon's commit (one fsync)
    # measured meanwhile would wait behind that writeback, which is the fixture's cost.
    os.sync()
    return took


def stored_ids(db: Path) -> tuple[dict[str, str], dict[str, str]]:
    """({schedule name: id}, {pipeline name: id}) from a state DB."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        s = dict(conn.execute("SELECT name, id FROM schedules"))
        p = dict(conn.execute("SELECT name, id FROM pipelines"))
    finally:
        conn.close()
    return s, p


# ── many time schedules that do not fire during a bench ──────────────────────

ZONES = ("UTC", "Europe/Paris", "America/Los_Angeles", "Asia/Tokyo")


def _quiet_hour(i: int, zone: str) -> int:
    """A local hour of `zone` 3 to 20 hours after now: nothing fires in the next 3 hours."""
    from zoneinfo import ZoneInfo

    local = datetime.now(ZoneInfo(zone))
    return (local.hour + 3 + i % 18) % 24


def time_schedules(
    n: int, pipelines: Sequence[str], *, experiments: int = 50, prefix: str = "s"
) -> tuple[str, list[tuple[str, str, str]]]:
    """TOML of n Active time schedules (Day, Week and Month recurrences, daily and weekly
    crons, in four time zones, start_times in the past) none of which falls due within the
    next 3 hours; and [(name, pipeline, experiment)]."""
    parts: list[str] = []
    out: list[tuple[str, str, str]] = []
    days = '["Monday", "Wednesday", "Friday"]'
    for i in range(n):
        name, pipe, exp = (
            f"{prefix}{i:05d}",
            pipelines[i % len(pipelines)],
            f"exp{i % experiments:02d}",
        )
        zone = ZONES[i % len(ZONES)]
        h, m = _quiet_hour(i, zone), i % 60
        kind = i % 5
        at = f"hours = [{h}], minutes = [{m}]"
        if kind == 0:
            rec = f'frequency = "Day", interval = {1 + i % 3}, {at}'
        elif kind == 1:
            rec = f'frequency = "Week", interval = 1, week_days = {days}, {at}'
        else:
            rec = 'frequency = "Month", interval = 1'
        if kind <= 2:
            day = 1 + i % 28 if kind == 2 else 1
            start = f"2024-01-{day:02d}T{h if kind == 2 else 0:02d}:{m if kind == 2 else 0:02d}:00"
            trig = f'recurrence = {{ {rec}, start_time = "{start}", time_zone = "{zone}" }}'
        else:
            dow = "*" if kind == 3 else "1-5"
            trig = f'cron = "{m} {h} * * {dow}"\ntime_zone = "{zone}"'
        parts.append(
            f'\n[[schedules]]\nname = "{name}"\npipeline = "{pipe}"\n'
            f'experiment_name = "{exp}"\n{trig}\n'
        )
        out.append((name, pipe, exp))
    return "".join(parts), out


def days_ago(d: float) -> float:
    return (datetime.now(UTC) - timedelta(days=d)).timestamp()


if __name__ == "__main__":
    cmd, rest = sys.argv[1], sys.argv[2:]
    sys.exit({"probe": _probe_main, "page": _page_main}[cmd](rest))


class FiringSink:
    """A poller's ChangeSink that notes when each fired file's run would be queued (ns);
    keeps nothing else (big_dir, many_dirs)."""

    def __init__(self) -> None:
        self.fired: dict[str, int] = {}
        self.changed = asyncio.Event()

    async def load_snapshot(self, schedule_id: str, baseline_key: str) -> None:
        return None

    async def load_marker(self, schedule_id: str, baseline_key: str) -> None:
        return None

    async def commit(
        self,
        schedule_id: str,
        baseline_key: str,
        upserts: Sequence[tuple[bytes, str]],
        deletes: Sequence[bytes],
        fire: Sequence[object],
        marker: str | None = None,
    ) -> int:
        now = time.time_ns()
        for change in fire:
            self.fired[os.fsdecode(change.name)] = now  # type: ignore[attr-defined]
        if fire:
            self.changed.set()
        return len(fire)

    def pending(self, schedule_id: str) -> int:
        return 0

    async def wait_below(self, schedule_id: str, limit: int) -> None:
        return None


class MemorySink:
    """A poller's ChangeSink keeping the snapshot in memory and the instant (perf_counter)
    each fired name was first committed (blob_poll, blob_events)."""

    def __init__(self) -> None:
        self.snapshot: dict[bytes, str] | None = None
        self.committed: dict[bytes, float] = {}
        self._changed = asyncio.Event()

    async def until(self, pred: Callable[[], bool]) -> None:
        """Return once `pred()` holds, re-checked after every commit."""
        while not pred():
            self._changed.clear()
            await self._changed.wait()

    async def load_snapshot(self, schedule_id: str, baseline_key: str) -> dict[bytes, str] | None:
        return None if self.snapshot is None else dict(self.snapshot)

    async def load_marker(self, schedule_id: str, baseline_key: str) -> str | None:
        return None

    async def commit(
        self,
        schedule_id: str,
        baseline_key: str,
        upserts: Sequence[tuple[bytes, str]],
        deletes: Sequence[bytes],
        fire: Sequence[Any],
        marker: str | None = None,
    ) -> int:
        now = time.perf_counter()
        snap = self.snapshot if self.snapshot is not None else {}
        snap.update(upserts)
        for name in deletes:
            snap.pop(name, None)
        self.snapshot = snap
        for change in fire:
            self.committed.setdefault(change.name, now)
        self._changed.set()
        return len(fire)

    def pending(self, schedule_id: str) -> int:
        return 0

    async def wait_below(self, schedule_id: str, limit: int) -> None:
        return None


class NoHealth:
    """A poller's PollHealth that keeps nothing."""

    def poll_finished(
        self, schedule_id: str, *, ok: bool, duration: float, files: int, error: str | None
    ) -> None:
        return None
