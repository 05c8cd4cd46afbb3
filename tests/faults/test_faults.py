"""Fault injection against a real `watcherd run` subprocess; each test prints its figures.

- SIGKILL at random moments while 1,000 files arrive and timer slots fall due, 20 times over
  → no run lost, none recorded twice (SPEC §5 identity and delivery).
- The http target down for a while → runs retried, then delivered.
- The state DB unwritable → a clear error, no crash, recovery once it clears.
- SIGTERM during long runs → drain, stop the rest, exit 0; Queued runs resume next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from signal import SIGTERM
from typing import Any

import httpx
import pytest
from aiohttp import web

from tests.harness import DaemonProc, wait_until
from tests.ops.helpers import ScaledTime


def _figures(name: str, **figures: object) -> None:
    print(json.dumps({"fault": name, **figures}, sort_keys=True))


def _trigger(r: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(r["trigger"]))


# ── SIGKILL during file arrivals and timer slots ─────────────────────────────

N_FILES = 1000
N_KILLS = 20
KILL_SPEED = 300.0  # a Minute slot every 0.2 s

KILL_CONFIG = """
[daemon]
api = ""
log_format = "json"
max_concurrent_runs = 8
shutdown_timeout = "5s"

[datastores.inbox]
kind = "local"
root = "inbox"

[pipelines.record]
kind = "command"
steps = [["sh", "-c", "echo \\"$WATCHERD_RUN_ID\\" >> \\"$0\\"", "{deliveries}"]]
parameters = {{ deliveries = "{deliveries}" }}

[[schedules]]
name = "files"
pipeline = "record"
experiment_name = "Faults"
datastore = "inbox"
path_on_datastore = "incoming"
polling_interval = "5m"  # events carry the arrivals; a rescan at each start
settle = "0s"
data_path_parameter_name = "input"

