"""Cross-references checked at load: placeholders against parameters, and API-created
schedules against a new config.

Placeholder values, lowest to highest precedence: the pipeline's `parameters`, the schedule's
`pipeline_parameters`, the file bound to `data_path_parameter_name` (which alone also has
`{NAME.url}`, the blob's URL, on azure_blob datastores). `failed_run` is defined for every
pipeline some `on_failure` names. A pipeline that no declared schedule uses is not checked at
load: an API-created schedule may supply its parameters, and is checked when it is created
and at every reload (`check_compat`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache

from watcherd.config.schema import key_join
from watcherd.core.errors import ConfigError
from watcherd.core.models import (
    BlobDatastore,
    CommandTarget,
    Config,
    DatastoreTrigger,
    HttpTarget,
    Pipeline,
    Schedule,
    Source,
)
from watcherd.core.placeholders import references

__all__ = ["check_compat", "on_failure_problems", "placeholder_problems"]

FAILED_RUN = "failed_run"
_URL_RULE = "is only defined for the data_path_parameter_name file of an azure_blob datastore"


def _templates(name: str, texts: tuple[tuple[str, ...], ...] | str) -> Iterator[tuple[str, str]]:
    """(key path, template) of every text that takes placeholders: argv elements, http url."""
    base = key_join("pipelines", name)
    if isinstance(texts, str):
        yield key_join(base, "url"), texts
        return
    for i, argv in enumerate(texts):
        for j, arg in enumerate(argv):
            yield f"{key_join(base, 'steps')}[{i}][{j}]", arg


def _unresolved(pipeline: Pipeline, defined: set[str], urls: set[str]) -> list[str]:
    """A reason for each placeholder with no value (first occurrence only); `urls` are the
    names that also have `{NAME.url}`."""
    target = pipeline.target
    if isinstance(target, CommandTarget):
        texts: tuple[tuple[str, ...], ...] | str = target.steps
    elif isinstance(target, HttpTarget):
        texts = target.url
    else:
        return []
    return list(_unresolved_in(pipeline.name, texts, frozenset(defined), frozenset(urls)))


@lru_cache(maxsize=4096)
def _unresolved_in(
    name: str,
    texts: tuple[tuple[str, ...], ...] | str,
    defined: frozenset[str],
    urls: frozenset[str],
) -> tuple[str, ...]:
    # Memoized per (pipeline, names defined): 10k schedules of a few pipelines ask the same
    # question, and the key paths are built once (issue #14).
    seen: set[str] = set()
    reasons = []
    for where, template in _templates(name, texts):
        for ref in references(template):
            name, _, url = ref.partition(".")
            ok = name in urls if url else name in defined
            if ok or ref in seen:
                continue
            seen.add(ref)
            reason = f"unresolved placeholder {{{ref}}} in {where}"
            if url:
                reason += f" ({{NAME.url}} {_URL_RULE})"
            reasons.append(reason)
    return tuple(reasons)


def _on_failure_targets(config: Config) -> set[str]:
    return {p.on_failure for p in config.pipelines.values() if p.on_failure}


def placeholder_problems(schedule: Schedule, config: Config) -> list[str]:
    """Reasons for each placeholder of the schedule's pipeline that has no value."""
    pipeline = config.pipeline_by_id(schedule.pipeline)
    if pipeline is None:
        return []
    defined = set(pipeline.parameters) | set(schedule.pipeline_parameters)
    urls: set[str] = set()
    trigger = schedule.trigger
    if isinstance(trigger, DatastoreTrigger) and trigger.data_path_parameter_name:
        defined.add(trigger.data_path_parameter_name)
        if isinstance(config.datastores.get(trigger.datastore), BlobDatastore):
            urls.add(trigger.data_path_parameter_name)
    if pipeline.id in _on_failure_targets(config):
        defined.add(FAILED_RUN)
    return _unresolved(pipeline, defined, urls)


def on_failure_problems(config: Config) -> list[ConfigError]:
    """An on_failure pipeline runs with its own parameters plus `failed_run`: check those."""
    errors = []
    for p in config.pipelines.values():
        target = config.pipeline_by_id(p.on_failure) if p.on_failure else None
        if target is None:
            continue
        for reason in _unresolved(target, {*target.parameters, FAILED_RUN}, set()):
            errors.append(
                ConfigError(key_join(key_join("pipelines", p.name), "on_failure"), reason)
            )
    return errors


def check_compat(
    new: Config,
    api_schedules: Iterable[Schedule],
    unparsed: Iterable[tuple[str, Mapping[str, object]]] = (),
) -> list[ConfigError]:
    """Problems a new config makes for API-created schedules (source "api"; removed ones do
    not count): a pipeline or datastore they use is gone, a placeholder lost its value, or a
    declared schedule takes an API schedule's name or id. `unparsed` holds the (name, stored
    body) of API schedules that no longer parse: their pipeline and datastore still count."""
    users: dict[tuple[str, str], list[str]] = {}
    errors: list[ConfigError] = []
    api = [s for s in api_schedules if s.source is Source.API]
    for s in api:
        pipeline = new.pipeline_by_id(s.pipeline)
        if pipeline is None:
            users.setdefault(("pipelines", s.pipeline), []).append(s.name)
        else:
            for reason in placeholder_problems(s, new):
                path = key_join("pipelines", pipeline.name)
                errors.append(ConfigError(path, f"API-created schedule {s.name!r}: {reason}"))
        trigger = s.trigger
        if isinstance(trigger, DatastoreTrigger) and trigger.datastore not in new.datastores:
            users.setdefault(("datastores", trigger.datastore), []).append(s.name)
    for name, spec in unparsed:
        pipeline_ref, datastore = spec.get("pipeline"), spec.get("datastore")
        if isinstance(pipeline_ref, str) and new.pipeline_by_id(pipeline_ref) is None:
            users.setdefault(("pipelines", pipeline_ref), []).append(name)
        if isinstance(datastore, str) and datastore not in new.datastores:
            users.setdefault(("datastores", datastore), []).append(name)
    for (table, ident), names in users.items():
        kind = "pipeline id" if table == "pipelines" else "datastore"
        used = ", ".join(repr(n) for n in sorted(names))
        reason = f"{kind} {ident!r} is missing but API-created schedules use it: {used}"
        errors.append(ConfigError(table, reason) if table == "pipelines" else
                      ConfigError(key_join(table, ident), reason))  # fmt: skip
    errors += _clashes(new, api, [name for name, _ in unparsed])
    return errors


def _clashes(new: Config, api: list[Schedule], unparsed: list[str]) -> list[ConfigError]:
    """Schedule names and ids are unique across the file and the API (the one check)."""
    by_name = {s.name for s in api} | set(unparsed)
    by_id = {s.id: s for s in api}
    errors = []
    for i, s in enumerate(new.schedules):
        if s.name in by_name:
            reason = f"name {s.name!r} is taken by an API-created schedule"
            errors.append(ConfigError(f"schedules[{i}].name", reason))
        if s.id in by_id:
            reason = f"id {s.id!r} is taken by API-created schedule {by_id[s.id].name!r}"
            errors.append(ConfigError(f"schedules[{i}].id", reason))
    return errors
