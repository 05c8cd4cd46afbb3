"""Fuzzed config files: `check-config` ends in exit 0, or exit 2 with key paths; never a crash.

Hypothesis mutates real configs (config/example.toml, config/sidecar.toml and one that uses
every kind and most keys): keys dropped, renamed or added, values replaced by other types,
random strings, weird numbers and dates; and the TOML text itself cut and spliced. Each file
goes through `watcherd.cli.main(["check-config", ...])` in-process.
"""

from __future__ import annotations

import copy
import json
import math
import re
import tempfile
import tomllib
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from watcherd.cli import main

ROOT = Path(__file__).resolve().parents[1]
SECRET = "s3cr3t-fuzz-token-value"
ENV = {"WATCHERD_TOKEN": SECRET, "HOOK_TOKEN": "hook-fuzz-token", "INBOX_DIR": "inbox"}

KITCHEN_SINK = f"""
[daemon]
state_dir = "state"
api = "127.0.0.1:0"
api_hosts = ["watcherd.internal"]
token = "{SECRET}"
max_concurrent_runs = 4
max_pending = 100
shutdown_timeout = "10s"
log_format = "json"
retention = "7d"
readyz_strict = true
database = "postgresql://watcherd:pw-fuzz@db.internal:5432/watcherd"
replica_id = "replica-1"
lease_ttl = "15s"

[datastores.inbox]
kind = "local"
root = "inbox"
follow_symlinks = "within_root"

[datastores.lake]
kind = "azure_blob"
account_url = "https://acct.blob.core.windows.net"
sas_token = "sv=2024&sig=abc"
container = "data"
azureml_datastore = "workspaceblobstore"

[datastores.dev]
kind = "azure_blob"
connection_string = "UseDevelopmentStorage=true"
container = "dev"

[pipelines.train]
kind = "command"
id = "train-1"
description = "train"
status = "Active"
steps = [["python3", "-c", "pass", "{{input_data}}"], ["true", "{{epochs}}"]]
parameters = {{ epochs = "10", input_data = "x.csv" }}
continue_on_step_failure = false
retry = {{ attempts = 3, max_delay = "1m" }}
timeout = "2h"
on_failure = "alert"
cwd = "."
env = {{ MODE = "fuzz" }}
inherit_env = ["HOME"]
retry_exit_codes = [75]
log_limit = "1MiB"

[pipelines.alert]
kind = "http"
url = "https://hooks.example.com/alert?key=abc"
headers = {{ Authorization = "Bearer xyz" }}
request_timeout = "5s"

[pipelines.remote]
kind = "azureml"
endpoint = "https://eastus.api.azureml.ms/pipelines/v1.0/x"
scope = "https://management.azure.com/.default"

[pipelines.score]
kind = "batch_endpoint"
endpoint = "https://ep.westeurope.inference.ml.azure.com/jobs"
deployment = "blue"
input_name = "heart_data"
request_timeout = "1m"
parameters = {{ mode = "append" }}

[[schedules]]
name = "weekly"
description = "w"
pipeline = "train"
experiment_name = "E"
status = "Active"
pipeline_parameters = {{ epochs = "5" }}
continue_on_step_failure = true
end_time = 2027-01-01T00:00:00
catch_up = "last"
max_catch_up = 5
concurrency = "queue"
max_queued = 3

[schedules.recurrence]
frequency = "Week"
interval = 1
start_time = "2026-01-05T09:00"
time_zone = "Pacific Standard Time"
week_days = ["Monday", "Friday"]
hours = [9, 17]
minutes = [0, 30]

[[schedules]]
name = "daily"
pipeline = "remote"
experiment_name = "E"
recurrence = {{ frequency = "Day", interval = 2, time_of_day = "6:30" }}
concurrency = "forbid"

[[schedules]]
name = "cron"
pipeline = "alert"
experiment_name = "E"
cron = "*/15 8-18 * * MON-FRI"
time_zone = "Europe/Paris"
start_time = "2026-03-01T00:00"
catch_up = "all"

[[schedules]]
name = "files"
pipeline = "train"
experiment_name = "E"
datastore = "inbox"
path_on_datastore = "incoming"
polling_interval = "30s"
data_path_parameter_name = "input_data"
pattern = ["*.csv", "*.parquet"]
ignore = ["*.bak"]
ignore_defaults = true
settle = "2s"
initial = "fire"
events = false

[[schedules]]
name = "blobs"
pipeline = "remote"
experiment_name = "E"
datastore = "lake"
path_on_datastore = "drop/"
polling_interval = 5

[[schedules]]
name = "scored"
pipeline = "score"
experiment_name = "E"
datastore = "lake"
path_on_datastore = "score"
events = {{ queue = "blob-events", poison_queue = "blob-events-bad" }}
list_page_size = 100

[[schedules]]
name = "v2-monthly"
pipeline = "score"
experiment_name = "E"
catch_up = "last"

[schedules.trigger]
type = "recurrence"
frequency = "month"
interval = 2
schedule = {{ hours = [4], minutes = [50], month_days = [1, 15], week_days = ["friday"] }}
start_time = "2026-01-01T04:50:00-08:00"
end_time = "2030-01-01T00:00:00"
time_zone = "Pacific Standard Time"

[[schedules]]
name = "v2-cron"
pipeline = "alert"
experiment_name = "E"
trigger = {{ type = "cron", expression = "0 4 * * 1", timezone = "UTC" }}
"""

