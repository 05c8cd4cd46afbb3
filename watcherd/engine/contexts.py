"""What a dispatcher gets for a run: the run as queued, and the pipeline as configured now.

A run's parameters and file were resolved when it was queued (they travel with it, SPEC §5);
its pipeline's steps, URL, headers and env, and its schedule's name and description, are the
current config's, read here at dispatch time.
"""

from __future__ import annotations

from collections.abc import Mapping

from watcherd.core.models import (
    BlobDatastore,
    Config,
    CronTrigger,
    RecurrenceTrigger,
    Run,
    Schedule,
)
from watcherd.core.timefmt import parse_utc
from watcherd.engine.clock import Clock
from watcherd.engine.execution import Plan
from watcherd.engine.ports import RunContext

__all__ = ["plan_for"]

KINDS = ("command", "http", "azureml", "batch_endpoint")


def plan_for(
    run: Run, config: Config, schedules: Mapping[str, Schedule], clock: Clock
) -> Plan | str:
    """The Plan of a Queued run, or why it cannot be dispatched (it then ends Failed)."""
    p = config.pipeline_by_id(run.pipeline_id)
    if p is None:
        return f"pipeline {run.pipeline_id} is no longer configured"
    if p.kind not in KINDS:
        return f"unknown pipeline kind {p.kind}"
    s = schedules.get(run.schedule_id)
    serial = bool(
        s
        and isinstance(s.trigger, RecurrenceTrigger | CronTrigger)
        and s.trigger.options.concurrency == "queue"
    )
    cosf = p.continue_on_step_failure
    asked = run.trigger.get("continue_on_step_failure")  # a submit's own setting
    if s is not None and s.continue_on_step_failure is not None:
        cosf = s.continue_on_step_failure
    elif isinstance(asked, bool):
        cosf = asked

    def make(r: Run, attempt: int) -> RunContext:
        slot = r.trigger.get("slot")
        when = parse_utc(str(slot)) if slot else (r.queued_at or clock.now())
        extra = {}
        if r.trigger.get("kind") == "on_failure" and "failed_run" in r.parameters:
            extra["WATCHERD_FAILED_RUN"] = r.parameters["failed_run"]
        ds = config.datastores.get(r.file.datastore) if r.file is not None else None
        return RunContext(
            run=r,
            pipeline=p,
            schedule=s,
            parameters=r.parameters,
            file=r.file,
            trigger_time=when or clock.now(),
            continue_on_step_failure=cosf,
            config_dir=config.base_dir,
            attempt=attempt,
            extra_env=extra,
            azureml_datastore=ds.azureml_datastore if isinstance(ds, BlobDatastore) else None,
            secrets=config.secrets,
        )

    return Plan(
        pipeline=p,
        schedule_name=s.name if s else (run.schedule_id or "(submit)"),
        serial=serial,
        make_context=make,
        secrets=config.secrets,
    )
