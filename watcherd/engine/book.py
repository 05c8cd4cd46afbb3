"""`ScheduleBook`: the engine's in-memory view of the schedules and pipelines.

It holds the loaded config, every schedule (declared, API-created, removed) with its stored
row, the stored API schedules that no longer parse (`broken`), and each pipeline's status.
The engine replaces its contents when a config is applied or another replica changes a row;
everything else reads it.
"""

from __future__ import annotations

import dataclasses

from watcherd.core.errors import ConfigError, ConfigErrors, NotFound
from watcherd.core.models import (
    Config,
    Schedule,
    Source,
    Status,
    StoredSchedule,
)
from watcherd.engine.reconcile import Reconciled, parse_stored

__all__ = ["ScheduleBook"]


@dataclasses.dataclass(slots=True)
class ScheduleBook:
    """Schedules and pipelines as this daemon knows them."""

    config: Config
    schedules: dict[str, Schedule] = dataclasses.field(default_factory=dict)
    rows: dict[str, StoredSchedule] = dataclasses.field(default_factory=dict)
    broken: dict[str, str] = dataclasses.field(default_factory=dict)  # id → why (in error)
    pipeline_status: dict[str, Status] = dataclasses.field(default_factory=dict)
    fresh: set[str] = dataclasses.field(default_factory=set)  # timers just (re)created
    # Bumped by every change to which schedules exist, their definitions, pipelines,
    # statuses or errors, and to a pipeline's status (not by a cursor moving): what the API's
    # list indexes are cached against, and what a timer's prepared slot was computed under.
    version: int = 0

    def changed(self) -> None:
        """Say that the schedules' identities, statuses or errors changed."""
        self.version += 1

    def set_broken(self, sid: str, why: str) -> None:
        self.broken[sid] = why
        self.version += 1

    def load(self, config: Config, plan: Reconciled) -> None:
        """Take a reconciled state (a config applied, or re-read from the store)."""
        self.config = config
        self.schedules, self.rows, self.broken = plan.schedules, plan.rows, plan.broken
        self.pipeline_status = plan.pipeline_status
        self.fresh |= plan.fresh
        self.version += 1

    def schedule(self, ident: str) -> Schedule:
        """A schedule by id, else by name; raises NotFound."""
        s = self.schedules.get(ident)
        if s is not None:
            return s
        for s in self.schedules.values():
            if s.name == ident:
                return s
        raise NotFound("schedule", ident)

    def runnable(self, s: Schedule) -> bool:
        """Active, with an Active pipeline: its slots and file changes start runs."""
        return s.status is Status.ACTIVE and self.pipeline_status.get(s.pipeline) is Status.ACTIVE

    def put(self, row: StoredSchedule, s: Schedule | None) -> None:
        self.version += 1
        self.rows[row.id] = row
        if s is None:
            self.schedules.pop(row.id, None)
        else:
            self.schedules[row.id] = s
            self.broken.pop(row.id, None)

    def drop(self, sid: str) -> None:
        self.version += 1
        self.schedules.pop(sid, None)
        self.rows.pop(sid, None)
        self.broken.pop(sid, None)
        self.fresh.discard(sid)

    def from_row(self, row: StoredSchedule) -> Schedule | None:
        """The schedule a stored row stands for under this config (another replica wrote the
        row): declared ones from the config with the row's status, others parsed from their
        stored body; None (and `broken` set for API ones) when it no longer parses."""
        if row.source == Source.FILE.value:
            declared = next((s for s in self.config.schedules if s.id == row.id), None)
            if declared is None:
                return None
            return dataclasses.replace(declared, status=Status(row.status), source=Source.FILE)
        try:
            s = parse_stored(row, self.config, Source(row.source))
        except (ConfigErrors, ConfigError) as exc:
            if row.source == Source.API.value:
                self.set_broken(row.id, f"stored schedule no longer valid: {exc}")
            return None
        return dataclasses.replace(s, status=Status(row.status))