BASES: dict[str, str] = {
    "example": (ROOT / "config" / "example.toml").read_text(),
    "sidecar": (ROOT / "config" / "sidecar.toml").read_text(),
    "kitchen_sink": KITCHEN_SINK,
}
DOCS = {name: tomllib.loads(text) for name, text in BASES.items()}

_WORKDIR = Path(tempfile.mkdtemp(prefix="watcherd-fuzz-"))
(_WORKDIR / "inbox" / "incoming").mkdir(parents=True)
(_WORKDIR / "scripts").mkdir()


# ── TOML out ─────────────────────────────────────────────────────────────────


def _toml_str(s: str) -> str:
    # JSON's escapes are all TOML escapes; TOML also wants DEL escaped.
    return json.dumps(s).replace("\x7f", "\\u007f")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, datetime | date | time):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        items = (f"{_toml_str(str(k))} = {_toml_value(x)}" for k, x in v.items())
        return "{" + ", ".join(items) + "}"
    raise TypeError(type(v))


def to_toml(doc: dict[str, Any]) -> str:
    """One `key = inline value` line per top-level key: valid TOML for any tree."""
    return "".join(f"{_toml_str(k)} = {_toml_value(v)}\n" for k, v in doc.items())


def test_toml_writer_round_trips() -> None:
    for doc in DOCS.values():
        assert tomllib.loads(to_toml(doc)) == doc


# ── mutations ────────────────────────────────────────────────────────────────

WEIRD_STRINGS = [
    "",
    " ",
    "0",
    "-1",
    "1e400",
    "30",
    "30s",
    "0s",
    "-5m",
    "1.5h",
    "9999999999999999999d",
    "5 m",
    "1MiB",
    "0B",
    "99999999999GiB",
    "Minute",
    "minute",
    "Fortnight",
    "Active",
    "active",
    "${WATCHERD_FUZZ_UNSET}",
    "${WATCHERD_FUZZ_UNSET:-7}",
    "${",
    "$${literal}",
    "${HOME}",
    "{missing}",
    "{input_data.url}",
    "{{",
    "}",
    "*/5 * * * *",
    "61 * * * *",
    "* * *",
    "@hourly",
    "UTC",
    "UTC-11",
    "Mars/Olympus",
    "Pacific Standard Time",
    "2026-02-30T10:00",
    "2026-01-01T10:00+02:00",
    "25:00",
    "6:61",
    "0.0.0.0:99999",
    "127.0.0.1:-1",
    "unix:",
    "unix:/tmp/x.sock",
    "../..",
    "/",
    "a/../../b",
    "\x00",
    "é",
    "\udcff".encode("utf-8", "surrogatepass").decode("latin-1"),
    "x" * 300,
    "http://",
    "ftp://x",
    "https://u:p@h/?sig=1",
]
scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, -1, 1, 2**31, 2**63 - 1, -(2**63)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=20),
    st.sampled_from(WEIRD_STRINGS),
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.dates(),
    st.times(),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=5,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    node = doc
    for p in path[:-1]:
        node = node[p]
    return node


def _typo(key: str, data: st.DataObject) -> str:
    if not key:
        return "x"
    i = data.draw(st.integers(0, len(key) - 1))
    return key[:i] + key[i + 1 :] if len(key) > 1 else key + "_"


