"""The run half of the Services: list, show, log, retry and cancel runs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from watcherd.core.errors import Conflict, NotFound, ValidationError
from watcherd.core.models import TERMINAL, Run, RunStatus, Schedule
from watcherd.engine.engine import Engine

__all__ = ["RunServices", "run_json", "utc_z"]

JSON = dict[str, Any]


def utc_z(dt: datetime | None) -> str | None:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ") if dt else None


def run_json(run: Run, schedule_name: str | None = None) -> JSON:
    """A run as the API shows it."""
    duration = None
    if run.started_at and run.finished_at:
        duration = round((run.finished_at - run.started_at).total_seconds(), 3)
    return {
        "id": run.id,
        "schedule_id": run.schedule_id,
        "schedule_name": schedule_name,
        "pipeline_id": run.pipeline_id,
        "experiment_name": run.experiment_name,
        "status": run.status.value,
        "trigger": dict(run.trigger),
        "parameters": dict(run.parameters),
        "attempt": run.attempt,
        "attempts": [dict(a) for a in run.attempts],
        "error": run.error,
        "exit_code": run.exit_code,
        "remote_id": run.remote_id,
        "queued_at": utc_z(run.queued_at),
        "started_at": utc_z(run.started_at),
        "finished_at": utc_z(run.finished_at),
        "next_attempt_at": utc_z(run.next_attempt_at),
        "duration": duration,
    }


class RunServices:
    """Run operations over the engine's store and runner."""

    engine: Engine

    def _schedule(self, ident: str) -> Schedule:
        raise NotImplementedError

    def _pipeline_id(self, ident: str) -> str:
        raise NotImplementedError

    # ── runs ─────────────────────────────────────────────────────────────────

    def _name(self, sid: str) -> str | None:
        s = self.engine.schedules.get(sid)
        return s.name if s else None

    async def list_runs(
        self,
        *,
        schedule_id: str | None = None,
        pipeline_id: str | None = None,
        status: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[JSON], str | None]:
        sid = self._schedule(schedule_id).id if schedule_id else None
        pid = self._pipeline_id(pipeline_id) if pipeline_id else None
        if status is not None and status not in {s.value for s in RunStatus}:
            raise ValidationError(f"unknown run status {status!r}", "status")
        before = None
        if cursor:
            if not cursor.isdigit():
                raise ValidationError("bad cursor", "cursor")
            before = int(cursor)
        limit = max(1, min(int(limit), 1000))
        runs, nxt = await self.engine.store.call(
            self.engine.store.list_runs,
            schedule_id=sid,
            pipeline_id=pid,
            status=status,
            limit=limit,
            before_seq=before,
        )
        return [run_json(r, self._name(r.schedule_id)) for r in runs], (
            str(nxt) if nxt is not None else None
        )

    async def _run(self, run_id: str) -> Run:
        r = await self.engine.store.call(self.engine.store.get_run, run_id)
        if r is None:
            raise NotFound("run", run_id)
        return r

    async def get_run(self, run_id: str) -> JSON:
        r = await self._run(run_id)
        return run_json(r, self._name(r.schedule_id))

    async def get_run_log(self, run_id: str) -> bytes:
        await self._run(run_id)
        return await self.engine.store.call(self.engine.store.run_log, run_id) or b""

    async def retry_run(self, run_id: str) -> JSON:
        r = await self._run(run_id)
        if r.status not in TERMINAL:
            raise Conflict(
                f"run {run_id} is {r.status.value}; only a finished run can be retried",
                "run_not_finished",
            )
        ok, _ = await self.engine.store.call(
            self.engine.store.update_run,
            run_id,
            expect=list(TERMINAL),
            status=RunStatus.QUEUED,
            attempt=r.attempt + 1,
            finished_at=None,
            error=None,
            queued_at=self.engine.clock.now(),
            started_at=None,
        )
        if not ok:
            raise Conflict(f"run {run_id} changed meanwhile", "run_changed")
        await self.engine.runner.enqueue([run_id])
        return await self.get_run(run_id)

    async def cancel_run(self, run_id: str) -> JSON:
        r = await self._run(run_id)
        if r.status not in (RunStatus.QUEUED, RunStatus.RUNNING):
            raise Conflict(
                f"run {run_id} is {r.status.value}; only Queued or Running runs can be canceled",
                "run_finished",
            )
        await self.engine.runner.cancel(run_id)
        await self.engine.runner.wait_run(run_id)
        return await self.get_run(run_id)
