"""Pipelines, schedules and runs as the API, the page and the SDK show them (JSON values)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from watcherd.core.models import Pipeline, Run, Status
from watcherd.core.redact import redact_url
from watcherd.core.timefmt import format_utc

__all__ = ["pipeline_json", "run_json"]

JSON = dict[str, Any]


def run_json(run: Run, schedule_name: str | None = None) -> JSON:
    """A run as the API shows it (times ISO UTC, duration in seconds)."""
    duration = None
    if run.started_at and run.finished_at:
        duration = round((run.finished_at - run.started_at).total_seconds(), 3)
    return {
        "id": run.id,
        "schedule_id": run.schedule_id or None,  # None: a pipeline submitted by hand
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
        "queued_at": format_utc(run.queued_at),
        "started_at": format_utc(run.started_at),
        "finished_at": format_utc(run.finished_at),
        "next_attempt_at": format_utc(run.next_attempt_at),
        "duration": duration,
    }


def pipeline_json(
    p: Pipeline,
    status: Status,
    schedule_ids: Sequence[str],
    last: Mapping[str, Run],
    names: Mapping[str, str],
) -> JSON:
    """A pipeline with its schedules and its newest run (`last`: newest run per schedule)."""
    t = p.target
    endpoint = getattr(t, "url", None) or getattr(t, "endpoint", None)
    runs = [r for r in last.values() if r.pipeline_id == p.id]
    newest = max(runs, key=lambda r: r.seq, default=None)
    return {
        "id": p.id,
        "name": p.name,
        "kind": p.kind,
        "description": p.description,
        "status": status.value,
        "parameters": dict(p.parameters),
        "continue_on_step_failure": p.continue_on_step_failure,
        "endpoint": redact_url(endpoint) if endpoint else None,
        "schedules": list(schedule_ids),
        "last_run": run_json(newest, names.get(newest.schedule_id)) if newest else None,
    }