def mutate(doc: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        paths = _paths(doc)
        if not paths:
            doc[data.draw(st.text(max_size=8))] = data.draw(values)
            continue
        path = data.draw(st.sampled_from(paths), label="path")
        parent, last = _parent(doc, path), path[-1]
        op = data.draw(st.sampled_from(["drop", "rename", "typo", "replace", "add", "nest"]))
        if op == "drop":
            del parent[last]
        elif op in ("rename", "typo") and isinstance(parent, dict):
            new = data.draw(st.text(max_size=10)) if op == "rename" else _typo(last, data)
            parent[new] = parent.pop(last)
        elif op == "add" and isinstance(parent, dict):
            parent[data.draw(st.text(max_size=10))] = data.draw(values)
        elif op == "add":
            parent.append(data.draw(values))
        elif op == "nest":
            parent[last] = [parent[last]] if data.draw(st.booleans()) else {"x": parent[last]}
        else:
            parent[last] = data.draw(values, label="value")
    return doc


# ── the property ─────────────────────────────────────────────────────────────

_KEY_LINE = re.compile(r"^  (?:\S.*?): \S")


def _check(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = _WORKDIR / "watcherd.toml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in ENV.items():
            mp.setenv(k, v)
        mp.chdir(_WORKDIR)
        rc = main(["check-config", "--config", str(path), "--json"])
        out = capsys.readouterr()
        rc_text = main(["check-config", "--config", str(path)])
        out_text = capsys.readouterr()
    assert rc == rc_text
    assert rc in (0, 2), f"exit {rc}\n{out.out}\n{out.err}"
    for o in (out, out_text):
        assert "Traceback" not in o.out + o.err, o.out + o.err
    report = json.loads(out.out)
    if rc == 0:
        assert report["errors"] == []
        return
    errors = report["errors"]
    assert errors, out.out
    for e in errors:
        assert isinstance(e["message"], str) and e["message"]
        if not e["key_path"]:  # only whole-file problems lack a key path
            assert e["message"].startswith(("TOML syntax error at ", "config file")), e
        else:
            assert f"  {e['key_path']}: " in out_text.out, e
    error_lines = out_text.out.split("errors:", 1)[1].splitlines()
    assert any(_KEY_LINE.match(ln) for ln in error_lines), out_text.out


def _secret_still_under_token(doc: dict[str, Any]) -> bool:
    daemon = doc.get("daemon")
    return isinstance(daemon, dict) and daemon.get("token") == SECRET


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(base=st.sampled_from(sorted(DOCS)), data=st.data())
def test_mutated_config_exits_0_or_2_with_key_paths(
    base: str, data: st.DataObject, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = mutate(DOCS[base], data)
    _check(to_toml(doc), capsys)
    if _secret_still_under_token(doc):
        (_WORKDIR / "watcherd.toml").write_text(to_toml(doc))
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(_WORKDIR)
            main(["check-config", "--config", str(_WORKDIR / "watcherd.toml")])
        assert SECRET not in capsys.readouterr().out


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    base=st.sampled_from(sorted(BASES)),
    cut=st.tuples(st.floats(0, 1), st.floats(0, 0.05)),
    insert=st.text(max_size=12) | st.sampled_from(['"', "[", "]]", "=", "\n[[", "{", "'''"]),
)
def test_spliced_toml_text_exits_0_or_2(
    base: str,
    cut: tuple[float, float],
    insert: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = BASES[base]
    at = int(cut[0] * len(text))
    text = text[:at] + insert + text[at + int(cut[1] * len(text)) :]
    _check(text, capsys)


def test_bases_are_valid(capsys: pytest.CaptureFixture[str]) -> None:
    for name, text in BASES.items():
        _check(text, capsys)
        path = _WORKDIR / "watcherd.toml"
        path.write_text(text)
        with pytest.MonkeyPatch.context() as mp:
            for k, v in ENV.items():
                mp.setenv(k, v)
            mp.chdir(_WORKDIR)
            assert main(["check-config", "--config", str(path)]) == 0, name
        assert SECRET not in capsys.readouterr().out


def test_toml_error_at_end_of_document_gives_line_and_column(
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = _WORKDIR / "eod.toml"
    path.write_text('[daemon]\napi = "127.0.0.1:0"\ndangling')
    assert main(["check-config", "--config", str(path)]) == 2
    assert "TOML syntax error at line 3, column 9" in capsys.readouterr().out
