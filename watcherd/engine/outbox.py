"""Runs from triggers: the pollers' ChangeSink, slot and manual runs, and run contexts.

`Outbox` is mixed into `watcherd.engine.engine.Engine`: it turns due slots, file changes and manual
triggers into `NewRun` rows, and resolves a stored run into what a dispatcher needs.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Sequence
from datetime import datetime

import structlog

from watcherd.core.models import (
    BlobDatastore,
    Config,
    CronTrigger,
    DatastoreTrigger,
    LocalDatastore,
    RecurrenceTrigger,
    Run,
    Schedule,
    Status,
)
from watcherd.engine.clock import Clock
from watcherd.engine.metrics import Metrics
from watcherd.engine.ports import FileChange, FileRef, RunContext
from watcherd.engine.runner import Plan, Runner
from watcherd.engine.timers import slot_dedup
from watcherd.state.sqlite.store import NewRun, Store, parse_iso

__all__ = ["Outbox", "PollStatus", "display_name"]

log = structlog.get_logger(__name__)


def display_name(name: bytes) -> str:
    """A file name for people: invalid UTF-8 bytes shown as \\xNN."""
    return name.decode("utf-8", "backslashreplace")


@dataclasses.dataclass(slots=True)
class PollStatus:
    """The last poll attempt of one datastore schedule."""

    attempts: int = 0
    ok: bool = False
    error: str | None = None
    last_mono: float | None = None
    files: int = 0


class Outbox:
    """Builds runs for the engine; needs the attributes declared below."""

    config: Config
    store: Store
    clock: Clock
    metrics: Metrics
    runner: Runner
    schedules: dict[str, Schedule]
    pipeline_status: dict[str, Status]
    poll: dict[str, PollStatus]
    # ── the ChangeSink of the pollers ────────────────────────────────────────

    async def load_snapshot(self, schedule_id: str, baseline_key: str) -> dict[bytes, str] | None:
        return await self.store.call(self.store.load_snapshot, schedule_id, baseline_key)

    async def commit(
        self,
        schedule_id: str,
        baseline_key: str,
        upserts: Sequence[tuple[bytes, str]],
        deletes: Sequence[bytes],
        fire: Sequence[FileChange],
    ) -> int:
        s = self.schedules.get(schedule_id)
        runs: list[NewRun] = []
        now = self.clock.now()
        if s is not None and fire and self._runnable(s):
            assert isinstance(s.trigger, DatastoreTrigger)
            params = self._params(s)
            for ch in fire:
                runs.append(
                    NewRun(
                        schedule_id=s.id,
                        pipeline_id=s.pipeline,
                        experiment=s.experiment_name,
                        dedup=f"file:{ch.name.hex()}:{ch.version}",
                        trigger={
                            "kind": "file",
                            "datastore": s.trigger.datastore,
                            "path": display_name(ch.name),
                            "version": ch.version,
                        },
                        parameters=params,
                        path=ch.name,
                    )
                )
                if ch.modified is not None:
                    self.metrics.detection_lag.labels(schedule=s.name).observe(
                        max(0.0, (now - ch.modified).total_seconds())
                    )
        ids = await self.store.call(
            self.store.commit_changes,
            schedule_id,
            baseline_key,
            list(upserts),
            list(deletes),
            runs,
            now,
        )
        if fire and len(ids) < len(fire):  # the poller logs each file_changed itself
            log.info(
                "changes_not_run",
                schedule=s.name if s else schedule_id,
                changes=len(fire),
                runs=len(ids),
                reason="schedule or pipeline Disabled, or already recorded",
            )
        await self.runner.enqueue(ids)
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

    # ── runs ─────────────────────────────────────────────────────────────────

    def _runnable(self, s: Schedule) -> bool:
        return s.status is Status.ACTIVE and (self.pipeline_status.get(s.pipeline) is Status.ACTIVE)

    def _params(self, s: Schedule, extra: dict[str, str] | None = None) -> dict[str, str]:
        p = self.config.pipeline_by_id(s.pipeline)
        out = dict(p.parameters) if p else {}
        out.update(s.pipeline_parameters)
        out.update(extra or {})
        return out

    def _slot_run(self, s: Schedule, slot: datetime) -> NewRun | None:
        current = self.schedules.get(s.id, s)
        if not self._runnable(current):
            return None
        return NewRun(
            schedule_id=s.id,
            pipeline_id=s.pipeline,
            experiment=s.experiment_name,
            dedup=slot_dedup(slot),
            trigger={"kind": "time", "slot": slot.strftime("%Y-%m-%dT%H:%M:%SZ")},
            parameters=self._params(s),
        )

    def manual_run(
        self, s: Schedule, *, by: str, path: bytes | None, parameters: dict[str, str] | None
    ) -> NewRun:
        trigger: dict[str, object] = {"kind": "manual", "by": by}
        if path is not None:
            trigger["path"] = display_name(path)
        return NewRun(
            schedule_id=s.id,
            pipeline_id=s.pipeline,
            experiment=s.experiment_name,
            dedup=f"manual:{uuid.uuid4()}",
            trigger=trigger,
            parameters=self._params(s, parameters),
            path=path,
        )

    def _resolve(self, run: Run) -> Plan | str:
        p = self.config.pipeline_by_id(run.pipeline_id)
        if p is None:
            return f"pipeline {run.pipeline_id} is no longer configured"
        if p.kind not in ("command", "http", "azureml"):
            return f"unknown pipeline kind {p.kind}"
        s = self.schedules.get(run.schedule_id)
        serial = bool(
            s
            and isinstance(s.trigger, RecurrenceTrigger | CronTrigger)
            and s.trigger.options.concurrency == "queue"
        )

        def make(r: Run, attempt: int) -> RunContext:
            file, dpn = self._file_ref(s, r)
            cosf = (
                s.continue_on_step_failure
                if s and s.continue_on_step_failure is not None
                else p.continue_on_step_failure
            )
            slot = r.trigger.get("slot")
            when = parse_iso(str(slot)) if slot else (r.queued_at or self.clock.now())
            extra = {}
            if r.trigger.get("kind") == "on_failure" and "failed_run" in r.parameters:
                extra["WATCHERD_FAILED_RUN"] = r.parameters["failed_run"]
            return RunContext(
                run=r,
                pipeline=p,
                schedule=s,
                parameters=r.parameters,
                file=file,
                data_path_parameter_name=dpn,
                trigger_time=when or self.clock.now(),
                continue_on_step_failure=cosf,
                config_dir=self.config.base_dir,
                attempt=attempt,
                extra_env=extra,
            )

        return Plan(
            pipeline=p,
            schedule_name=s.name if s else run.schedule_id,
            serial=serial,
            make_context=make,
        )

    def _file_ref(self, s: Schedule | None, r: Run) -> tuple[FileRef | None, str | None]:
        if r.path is None or s is None or not isinstance(s.trigger, DatastoreTrigger):
            return None, None
        ds = self.config.datastores.get(s.trigger.datastore)
        if isinstance(ds, LocalDatastore):
            local = os.path.join(os.fsencode(ds.root), r.path)
            return FileRef(
                datastore=ds.name,
                relative_path=r.path,
                local_path=local,
                version=str(r.trigger.get("version", "")),
            ), s.trigger.data_path_parameter_name
        if isinstance(ds, BlobDatastore):
            from watcherd.pollers.blob import blob_url

            return FileRef(
                datastore=ds.name,
                relative_path=r.path,
                url=blob_url(ds, r.path.decode("utf-8", "replace")),
                version=str(r.trigger.get("version", "")),
            ), s.trigger.data_path_parameter_name
        return None, None
