"""The `[daemon]`, `[datastores.*]` and `[pipelines.*]` tables of the config file (SPEC §2)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from watcherd.config.daemon import parse_daemon
from watcherd.config.limits import DESCRIPTION_MAX, PATH_MAX, URL_MAX
from watcherd.config.schema import (
    At,
    Converter,
    Field,
    Invalid,
    as_bool,
    as_choice,
    as_duration,
    as_int,
    as_name,
    as_path,
    as_secret,
    as_size,
    as_str,
    as_str_list,
    as_str_map,
    as_text,
    describe,
    did_you_mean,
    read_table,
    url_problem,
)
from watcherd.core.models import (
    AzureMLTarget,
    BatchEndpointTarget,
    BlobDatastore,
    CommandTarget,
    Datastore,
    HttpTarget,
    LocalDatastore,
    Pipeline,
    RetryPolicy,
    Status,
    Target,
    default_pipeline_id,
)

__all__ = [
    "PIPELINE_ID",
    "Targets",
    "parse_daemon",
    "parse_datastores",
    "parse_pipelines",
    "resolve_pipeline",
]

PIPELINE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# An Azure ML datastore name goes into azureml://datastores/<name>/paths/…: keep it URI-safe.
_AZUREML_DATASTORE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,254}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Azure's container rule, plus the two special containers.
_CONTAINER = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?!-)){1,61}[a-z0-9]|\$root|\$web")


# ── [datastores.*] ────────────────────────────────────────────────────────────


def _as_url(*schemes: str) -> Converter:
    as_url_text = as_text(URL_MAX, empty=False)

    def convert(value: object, at: At) -> str:
        text = as_url_text(value, at)
        if (why := url_problem(text, schemes)) is not None:
            raise Invalid(why)
        return text

    return convert


def _as_container(value: object, at: At) -> str:
    text = as_name(value, at)
    if not _CONTAINER.fullmatch(text):
        raise Invalid(
            f"invalid container name {text!r}: 3-63 lowercase letters, digits and single hyphens"
        )
    return text


def _as_azureml_datastore(value: object, at: At) -> str:
    text = as_name(value, at)
    if not _AZUREML_DATASTORE.fullmatch(text):
        raise Invalid(
            f"invalid Azure ML datastore name {text!r}: up to 255 characters from "
            "A-Z a-z 0-9 _ - (not starting with -)"
        )
    return text


_DATASTORE_KINDS: dict[str, dict[str, Field]] = {
    "local": {
        "root": Field(as_text(PATH_MAX, empty=False), required=True),
        "follow_symlinks": Field(as_choice("within_root", "always")),
    },
    "azure_blob": {
        "container": Field(_as_container, required=True),
        "connection_string": Field(as_secret),
        "account_url": Field(_as_url("https", "http")),
        "sas_token": Field(as_secret),
        "account_key": Field(as_secret),
        "azureml_datastore": Field(_as_azureml_datastore),
    },
}


def parse_datastores(raw: object, at: At, base_dir: Path) -> tuple[dict[str, Datastore], set[str]]:
    """The `[datastores.*]` tables; returns the valid ones and the names of the broken ones."""
    if raw is None:
        return {}, set()
    if not isinstance(raw, Mapping):
        at.error(f"expected a table of datastores, got {describe(raw)}")
        return {}, set()
    good: dict[str, Datastore] = {}
    for name, table in raw.items():
        before = len(at.problems.errors)
        store = _parse_datastore(str(name), table, at / name, base_dir)
        if store is not None and len(at.problems.errors) == before:
            good[str(name)] = store
    return good, set(raw) - set(good)


def _parse_datastore(name: str, raw: object, at: At, base_dir: Path) -> Datastore | None:
    kind = _kind(raw, at, _DATASTORE_KINDS)
    fields = {"kind": Field(as_str, required=True)}
    fields.update(_DATASTORE_KINDS.get(kind or "", {}) if kind else _all_fields(_DATASTORE_KINDS))
    values = read_table(raw, at, fields, foreign=_foreign(_DATASTORE_KINDS, kind, "datastores"))
    if values is None or kind is None:
        return None
    values.pop("kind")
    if kind == "local":
        if "root" not in values:
            return None
        return LocalDatastore(name=name, **{**values, "root": base_dir / values["root"]})
    if "connection_string" in values and "account_url" in values:
        (at / "account_url").error("give either connection_string or account_url, not both")
    elif "connection_string" not in values and "account_url" not in values:
        at.error("exactly one of connection_string or account_url is required")
    for key in ("sas_token", "account_key"):
        if key in values and "account_url" not in values:
            (at / key).error("only valid with account_url")
    if "sas_token" in values and "account_key" in values:
        (at / "account_key").error("give either sas_token or account_key, not both")
    return BlobDatastore(name=name, **values) if "container" in values else None


# ── [pipelines.*] ─────────────────────────────────────────────────────────────


def _as_pipeline_id(value: object, at: At) -> str:
    text = as_str(value, at)
    if not PIPELINE_ID.fullmatch(text):
        raise Invalid(f"invalid id {text!r}: 1-64 characters from A-Z a-z 0-9 . _ -")
    return text


def _as_argv(value: object, at: At) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise Invalid(f"expected a non-empty array of strings (an argv), got {describe(value)}")
    argv: tuple[str, ...] = as_str_list(as_str)(value, at)
    if not argv[0]:
        (at / 0).error("the program (argv[0]) must not be empty")
        raise Invalid(None)
    return argv


def _as_steps(value: object, at: At) -> tuple[tuple[str, ...], ...]:
    if not isinstance(value, list) or not value:
        raise Invalid(f"expected a non-empty array of argv arrays, got {describe(value)}")
    steps: tuple[tuple[str, ...], ...] = as_str_list(_as_argv)(value, at)
    return steps


def _as_env_name(value: object, at: At) -> str:
    text = as_str(value, at)
    if not _ENV_NAME.fullmatch(text):
        raise Invalid(f"invalid environment variable name {text!r}")
    return text


_as_env_values = as_str_map(secret=True)


def _as_env(value: object, at: At) -> dict[str, str]:
    """A command's `env`: string values (secrets), under names a process environment takes
    (else every run would fail at its start, not the config at its load)."""
    env: dict[str, str] = _as_env_values(value, at)
    bad = [k for k in env if not _ENV_NAME.fullmatch(k)]
    for key in bad:
        (at / key).error(f"invalid environment variable name {key!r}")
    if bad:
        raise Invalid(None)
    return env


def _as_retry(value: object, at: At) -> RetryPolicy:
    fields = {"attempts": Field(as_int(1, 1000)), "max_delay": Field(as_duration())}
    values = read_table(value, at, fields)
    if values is None:
        raise Invalid(None)
    return RetryPolicy(**values)


LOG_LIMIT_MAX = 64 << 20  # a run's log is one value of the state database, kept with the run


def _as_log_limit(value: object, at: At) -> int:
    size = as_size(value, at)
    if size > LOG_LIMIT_MAX:
        raise Invalid(
            f"{value} is more than 64MiB: a run's log is kept in the state database "
            "(send more output to a file of your own)"
        )
    return size


def _command_fields(base_dir: Path) -> dict[str, Field]:
    return {
        "steps": Field(_as_steps, required=True),
        "cwd": Field(as_path(base_dir)),
        "env": Field(_as_env),
        "inherit_env": Field(as_str_list(_as_env_name)),
        "retry_exit_codes": Field(as_str_list(as_int(1, 255))),
        "log_limit": Field(_as_log_limit),
    }


def _pipeline_kinds(base_dir: Path) -> dict[str, dict[str, Field]]:
    return {
        "command": _command_fields(base_dir),
        "http": {
            "url": Field(_as_url("http", "https"), required=True),
            "headers": Field(as_str_map(secret=True)),
            "request_timeout": Field(as_duration(positive=True)),
        },
        "azureml": {
            "endpoint": Field(_as_url("https", "http"), required=True),
            "scope": Field(as_name),
        },
        "batch_endpoint": {
            "endpoint": Field(_as_url("https", "http"), required=True),
            "deployment": Field(as_name),
            "input_name": Field(as_name),
            "request_timeout": Field(as_duration(positive=True)),
        },
    }


_PIPELINE_COMMON: dict[str, Field] = {
    "kind": Field(as_str, required=True),
    "id": Field(_as_pipeline_id),
    "description": Field(as_text(DESCRIPTION_MAX)),
    "status": Field(as_choice(*Status)),
    "parameters": Field(as_str_map()),
    "continue_on_step_failure": Field(as_bool),
    "retry": Field(_as_retry),
    "timeout": Field(as_duration(positive=True)),
    "on_failure": Field(as_name),
}

_TARGETS: dict[str, type[Target]] = {
    "command": CommandTarget,
    "http": HttpTarget,
    "azureml": AzureMLTarget,
    "batch_endpoint": BatchEndpointTarget,
}


@dataclass
class Targets:
    """The pipelines that parsed, and the names and ids of the broken ones."""

    pipelines: dict[str, Pipeline] = field(default_factory=dict)
    broken: set[str] = field(default_factory=set)


def parse_pipelines(raw: object, at: At, base_dir: Path) -> Targets:
    """The `[pipelines.*]` tables, with ids checked for duplicates and on_failure resolved."""
    out = Targets()
    if raw is None:
        return out
    if not isinstance(raw, Mapping):
        at.error(f"expected a table of pipelines, got {describe(raw)}")
        return out
    kinds = _pipeline_kinds(base_dir)
    for name, table in raw.items():
        before = len(at.problems.errors)
        pipeline = _parse_pipeline(str(name), table, at / name, kinds)
        if pipeline is not None and len(at.problems.errors) == before:
            out.pipelines[str(name)] = pipeline
        else:
            out.broken.add(str(name))
            if isinstance(table, Mapping) and isinstance(table.get("id"), str):
                out.broken.add(str(table["id"]))
    _check_ids(out, at)
    refs = {str(n): t.get("on_failure") for n, t in raw.items() if isinstance(t, Mapping)}
    _resolve_on_failure(out, {n: r for n, r in refs.items() if isinstance(r, str) and r}, at)
    return out


def _parse_pipeline(
    name: str, raw: object, at: At, kinds: dict[str, dict[str, Field]]
) -> Pipeline | None:
    kind = _kind(raw, at, kinds)
    kind_fields = kinds.get(kind or "", {}) if kind else _all_fields(kinds)
    values = read_table(
        raw, at, {**_PIPELINE_COMMON, **kind_fields}, foreign=_foreign(kinds, kind, "pipelines")
    )
    if values is None or kind is None:
        return None
    target_args = {k: values.pop(k) for k in list(values) if k in kind_fields}
    values.pop("kind")
    if any(f.required and k not in target_args for k, f in kind_fields.items()):
        return None  # already reported
    target: Target = _TARGETS[kind](**target_args)
    values.setdefault("id", default_pipeline_id(name))
    if "status" in values:
        values["status"] = Status(values["status"])
    return Pipeline(name=name, target=target, **values)


def _check_ids(out: Targets, at: At) -> None:
    seen: dict[str, str] = {}
    for name, p in list(out.pipelines.items()):
        if p.id in seen:
            (at / name / "id").error(f"duplicate id {p.id!r} (also pipelines.{seen[p.id]})")
            out.broken.add(name)
            del out.pipelines[name]
        else:
            seen[p.id] = name


def _resolve_on_failure(out: Targets, refs: Mapping[str, str], at: At) -> None:
    """Store on_failure as an id; check it in broken pipelines too (all problems at once)."""
    for name, ref in refs.items():
        target = resolve_pipeline(out.pipelines, ref)
        if target is not None and name in out.pipelines:
            out.pipelines[name] = replace(out.pipelines[name], on_failure=target.id)
        elif target is None and ref not in out.broken:
            known = [*out.pipelines, *out.broken]
            reason = f"unknown pipeline {ref!r}" + did_you_mean(ref, known)
            (at / name / "on_failure").error(reason)


def resolve_pipeline(pipelines: Mapping[str, Pipeline], ref: str) -> Pipeline | None:
    """A pipeline by id, else by name."""
    for p in pipelines.values():
        if p.id == ref:
            return p
    return pipelines.get(ref)


# ── kinds ─────────────────────────────────────────────────────────────────────


def _kind(raw: object, at: At, kinds: Mapping[str, Any]) -> str | None:
    """The table's `kind` if valid; problems with it are left to read_table / reported here."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("kind"), str):
        return None
    kind = str(raw["kind"])
    if kind not in kinds:
        reason = f"unknown kind {kind!r}, expected one of {', '.join(kinds)}"
        (at / "kind").error(reason + did_you_mean(kind, kinds))
        return None
    return kind


def _all_fields(kinds: Mapping[str, Mapping[str, Field]]) -> dict[str, Field]:
    """Every kind's keys, optional, to check a table whose kind is unknown."""
    return {k: Field(f.convert) for fields in kinds.values() for k, f in fields.items()}


def _foreign(
    kinds: Mapping[str, Mapping[str, Field]], kind: str | None, what: str
) -> dict[str, str]:
    """Reasons for keys that belong to another kind than `kind`."""
    if kind is None:
        return {}
    own = kinds[kind]
    out: dict[str, str] = {}
    for other, fields in kinds.items():
        for key in fields:
            if key not in own and key not in out:
                out[key] = f"{key!r} is a key of {other} {what}, not of {kind} {what}"
    return out
