"""`watcherd watch`: run a command for each file written directly in one directory (dev mode).

The same detection as a local datastore schedule (a `LocalPoller` with an in-memory sink: no
state database): inotify events on exactly DIR, the default ignore globs, and the
write-completion rule (close-after-write or move-into, else `settle`). Each eligible file runs
CMD once, with `{path}` in any argument replaced by the file's absolute path (appended as the
last argument when no argument holds `{path}`). File names stay bytes from the kernel to the
child's argv, and no shell is involved.

Per file: after it becomes eligible, wait until no event for it for `--debounce`; a file
changed while its command runs is run once more afterwards, with its newest version. At most
`--jobs` commands run at once. Each command runs in its own session; SIGINT or SIGTERM stops
the running ones' process groups (SIGINT, 5 s, SIGTERM, 5 s, SIGKILL) and exits 0; a second
signal skips to SIGKILL. Starting and stopping are `dispatch.process`'s, as for the daemon's
command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import structlog

from watcherd.core.durations import parse_duration
from watcherd.core.models import DatastoreTrigger, LocalDatastore, Schedule
from watcherd.dispatch.process import WATCH_STOP, ProcessGroup, use_pidfd_child_watcher
from watcherd.engine.clock import SystemClock
from watcherd.engine.ports import FileChange
from watcherd.pollers.local import LocalPoller

__all__ = ["main"]

log = structlog.get_logger("watcherd.cli.watch")

RESCAN_INTERVAL = timedelta(minutes=1)  # with events on: the safety-net rescan


class UsageError(Exception):
    """A bad command line (exit 2)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """A parsed `watch` command line."""

    directory: bytes  # absolute
    command: tuple[bytes, ...]
    patterns: tuple[str, ...] = ("*",)
    ignore: tuple[str, ...] = ()
    debounce: float = 0.0
    jobs: int = 1
    initial: bool = False
    poll: float | None = None  # seconds; None = events


def main(argv: list[str]) -> int:
    """Run `watcherd watch` with `argv` (the arguments after "watch"); returns the exit code."""
    options = argv[: argv.index("--")] if "--" in argv else argv
    if "-h" in options or "--help" in options:
        _parser().print_help(sys.stdout)
        return 0
    try:
        opts = parse_args(argv)
    except UsageError as exc:
        sys.stderr.write(f"watcherd watch: error: {exc}\n")
        return 2
    _configure_logs()
    use_pidfd_child_watcher()
    return asyncio.run(_watch(opts))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]  # raise, never exit
        raise UsageError(message)


POLL_MAX = 86400  # seconds: --poll of a day at most


def _parser() -> _Parser:
    p = _Parser(
        prog="watcherd watch",
        usage="watcherd watch DIR [options] -- CMD [ARG...]",
        description="Run CMD for each file written directly in DIR (not its subdirectories); "
        "{path} in an ARG is the file's absolute path (appended when no ARG has it). "
        "No shell is involved.",
        add_help=False,
    )
    p.add_argument("dir", metavar="DIR", help="the directory to watch")
    p.add_argument("-h", "--help", action="store_true", help="show this help and exit")
    p.add_argument(
        "--pattern",
        action="append",
        default=[],
        metavar="GLOB",
        help="only names matching GLOB (repeatable; default *)",
    )
    p.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="GLOB",
        help="skip names matching GLOB, besides the default ignores (repeatable)",
    )
    p.add_argument(
        "--debounce",
        default="0ms",
        metavar="DURATION",
        help='wait until a file has had no event for this long ("500ms", "2s"; 0)',
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="at most N commands at once (default: the CPU count)",
    )
    p.add_argument(
        "--initial", action="store_true", help="also run CMD for the files already in DIR at start"
    )
    p.add_argument(
        "--poll",
        type=float,
        default=None,
        metavar="SECONDS",
        help="list DIR every SECONDS instead of using filesystem events",
    )
    return p


