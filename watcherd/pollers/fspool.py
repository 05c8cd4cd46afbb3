"""The one bounded pool of threads for blocking file system calls of the local pollers.

Each off-loop call used to start its own thread, so 200 directories polled in phase made
bursts of ~96 threads. Every local poller now shares this pool: at most `SIZE` workers, started
on demand and kept.

Why not asyncio's default executor: a `stat()` stuck on a dead NFS/FUSE server holds its
worker forever, and `asyncio.run()` joins that executor at exit, so SIGTERM would hang. These
workers are daemon threads, simply abandoned at exit. For the same reason the pool may grow
past `SIZE` (up to `HARD_LIMIT`) when every worker has been busy on one call for longer than
`STUCK_AFTER`: a few dead mounts must not starve every other directory (a scan is submitted
as many short jobs, one chunk of a listing each, so a worker busy that long is stuck); the
added workers exit once they find the queue empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

__all__ = ["HARD_LIMIT", "SIZE", "STUCK_AFTER", "off_loop", "pool_threads"]

P = ParamSpec("P")
T = TypeVar("T")

SIZE = 2  # workers in normal operation: more only make the event loop wait longer for the GIL
HARD_LIMIT = 32  # including workers added because others are stuck
STUCK_AFTER = 10.0  # seconds one call may hold a worker before it counts as stuck

_Job = Callable[[], None]


class _Pool:
    """Workers taking jobs from one C-level queue: a submit never waits on a Python lock
    (which, held by a worker waiting for the GIL, would make the event loop wait for it)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._spawn = threading.Lock()
        self._count = threading.Lock()  # only workers take it, never the event loop
        self._idle = 0  # workers blocked on the queue (read without the lock by submit)
        self._busy_since: dict[int, float] = {}  # worker ident -> monotonic start of its job
        self._checked = 0.0  # when _all_stuck last looked
        self.threads = 0

    def submit(self, job: _Job) -> None:
        self._jobs.put(job)
        if self._idle > 0 or self._jobs.qsize() == 0:
            return  # a waiting worker takes it
        with self._spawn:
            if self.threads < SIZE or (self.threads < HARD_LIMIT and self._all_stuck()):
                self.threads += 1
                threading.Thread(target=self._work, name="watcherd-fs", daemon=True).start()
            # else: the next worker to finish a job takes it

    def _all_stuck(self) -> bool:
        now = time.monotonic()
        if now - self._checked < 1.0:  # at most once a second: the queue is often busy
            return False
        self._checked = now
        busy = list(self._busy_since.values())
        return len(busy) >= self.threads and all(now - t > STUCK_AFTER for t in busy)

    def _work(self) -> None:
        me, jobs, busy = threading.get_ident(), self._jobs, self._busy_since
        while True:
            with self._count:
                self._idle += 1
            job = jobs.get()
            with self._count:
                self._idle -= 1
            busy[me] = time.monotonic()
            try:
                job()
            finally:
                del busy[me]
            if self.threads > SIZE and jobs.empty():  # one added while others were stuck
                with self._spawn:
                    if self.threads > SIZE:
                        self.threads -= 1
                        return


_pool = _Pool()


def pool_threads() -> int:
    """Worker threads running (up to `SIZE` are kept; those added past it exit when idle)."""
    return _pool.threads


def off_loop(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> asyncio.Future[T]:
    """Run a blocking call on the shared pool; the returned future resolves on this loop.

    Cancelling the future does not stop the call (nothing can interrupt a blocking syscall);
    its result is then dropped.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def _settle(result: Any, exc: BaseException | None) -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    def _job() -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # handed to the awaiting task
            error = exc
        with contextlib.suppress(RuntimeError):  # loop closed: nobody is waiting
            loop.call_soon_threadsafe(_settle, result, error)

    _pool.submit(_job)
    return fut
