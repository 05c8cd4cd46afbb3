"""Reading processes from Linux's /proc: what `process.ProcessGroup` and `Reaper` look at.

Every function answers "nothing" (None, an empty list, False) where /proc is missing or a
process is gone by the time it is read: processes come and go while we look.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

__all__ = [
    "HAS_PROC",
    "ProcInfo",
    "boot_ticks",
    "child_pids",
    "environ_has",
    "read_process",
    "scan_processes",
]

_PROC = "/proc"
HAS_PROC = os.path.isdir(_PROC)


@dataclass(frozen=True, slots=True)
class ProcInfo:
    """One process as /proc/<pid>/stat shows it."""

    pid: int
    ppid: int
    pgid: int
    state: str  # R S D Z T …
    start: int  # clock ticks after boot: with pid, identifies a process across pid reuse
    comm: str

    @property
    def dead(self) -> bool:
        return self.state in ("Z", "X", "x")

    def label(self) -> str:
        return f"{self.pid} ({self.comm})"


def read_process(pid: int) -> ProcInfo | None:
    """The process `pid`, or None when it is gone (or /proc cannot tell)."""
    try:
        with open(f"{_PROC}/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    head, sep, tail = raw.rpartition(b")")
    fields = tail.split()
    if not sep or len(fields) < 20:
        return None
    comm = head.partition(b"(")[2].decode("utf-8", "backslashreplace")
    return ProcInfo(
        pid=pid,
        ppid=int(fields[1]),
        pgid=int(fields[2]),
        state=fields[0].decode("ascii", "replace"),
        start=int(fields[19]),
        comm=comm,
    )


def scan_processes(since_pid: int | None = None) -> dict[int, ProcInfo] | None:
    """Every process /proc shows, or None when there is no /proc (not Linux).

    With `since_pid`, only processes whose pid was handed out at or after it (pids are handed
    out in a cycle; `ns_last_pid` says where the cycle is), which spares reading the stat of
    every older process. Valid only while the cycle cannot have come round again since.
    """
    try:
        names = os.listdir(_PROC)
    except OSError:
        return None
    pids = [int(name) for name in names if name.isdigit()]
    last = _last_pid() if since_pid is not None else None
    if since_pid is not None and last is not None:
        if last >= since_pid:
            pids = [p for p in pids if since_pid <= p <= last]
        else:  # wrapped round since
            pids = [p for p in pids if p >= since_pid or p <= last]
    out: dict[int, ProcInfo] = {}
    for pid in pids:
        if (info := read_process(pid)) is not None:
            out[info.pid] = info
    return out if HAS_PROC else None


def _last_pid() -> int | None:
    try:
        with open(f"{_PROC}/sys/kernel/ns_last_pid", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` (every thread's), cheaply, without scanning all of /proc."""
    try:
        tids = os.listdir(f"{_PROC}/{pid}/task")
    except OSError:
        return []
    out: list[int] = []
    for tid in tids:
        try:
            with open(f"{_PROC}/{pid}/task/{tid}/children", "rb") as f:
                out += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return out


def environ_has(pid: int, entry: bytes) -> bool:
    """Whether the process's environment holds every NUL-separated `NAME=value` of `entry`."""
    try:
        with open(f"{_PROC}/{pid}/environ", "rb") as f:
            return set(entry.split(b"\0")) <= set(f.read().split(b"\0"))
    except OSError:  # gone, or another user's
        return False


def boot_ticks() -> int:
    """Now, in /proc's start-time unit (clock ticks since boot)."""
    try:
        hz = os.sysconf("SC_CLK_TCK")
        return int(time.clock_gettime(time.CLOCK_BOOTTIME) * hz)
    except (AttributeError, ValueError, OSError):
        return 0
