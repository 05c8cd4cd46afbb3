"""sd_notify from a real daemon subprocess to a real unix datagram socket (SPEC §9).

READY=1 once the state DB is open, the API bound and every schedule armed; WATCHDOG=1 every
WATCHDOG_USEC/2; STATUS= lines; RELOADING=1 + MONOTONIC_USEC then READY=1 on SIGHUP;
STOPPING=1 on SIGTERM. And a poller stuck in the kernel (a FUSE mount that never answers,
as an unreachable NFS server does) withholds WATCHDOG=1 until it comes back.
"""

from __future__ import annotations

import ctypes
import os
import sqlite3
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from signal import SIGHUP, SIGTERM

import httpx
import pytest

from tests.ops.helpers import NotifyListener, ScaledTime, notifying_daemon
from watcherd.engine.clock import ScaledClock

WATCHDOG_USEC = 400_000  # pings expected every 0.2 s

CONFIG = """
[daemon]
api = "127.0.0.1:0"
log_format = "json"
shutdown_timeout = "5s"

[datastores.inbox]
kind = "local"
root = "inbox"

[pipelines.p]
kind = "command"
steps = [["true"]]

[[schedules]]
name = "minutely"
pipeline = "p"
experiment_name = "E"
recurrence = { frequency = "Minute", interval = 1 }

[[schedules]]
name = "nightly"
pipeline = "p"
experiment_name = "E"
cron = "0 3 * * *"

[[schedules]]
name = "files"
pipeline = "p"
experiment_name = "E"
datastore = "inbox"
path_on_datastore = "incoming"
polling_interval = "1s"
"""


def _mono_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "inbox" / "incoming").mkdir(parents=True)
    return tmp_path


def test_ready_only_once_state_api_and_schedules_are_up(workdir: Path) -> None:
    with notifying_daemon(workdir, CONFIG, {"WATCHDOG_USEC": str(WATCHDOG_USEC)}) as (d, n):
        d.start(wait_ready=False)
        ready = n.wait_for("READY", "1")
        # Checked the moment READY=1 arrives, each on the first try, no waiting:
        # the API is bound and answers,
        url = d.url
        with httpx.Client(base_url=url, timeout=5) as c:
            assert c.get("/healthz").status_code == 200
            body = c.get("/readyz").json()
        # every time schedule has its deadline (a datastore one may still be on its first poll),
        assert not set(body["waiting"]) & {"minutely", "nightly"}, body
        # and the state DB is open, migrated and holds every declared schedule.
        with sqlite3.connect(f"file:{d.state_dir / 'state.db'}?mode=ro", uri=True) as db:
            names = {r[0] for r in db.execute("SELECT name FROM schedules")}
        assert names == {"minutely", "nightly", "files"}
        status = n.messages[ready].fields.get("STATUS", "")
        assert status.startswith("3 active schedules"), status
        assert n.with_field("READY", "1") == [ready]  # once
        d.signal(SIGTERM)
        assert d.proc is not None and d.proc.wait(30) == 0


def _intervals(n: NotifyListener, key: str, after: int) -> list[float]:
    times = [n.messages[i].at for i in n.with_field(key, after=after)]
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def test_watchdog_status_reload_and_stop(workdir: Path) -> None:
    with notifying_daemon(workdir, CONFIG, {"WATCHDOG_USEC": str(WATCHDOG_USEC)}) as (d, n):
        d.start(wait_ready=False)
        ready = n.wait_for("READY", "1")
        time.sleep(2.0)
        gaps = _intervals(n, "WATCHDOG", ready)
        assert len(gaps) >= 6, f"{len(gaps) + 1} pings in 2 s"
        assert 0.15 <= statistics.median(gaps) <= 0.3, gaps
        assert max(gaps) < WATCHDOG_USEC / 1e6, gaps  # never late for systemd
        statuses = [n.messages[i].fields["STATUS"] for i in n.with_field("STATUS", after=ready)]
        assert len(statuses) >= 6 and all("active schedules" in s for s in statuses)
        assert all("\n" not in s for s in statuses)

        # SIGHUP: RELOADING=1 with the monotonic time it began, then READY=1
        before = _mono_usec()
        mark = len(n)
        d.signal(SIGHUP)
        reloading = n.wait_for("RELOADING", "1", after=mark)
        after = _mono_usec()
        usec = int(n.messages[reloading].fields["MONOTONIC_USEC"])
        assert before <= usec <= after
        again = n.wait_for("READY", "1", after=reloading)
        assert "reload rejected" not in n.messages[again].fields.get("STATUS", "")

        # a broken config: still RELOADING=1 then READY=1 (the old config runs on), and the
        # status line says the reload was rejected
        d.config.write_text(CONFIG.replace('frequency = "Minute"', 'frequency = "Fortnight"'))
        mark = len(n)
        d.signal(SIGHUP)
        reloading = n.wait_for("RELOADING", "1", after=mark)
        again = n.wait_for("READY", "1", after=reloading)
        status = n.messages[again].fields.get("STATUS", "")
        assert "reload rejected" in status
        (event,) = d.events("reload_rejected")
        assert any(e.startswith("schedules[0].recurrence.frequency: ") for e in event["errors"])
        assert n.wait_for("WATCHDOG", "1", after=again, timeout=2)

        # SIGTERM: STOPPING=1, then a clean exit
        mark = len(n)
        d.signal(SIGTERM)
        n.wait_for("STOPPING", "1", after=mark)
        assert d.proc is not None and d.proc.wait(30) == 0