def parse_args(argv: Sequence[str]) -> Options:
    """Parse `DIR [options] -- CMD [ARG…]`.

    Raises:
        UsageError: with a one-line message.
    """
    argv = list(argv)
    if "--" not in argv:
        raise UsageError("expected '-- CMD [ARG...]' after the options")
    cut = argv.index("--")
    command = tuple(os.fsencode(a) for a in argv[cut + 1 :])
    if not command:
        raise UsageError("no command after '--'")
    ns = _parser().parse_args(argv[:cut])
    try:  # "0" needs no unit (SPEC §10 runs `--debounce 0`)
        debounce = 0.0 if ns.debounce == "0" else parse_duration(ns.debounce).total_seconds()
    except ValueError as exc:
        raise UsageError(f"--debounce: {exc}") from None
    if ns.jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {ns.jobs}")
    if ns.poll is not None and not 0 < ns.poll <= POLL_MAX:
        raise UsageError(f"--poll must be a number of seconds in (0, {POLL_MAX}], got {ns.poll}")
    directory = os.path.abspath(os.fsencode(ns.dir))
    if not os.path.isdir(directory):
        raise UsageError(f"{ns.dir}: not a directory")
    return Options(
        directory=directory,
        command=command,
        patterns=tuple(ns.pattern) or ("*",),
        ignore=tuple(ns.ignore),
        debounce=debounce,
        jobs=ns.jobs,
        initial=ns.initial,
        poll=ns.poll,
    )


def _configure_logs() -> None:
    from watcherd.logs import configure

    configure("console", stream=sys.stderr)


def command_for(command: Sequence[bytes], path: bytes) -> list[bytes]:
    """The argv for one file: `{path}` replaced inside any element, else appended."""
    if any(b"{path}" in arg for arg in command):
        return [arg.replace(b"{path}", path) for arg in command]
    return [*command, path]


