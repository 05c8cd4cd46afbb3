"""`FileSink`: the pollers' ChangeSink and PollHealth, over the store and the runner.

A poller reports eligible file versions; the sink turns each into a run carrying its file
(where it lives, the parameter it binds: SPEC §5), writes the runs with the snapshot delta in
one transaction fenced by the schedule's lease, hands them to the runner, and keeps each
schedule's last poll attempt for readiness and the watchdog.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog

from watcherd.core.errors import LeaseLost
from watcherd.core.models import BlobDatastore, DatastoreTrigger, FileRef, Schedule
from watcherd.core.runs import NewRun, file_run
from watcherd.engine.book import ScheduleBook
from watcherd.engine.clock import Clock
from watcherd.engine.metrics import Metrics
from watcherd.engine.ports import FileChange, PollerFactory, RunStore
from watcherd.engine.runner import Runner

__all__ = ["FileSink", "PollStatus"]

log = structlog.get_logger(__name__)

Persist = Callable[[Callable[[], Awaitable[list[str]]], str], Awaitable[list[str]]]


@dataclass(slots=True)
class PollStatus:
    """The last poll attempt of one datastore schedule."""

    attempts: int = 0
    ok: bool = False
    error: str | None = None
    last_mono: float | None = None
    files: int = 0


class FileSink:
    """Implements `ports.ChangeSink` and `ports.PollHealth` for the engine's pollers."""

    def __init__(
        self,
        book: ScheduleBook,
        *,
        store: RunStore,
        runner: Runner,
        pollers: PollerFactory,
        clock: Clock,
        metrics: Metrics,
        persist: Persist,
        fence: Callable[[str], int | None],
        lease_lost: Callable[[str, int | None], None],
    ) -> None:
        self.book = book
        self.store = store
        self.runner = runner
        self.pollers = pollers
        self.clock = clock
        self.metrics = metrics
        self.persist = persist
        self.fence = fence
        self.lease_lost = lease_lost
        self.poll: dict[str, PollStatus] = {}

    def refused_name(self, s: Schedule, name: bytes) -> str | None:
        """SPEC §5: a blob whose name starts with "-" would read as an option of a command."""
        p = self.book.config.pipeline_by_id(s.pipeline)
        t = s.trigger
        if p is None or p.kind != "command" or not isinstance(t, DatastoreTrigger):
            return None
        ds = self.book.config.datastores.get(t.datastore)
        if isinstance(ds, BlobDatastore) and name.startswith(b"-"):
            return "a blob name starting with '-' would read as an option: no command run"
        return None

    def file_ref(self, s: Schedule, name: bytes, version: str) -> FileRef:
        """The file a run is queued for: where it lives, and the parameter it binds."""
        assert isinstance(s.trigger, DatastoreTrigger)
        ds = self.book.config.datastores[s.trigger.datastore]
        local, url = self.pollers.locate(ds, name)
        return FileRef(
            datastore=ds.name,
            relative_path=name,
            local_path=local,
            url=url,
            version=version,
            parameter=s.trigger.data_path_parameter_name,
        )

    async def load_snapshot(self, schedule_id: str, baseline_key: str) -> dict[bytes, str] | None:
        return await self.store.load_snapshot(schedule_id, baseline_key)

    async def load_marker(self, schedule_id: str, baseline_key: str) -> str | None:
        return await self.store.load_marker(schedule_id, baseline_key)

    async def commit(
        self,
        schedule_id: str,
        baseline_key: str,
        upserts: Sequence[tuple[bytes, str]],
        deletes: Sequence[bytes],
        fire: Sequence[FileChange],
        marker: str | None = None,
    ) -> int:
        s = self.book.schedules.get(schedule_id)
        now = self.clock.now()
        runs: list[NewRun] = []
        if s is not None and fire and self.book.runnable(s):
            pipeline = self.book.config.pipeline_by_id(s.pipeline)
            for ch in fire:
                run = file_run(s, pipeline, self.file_ref(s, ch.name, ch.version))
                if (why := self.refused_name(s, ch.name)) is not None:
                    log.warning("file_skipped", path=run.trigger["path"], reason=why)
                    run = run.skipped(why)
                runs.append(run)
                if ch.modified is not None:  # the one detection-lag observation per file
                    self.metrics.detection_lag.labels(schedule=s.name).observe(
                        max(0.0, (now - ch.modified).total_seconds())
                    )
        epoch = self.fence(schedule_id)
        if epoch is None:  # its lease is gone: the new owner's poller records it
            raise LeaseLost(schedule_id)
        try:
            ids = await self.persist(
                lambda: self.store.commit_changes(
                    schedule_id, baseline_key, upserts, deletes, runs, now, marker, epoch
                ),
                "snapshot",
            )
        except LeaseLost:  # another replica owns this schedule now: stop its poller
            self.lease_lost(schedule_id, epoch)
            raise
        if fire and len(ids) < len(fire):  # the poller logs each file_changed itself
            log.info(
                "changes_not_run",
                schedule=s.name if s else schedule_id,
                changes=len(fire),
                runs=len(ids),
                reason="schedule or pipeline Disabled, or already recorded",
            )
        self.runner.enqueue_new(runs, ids, now)
        return len(ids)

    def pending(self, schedule_id: str) -> int:
        return self.runner.queued(schedule_id)

    async def wait_below(self, schedule_id: str, limit: int) -> None:
        await self.runner.wait_queued_below(schedule_id, limit)

    def poll_finished(
        self, schedule_id: str, *, ok: bool, duration: float, files: int, error: str | None
    ) -> None:
        st = self.poll.setdefault(schedule_id, PollStatus())
        st.attempts += 1
        st.ok, st.error, st.files = ok, error, files
        st.last_mono = self.clock.monotonic()