def test_no_watchdog_pings_for_another_pid(workdir: Path) -> None:
    """WATCHDOG_PID names the process systemd watches; pings are for that process only."""
    env = {"WATCHDOG_USEC": str(WATCHDOG_USEC), "WATCHDOG_PID": "1"}
    with notifying_daemon(workdir, CONFIG, env) as (d, n):
        d.start(wait_ready=False)
        ready = n.wait_for("READY", "1")
        time.sleep(1.0)
        assert n.with_field("WATCHDOG", after=ready) == []
        d.signal(SIGTERM)
        assert d.proc is not None and d.proc.wait(30) == 0


# ── a hung poller ────────────────────────────────────────────────────────────


class _HungMount:
    """A FUSE mount whose server never answers: any stat() inside blocks in the kernel, as on
    an NFS mount whose server is gone. Closing /dev/fuse aborts it (ENOTCONN from then on)."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.fd: int | None = None

    def mount(self) -> None:
        if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
            pytest.skip("needs root and /dev/fuse to mount a FUSE file system that hangs")
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = os.open("/dev/fuse", os.O_RDWR)
        opts = f"fd={self.fd},rootmode=40000,user_id=0,group_id=0".encode()
        if libc.mount(b"watcherd-test-hang", os.fsencode(self.target), b"fuse", 0, opts) != 0:
            err = ctypes.get_errno()
            os.close(self.fd)
            self.fd = None
            pytest.skip(f"cannot mount FUSE here: {os.strerror(err)}")

    def abort(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def unmount(self) -> None:
        self.abort()
        subprocess.run(["umount", "-l", os.fsdecode(self.target)], capture_output=True, check=False)


@pytest.fixture
def hung_dir(workdir: Path) -> Iterator[_HungMount]:
    target = workdir / "inbox" / "nfs"
    target.mkdir()
    m = _HungMount(target)
    m.mount()
    try:
        yield m
    finally:
        m.unmount()


def _scaled_monotonic() -> bool:
    clock = ScaledClock(time.time(), ScaledTime(1.0).origin, 1000.0)
    a = clock.monotonic()
    time.sleep(0.01)
    return clock.monotonic() - a > 1.0


def test_hung_poller_withholds_watchdog_until_it_returns(
    workdir: Path, hung_dir: _HungMount
) -> None:
    """SPEC §9: a backing-off poller is healthy, a stuck one is not. The poller's stat() of
    its directory blocks in the kernel; after max(3 × interval, 5 min) the pings stop; once
    the mount is aborted the poll fails (a handled failure) and the pings come back."""
    assert _scaled_monotonic()
    t = ScaledTime(600.0)  # 5 min = 0.5 s
    cfg = CONFIG.replace('path_on_datastore = "incoming"', 'path_on_datastore = "nfs"')
    env = {"WATCHDOG_USEC": str(WATCHDOG_USEC), **t.env}
    with notifying_daemon(workdir, cfg, env) as (d, n):
        d.start(wait_ready=False)
        ready = n.wait_for("READY", "1")
        time.sleep(2.0)  # 1,200 fake seconds with the poller stuck
        pings = [n.messages[i].at for i in n.with_field("WATCHDOG", after=ready)]
        last = pings[-1] if pings else n.messages[ready].at
        assert time.monotonic() - last > 1.0, "pings went on while the poller was stuck"
        assert d.events("watchdog_withheld")
        assert d.proc is not None and d.proc.poll() is None  # stuck, not dead
        hung_dir.abort()  # the server "comes back" as an error: ENOTCONN
        mark = len(n)
        n.wait_for("WATCHDOG", "1", after=mark, timeout=5)
        d.signal(SIGTERM)
        assert d.proc.wait(30) == 0


def test_sigterm_exits_even_with_a_stuck_poller(workdir: Path, hung_dir: _HungMount) -> None:
    cfg = CONFIG.replace('path_on_datastore = "incoming"', 'path_on_datastore = "nfs"')
    with notifying_daemon(workdir, cfg, {}) as (d, n):
        d.start(wait_ready=False)
        n.wait_for("READY", "1")
        time.sleep(0.3)
        d.signal(SIGTERM)
        assert d.proc is not None
        try:
            rc = d.proc.wait(8)  # shutdown_timeout is 5s
        except subprocess.TimeoutExpired:
            rc = None
        hung_dir.abort()  # let it go either way, so the fixture can unmount
        assert rc == 0
