"""The one way watcherd starts a command and stops everything it started (SPEC §5, §6).

A command runs from an argv (never a shell) in its own session, so its pid is its process
group id. Stopping it with `killpg` alone misses what left the group: a `setsid` grandchild,
or an orphan whose parent link broke when its parent exited (issue #11, items 2 and 18). So a
stop signals the union of, among processes started since the step (start time read from
`/proc`, so a recycled pid is never mistaken for one of ours):

- the process group;
- the descendants of the leader and of every pid recorded below (parent links in `/proc`);
- pids recorded while the step ran (its descendants, re-read every `RECORD_INTERVAL`);
- processes whose environment holds the step's marker (`WATCHERD_RUN_ID=<run id>`): an orphan
  re-parented to init or to the daemon keeps it.

A stop is a plan of (signal, grace) steps ending in SIGKILL; each step is logged with what it
signalled, and the caller gets one line per step for a run's log. Without `/proc` (not Linux)
the group is all there is.

The daemon, as a child subreaper (`set_child_subreaper`) or PID 1 in a container, inherits
orphans; `Reaper` reaps them, leaving asyncio's own children to asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any

import structlog

from watcherd.core.children import WAITED
from watcherd.dispatch.procfs import (
    HAS_PROC,
    ProcInfo,
    boot_ticks,
    child_pids,
    environ_has,
    read_process,
    scan_processes,
)

__all__ = [
    "RECORD_INTERVAL",
    "RUN_STOP",
    "WATCH_STOP",
    "ProcessGroup",
    "Reaper",
    "StopPlan",
    "kill_all_groups",
    "set_child_subreaper",
    "use_pidfd_child_watcher",
]

log = structlog.get_logger(__name__)

StopPlan = tuple[tuple[signal.Signals, float], ...]
"""(signal, grace seconds) steps; the last is SIGKILL, its grace how long to wait for it."""

KILL_WAIT = 5.0
RUN_STOP: StopPlan = ((signal.SIGTERM, 10.0), (signal.SIGKILL, KILL_WAIT))  # SPEC §5
WATCH_STOP: StopPlan = (  # SPEC §6
    (signal.SIGINT, 5.0),
    (signal.SIGTERM, 5.0),
    (signal.SIGKILL, KILL_WAIT),
)
RECORD_INTERVAL = 0.5  # how often a running step's descendants are recorded
_POLL = 0.05  # how often a stop re-reads /proc while waiting for the processes to go
_PR_SET_CHILD_SUBREAPER = 36
# For this long after a start, pids cannot have gone round their cycle (32768 on small
# systems) back past the leader's: a stop then reads only processes with newer pids.
_PID_CYCLE_SAFE = 10.0

# Leaders started here and not yet reaped by asyncio (with every other child its starter
# waits for, `core.children`): the Reaper never touches them.
_OWN = WAITED
_SUBREAPER = False  # set_child_subreaper() took effect


def _adopts_orphans() -> bool:
    """Whether the orphans of our descendants become our children (subreaper, or PID 1)."""
    return _SUBREAPER or os.getpid() == 1


def _send(pid: int, sig: signal.Signals, *, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        (os.killpg if group else os.kill)(pid, sig)


# ── one started command ──────────────────────────────────────────────────────


class _Protocol(asyncio.subprocess.SubprocessStreamProtocol):
    """asyncio's protocol for `create_subprocess_exec`, plus a future set at the exit."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=2**16, loop=loop)
        self.exited: asyncio.Future[None] = loop.create_future()

    def process_exited(self) -> None:
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(None)