def _show(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace")


# ── running commands ──────────────────────────────────────────────────────────


class _File:
    """One file's pending work: its newest version and when its debounce ends."""

    __slots__ = ("change", "due", "rerun", "running")

    def __init__(self, change: FileChange, due: float) -> None:
        self.change = change
        self.due = due
        self.running = False
        self.rerun = False


class _Slots:
    """At most `n` holders, waiters served in arrival order. A cancelled waiter is skipped
    when its turn comes: asyncio.Semaphore removes it from its queue at once, a scan of the
    queue per waiter (50k files waiting at Ctrl-C took ~10 s to stop)."""

    def __init__(self, n: int) -> None:
        self._free = n
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def __aenter__(self) -> None:
        if self._free > 0:  # (free slots and waiters never coexist: `_release` hands over)
            self._free -= 1
            return
        turn = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # its turn came, then the cancel
                self._release()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self._free += 1


class Runner:
    """Runs the command per eligible file: debounced, coalesced, at most `jobs` at once."""

    def __init__(self, tg: asyncio.TaskGroup, opts: Options) -> None:
        self._tg = tg
        self._opts = opts
        self._slots = _Slots(opts.jobs)
        self._files: dict[bytes, _File] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._force = asyncio.Event()

    def submit(self, change: FileChange) -> None:
        """A file became eligible (called by the sink)."""
        if self._closed:
            return
        due = time.monotonic() + self._opts.debounce
        log.info("file_changed", path=_show(change.name), version=change.version)
        f = self._files.get(change.name)
        if f is not None:
            f.change, f.due = change, due
            f.rerun = f.rerun or f.running
            return
        self._files[change.name] = _File(change, due)
        task = self._tg.create_task(self._serve(change.name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def activity(self, name: bytes) -> None:
        """Any event for `name`: push its debounce back."""
        f = self._files.get(name)
        if f is not None and not f.running:
            f.due = max(f.due, time.monotonic() + self._opts.debounce)

    async def _serve(self, name: bytes) -> None:
        f = self._files[name]
        try:
            while True:
                # Sleep to the deadline; events only move it later, so each pass sleeps
                # exactly to the newest deadline (no tick).
                while (delay := f.due - time.monotonic()) > 0:  # noqa: ASYNC110
                    await asyncio.sleep(delay)
                async with self._slots:
                    f.running, f.rerun = True, False
                    try:
                        await self._run(f.change)
                    finally:
                        f.running = False
                if not f.rerun:
                    return
        finally:
            self._files.pop(name, None)

    async def _run(self, change: FileChange) -> None:
        path = os.path.join(self._opts.directory, change.name)
        if not await asyncio.to_thread(os.path.lexists, path):  # deleted or moved away meanwhile
            log.info("file_gone", path=_show(path))
            return
        argv = command_for(self._opts.command, path)
        started = time.monotonic()
        try:
            group = await ProcessGroup.start(argv)
        except OSError as exc:
            log.error("command_failed", path=_show(path), error=str(exc))
            return
        log.info("command_started", path=_show(path), pid=group.pid)
        try:
            code = await group.wait()
        except asyncio.CancelledError:
            await group.stop(WATCH_STOP, event="command", force=self._force)
            raise
        finally:
            await group.close()
        duration = round(time.monotonic() - started, 3)
        say = log.info if code == 0 else log.warning  # a failure stands out in the console
        say("command_finished", path=_show(path), exit_code=code, duration=duration)

    def close(self) -> None:
        """Take no more files; cancel waiting ones and stop running commands."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()

    def force(self) -> None:
        """A second signal: kill what is still running now."""
        self._force.set()


# ── wiring ────────────────────────────────────────────────────────────────────


class _Sink:
    """The poller's ChangeSink without a database: eligible files go to the runner."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    async def load_snapshot(self, schedule_id: str, baseline_key: str) -> dict[bytes, str] | None:
        return None

    async def load_marker(self, schedule_id: str, baseline_key: str) -> str | None:
        return None

    async def commit(
        self,
        schedule_id: str,
        baseline_key: str,
        upserts: Sequence[tuple[bytes, str]],
        deletes: Sequence[bytes],
        fire: Sequence[FileChange],
        marker: str | None = None,
    ) -> int:
        for change in fire:
            self._runner.submit(change)
        return len(fire)

    def pending(self, schedule_id: str) -> int:
        return 0

    async def wait_below(self, schedule_id: str, limit: int) -> None:
        return None


class _Health:
    def poll_finished(
        self, schedule_id: str, *, ok: bool, duration: float, files: int, error: str | None
    ) -> None:
        return None


def _schedule(opts: Options) -> Schedule:
    interval = timedelta(seconds=opts.poll) if opts.poll is not None else RESCAN_INTERVAL
    trigger = DatastoreTrigger(
        datastore="watch",
        polling_interval=interval,
        pattern=opts.patterns,
        ignore=opts.ignore,
        initial="fire" if opts.initial else "skip",
        events=opts.poll is None,
    )
    name = _show(opts.directory)
    return Schedule(
        id="watch", name=name, pipeline="watch", experiment_name="watch", trigger=trigger
    )


async def _watch(opts: Options) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    try:
        async with asyncio.TaskGroup() as tg:
            runner = Runner(tg, opts)
            for sig in signals:  # kept until every command is stopped: a 2nd signal forces
                loop.add_signal_handler(sig, _on_signal, sig, stop, runner)
            try:
                poller = LocalPoller(
                    schedule=_schedule(opts),
                    datastore=LocalDatastore(name="watch", root=Path(os.fsdecode(opts.directory))),
                    sink=_Sink(runner),
                    health=_Health(),
                    clock=SystemClock(),
                    on_event=runner.activity,
                )
                watching = tg.create_task(poller.run())
                log.info("watch_started", path=_show(opts.directory), command=_argv_text(opts))
                await stop.wait()
                watching.cancel()
            finally:
                runner.close()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    log.info("watch_stopped")
    return 0


def _on_signal(sig: signal.Signals, stop: asyncio.Event, runner: Runner) -> None:
    if stop.is_set():
        log.warning("watch_forced", signal=sig.name)
        runner.force()
    else:
        log.info("watch_stopping", signal=sig.name)
        stop.set()


def _argv_text(opts: Options) -> list[str]:
    return [_show(a) for a in opts.command]
