"""One schedule, from a `[[schedules]]` table or an API body, into a validated `Schedule`.

The trigger kind is the one of `recurrence`, `cron`, `trigger` (Azure ML v2, SPEC §13) and
`datastore` present; keys of another kind are errors. Azure ML's own messages are kept for its
checks (both or neither trigger, datastore-only keys without a datastore), and
`make_recurrence` / `make_cron` give theirs.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import time
from functools import cached_property, lru_cache
from typing import Any, Generic, TypeVar, cast

from watcherd.config.files import DATASTORE_KEYS, datastore_fields, datastore_trigger
from watcherd.config.limits import DESCRIPTION_MAX
from watcherd.config.schema import (
    At,
    Converter,
    EnvStr,
    Field,
    Invalid,
    as_bool,
    as_choice,
    as_int,
    as_name,
    as_str,
    as_str_map,
    as_text,
    as_wall_time,
    describe,
    did_you_mean,
    read_table,
)
from watcherd.config.targets import PIPELINE_ID
from watcherd.config.v2 import V2_HINT_KEYS, as_v2_trigger
from watcherd.core import cron as cron_mod
from watcherd.core import recurrence as recurrence_mod
from watcherd.core.errors import ValidationError
from watcherd.core.models import (
    BatchEndpointTarget,
    Config,
    CronTrigger,
    DatastoreTrigger,
    LocalDatastore,
    Pipeline,
    RecurrenceTrigger,
    Schedule,
    Source,
    Status,
    TimeOptions,
    Trigger,
    default_schedule_id,
)
from watcherd.core.v2 import V2Trigger

__all__ = ["COMMON_KEYS", "TRIGGER_KEYS", "Context", "build_schedule", "trigger_kind"]

BOTH = "Can not specify both a Recurrence and a Datastore"
NEITHER = "Must specify either a Recurrence or a Datastore."
SDK_DATASTORE_ONLY = {
    "data_path_parameter_name": (
        "Data Path parameter name can only be specified for Datastore schedules."
    ),
    "path_on_datastore": (
        "Path on datastore parameter can only be specified for Datastore schedules."
    ),
}

COMMON_KEYS = (
    "name", "pipeline", "experiment_name", "id", "description", "status",
    "pipeline_parameters", "continue_on_step_failure",
)  # fmt: skip
_TIME_OPTIONS = ("end_time", "catch_up", "max_catch_up", "concurrency", "max_queued")
TRIGGER_KEYS: dict[str, tuple[str, ...]] = {
    "recurrence": ("recurrence", *_TIME_OPTIONS),
    "cron": ("cron", "time_zone", "start_time", *_TIME_OPTIONS),
    "trigger": ("trigger", *_TIME_OPTIONS[1:]),
    "datastore": DATASTORE_KEYS,
}  # fmt: skip
_RECURRENCE_KEYS = (
    "frequency", "interval", "start_time", "time_zone", "hours", "minutes", "week_days",
    "time_of_day",
)  # fmt: skip


V = TypeVar("V")


class Shared(Generic[V]):
    """Values met before in one config, by key; it stops looking when the config shares
    nothing (fewer than one hit in SHARED_MIN_HITS lookups after SHARED_TRIAL), so that a file
    of all-different schedules pays for a few keys only."""

    def __init__(self) -> None:
        self.values: dict[tuple[object, ...], V] = {}
        self.lookups = self.hits = 0

    @property
    def on(self) -> bool:
        return self.lookups < SHARED_TRIAL or self.hits * SHARED_MIN_HITS >= self.lookups

    def get(self, key: tuple[object, ...] | None) -> V | None:
        if key is None:
            return None
        self.lookups += 1
        found = self.values.get(key)
        if found is not None:
            self.hits += 1
        return found

    def put(self, key: tuple[object, ...] | None, value: V) -> V:
        if key is not None:
            self.values[key] = value
        return value


SHARED_TRIAL = 512
SHARED_MIN_HITS = 4


@dataclass(frozen=True)
class Context:
    """What a schedule is checked against: the config's pipelines and datastores, plus the
    names/ids of broken ones (already reported, so references to them add no error).

    The key tables are built once per context, not once per schedule (issue #14)."""

    config: Config
    broken_pipelines: frozenset[str] = field(default_factory=frozenset)
    broken_datastores: frozenset[str] = field(default_factory=frozenset)

    @cached_property
    def recurrences(self) -> Shared[recurrence_mod.Recurrence]:
        """Valid recurrences by their inline table, as written (`_table_key`): a generated
        config repeats a few hundred rules over thousands of schedules."""
        return Shared()

    @cached_property
    def crons(self) -> Shared[cron_mod.CronRule]:
        """Valid cron rules by their keys as written (`_scalars_key`), as `recurrences`."""
        return Shared()

    @cached_property
    def triggers(self) -> Shared[Trigger]:
        """Time triggers by (kind, id of their shared rule, end_time, options): schedules that
        share all of it share one trigger (whatever is derived from it, once)."""
        return Shared()

    @cached_property
    def tables(self) -> dict[tuple[str, bool], tuple[dict[str, Field], tuple[str, ...]]]:
        """(converters, required keys) by (trigger kinds, file table), filled as met."""
        return {}

    def fields_for(
        self, kinds: tuple[str, ...], *, with_id: bool
    ) -> tuple[dict[str, Field], tuple[str, ...]]:
        key = ("+".join(kinds), with_id)
        found = self.tables.get(key)
        if found is None:
            table = _common_fields(self, with_id=with_id)
            for kind in kinds:
                table.update(_trigger_fields(kind, self))
            found = table, tuple(k for k, spec in table.items() if spec.required)
            self.tables[key] = found
        return found


def trigger_kind(raw: Mapping[str, object], at: At) -> str | None:
    """The one trigger kind present, else report Azure ML's message and return None."""
    present = {k for k in TRIGGER_KEYS if raw.get(k) is not None}
    if "datastore" in present and present & {"recurrence", "cron", "trigger"}:
        at.error(BOTH)
    elif present == {"recurrence", "cron"}:
        at.error("Can not specify both a Recurrence and a cron expression")
    elif len(present) > 1:
        at.error(f"give one of {', '.join(sorted(present))}, not both")
    elif not present:
        at.error(NEITHER)
    else:
        return present.pop()
    return None


def build_schedule(
    raw: object,
    at: At,
    ctx: Context,
    *,
    source: Source,
    api_body: bool = False,
    fixed_id: str | None = None,
) -> Schedule | None:
    """Validate one schedule table; report every problem through `at` and return None on any.

    The id is `fixed_id` when given (a PATCH); else an API body gets a new uuid4 and refuses
    read-only keys, and a file table takes its `id` key or `default_schedule_id(name)`.
    """
    if type(raw) is not dict and not isinstance(raw, Mapping):  # a dict: no ABC check
        at.error(f"expected a table, got {describe(raw)}")
        return None
    before = len(at.problems.errors)
    kind = trigger_kind(raw, at)
    skip = _sdk_checks(raw, at)
    # With two triggers, check both anyway; with none, other trigger keys can't be judged.
    kinds = [kind] if kind else [k for k in TRIGGER_KEYS if raw.get(k) is not None]
    fields, required = ctx.fields_for(tuple(kinds), with_id=not api_body)
    if not kinds:
        skip |= {k for keys in TRIGGER_KEYS.values() for k in keys}
    values = read_table(raw, at, fields, foreign=_foreign(kind, api_body), skip=skip)
    if values is None:
        return None
    if (
        kind is None
        or len(at.problems.errors) > before
        or any(key not in values for key in required)  # e.g. a broken pipeline, reported
    ):
        _trigger_problems(kinds, values, at, ctx)
        return None
    trigger = _BUILDERS[kind](values, at, ctx)
    if trigger is None:
        return None
    if not _target_fits(values["pipeline"], trigger, ctx.config, at / "pipeline"):
        return None
    if fixed_id is None and api_body:
        fixed_id = str(uuid.uuid4())
    return _assemble(values, trigger, source=source, fixed_id=fixed_id)


def _trigger_problems(kinds: list[str], values: dict[str, Any], at: At, ctx: Context) -> None:
    """Report the checks the builders make themselves (a cron expression, its zone and times;
    a datastore's kind-dependent keys) for a schedule refused already, so that check-config
    lists all its errors (SPEC §6). A builder runs only on its own converted keys: a key that
    failed to convert, or a reference to a broken datastore, was reported (or is part of an
    error reported) already, and its consequences would be noise."""
    for kind in kinds:
        needs = _CHECKED_BY_BUILDER.get(kind)
        if needs is None or needs not in values:
            continue
        trigger = _BUILDERS[kind](values, at, ctx)
        if trigger is not None and "pipeline" in values:
            _target_fits(values["pipeline"], trigger, ctx.config, at / "pipeline")


def _assemble(
    values: dict[str, Any], trigger: Trigger, *, source: Source, fixed_id: str | None
) -> Schedule:
    common = {k: values[k] for k in COMMON_KEYS if k in values}
    pipeline: Pipeline = common.pop("pipeline")
    declared = common.pop("id", None)
    ident = fixed_id or declared or default_schedule_id(common["name"])
    if "status" in common:
        common["status"] = Status(common["status"])
    return Schedule(id=ident, pipeline=pipeline.id, trigger=trigger, source=source, **common)


def _target_fits(pipeline: Pipeline, trigger: Trigger, config: Config, at: At) -> bool:
    """A batch endpoint reads its input file from Azure storage: a local datastore cannot feed
    one (SPEC §13)."""
    if isinstance(pipeline.target, BatchEndpointTarget) and isinstance(trigger, DatastoreTrigger):
        store = config.datastores.get(trigger.datastore)
        if isinstance(store, LocalDatastore):
            at.error(
                f"pipeline {pipeline.name!r} is a batch_endpoint, which reads its input from "
                f"Azure storage: local datastore {store.name!r} cannot feed it "
                "(use an azure_blob datastore)"
            )
            return False
    return True


def _sdk_checks(raw: Mapping[str, object], at: At) -> set[str]:
    """Azure ML's messages for datastore-only keys without a datastore; returns those keys."""
    found = set()
    if raw.get("datastore") is None:
        for key, message in SDK_DATASTORE_ONLY.items():
            if raw.get(key) is not None:
                (at / key).error(message)
                found.add(key)
    return found


@lru_cache(maxsize=16)
def _foreign(kind: str | None, api_body: bool) -> dict[str, str]:
    """Reasons for keys of another trigger kind (and read-only keys of an API body)."""
    out: dict[str, str] = {}
    if api_body:
        out = {k: "read-only key" for k in ("id", "source", "created_at", "updated_at",
                                             "next_fire_times")}  # fmt: skip
    if kind is None:
        return out
    for other, keys in TRIGGER_KEYS.items():
        for key in keys:
            if key not in TRIGGER_KEYS[kind] and key not in out:
                hint = ""
                if kind == "trigger" and key in V2_HINT_KEYS:
                    hint = " (put it inside trigger)"
                elif key in _RECURRENCE_KEYS and kind != "cron":
                    hint = " (put it inside recurrence)"
                out[key] = f"{key!r} is a key of {other} schedules, not of {kind} schedules{hint}"
    if kind == "trigger":
        for key in V2_HINT_KEYS:
            out.setdefault(key, f"{key!r} goes inside trigger (v2 syntax, SPEC §13)")
    return out


# ── common keys ───────────────────────────────────────────────────────────────


def _as_schedule_id(value: object, at: At) -> str:
    text = as_str(value, at)
    if not PIPELINE_ID.fullmatch(text):
        raise Invalid(f"invalid id {text!r}: 1-64 characters from A-Z a-z 0-9 . _ -")
    return text


def _as_pipeline_ref(ctx: Context) -> Converter:
    def convert(value: object, at: At) -> Pipeline:
        ref = as_name(value, at)
        pipeline = ctx.config.pipeline_by_id(ref)
        if pipeline is not None:
            return pipeline
        if ref in ctx.broken_pipelines:
            raise Invalid(None)
        known = [*ctx.config.pipelines, *ctx.broken_pipelines]
        raise Invalid(f"unknown pipeline {ref!r}" + did_you_mean(ref, known))

    return convert


def _common_fields(ctx: Context, *, with_id: bool) -> dict[str, Field]:
    fields = {
        "name": Field(as_name, required=True, flat=True),
        "pipeline": Field(_as_pipeline_ref(ctx), required=True, flat=True),
        "experiment_name": Field(as_name, required=True, flat=True),
        "description": Field(as_text(DESCRIPTION_MAX), flat=True),
        "status": Field(as_choice(*Status), flat=True),
        "pipeline_parameters": Field(as_str_map()),
        "continue_on_step_failure": Field(as_bool, flat=True),
    }
    if with_id:
        fields["id"] = Field(_as_schedule_id, flat=True)
    return fields


# ── trigger keys ──────────────────────────────────────────────────────────────


def _as_is(value: object, at: At) -> object:
    return value


def _env_int(value: object) -> object:
    """An exact `${…}` value that reads as an integer becomes one; anything else is kept."""
    if isinstance(value, EnvStr) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


def _as_int_list(value: object, at: At) -> object:
    """Items of an exact `${…}` become integers; anything else is left to `make_recurrence`,
    so its rules keep SPEC §3.1's order (a scalar `hours` with Minute is rule 3's message, as
    the SDK says, not a type complaint of ours)."""
    if isinstance(value, list):
        return [_env_int(v) for v in value]
    return _env_int(value)


def _as_time_of_day(value: object, at: At) -> object:
    if isinstance(value, time) and not value.second and not value.microsecond:
        return f"{value.hour}:{value.minute:02d}"  # TOML local time 10:30:00
    return value


_RECURRENCE_FIELDS = {  # each converter only passes values on (make_recurrence judges them)
    "frequency": Field(_as_is, required=True, flat=True),
    "interval": Field(lambda v, at: _env_int(v), required=True, flat=True),
    "start_time": Field(_as_is, flat=True),
    "time_zone": Field(_as_is, flat=True),
    "hours": Field(_as_int_list, flat=True),
    "minutes": Field(_as_int_list, flat=True),
    "week_days": Field(_as_is, flat=True),
    "time_of_day": Field(_as_time_of_day, flat=True),
}


def _as_recurrence(ctx: Context) -> Converter:
    """The inline table of Azure ML's ScheduleRecurrence, checked by `make_recurrence`; a
    table met before in this config gives the same (immutable) Recurrence."""
    known = ctx.recurrences

    def convert(value: object, at: At) -> recurrence_mod.Recurrence:
        if not isinstance(value, Mapping):
            example = '{ frequency = "Minute", interval = 15 }'
            raise Invalid(f"expected a table like {example}, got {describe(value)}")
        key = _table_key(value) if known.on else None
        if (found := known.get(key)) is not None:
            return found
        before = len(at.problems.errors)
        args = read_table(value, at, _RECURRENCE_FIELDS)
        if args is None or len(at.problems.errors) > before:
            raise Invalid(None)
        try:
            return known.put(key, recurrence_mod.make_recurrence(**args))
        except ValidationError as exc:
            (at / exc.key if exc.key else at).error(exc.message)
            raise Invalid(None) from None

    return convert


def _scalars_key(*values: object) -> tuple[object, ...] | None:
    """`_table_key` of values that must be scalars (None when one is not hashable)."""
    return _hashable((values, tuple(map(type, values))))


def _hashable(key: tuple[object, ...]) -> tuple[object, ...] | None:
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _table_key(table: Mapping[str, object]) -> tuple[object, ...] | None:
    """A hashable key of a flat table that tells apart every value a converter could read
    differently: each value with its exact type (`true` is not `1`, a `${…}` is not the same
    text written out). None when a value is neither a scalar nor a list of scalars."""
    values = tuple(table.values())
    types = tuple(map(type, values))
    if list in types or dict in types:
        parts: list[object] = []
        for v, kind in zip(values, types, strict=True):
            if kind is dict:
                return None
            if kind is list:
                items = tuple(cast(list[object], v))
                inner = tuple(map(type, items))
                if list in inner or dict in inner:
                    return None
                parts.append((items, inner))
            else:
                parts.append(v)
        values = tuple(parts)
    return _hashable((tuple(table), values, types))


_TIME_OPTION_FIELDS = {
    "catch_up": Field(as_choice("none", "last", "all"), flat=True),
    "max_catch_up": Field(as_int(1, 1000), flat=True),
    "concurrency": Field(as_choice("allow", "forbid", "queue"), flat=True),
    "max_queued": Field(as_int(1, 100_000), flat=True),
}


def _trigger_fields(kind: str | None, ctx: Context) -> dict[str, Field]:
    if kind == "recurrence":
        return {
            "recurrence": Field(_as_recurrence(ctx), required=True),
            "end_time": Field(as_wall_time("end_time"), flat=True),
            **_TIME_OPTION_FIELDS,
        }
    if kind == "trigger":
        return {"trigger": Field(as_v2_trigger, required=True), **_TIME_OPTION_FIELDS}
    if kind == "cron":
        return {
            "cron": Field(as_text(256, empty=False), required=True, flat=True),
            **{k: Field(_as_is, flat=True) for k in ("time_zone", "start_time", "end_time")},
            **_TIME_OPTION_FIELDS,
        }
    if kind == "datastore":
        return datastore_fields(ctx.config.datastores, ctx.broken_datastores)
    return {}


def _time_options(values: Mapping[str, Any]) -> TimeOptions:
    given = {k: values[k] for k in _TIME_OPTION_FIELDS if k in values}
    return TimeOptions(**given) if given else _DEFAULT_OPTIONS


_DEFAULT_OPTIONS = TimeOptions()  # immutable: shared by every schedule that sets no option


def _recurrence_trigger(values: dict[str, Any], at: At, ctx: Context) -> Trigger | None:
    rule, end, options = values["recurrence"], values.get("end_time"), _time_options(values)
    return _shared_trigger(
        ctx,
        ("recurrence", id(rule), end, options),
        lambda: RecurrenceTrigger(recurrence=rule, end_time=end, options=options),
    )


def _cron_trigger(values: dict[str, Any], at: At, ctx: Context) -> Trigger | None:
    args = {k: values.get(k) for k in ("time_zone", "start_time", "end_time")}
    known = ctx.crons
    memo = _scalars_key(values["cron"], *args.values()) if known.on else None
    rule = known.get(memo)
    if rule is None:
        try:
            rule = known.put(memo, cron_mod.make_cron(values["cron"], **args))
        except ValidationError as exc:
            key = "cron" if exc.key in ("", "expression") else exc.key
            (at / key).error(exc.message)
            return None
    options = _time_options(values)
    return _shared_trigger(
        ctx, ("cron", id(rule), None, options), lambda: CronTrigger(cron=rule, options=options)
    )


def _shared_trigger(ctx: Context, key: tuple[object, ...], make: Callable[[], Trigger]) -> Trigger:
    """The trigger met before with this key, else a new one. The key holds its rule's id: the
    entry's trigger keeps that rule alive, so the id names no other rule meanwhile."""
    known = ctx.triggers
    if not known.on:
        return make()
    return known.get(key) or known.put(key, make())


def _v2_trigger(values: dict[str, Any], at: At, ctx: Context) -> Trigger | None:
    v2: V2Trigger = values["trigger"]
    options = _time_options(values)
    if isinstance(v2.rule, cron_mod.CronRule):
        return CronTrigger(cron=v2.rule, options=options, v2=v2.given)
    return RecurrenceTrigger(recurrence=v2.rule, end_time=v2.end_time, options=options, v2=v2.given)


def _datastore_trigger(values: dict[str, Any], at: At, ctx: Context) -> Trigger | None:
    return datastore_trigger(values, at, ctx.config)


# The kinds whose builder checks values itself, with the key it needs (the recurrence and v2
# `trigger` tables are checked by their converters, in `read_table`).
_CHECKED_BY_BUILDER = {"cron": "cron", "datastore": "datastore"}

_BUILDERS = {
    "recurrence": _recurrence_trigger,
    "cron": _cron_trigger,
    "trigger": _v2_trigger,
    "datastore": _datastore_trigger,
}
