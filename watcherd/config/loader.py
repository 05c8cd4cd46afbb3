"""Loading and validating the config file (SPEC §2) into a frozen `Config`.

Every problem is collected before anything is raised: `ConfigErrors` holds one `ConfigError`
per problem, each `key.path: reason` with indices from 0, and no secret value in any reason.
The only I/O here is reading the file in `load`; nothing reads the clock.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import tomli

from watcherd.config.daemon import database_secrets
from watcherd.config.env import substitute
from watcherd.config.export import export_toml, schedule_to_dict, trigger_name
from watcherd.config.limits import scan, tainted
from watcherd.config.refs import check_compat, on_failure_problems, placeholder_problems
from watcherd.config.schedules import Context, build_schedule
from watcherd.config.schema import At, Problems, describe, unknown_key
from watcherd.config.targets import (
    parse_daemon,
    parse_datastores,
    parse_pipelines,
    resolve_pipeline,
)
from watcherd.core.errors import ConfigError, ConfigErrors
from watcherd.core.models import Config, Schedule, Source
from watcherd.core.redact import connection_string_secrets, query_values, redact, url_secrets

__all__ = [
    "check_compat",
    "collect_secrets",
    "events_secrets",
    "export_toml",
    "find_config_path",
    "load",
    "parse",
    "parse_schedule",
    "schedule_to_dict",
]

DEFAULT_NAME = "watcherd.toml"
FILE_MAX = 64 * 1024 * 1024  # bytes: a config file larger than this is a mistake
_TOP_LEVEL = ("daemon", "datastores", "pipelines", "schedules")
_READ_ONLY = ("id", "source", "created_at", "updated_at", "next_fire_times")
_TOML_POSITION = re.compile(r"(.*) \((at line \d+, column \d+|at end of document)\)", re.S)


def find_config_path(arg: str | None, env: Mapping[str, str], cwd: Path) -> Path:
    """`--config`, else `$WATCHERD_CONFIG`, else `./watcherd.toml`; relative to `cwd`."""
    chosen = Path(arg or env.get("WATCHERD_CONFIG") or DEFAULT_NAME)
    return chosen if chosen.is_absolute() else cwd / chosen


def load(path: Path, env: Mapping[str, str]) -> Config:
    """Read, parse and validate the config file at `path`.

    Raises:
        ConfigErrors: every problem found; a missing file, bad UTF-8 or a TOML syntax error
            (with its line and column) is a single problem.
    """
    try:
        with path.open("rb") as f:
            data = f.read(FILE_MAX + 1)
    except FileNotFoundError:
        raise _one(path, f"config file {path} not found") from None
    except OSError as exc:
        raise _one(path, f"cannot read config file {path}: {exc.strerror or exc}") from None
    if len(data) > FILE_MAX:
        raise _one(path, f"config file {path} is larger than {FILE_MAX // 1024 // 1024} MiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise _one(path, f"not valid UTF-8 at line {line}") from None
    try:
        raw = tomli.loads(text)  # tomllib's parser, compiled: 3x faster (README)
    except tomli.TOMLDecodeError as exc:
        raise _one(path, _syntax_reason(str(exc), text)) from None
    except RecursionError:  # the parser recurses once per level of nested arrays/tables
        raise _one(path, "TOML values nested too deeply (more than 32 levels)") from None
    return parse(raw, path=path, base_dir=path.absolute().parent, env=env)


def _syntax_reason(message: str, text: str) -> str:
    m = _TOML_POSITION.fullmatch(message)
    if m is None:
        return f"TOML syntax error: {message}"
    where = m.group(2)
    if where == "at end of document":  # the parser gives no position there; SPEC §2 wants one
        line = text.count("\n") + 1
        column = len(text) - (text.rfind("\n") + 1) + 1
        where = f"at line {line}, column {column} (end of document)"
    return f"TOML syntax error {where}: {m.group(1)}"


def _one(path: Path, reason: str) -> ConfigErrors:
    return ConfigErrors([ConfigError("", reason)], source=str(path))


def parse(
    raw: Mapping[str, object], *, path: Path | None, base_dir: Path, env: Mapping[str, str]
) -> Config:
    """Validate a parsed TOML document; relative paths resolve against `base_dir`.

    Raises:
        ConfigErrors: every problem found.
    """
    problems = Problems()
    tree, env_problems, bad = substitute(raw, env, top_lists=1)
    _raise_deep(bad, str(path) if path else "config")
    for key_path, reason in env_problems:
        problems.add(key_path, reason)
    # A value whose ${…} failed (or holds a NUL) is left as written; its converter's
    # complaint is noise.
    noise = {key_path for key_path, _ in env_problems}
    for key_path, reason, taints in bad:
        problems.add(key_path, reason)
        if taints:
            noise.add(key_path)
    first_converter_error = len(problems.errors)
    secrets = collect_secrets(tree)
    root = At("", problems)
    for key in tree:
        if key not in _TOP_LEVEL:
            (root / key).error(unknown_key(key, _TOP_LEVEL))
    daemon = parse_daemon(tree.get("daemon"), root / "daemon", base_dir, env)
    stores, broken_stores = parse_datastores(tree.get("datastores"), root / "datastores", base_dir)
    targets = parse_pipelines(tree.get("pipelines"), root / "pipelines", base_dir)
    config = Config(
        path=path,
        base_dir=base_dir,
        daemon=daemon,
        datastores=stores,
        pipelines=targets.pipelines,
        secrets=secrets,
        digest=_digest(tree),
    )
    ctx = Context(config, frozenset(targets.broken), frozenset(broken_stores))
    schedules = _parse_schedules(tree.get("schedules"), root / "schedules", ctx)
    problems.errors += on_failure_problems(config)
    if problems:
        kept = [e for i, e in enumerate(problems.errors) if i < first_converter_error or
                not (tainted(e.key_path, noise) or _tainted_site(e.reason, noise))]  # fmt: skip
        raise _redacted(_unique(kept), secrets, str(path) if path else "config")
    return replace(config, schedules=tuple(schedules))


_PLACEHOLDER_SITE = re.compile(r"unresolved placeholder \{[^}]*\} in (\S+)")


def _tainted_site(reason: str, noise: set[str]) -> bool:
    """An unresolved placeholder found in a value whose `${…}` failed (reported at that value
    already: `${X}` left as written reads as the placeholder `{X}`) is noise too."""
    m = _PLACEHOLDER_SITE.match(reason)
    return m is not None and tainted(m.group(1), noise)


def _digest(tree: Mapping[str, object]) -> str:
    """What replicas must share, as written: every table but [daemon], keys sorted. One C
    pass (0.04 s at 10k schedules, where a `repr` of the parsed config took 0.18 s), and the
    same across hosts whatever directory the file is in and across watcherd versions."""
    shared = {k: v for k, v in tree.items() if k != "daemon"}
    text = json.dumps(shared, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _scan_or_raise(raw: object, root: str, source: str) -> list[tuple[str, str, bool]]:
    """`scan` an API body; nesting too deep is raised at once (the rest of the checks walk
    the tree recursively), every other problem is returned."""
    found = scan(raw, root)
    _raise_deep(found, source)
    return found


def _raise_deep(found: list[tuple[str, str, bool]], source: str) -> None:
    deep = [ConfigError(p, r) for p, r, _ in found if r.startswith("nested too deeply")]
    if deep:
        raise ConfigErrors(deep, source=source)


def _unique(errors: list[ConfigError]) -> list[ConfigError]:
    seen: set[tuple[str, str]] = set()
    out = []
    for e in errors:
        if (e.key_path, e.reason) not in seen:
            seen.add((e.key_path, e.reason))
            out.append(e)
    return out


def _parse_schedules(raw: object, at: At, ctx: Context) -> list[Schedule]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        at.error(f"expected an array of tables ([[schedules]]), got {describe(raw)}")
        return []
    schedules: list[Schedule] = []
    index: dict[str, int] = {}  # schedule id → position in the file
    names: dict[str, int] = {}
    for i, item in enumerate(raw):
        schedule = build_schedule(item, at / i, ctx, source=Source.FILE)
        # A schedule with other errors still takes its name: a duplicate is reported too.
        name = schedule.name if schedule is not None else _raw_name(item)
        first = names.get(name) if name is not None else None
        duplicate = first is not None
        if first is not None:
            (at / i / "name").error(f"duplicate name {name!r} (also {at.path}[{first}])")
        elif name is not None:
            names[name] = i
        if schedule is None:
            continue
        for reason in placeholder_problems(schedule, ctx.config):
            (at / i / "pipeline").error(reason)
        if not duplicate and schedule.id in index:
            (at / i / "id").error(
                f"duplicate id {schedule.id!r} (also {at.path}[{index[schedule.id]}])"
            )
        index.setdefault(schedule.id, i)
        schedules.append(schedule)
    return schedules


def _raw_name(item: object) -> str | None:
    """The name a schedule table gives, when it is a non-empty string."""
    name = item.get("name") if isinstance(item, Mapping) else None
    return name if isinstance(name, str) and name else None


def parse_schedule(
    raw: Mapping[str, object],
    *,
    config: Config,
    key_prefix: str,
    source: Source,
    existing: Schedule | None = None,
) -> Schedule:
    """Validate a schedule from an API body, with the config file's checks and messages.

    A None value means "not given". With `existing` this is a PATCH: given keys replace the
    existing values (`pipeline_parameters: {}` clears them), the trigger kind, pipeline and
    experiment cannot change, and the id and source are kept. Without it, an api schedule
    gets a new uuid4 id. Read-only keys (`id`, `source`, `created_at`, `updated_at`,
    `next_fire_times`) are refused unless None.

    Raises:
        ConfigErrors: every problem, with key paths rooted at `key_prefix`.
    """
    problems = Problems()
    at = At(key_prefix, problems)
    if not isinstance(raw, Mapping):
        raise ConfigErrors([ConfigError(key_prefix, f"expected an object, got {describe(raw)}")])
    noise = set()
    for key_path, reason, taints in _scan_or_raise(raw, key_prefix, "schedule"):
        problems.add(key_path, reason)
        if taints:
            noise.add(key_path)
    first_converter_error = len(problems.errors)
    body = {k: v for k, v in raw.items() if v is not None}
    merged = body if existing is None else _merge_patch(body, existing, config, at)
    schedule = None
    if merged is not None:
        fixed = existing.id if existing is not None else None
        kind = existing.source if existing is not None else source
        schedule = build_schedule(
            merged, at, Context(config), source=kind, api_body=True, fixed_id=fixed
        )
    if schedule is not None:
        for reason in placeholder_problems(schedule, config):
            (at / "pipeline").error(reason)
    if problems or schedule is None:
        kept = [e for i, e in enumerate(problems.errors) if i < first_converter_error or
                not tainted(e.key_path, noise)]  # fmt: skip
        raise _redacted(_unique(kept), config.secrets, "schedule")
    return schedule


_KIND_CHANGE = {
    ("recurrence", "datastore"): "Can not specify a recurrence for a Datastore schedule.",
    ("cron", "datastore"): "Can not specify a cron for a Datastore schedule.",
    ("trigger", "datastore"): "Can not specify a trigger for a Datastore schedule.",
    ("datastore", "recurrence"): "Can not specify a Datastore for a Recurrence schedule.",
    ("datastore", "cron"): "Can not specify a Datastore for a Recurrence schedule.",
    ("datastore", "trigger"): "Can not specify a Datastore for a Recurrence schedule.",
}
_TIME_KEYS = {  # what each time trigger owns; a PATCH with another of the three replaces them
    "recurrence": ("recurrence", "end_time"),
    "cron": ("cron", "time_zone", "start_time", "end_time"),
    "trigger": ("trigger",),
}


def _merge_patch(
    patch: dict[str, Any], existing: Schedule, config: Config, at: At
) -> dict[str, Any] | None:
    """The existing schedule's keys overlaid with the patch; None after a refused change.

    A time schedule's `recurrence`, `cron` or `trigger` may be replaced by another of the three
    (SPEC §13); a datastore schedule stays one, and a time schedule a time schedule."""
    before = len(at.problems.errors)
    kind = trigger_name(existing.trigger)
    replaced = None
    for key in ("recurrence", "cron", "trigger", "datastore"):
        if key not in patch or key == kind:
            continue
        if key in _TIME_KEYS and kind in _TIME_KEYS:
            replaced = kind
        else:
            (at / key).error(_KIND_CHANGE[(key, kind)])
    ref = patch.get("pipeline")
    if isinstance(ref, str):
        found = resolve_pipeline(config.pipelines, ref)
        if (found.id if found else ref) != existing.pipeline:
            (at / "pipeline").error("the pipeline of a schedule is fixed at creation")
    experiment = patch.get("experiment_name")
    if experiment is not None and experiment != existing.experiment_name:
        (at / "experiment_name").error("the experiment of a schedule is fixed at creation")
    if len(at.problems.errors) > before:
        return None
    merged = {
        k: v
        for k, v in schedule_to_dict(existing, config).items()
        if v is not None and k not in _READ_ONLY and k not in _TIME_KEYS.get(replaced or "", ())
    }
    merged.update(patch)
    return merged


def _redacted(errors: Iterable[ConfigError], secrets: Iterable[str], source: str) -> ConfigErrors:
    """ConfigErrors whose reasons carry no secret (belt and braces: converters of secret keys
    never quote their values)."""
    secrets = tuple(secrets)
    clean = [ConfigError(e.key_path, redact(e.reason, secrets)) for e in errors]
    return ConfigErrors(clean, source=source)


# ── secrets ───────────────────────────────────────────────────────────────────


def _tables(value: object) -> list[Mapping[str, Any]]:
    if not isinstance(value, Mapping):
        return []
    return [v for v in value.values() if isinstance(v, Mapping)]


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [v for v in value.values() if isinstance(v, str)]
    return []


def collect_secrets(tree: Mapping[str, object]) -> frozenset[str]:
    """Every secret value in a substituted raw config (SPEC §8), valid or not."""
    found: list[str] = []
    daemon = tree.get("daemon")
    if isinstance(daemon, Mapping):
        found += _strings(daemon.get("token"))
        for database in _strings(daemon.get("database")):
            found += database_secrets(database)
    for store in _tables(tree.get("datastores")):
        for conn in _strings(store.get("connection_string")):
            found += connection_string_secrets(conn)
        for sas in _strings(store.get("sas_token")):
            found += [sas, sas.lstrip("?"), *query_values(sas.lstrip("?"))]  # "sig=X" too
        found += _strings(store.get("account_key"))
        for url in _strings(store.get("account_url")):
            found += url_secrets(url)
    for pipeline in _tables(tree.get("pipelines")):
        found += _strings(pipeline.get("headers")) + _strings(pipeline.get("env"))
        for url in _strings(pipeline.get("url")) + _strings(pipeline.get("endpoint")):
            found += url_secrets(url)
    schedules = tree.get("schedules")
    for schedule in schedules if isinstance(schedules, list) else ():
        events = schedule.get("events") if isinstance(schedule, Mapping) else None
        if isinstance(events, Mapping):
            found += events_secrets(events)
    return frozenset(s for s in found if s)


def events_secrets(events: Mapping[str, object]) -> list[str]:
    """The secrets of a blob trigger's `events` table: the queue connection string with its
    key or SAS, and the userinfo and query of the queue URL."""
    found: list[str] = []
    for conn in _strings(events.get("queue_connection_string")):
        found += connection_string_secrets(conn)
    for url in _strings(events.get("queue_account_url")):
        found += url_secrets(url)
    return found