[[schedules]]
name = "tick"
pipeline = "record"
experiment_name = "Faults"
recurrence = {{ frequency = "Minute", interval = 1 }}
catch_up = "all"
max_catch_up = 1000
"""


class _Writer(threading.Thread):
    """Drops N files into the inbox at a steady pace, each written under an ignored *.tmp
    name and renamed into place, so every file has exactly one version."""

    def __init__(self, inbox: Path, n: int, seconds: float) -> None:
        super().__init__(daemon=True)
        self.inbox, self.n, self.pause = inbox, n, seconds / n
        self.written: list[str] = []

    def run(self) -> None:
        for i in range(self.n):
            name = f"f{i:04d}.csv"
            tmp = self.inbox / f".{name}.tmp"
            tmp.write_bytes(f"row,{i}\n".encode())
            os.rename(tmp, self.inbox / name)
            self.written.append(name)
            time.sleep(self.pause)


def _contiguous_minutes(slots: list[datetime]) -> list[tuple[datetime, datetime]]:
    s = sorted(slots)
    return [(a, b) for a, b in zip(s, s[1:], strict=False) if b - a != timedelta(minutes=1)]


def test_sigkill_20_times_during_1000_arrivals_and_slots(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox" / "incoming"
    inbox.mkdir(parents=True)
    deliveries = tmp_path / "deliveries.log"
    t = ScaledTime(KILL_SPEED)
    d = DaemonProc(tmp_path, KILL_CONFIG.format(deliveries=deliveries), t.env)
    rng = random.Random(int(os.environ.get("WATCHERD_FAULT_SEED", "0")) or None)
    writer = _Writer(inbox, N_FILES, seconds=25.0)
    kills: list[float] = []
    started = time.monotonic()
    try:
        d.start()
        wait_until(lambda: d.events("baseline_taken"))  # files before it are the baseline
        writer.start()
        for _ in range(N_KILLS):
            time.sleep(rng.uniform(0.3, 1.2))  # up, at a random moment …
            d.kill()  # … SIGKILL: mid-commit, mid-dispatch, mid-scan, wherever it is
            kills.append(time.monotonic() - started)
            time.sleep(rng.uniform(0.0, 0.3))  # down a little while files keep coming
            d.start()
        writer.join()
        # the last life: everything written gets its run, everything queued gets delivered
        want = set(writer.written)
        at_settle: list[str] = []

        def settled() -> bool:
            runs = d.runs()
            files = {
                _trigger(r)["path"].rsplit("/", 1)[-1]
                for r in runs
                if _trigger(r)["kind"] == "file"
            }
            ok = files >= want and all(r["status"] == "Completed" for r in runs)
            if ok:  # what had fallen due by now is done; a later slot may still be queued
                at_settle.extend(str(_trigger(r).get("slot", "")) for r in runs)
            return ok

        with contextlib.suppress(AssertionError):  # the figures below say what is missing
            wait_until(settled, timeout=30, step=0.2)
        assert d.stop() == 0
        elapsed = time.monotonic() - started

        runs = d.runs()
        file_runs = [r for r in runs if _trigger(r)["kind"] == "file"]
        slot_runs = [r for r in runs if _trigger(r)["kind"] == "time"]
        per_file = Counter(_trigger(r)["path"].rsplit("/", 1)[-1] for r in file_runs)
        per_slot = Counter(_trigger(r)["slot"] for r in slot_runs)
        lost_files = sorted(want - set(per_file))
        dup_files = sorted(n for n, c in per_file.items() if c > 1)
        dup_slots = sorted(s for s, c in per_slot.items() if c > 1)
        slots = [datetime.fromisoformat(s) for s in per_slot]
        gaps = _contiguous_minutes(slots)
        delivered = Counter(deliveries.read_text().split())
        redelivered = sum(c - 1 for c in delivered.values())
        _figures(
            "sigkill",
            kills=len(kills),
            files_written=len(want),
            file_runs=len(file_runs),
            files_lost=len(lost_files),
            file_runs_duplicated=len(dup_files),
            slot_runs=len(slot_runs),
            slots_lost=len(gaps),
            slot_runs_duplicated=len(dup_slots),
            runs_completed=sum(r["status"] == "Completed" for r in runs),
            requeued_after_kill=sum(r["attempt"] > 1 for r in runs),
            executions_repeated=redelivered,
            runs_never_executed=len({r["id"] for r in runs} - set(delivered)),
            seconds=round(elapsed, 1),
        )
        assert len(kills) >= 20
        assert not lost_files, f"{len(lost_files)} files without a run: {lost_files[:5]}"
        assert not dup_files, f"files with two runs: {dup_files[:5]}"
        assert not dup_slots and not gaps, (dup_slots[:3], gaps[:3])
        assert len(slot_runs) >= 30
        # Every Completed run was executed; runs queued by slots that fell due between
        # `settled()` and the stop (the scaled clock keeps firing) stay Queued for next time.
        completed = {r["id"] for r in runs if r["status"] == "Completed"}
        assert completed <= set(delivered), "a run was recorded Completed but never executed"
        late = [r for r in runs if r["status"] != "Completed"]
        assert all(r["status"] == "Queued" and _trigger(r)["kind"] == "time" for r in late), late
        assert at_settle, "the runs never settled"
        assert all(_trigger(r)["slot"] > max(at_settle) for r in late), late  # queued after
    finally:
        d.close()


# ── the http target down for a while ─────────────────────────────────────────

HTTP_CONFIG = """
[daemon]
api = ""
log_format = "json"

[datastores.inbox]
kind = "local"
root = "inbox"

[pipelines.hook]
kind = "http"
url = "http://127.0.0.1:{port}/hooks/run"
request_timeout = "2s"
retry = {{ attempts = 10, max_delay = "1s" }}

[[schedules]]
name = "files"
pipeline = "hook"
experiment_name = "Faults"
datastore = "inbox"
path_on_datastore = "incoming"
polling_interval = "1s"
settle = "0s"
data_path_parameter_name = "input"
"""


class _Sink:
    """An aiohttp server on 127.0.0.1 in its own thread, stopped and restarted on one port;
    records the Idempotency-Key and body of every POST it answers."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.received: list[tuple[str, dict[str, Any]]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.received.append((request.headers.get("Idempotency-Key", ""), body))
        return web.json_response({"ok": True})

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks/run", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start(self) -> None:
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


