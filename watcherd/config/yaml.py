"""Azure ML v2 schedule YAML (SPEC §13): in as an API body, out for `schedules export`.

Reading is safe and bounded: PyYAML composes the document (its pure-Python SafeLoader: no
object construction, no tags beyond YAML's core types), then we build plain values ourselves:
at most 1 MiB of text, one document, at most 10,000 values after aliases are expanded (a
"billion laughs" document is refused before it grows), no recursive aliases, no duplicate
keys, no merge keys, and none of YAML 1.1's surprises: `no`/`on`/`yes`/`off` read as booleans,
unquoted timestamps, numbers with a leading 0 (octal), base-60 `1:30` and `0x`/`0b` forms are
refused with a message saying to quote them. YAML bodies get no `${VAR}` substitution.

The v2 shape: `name`, `description`, `tags` (`experiment_name`, else the schedule's name),
`trigger` (`recurrence` / `cron` in v2 terms, or watcherd's `datastore` with SPEC §2's
datastore-trigger keys), `create_job` (`azureml:<pipeline name or id>`, or a bare name);
`display_name`, `properties`, `$schema` and azure-ai-ml's read-only keys are accepted and
ignored. watcherd's other schedule keys (`is_enabled` or `status`, `pipeline_parameters`,
`continue_on_step_failure`, the §3.3 options, and v1's `recurrence` / `cron` with their keys)
may stand at the top level: `export_yaml` writes them, so export → create round-trips.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

import yaml

from watcherd.config.loader import parse_schedule
from watcherd.config.schema import describe, key_join
from watcherd.core.errors import ConfigError, ConfigErrors
from watcherd.core.models import Config, Source

__all__ = [
    "VALUES_MAX",
    "YAML_MAX",
    "export_yaml",
    "load_yaml",
    "schedule_body",
    "split_documents",
]

YAML_MAX = 1024 * 1024  # bytes
VALUES_MAX = 10_000  # values after alias expansion

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"

_IGNORED = ("display_name", "properties", "$schema", "id", "provisioning_state",
            "creation_context")  # fmt: skip
_V2_KEYS = ("name", "description", "tags", "trigger", "create_job", "is_enabled", *_IGNORED)
# watcherd's own schedule keys a YAML may also hold (SPEC §2), beside v2's.
_EXTRA_KEYS = ("status", "pipeline_parameters", "continue_on_step_failure", "catch_up",
               "max_catch_up", "concurrency", "max_queued", "recurrence", "cron", "time_zone",
               "start_time", "end_time")  # fmt: skip
_TIME_OPTIONS = ("catch_up", "max_catch_up", "concurrency", "max_queued")
_DATASTORE_KEYS = ("datastore", "path_on_datastore", "polling_interval",
                   "data_path_parameter_name", "pattern", "ignore", "ignore_defaults", "settle",
                   "initial", "events", "list_page_size")  # fmt: skip


class _Refused(Exception):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(reason)
        self.path, self.reason = path, reason


# ── YAML text → plain values ──────────────────────────────────────────────────


def load_yaml(text: str, root: str = "body") -> object:
    """One YAML document as plain values (dict, list, str, int, float, bool, None).

    Raises:
        ConfigErrors: one problem, at its key path under `root`: too large, a syntax error
            (with line and column), several documents, too many values, a duplicate key, an
            unsupported tag or a YAML 1.1 surprise.
    """
    if len(text) > YAML_MAX or len(text.encode("utf-8", "surrogatepass")) > YAML_MAX:
        raise _one(root, f"YAML larger than {YAML_MAX // 1024 // 1024} MiB")
    try:
        loader = yaml.SafeLoader(text)  # its reader refuses control characters at once
    except yaml.YAMLError as exc:
        raise _one(root, _error(exc)) from None
    try:
        node = loader.get_single_node()
    except yaml.YAMLError as exc:
        raise _one(root, _error(exc)) from None
    except RecursionError:
        raise _one(root, "YAML nested too deeply") from None
    finally:
        loader.dispose()
    if node is None:
        raise _one(root, "empty YAML document: expected a schedule")
    try:
        return _Builder().value(node, root)
    except _Refused as exc:
        raise _one(exc.path, exc.reason) from None
    except RecursionError:
        raise _one(root, "YAML nested too deeply") from None


def split_documents(text: str) -> list[str]:
    """The documents of a YAML stream as separate texts (what `export_yaml` writes for several
    schedules), split where the parser says each starts, never by searching for `---`.

    Raises:
        ConfigErrors: too large, or a syntax error.
    """
    if len(text.encode("utf-8", "surrogatepass")) > YAML_MAX * 16:
        raise _one("body", f"YAML larger than {YAML_MAX * 16 // 1024 // 1024} MiB")
    starts: list[int] = []
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.DocumentStartEvent) and event.start_mark is not None:
                starts.append(event.start_mark.index)
    except yaml.YAMLError as exc:
        raise _one("body", _error(exc)) from None
    ends = [*starts[1:], len(text)]
    return [text[a:b] for a, b in zip(starts, ends, strict=True)]


def _error(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        return _syntax(exc)
    if isinstance(exc, yaml.reader.ReaderError):
        return (
            f"YAML cannot hold character #x{exc.character:04x} (at character {exc.position}): "
            "control characters are not allowed"
        )
    return f"YAML error: {exc}"


def _syntax(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = exc.problem or exc.context or "invalid YAML"
    if "expected a single document" in str(exc.context or ""):
        return "one schedule per YAML document: this text holds several"
    context = f"{exc.context or ''} {problem}"
    hint = (
        " (quote values that start with * or &)"
        if "alias" in context or "anchor" in context
        else ""
    )
    return f"YAML syntax error{where}: {problem}{hint}"


def _one(path: str, reason: str) -> ConfigErrors:
    return ConfigErrors([ConfigError(path, reason)], source="schedule")


class _Builder:
    """Plain values from composed nodes, counting every value reached (aliases included)."""

    def __init__(self) -> None:
        self.count = 0
        self.open: set[int] = set()  # nodes on the current path: a recursive alias

    def value(self, node: yaml.Node, path: str) -> object:
        self.count += 1
        if self.count > VALUES_MAX:
            raise _Refused(path, f"more than {VALUES_MAX} values once aliases are expanded")
        if id(node) in self.open:
            raise _Refused(path, "recursive alias")
        if isinstance(node, yaml.ScalarNode):
            return _scalar(node, path)
        self.open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode) and node.tag == _SEQ:
                return [self.value(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
            if isinstance(node, yaml.MappingNode) and node.tag == _MAP:
                return self._mapping(node, path)
        finally:
            self.open.discard(id(node))
        raise _Refused(path, f"YAML tag {node.tag!r} is not accepted")

    def _mapping(self, node: yaml.MappingNode, path: str) -> dict[str, object]:
        out: dict[str, object] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                raise _Refused(path, "merge keys (<<) are not accepted: write the keys out")
            if not isinstance(key_node, yaml.ScalarNode):
                raise _Refused(path, f"keys must be strings, got a {key_node.tag!r} node")
            key = _scalar(key_node, key_join(path, str(key_node.value)))
            if not isinstance(key, str):
                raise _Refused(key_join(path, str(key_node.value)), "keys must be strings: "
                               f"quote {key_node.value!r}")  # fmt: skip
            sub = key_join(path, key)
            if key in out:
                raise _Refused(sub, f"duplicate key {key!r}")
            out[key] = self.value(value_node, sub)
        return out


def _scalar(node: yaml.ScalarNode, path: str) -> object:
    text, tag, plain = node.value, node.tag, node.style is None
    if tag == _STR:
        return text
    if tag == _NULL:
        return None
    if tag == _BOOL:
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise _Refused(path, f"{text!r} is a boolean in YAML 1.1: quote it (\"{text}\") for the "
                       "text, or write true or false")  # fmt: skip
    if tag == _TIMESTAMP:
        raise _Refused(path, f"unquoted date-time {text!r} is a YAML timestamp: quote it "
                       f'("{text}")')  # fmt: skip
    if tag == _INT:
        digits = text.lstrip("+-")
        if not digits.isdigit() or (len(digits) > 1 and digits[0] == "0"):
            raise _Refused(path, f"ambiguous number {text!r} (YAML 1.1 reads a leading 0 as "
                           "octal, and 0x, 0b, 1:30 or _ forms differently): write it in plain "
                           "decimal, or quote it for the text")  # fmt: skip
        return int(text)
    if tag == _FLOAT:
        if ":" in text or "_" in text:
            raise _Refused(path, f"ambiguous number {text!r}: write it in plain decimal")
        return float(text)
    kind = "" if plain else " on a quoted value"
    raise _Refused(path, f"YAML tag {tag!r}{kind} is not accepted")


# ── plain values → an API body ────────────────────────────────────────────────


def schedule_body(text: str, *, config: Config) -> dict[str, object]:
    """The API body (SPEC §8) for one Azure ML v2 schedule YAML document (SPEC §13).

    The body is checked as `POST /schedules` will check it, and problems are reported at their
    place in the YAML, under "body" (`body.trigger.path_on_datastore`, `body.create_job`).

    Raises:
        ConfigErrors: every problem found.
    """
    doc = load_yaml(text)
    if not isinstance(doc, dict):
        raise _one("body", f"expected a mapping (a v2 schedule), got {describe(doc)}")
    errors: list[ConfigError] = []
    body, where = _body(doc, config, errors)
    if errors:
        raise ConfigErrors(errors, source="schedule")
    try:
        parse_schedule(body, config=config, key_prefix="body", source=Source.API)
    except ConfigErrors as exc:
        moved: dict[tuple[str, str], ConfigError] = {}
        for e in exc.errors:
            path = _moved(e.key_path, where)
            moved.setdefault((path, e.reason), ConfigError(path, e.reason))
        raise ConfigErrors(list(moved.values()), source="schedule") from None
    return body


def _moved(key_path: str, where: Mapping[str, str]) -> str:
    """A body key path as the YAML wrote it (datastore keys sit inside `trigger`)."""
    for key, yaml_path in where.items():
        body_path = key_join("body", key)
        if key_path == body_path or key_path.startswith((body_path + ".", body_path + "[")):
            return yaml_path + key_path[len(body_path) :]
    return key_path


def _body(
    doc: dict[str, object], config: Config, errors: list[ConfigError]
) -> tuple[dict[str, object], dict[str, str]]:
    body: dict[str, object] = {}
    where: dict[str, str] = {}  # body key → its key path in the YAML, where they differ
    for key, value in doc.items():
        path = key_join("body", key)
        if key in _IGNORED:
            continue
        if key in ("pipeline", "experiment_name"):
            instead = "create_job" if key == "pipeline" else "tags.experiment_name"
            errors.append(ConfigError(path, f"a v2 schedule YAML gives the {key} in {instead}"))
        elif key not in _V2_KEYS and key not in _EXTRA_KEYS:
            close = difflib.get_close_matches(key, [*_V2_KEYS, *_EXTRA_KEYS], n=1, cutoff=0.6)
            hint = f", did you mean {close[0]!r}?" if close else ""
            errors.append(ConfigError(path, f"unknown key {key!r}{hint}"))
        elif key not in ("tags", "trigger", "create_job", "is_enabled"):
            body[key] = value
    if "name" not in doc:
        errors.append(ConfigError("body.name", "required"))
    if "is_enabled" in doc:
        _enabled(doc, body, errors)
    body["experiment_name"] = _experiment(doc, errors, where)
    if "create_job" in doc:
        body["pipeline"] = _create_job(doc["create_job"], config, errors)
        where["pipeline"] = "body.create_job"
    else:
        errors.append(ConfigError("body.create_job", "required (azureml:<pipeline name or id>)"))
    if "trigger" in doc:
        _trigger(doc["trigger"], body, errors, where)
    return body, where


def _enabled(doc: Mapping[str, object], body: dict[str, object], errors: list[ConfigError]) -> None:
    value = doc["is_enabled"]
    if not isinstance(value, bool):
        errors.append(
            ConfigError("body.is_enabled", f"expected true or false, got {describe(value)}")
        )
    elif "status" in doc:
        errors.append(ConfigError("body.status", "give either is_enabled or status, not both"))
    else:
        body["status"] = "Active" if value else "Disabled"


def _experiment(
    doc: Mapping[str, object], errors: list[ConfigError], where: dict[str, str]
) -> object:
    tags = doc.get("tags")
    if tags is not None and not isinstance(tags, dict):
        errors.append(ConfigError("body.tags", f"expected a mapping of tags, got {describe(tags)}"))
    elif isinstance(tags, dict) and "experiment_name" in tags:
        where["experiment_name"] = "body.tags.experiment_name"
        return tags["experiment_name"]
    where["experiment_name"] = "body.name"
    return doc.get("name")


def _create_job(value: object, config: Config, errors: list[ConfigError]) -> object:
    path = "body.create_job"
    if isinstance(value, dict):
        errors.append(ConfigError(path, "inline job definitions are not supported: name a "
                                  "watcherd pipeline (azureml:<pipeline name or id>)"))  # fmt: skip
        return None
    if not isinstance(value, str) or not value.strip():
        errors.append(ConfigError(path, "expected azureml:<pipeline name or id>, got "
                                  f"{describe(value)}"))  # fmt: skip
        return None
    ref = value.strip()
    ref = ref[len("azureml:") :] if ref.startswith("azureml:") else ref
    if "/" in ref or ref.endswith((".yml", ".yaml")):
        errors.append(ConfigError(path, f"{value!r} names a job file or an Azure resource id: "
                                  "inline job definitions are not supported; name a watcherd "
                                  "pipeline (azureml:<pipeline name or id>)"))  # fmt: skip
        return None
    if config.pipeline_by_id(ref) is None:  # a pipeline named "a:b" is still "a:b"
        for mark, what in ((":", "a :version"), ("@", "an @label")):
            if mark in ref:
                errors.append(ConfigError(path, f"{value!r} has {what} suffix, which watcherd "
                                          "does not support (its pipelines have no versions): "
                                          f"write azureml:{ref.split(mark)[0]}"))  # fmt: skip
                return None
    return ref


def _trigger(
    value: object, body: dict[str, object], errors: list[ConfigError], where: dict[str, str]
) -> None:
    if not isinstance(value, dict):
        errors.append(ConfigError("body.trigger", f"expected a mapping, got {describe(value)}"))
        return
    kind = value.get("type")
    if isinstance(kind, str) and kind.lower() == "datastore":
        for key, item in value.items():
            if key == "type":
                continue
            if key in body:
                errors.append(ConfigError(key_join("body.trigger", key), f"{key!r} given twice"))
            body[key] = item
            where[key] = key_join("body.trigger", key)
        if "datastore" not in value:
            errors.append(ConfigError("body.trigger.datastore", "required"))
        return
    body["trigger"] = value


# ── export ────────────────────────────────────────────────────────────────────

_SKIP = ("id", "source", "created_at", "updated_at", "next_fire_times", "trigger_words",
         "last_run", "error")  # fmt: skip


def export_yaml(schedules: Iterable[Mapping[str, object]]) -> str:
    """v2 schedule YAML documents (`---` between them) for schedules in the API's shape
    (`schedule_to_dict`, or `GET /schedules` items); `schedule_body` reads each back to the same
    schedule. Unset keys are left out; `pipeline` (an id) becomes `create_job: azureml:<id>`."""
    docs = [_document(s) for s in schedules]
    dumped = [
        yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, default_flow_style=None)
        for doc in docs
    ]
    return "---\n".join(dumped)


def _document(s: Mapping[str, object]) -> dict[str, object]:
    items = {k: v for k, v in s.items() if v is not None and k not in _SKIP}
    doc: dict[str, object] = {"name": items.pop("name")}
    description = items.pop("description", "")
    if description:
        doc["description"] = description
    doc["tags"] = {"experiment_name": items.pop("experiment_name")}
    doc["is_enabled"] = items.pop("status", "Active") == "Active"
    if "datastore" in items:
        doc["trigger"] = {"type": "datastore"} | {
            k: items.pop(k) for k in _DATASTORE_KEYS if k in items
        }
    elif "trigger" in items:
        doc["trigger"] = items.pop("trigger")
    doc["create_job"] = f"azureml:{items.pop('pipeline')}"
    parameters = items.pop("pipeline_parameters", {})
    if parameters:
        doc["pipeline_parameters"] = parameters
    doc.update(items)  # v1 recurrence / cron keys, the §3.3 options, continue_on_step_failure
    return doc
