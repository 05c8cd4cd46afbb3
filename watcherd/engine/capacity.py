"""`Capacity`: the `max_concurrent_runs` slots, which a run waiting to retry lends back.

A run backing off between attempts stays Running (SPEC §5, `next_attempt_at`) but holds no
slot: with every slot's run retrying against one dead endpoint, every other schedule's runs
would wait for it (the daemon keeps serving every other schedule). At most `size` runs lend
their slot at once (a run backing off beyond that keeps it): a flood of runs to a dead target
never makes more than twice `max_concurrent_runs` Running, and never drains the queue that
`max_pending` bounds. When its backoff ends a run takes a slot back before any queued run
starts, in the order the backoffs ended.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["Capacity"]


class Capacity:
    """Which runs hold a slot and which lent theirs; `on_free` is called when a slot may have
    come free for a queued run (the runner's wake-up)."""

    def __init__(self, size: int, on_free: Callable[[], None]) -> None:
        self._size = size
        self._on_free = on_free
        self._held: set[str] = set()
        self._lent: set[str] = set()  # backing off, or waiting for a slot back
        self._waiting: OrderedDict[str, asyncio.Future[None]] = OrderedDict()

    @property
    def size(self) -> int:
        return self._size

    @size.setter
    def size(self, size: int) -> None:  # a reload (SIGHUP) may change it
        self._size = size
        self._grant()

    @property
    def free(self) -> int:
        """Slots a queued run may take now (none while a backed-off run waits for one)."""
        return 0 if self._waiting else max(0, self._size - len(self._held))

    def take(self, run_id: str) -> None:
        """A queued run starts (the caller saw `free`)."""
        self._held.add(run_id)

    def lend(self, run_id: str) -> None:
        """`run_id` starts a backoff: its slot goes to whoever waits for one, unless `size`
        runs have lent theirs already (it then keeps it)."""
        if run_id in self._held and len(self._lent) < self._size:
            self._held.discard(run_id)
            self._lent.add(run_id)
            self._grant()

    async def take_back(self, run_id: str) -> None:
        """`run_id`'s backoff ended: wait for a slot, ahead of every queued run (at once when
        it kept its own)."""
        if run_id not in self._lent:
            return
        if not self._waiting and len(self._held) < self._size:
            self._lent.discard(run_id)
            self._held.add(run_id)
            return
        granted = asyncio.get_running_loop().create_future()
        self._waiting[run_id] = granted
        try:
            await granted
        finally:
            self._waiting.pop(run_id, None)  # cancelled while waiting

    def release(self, run_id: str) -> None:
        """`run_id` ended, however: the slot it holds goes to whoever waits for one."""
        self._lent.discard(run_id)
        if run_id in self._held:
            self._held.discard(run_id)
            self._grant()

    def _grant(self) -> None:
        while self._waiting and len(self._held) < self._size:
            run_id, granted = self._waiting.popitem(last=False)
            if not granted.done():  # else cancelled while waiting: its task is ending
                self._lent.discard(run_id)
                self._held.add(run_id)
                granted.set_result(None)
        if not self._waiting and len(self._held) < self._size:
            self._on_free()