class ProcessGroup:
    """A command started in its own session, and what it starts.

    Use `start()`; `wait()` for its exit; `stop()` to end whatever remains of it; `close()`
    once done (it stops the recording task).
    """

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        exited: asyncio.Future[None],
        *,
        marker: bytes | None,
        floor: int,
    ) -> None:
        self.proc = proc
        self._exited = exited
        self.pid = proc.pid  # a session leader: also its process group id
        self._marker = marker
        self._floor = floor  # ticks a little before the start: nothing older is ours
        self._known: dict[int, int] = {}  # pid -> start of descendants seen while it ran
        self._recorder: asyncio.Task[None] | None = None
        self._started = time.monotonic()

    @classmethod
    async def start(
        cls,
        argv: Sequence[bytes | str],
        *,
        env: Mapping[bytes, bytes] | Mapping[str, str] | None = None,
        cwd: os.PathLike[str] | str | None = None,
        stdin: int | IO[Any] | None = asyncio.subprocess.DEVNULL,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
        marker: bytes | None = None,
    ) -> ProcessGroup:
        """Start `argv` without a shell in a new session.

        Args:
            marker: an environment entry (`NAME=value`) every process of this command
                inherits; at stop time it finds orphans whose parent link is gone.

        Raises:
            OSError: the program cannot be started (not found, not executable, bad cwd).
        """
        floor = boot_ticks() - 100  # one second of margin for clock rounding
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.subprocess_exec(
            lambda: _Protocol(loop),
            *argv,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        proc = asyncio.subprocess.Process(transport, protocol, loop)
        group = cls(proc, protocol.exited, marker=marker, floor=floor)
        _OWN.add(proc.pid)
        if HAS_PROC:
            group._recorder = asyncio.create_task(group._record())
        return group

    async def wait(self) -> int:
        """The leader's exit code (negative: killed by that signal), as soon as it exits.

        Unlike `Process.wait()`, this does not wait for its pipes to close as well: a
        background child may hold them open for ever.
        """
        await asyncio.shield(self._exited)
        _OWN.discard(self.pid)
        code = self.proc.returncode
        assert code is not None
        return code

    async def close(self) -> None:
        """Stop recording descendants (call once the command is over)."""
        if self._recorder is not None:
            self._recorder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recorder
            self._recorder = None
        if self.proc.returncode is not None:
            _OWN.discard(self.pid)

    async def _record(self) -> None:
        """Record the leader's descendants while it runs: an orphan loses its parent link."""
        while True:  # a step that ends sooner leaves no time for a parent link to break
            await asyncio.sleep(RECORD_INTERVAL)
            if self.proc.returncode is not None:
                return
            self._record_once()

    def _record_once(self) -> None:
        todo = [self.pid, *self._known]
        seen: set[int] = set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            if pid in self._known and (info := read_process(pid)) is not None:
                if info.start != self._known[pid]:
                    continue  # that pid is another process now
            for child in child_pids(pid):
                info = read_process(child)
                if info is not None and info.start >= self._floor and not info.dead:
                    self._known.setdefault(child, info.start)
                    todo.append(child)

    def remaining(self) -> dict[int, ProcInfo] | None:
        """The live processes of this command; None when /proc is unavailable."""
        recent = time.monotonic() - self._started < _PID_CYCLE_SAFE
        procs = scan_processes(self.pid if recent else None)
        if procs is None:
            return None
        me = os.getpid()
        ours = {
            p.pid: p for p in procs.values() if p.start >= self._floor and p.pid != me
        }  # nothing older than the command can be part of it
        found = {pid for pid, p in ours.items() if p.pgid == self.pid}
        found |= {
            pid for pid, start in self._known.items() if pid in ours and ours[pid].start == start
        }
        if self.pid in ours:
            found.add(self.pid)
        if self._marker is not None:
            found |= {pid for pid in ours if pid not in found and environ_has(pid, self._marker)}
        kids: dict[int, list[int]] = {}
        for p in ours.values():
            kids.setdefault(p.ppid, []).append(p.pid)
        todo = list(found)
        while todo:  # and every descendant of those
            for child in kids.get(todo.pop(), ()):
                if child not in found:
                    found.add(child)
                    todo.append(child)
        return {pid: ours[pid] for pid in found if not ours[pid].dead}

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _nothing_left(self) -> bool:
        """A cheap proof that nothing of this command remains, without reading all of /proc.

        It holds only while this process adopts orphans (subreaper or PID 1). Then, once the
        leader is gone, every live process it started is in its group, is a descendant
        recorded while it ran, or descends from an orphan that is now a child of ours. So:
        the group is empty, no recorded descendant lives, and no child of ours younger than
        the command is an unknown (not another command's leader). Anything else: False, and
        the caller looks properly (`remaining`)."""
        if not (HAS_PROC and _adopts_orphans()) or self.proc.returncode is None:
            return False
        if self._group_alive():
            return False
        for pid, start in self._known.items():
            info = read_process(pid)
            if info is not None and info.start == start and not info.dead:
                return False
        for child in child_pids(os.getpid()):
            if child in _OWN:
                continue
            info = read_process(child)
            if info is not None and not info.dead and info.start >= self._floor:
                return False
        return True

    async def _targets(self) -> tuple[list[ProcInfo], bool]:
        """(processes to signal, whether anything remains); without /proc only the group."""
        if self._nothing_left():  # the common end of a step: no thread, no scan of /proc
            return [], False
        found = await asyncio.to_thread(self.remaining)
        if found is None:
            alive = self.proc.returncode is None or self._group_alive()
            return [], alive
        return sorted(found.values(), key=lambda p: p.pid), bool(found)

    async def stop(
        self,
        plan: StopPlan = RUN_STOP,
        *,
        event: str = "process",
        force: asyncio.Event | None = None,
    ) -> list[str]:
        """Signal what remains, step by step, until nothing does; a no-op if nothing does.

        Each step is logged as `<event>_signalled` (pid, signal, grace, processes); the end as
        `<event>_stopped`. When `force` is set, the next step is SIGKILL at once.

        Returns:
            One line per step sent, e.g. "SIGTERM to 812 (sleep), 815 (python3)".
        """
        signalled, stopped = event + "_signalled", event + "_stopped"
        incomplete = event + "_stop_incomplete"
        lines: list[str] = []
        for i, (planned, grace) in enumerate(plan):
            sig = planned
            forced = force is not None and force.is_set()
            if forced or i == len(plan) - 1:
                sig, grace = signal.SIGKILL, plan[-1][1]
            targets, alive = await self._targets()
            if not alive:
                break
            self._signal(targets, sig)
            names = [p.label() for p in targets] or [f"process group {self.pid}"]
            log.info(signalled, pid=self.pid, signal=sig.name, grace=grace, processes=names)
            lines.append(f"{sig.name} to {', '.join(names)}")
            if await self._gone_within(grace, None if sig is signal.SIGKILL else force):
                log.info(stopped, pid=self.pid, after=sig.name)
                return lines
            if sig is signal.SIGKILL:
                left = [p.label() for p in (await self._targets())[0]]
                log.warning(incomplete, pid=self.pid, processes=left)
                return lines
        return lines

    def _signal(self, targets: list[ProcInfo], sig: signal.Signals) -> None:
        in_group = any(p.pgid == self.pid for p in targets) or not targets
        if in_group:
            _send(self.pid, sig, group=True)
        for p in targets:
            if p.pgid != self.pid:
                _send(p.pid, sig, group=False)

    async def _gone_within(self, grace: float, force: asyncio.Event | None) -> bool:
        """True once nothing remains within `grace` seconds; False at the deadline or force."""
        deadline = time.monotonic() + grace
        while True:
            left = deadline - time.monotonic()
            if self.proc.returncode is None:  # the leader first: its exit is an event
                waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(self.wait())}
                if force is not None:
                    waiters.add(asyncio.ensure_future(force.wait()))
                try:
                    await asyncio.wait(
                        waiters, timeout=max(0.0, left), return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    for w in waiters:
                        w.cancel()
            if force is not None and force.is_set():
                return False
            if self.proc.returncode is not None:
                _OWN.discard(self.pid)
                if not (await self._targets())[1]:
                    return True
            if time.monotonic() >= deadline:
                return False
            # Others outlived the leader: no event says when they go, so look again shortly.
            pause = min(_POLL, max(0.0, deadline - time.monotonic()))
            if force is None:
                await asyncio.sleep(pause)
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await force.wait()


# ── orphans: subreaper and reaper ────────────────────────────────────────────


def kill_all_groups() -> None:
    """SIGKILL the process group of every command still running: a forced exit (a second
    SIGTERM) leaves none behind to run on beside the next start's attempt of its run."""
    for pid in list(_OWN):
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)