@pytest.fixture
def sink() -> Iterator[_Sink]:
    s = _Sink()
    s.start()
    try:
        yield s
    finally:
        s.close()


def _drop(inbox: Path, names: list[str]) -> None:
    for name in names:
        tmp = inbox / f".{name}.tmp"
        tmp.write_text(name)
        os.rename(tmp, inbox / name)


def test_http_target_down_then_back_runs_are_retried_then_delivered(
    tmp_path: Path, sink: _Sink
) -> None:
    inbox = tmp_path / "inbox" / "incoming"
    inbox.mkdir(parents=True)
    d = DaemonProc(tmp_path, HTTP_CONFIG.format(port=sink.port))
    try:
        d.start()
        wait_until(lambda: d.events("baseline_taken"))
        _drop(inbox, [f"up{i}.csv" for i in range(3)])
        wait_until(lambda: len(d.runs(status="Submitted")) == 3)

        sink.stop()  # connection refused from now on
        down_at = time.monotonic()
        _drop(inbox, [f"down{i}.csv" for i in range(5)])
        wait_until(lambda: len(d.runs()) == 8)
        # every new run fails its first tries and waits for the next one, still Running
        wait_until(
            lambda: all(r["attempt"] >= 4 for r in d.runs() if "down" in _trigger(r)["path"]),
            timeout=20,
        )
        assert not d.runs(status="Failed")
        running = d.runs(status="Running")
        assert len(running) == 5 and all(r["next_attempt_at"] for r in running)
        sink.start()
        down_for = time.monotonic() - down_at
        wait_until(lambda: len(d.runs(status="Submitted")) == 8, timeout=20)
        assert d.stop() == 0

        runs = d.runs()
        keys = Counter(k for k, _ in sink.received)
        body_ids = {b["RunId"] for _, b in sink.received}
        retried = [r for r in runs if r["attempt"] > 1]
        failed_tries = sum(
            sum(1 for a in json.loads(r["attempts"]) if a.get("error")) for r in runs
        )
        _figures(
            "http_target_down",
            runs=len(runs),
            submitted=sum(r["status"] == "Submitted" for r in runs),
            failed=sum(r["status"] == "Failed" for r in runs),
            runs_retried=len(retried),
            max_attempt=max(r["attempt"] for r in runs),
            failed_tries_recorded=failed_tries,
            target_down_seconds=round(down_for, 1),
            delivered_unique=len(keys),
            delivered_twice=sum(c > 1 for c in keys.values()),
        )
        assert {r["status"] for r in runs} == {"Submitted"}
        assert len(retried) == 5 and all("down" in _trigger(r)["path"] for r in retried)
        assert set(keys) == {r["id"] for r in runs} == body_ids  # Idempotency-Key = run id
        assert all(r["attempt"] <= 10 for r in runs)
    finally:
        d.close()


# ── the state DB unwritable ──────────────────────────────────────────────────

STATE_CONFIG = """
[daemon]
api = "127.0.0.1:0"
log_format = "json"
state_dir = "{state_dir}"
shutdown_timeout = "5s"

[pipelines.p]
kind = "command"
steps = [["true"]]

[[schedules]]
name = "tick"
pipeline = "p"
experiment_name = "Faults"
recurrence = {{ frequency = "Minute", interval = 1 }}
catch_up = "all"
"""


def _start_failing(d: DaemonProc) -> tuple[int, str]:
    d.start(wait_ready=False)
    assert d.proc is not None
    rc = d.proc.wait(30)
    return rc, d.logs(since_start=True)


def test_unusable_state_dir_at_start_is_a_clear_error_then_recovers(tmp_path: Path) -> None:
    """Works as any user (root ignores permission bits): state_dir is a file, then state.db
    is a directory. Each start exits 1 at once with one error naming the path, no
    traceback; once fixed, the daemon starts on the same config."""
    state = tmp_path / "state"
    d = DaemonProc(tmp_path, STATE_CONFIG.format(state_dir=state))
    d.state_dir = state
    try:
        state.write_text("not a directory")
        t0 = time.monotonic()
        rc, out = _start_failing(d)
        quick = time.monotonic() - t0
        assert rc == 1 and "Traceback" not in out, out
        (err,) = [json.loads(ln) for ln in out.splitlines() if '"level": "error"' in ln]
        assert err["event"] == "state_unavailable" and str(state) in err["error"]

        state.unlink()
        (state / "state.db").mkdir(parents=True)
        rc, out = _start_failing(d)
        assert rc == 1 and "Traceback" not in out, out
        (err,) = [json.loads(ln) for ln in out.splitlines() if '"level": "error"' in ln]
        assert err["event"] == "state_unavailable"
        assert f"cannot open state database {state / 'state.db'}" in err["error"]

        (state / "state.db").rmdir()
        d.start()
        wait_until(lambda: d.runs(status="Completed"))  # the creation fire
        assert d.stop() == 0
        _figures("state_dir_unusable_at_start", exit_code=1, seconds_to_exit=round(quick, 2))
    finally:
        d.close()


def _chattr(flag: str, *paths: Path) -> None:
    subprocess.run(["chattr", flag, *map(str, paths)], check=True, capture_output=True)


@pytest.fixture
def immutable_ok(tmp_path: Path) -> None:
    """chattr +i stops even root from writing, open descriptors included (ext4, xfs, tmpfs
    ≥ 6.0); permission bits do not stop root, so this is how the test makes the state DB
    unwritable under a running daemon."""
    probe = tmp_path / "probe"
    probe.write_text("x")
    if shutil.which("chattr") is None or os.geteuid() != 0:
        pytest.skip("needs root and chattr to make files immutable")
    try:
        _chattr("+i", probe)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"chattr +i unsupported here: {exc.stderr.decode().strip()}")
    _chattr("-i", probe)


def test_state_db_unwritable_while_running_then_writable_again(
    tmp_path: Path, immutable_ok: None
) -> None:
    """state.db and its WAL made immutable under a running daemon (the -shm file is left
    alone: it is mmap'ed, and an immutable mapped file means SIGBUS, not an I/O error).
    Expected: the daemon stays up, says so clearly and /readyz is 503; once writable, slots
    are recorded again, none lost, and /readyz is 200."""
    state = tmp_path / "state"
    t = ScaledTime(300.0)
    d = DaemonProc(tmp_path, STATE_CONFIG.format(state_dir=state), t.env)
    d.state_dir = state
    files = [state / "state.db", state / "state.db-wal", state]
    locked = False
    try:
        d.start()
        wait_until(lambda: len(d.runs()) >= 5)
        _chattr("+i", *files)
        locked = True
        time.sleep(2.0)  # ten slots fall due
        assert d.proc is not None
        alive = d.proc.poll() is None
        errors = [e for e in d.events() if e.get("level") == "error"]
        with httpx.Client(base_url=d.url, timeout=5) as c:
            ready_down = c.get("/readyz").status_code if alive else None
        _chattr("-i", *files)
        locked = False
        assert alive, f"daemon exited {d.proc.returncode} while the DB was unwritable"
        assert errors and any("state" in json.dumps(e) for e in errors)
        assert ready_down == 503
        n = len(d.runs())
        wait_until(lambda: len(d.runs()) >= n + 5, timeout=20)
        with httpx.Client(base_url=d.url, timeout=5) as c:
            assert c.get("/readyz").status_code == 200
        assert d.stop() == 0
        slots = [datetime.fromisoformat(_trigger(r)["slot"]) for r in d.runs()]
        assert len(set(slots)) == len(slots) and not _contiguous_minutes(slots)
        _figures("state_db_unwritable", errors_logged=len(errors), runs=len(slots))
    finally:
        if locked:
            _chattr("-i", *files)
        d.close()


# ── SIGTERM during long runs ─────────────────────────────────────────────────