def set_child_subreaper() -> bool:
    """Make this process adopt its descendants' orphans (Linux prctl; no-op elsewhere).

    Orphans then stay under the daemon, so `ProcessGroup.stop` still finds them by marker
    and `Reaper` collects their exit status. Returns True when it took effect.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        ok = bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False
    if not ok:
        log.warning("subreaper_unavailable", error=os.strerror(ctypes.get_errno()))
    global _SUBREAPER
    _SUBREAPER = _SUBREAPER or ok
    return ok


def use_pidfd_child_watcher() -> bool:
    """Have asyncio wait for commands through pidfds (Linux 5.3+), as Python 3.12 does by
    itself, instead of Python 3.11's thread per child blocked in waitpid(): starting and
    joining that thread cost ~0.3-0.8 ms of CPU per command run (`dispatch`, command runs/s
    +12-30 %). Call before `asyncio.run()` (the watcher attaches to the loop it sets). Returns
    True when it took effect; elsewhere nothing changes."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # an older kernel, or a seccomp filter refusing pidfd_open
        return False
    asyncio.set_child_watcher(asyncio.PidfdChildWatcher())
    return True


class Reaper:
    """Reaps zombie children nobody else will: orphans adopted as PID 1 or as a subreaper.

    asyncio (Python 3.11's ThreadedChildWatcher; 3.12's PidfdChildWatcher) waits for each of
    its children by pid, so `waitpid(-1)` would steal their exit status. The reaper therefore
    waits only for specific pids: children of this process in state Z that were already
    zombies at the previous pass (`interval` earlier; a child someone waits for is reaped
    at once) and that no `ProcessGroup` started.
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._zombies: set[int] = set()
        self.reaped = 0

    async def run(self) -> None:
        """Reap every `interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            self.reap()

    def reap(self) -> list[int]:
        """One pass; returns the pids reaped."""
        zombies = {pid for pid in self._child_pids() if self._is_zombie(pid)} - _OWN
        done: list[int] = []
        for pid in sorted(zombies & self._zombies):
            try:
                got, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # someone else reaped it after all
                continue
            if got == pid:
                done.append(pid)
                log.debug("orphan_reaped", pid=pid, exit_code=os.waitstatus_to_exitcode(status))
        self._zombies = zombies - set(done)
        self.reaped += len(done)
        return done

    @staticmethod
    def _child_pids() -> list[int]:
        me = os.getpid()
        if os.path.exists(f"/proc/{me}/task/{me}/children"):
            return child_pids(me)
        procs = scan_processes() or {}  # a kernel without CONFIG_PROC_CHILDREN: scan all
        return [p.pid for p in procs.values() if p.ppid == me]

    @staticmethod
    def _is_zombie(pid: int) -> bool:
        info = read_process(pid)
        return info is not None and info.state == "Z"