DRAIN_CONFIG = """
[daemon]
api = "127.0.0.1:0"
log_format = "json"
max_concurrent_runs = 2
shutdown_timeout = "2s"

[pipelines.short]
kind = "command"
steps = [["{python}", "-c", "import time; time.sleep(1.0)"]]

[pipelines.long]
kind = "command"
steps = [["{python}", "{script}"]]

[[schedules]]
name = "short"
pipeline = "short"
experiment_name = "Faults"
recurrence = {{ frequency = "Hour", interval = 1 }}

[[schedules]]
name = "long"
pipeline = "long"
experiment_name = "Faults"
recurrence = {{ frequency = "Hour", interval = 1 }}
"""

# First attempt: record the pid, then sleep long (stopped at shutdown); later attempts: done.
LONG_SCRIPT = """
import os, sys, time
with open(os.path.join(os.path.dirname(sys.argv[0]), "long.pids"), "a") as f:
    f.write(f"{os.getpid()} {os.environ['WATCHERD_ATTEMPT']}\\n")
if os.environ["WATCHERD_ATTEMPT"] == "1":
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):  # a zombie is dead for our purpose
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
    return True


def test_sigterm_drains_then_stops_long_runs_and_resumes_queued(tmp_path: Path) -> None:
    script = tmp_path / "long.py"
    script.write_text(LONG_SCRIPT)
    cfg = DRAIN_CONFIG.format(python=sys.executable, script=script)
    d = DaemonProc(tmp_path, cfg)
    try:
        d.start()
        # both creation fires run (max_concurrent_runs = 2) …
        wait_until(lambda: len(d.runs(status="Running")) == 2)
        wait_until(lambda: (tmp_path / "long.pids").exists())
        long_pid = int((tmp_path / "long.pids").read_text().split()[0])
        # … and a manual run of "short" has to wait
        with d.client() as c:
            sid = next(
                s["id"] for s in c.get("/api/v1/schedules").json()["items"] if s["name"] == "short"
            )
            manual = c.post(f"/api/v1/schedules/{sid}/trigger", json={}).json()
        assert d.runs(id=manual["id"])[0]["status"] == "Queued"

        t0 = time.monotonic()
        d.signal(SIGTERM)
        assert d.proc is not None
        rc = d.proc.wait(30)
        took = time.monotonic() - t0
        runs = d.runs()
        short_slot = [r for r in runs if r["id"] != manual["id"] and "short" in _name(d, r)]
        long_run = [r for r in runs if "long" in _name(d, r)]
        _figures(
            "sigterm_drain",
            exit_code=rc,
            seconds_to_exit=round(took, 2),
            short_run=short_slot[0]["status"],
            long_run=long_run[0]["status"],
            long_run_error=long_run[0]["error"],
            manual_run=d.runs(id=manual["id"])[0]["status"],
            long_process_left=_alive(long_pid),
        )
        assert rc == 0
        assert 0.9 <= took <= 2 + 10 + 3, "drain is shutdown_timeout, then the stop steps"
        assert short_slot[0]["status"] == "Completed"  # finished within the drain
        assert long_run[0]["status"] == "Queued"  # stopped, back to Queued, saying why
        assert "shutdown" in (long_run[0]["error"] or "")
        assert d.runs(id=manual["id"])[0]["status"] == "Queued"  # never started
        assert not _alive(long_pid), "the stopped run's process survived"

        d.start()  # the next start picks up both Queued runs
        wait_until(lambda: {r["status"] for r in d.runs()} == {"Completed"}, timeout=30)
        assert d.stop() == 0
        long_run = [r for r in d.runs() if "long" in _name(d, r)]
        assert long_run[0]["attempt"] == 2
        assert len(d.runs()) == 3  # a restart never re-fires a creation fire
    finally:
        d.close()


def _name(d: DaemonProc, run: dict[str, Any]) -> str:
    with d.db() as db:
        row = db.execute("SELECT name FROM schedules WHERE id=?", (run["schedule_id"],)).fetchone()
    return str(row[0])
