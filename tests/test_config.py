"""Loading and validating the config file (SPEC §2): real TOML files in tmp_path."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from watcherd.config import (
    check_compat,
    export_toml,
    find_config_path,
    load,
    parse,
    parse_schedule,
    schedule_to_dict,
)
from watcherd.core.errors import ConfigErrors
from watcherd.core.models import (
    BlobDatastore,
    CommandTarget,
    Config,
    CronTrigger,
    DatastoreTrigger,
    HttpTarget,
    LocalDatastore,
    RecurrenceTrigger,
    Schedule,
    Source,
    Status,
    default_pipeline_id,
    default_schedule_id,
)

BASE = """\
[datastores.inbox]
kind = "local"
root = "inbox"

[pipelines.train]
kind = "command"
steps = [["python", "train.py", "--epochs", "{epochs}"]]
parameters = { epochs = "10" }

[pipelines.notify]
kind = "http"
url = "http://127.0.0.1:9000/hook"
"""

SCHEDULE = """
[[schedules]]
name = "S"
pipeline = "train"
experiment_name = "E"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "watcherd.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Config:
    return load(write(tmp_path, text), env or {})


def problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigErrors) as exc:
        load_text(tmp_path, text, env)
    return [str(e) for e in exc.value.errors]


# ── a good file ───────────────────────────────────────────────────────────────

SPEC_EXAMPLE = """\
[daemon]
state_dir = ".watcherd"
api = "127.0.0.1:8765"
token = "${WATCHERD_TOKEN:-}"

[datastores.inbox]
kind = "local"
root = "/srv/inbox"

[datastores.workspaceblobstore]
kind = "azure_blob"
connection_string = "${AZURE_STORAGE_CONNECTION_STRING:-UseDevelopmentStorage=true}"
container = "data"

[pipelines.train]
kind = "command"
steps = [["python", "prep.py", "{input_data}"], ["python", "train.py", "--epochs", "{epochs}"]]
parameters = { epochs = "10", input_data = "data/latest.csv" }
timeout = "2h"

[pipelines.notify]
kind = "http"
url = "http://127.0.0.1:9000/hooks/run"
headers = { Authorization = "Bearer ${HOOK_TOKEN:-dev}" }

[[schedules]]
name = "MyRecurringSchedule"
pipeline = "train"
experiment_name = "MyExperiment"
recurrence = { frequency = "Minute", interval = 15 }

[[schedules]]
name = "MyReactiveSchedule"
pipeline = "train"
experiment_name = "MyExperiment"
datastore = "inbox"
path_on_datastore = "incoming"
polling_interval = 5
data_path_parameter_name = "input_data"
"""


def test_spec_example_loads(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, SPEC_EXAMPLE)
    assert cfg.path == tmp_path / "watcherd.toml"
    assert cfg.base_dir == tmp_path
    assert cfg.daemon.state_dir == tmp_path / ".watcherd"
    assert cfg.daemon.api == "127.0.0.1:8765"
    assert cfg.daemon.token == ""
    assert cfg.daemon.max_concurrent_runs == 8
    assert cfg.daemon.shutdown_timeout == timedelta(seconds=25)
    assert cfg.datastores["inbox"] == LocalDatastore(name="inbox", root=Path("/srv/inbox"))
    blob = cfg.datastores["workspaceblobstore"]
    assert isinstance(blob, BlobDatastore)
    assert blob.connection_string == "UseDevelopmentStorage=true"
    train = cfg.pipelines["train"]
    assert train.id == default_pipeline_id("train")
    assert train.timeout == timedelta(hours=2)
    assert isinstance(train.target, CommandTarget)
    assert train.target.steps[1] == ("python", "train.py", "--epochs", "{epochs}")
    assert train.target.log_limit == 1 << 20
    notify = cfg.pipelines["notify"].target
    assert isinstance(notify, HttpTarget)
    assert notify.headers == {"Authorization": "Bearer dev"}
    rec, reactive = cfg.schedules
    assert rec.id == default_schedule_id("MyRecurringSchedule")
    assert rec.pipeline == train.id
    assert rec.source is Source.FILE
    assert isinstance(rec.trigger, RecurrenceTrigger)
    assert (rec.trigger.recurrence.frequency, rec.trigger.recurrence.interval) == ("Minute", 15)
    assert isinstance(reactive.trigger, DatastoreTrigger)
    assert reactive.trigger.polling_interval == timedelta(minutes=5)
    assert reactive.trigger.path_on_datastore == "incoming"
    assert reactive.trigger.pattern == ("*",)
    assert cfg.secrets == {"Bearer dev", "UseDevelopmentStorage=true"}


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path) -> None:
    text = BASE.replace("steps =", 'cwd = "work"\nsteps =') + '[daemon]\napi = "unix:api.sock"\n'
    cfg = load_text(tmp_path, text)
    assert cfg.datastores["inbox"] == LocalDatastore(name="inbox", root=tmp_path / "inbox")
    target = cfg.pipelines["train"].target
    assert isinstance(target, CommandTarget) and target.cwd == tmp_path / "work"
    assert cfg.daemon.api == f"unix:{tmp_path}/api.sock"


def test_state_dir_defaults_to_systemd_state_directory(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, BASE, {"STATE_DIRECTORY": "/var/lib/watcherd:/var/lib/other"})
    assert cfg.daemon.state_dir == Path("/var/lib/watcherd")
    assert load_text(tmp_path, BASE).daemon.state_dir == tmp_path / ".watcherd"


def test_find_config_path(tmp_path: Path) -> None:
    env = {"WATCHERD_CONFIG": "/etc/watcherd/w.toml"}
    assert find_config_path("my.toml", env, tmp_path) == tmp_path / "my.toml"
    assert find_config_path(None, env, tmp_path) == Path("/etc/watcherd/w.toml")
    assert find_config_path(None, {}, tmp_path) == tmp_path / "watcherd.toml"


def test_schedule_keys_and_defaults(tmp_path: Path) -> None:
    text = (
        BASE
        + SCHEDULE
        + """\
id = "my-schedule.1"
description = "d"
status = "Disabled"
pipeline_parameters = { epochs = "3" }
continue_on_step_failure = true
cron = "*/5 * * * 1-5"
time_zone = "Pacific Standard Time"
start_time = 2026-01-01T00:00:00
end_time = "2027-01-01T00:00"
catch_up = "all"
max_catch_up = 3
concurrency = "queue"
max_queued = 2

[[schedules]]
name = "T"
pipeline = "{train_id}"
experiment_name = "E"
datastore = "inbox"
pattern = "*.csv"
ignore = ["*.bak"]
ignore_defaults = false
polling_interval = "30s"
settle = "5s"
initial = "fire"
events = false
""".replace("{train_id}", default_pipeline_id("train"))
    )
    cfg = load_text(tmp_path, text)
    s, t = cfg.schedules
    assert (s.id, s.description, s.status) == ("my-schedule.1", "d", Status.DISABLED)
    assert s.pipeline_parameters == {"epochs": "3"} and s.continue_on_step_failure is True
    assert isinstance(s.trigger, CronTrigger)
    assert s.trigger.cron.zone == "America/Los_Angeles"
    assert s.trigger.cron.start_time == datetime(2026, 1, 1)
    assert s.trigger.cron.end_time == datetime(2027, 1, 1)
    opts = s.trigger.options
    assert (opts.catch_up, opts.max_catch_up, opts.concurrency, opts.max_queued) == (
        "all", 3, "queue", 2,
    )  # fmt: skip
    assert t.pipeline == default_pipeline_id("train")
    assert isinstance(t.trigger, DatastoreTrigger)
    assert t.trigger.pattern == ("*.csv",)
    assert t.trigger.ignore_globs == ("*.bak",)
    assert t.trigger.polling_interval == timedelta(seconds=30)
    assert t.trigger.settle == timedelta(seconds=5)
    assert (t.trigger.initial, t.trigger.events) == ("fire", False)


def test_recurrence_keys(tmp_path: Path) -> None:
    text = (
        BASE
        + SCHEDULE
        + """\
recurrence = { frequency = "Week", interval = 2, week_days = ["Monday", "Friday"], \
time_of_day = 04:50:00, time_zone = "W. Europe Standard Time", start_time = "2026-01-05T04:50" }
end_time = 2027-01-01T00:00:00
"""
    )
    (s,) = load_text(tmp_path, text).schedules
    assert isinstance(s.trigger, RecurrenceTrigger)
    rec = s.trigger.recurrence
    assert (rec.hours, rec.minutes, rec.week_days) == ((4,), (50,), ("Monday", "Friday"))
    assert rec.zone == "Europe/Berlin"
    assert rec.start_time == datetime(2026, 1, 5, 4, 50)
    assert s.trigger.end_time == datetime(2027, 1, 1)


# ── ${VAR} ────────────────────────────────────────────────────────────────────


def test_env_substitution_everywhere(tmp_path: Path) -> None:
    text = """\
[daemon]
max_pending = "${MAXP}"
readyz_strict = "${STRICT}"
shutdown_timeout = "${GRACE:-10s}"
api_hosts = ["${HOST}", "literal-$${HOST}", "cost $5"]

[pipelines.p]
kind = "command"
steps = [["echo", "${GREETING:-hello} {who}"]]
parameters = { who = "${WHO}" }
env = { NESTED = "${EMPTY:-fallback}" }

[[schedules]]
name = "S"
pipeline = "p"
experiment_name = "${EXP}"
recurrence = { frequency = "Hour", interval = "${N}" }
"""
    env = {"MAXP": "42", "STRICT": "true", "HOST": "example.org", "WHO": "world", "EXP": "X",
           "N": "3", "EMPTY": ""}  # fmt: skip
    cfg = load_text(tmp_path, text, env)
    assert cfg.daemon.max_pending == 42
    assert cfg.daemon.readyz_strict is True
    assert cfg.daemon.shutdown_timeout == timedelta(seconds=10)
    assert cfg.daemon.api_hosts == ("example.org", "literal-${HOST}", "cost $5")
    target = cfg.pipelines["p"].target
    assert isinstance(target, CommandTarget)
    assert target.steps == (("echo", "hello {who}"),)
    assert target.env == {"NESTED": "fallback"}
    assert cfg.pipelines["p"].parameters == {"who": "world"}
    (s,) = cfg.schedules
    assert s.experiment_name == "X"
    assert isinstance(s.trigger, RecurrenceTrigger) and s.trigger.recurrence.interval == 3
    assert type(s.experiment_name) is str


def test_env_value_in_numeric_key_must_be_exactly_one_reference(tmp_path: Path) -> None:
    text = '[daemon]\nmax_pending = "1${N}"\nreadyz_strict = "${B}"\n'
    assert problems(tmp_path, text, {"N": "0", "B": "maybe"}) == [
        "daemon.max_pending: expected an integer, got string '10'",
        "daemon.readyz_strict: expected true or false, got string 'maybe'",
    ]


def test_polling_interval_from_env(tmp_path: Path) -> None:
    text = BASE + SCHEDULE + 'datastore = "inbox"\npolling_interval = "${P}"\n'
    for value, expected in (("2", timedelta(minutes=2)), ("45s", timedelta(seconds=45))):
        (s,) = load_text(tmp_path, text, {"P": value}).schedules
        assert isinstance(s.trigger, DatastoreTrigger)
        assert s.trigger.polling_interval == expected


# ── bad files: one table, exact lines ─────────────────────────────────────────

BAD = [
    (
        "frequency_case",
        SCHEDULE + 'recurrence = { frequency = "minute", interval = 15 }\n',
        "schedules[0].recurrence.frequency: Invalid value for frequency, only one of Minute, "
        "Hour, Day, Week, or Month accepted",
    ),
    (
        "hours_with_minute",
        SCHEDULE + 'recurrence = { frequency = "Minute", interval = 15, hours = [1] }\n',
        "schedules[0].recurrence.hours: Can only specify hours if frequency is Week or Day.",
    ),
    (
        "interval_zero",
        SCHEDULE + 'recurrence = { frequency = "Minute", interval = 0 }\n',
        "schedules[0].recurrence.interval: Interval must be an integer greater than 0.",
    ),
    (
        "bad_time_zone",
        SCHEDULE + 'recurrence = { frequency = "Day", interval = 1, time_zone = "Mars/Base" }\n',
        "schedules[0].recurrence.time_zone: Time zone is not a valid TimeZone enum.",
    ),
    (
        "offset_start_time",
        SCHEDULE + "recurrence = { frequency = 'Day', interval = 1, "
        "start_time = 2026-01-01T10:00:00+01:00 }\n",
        "schedules[0].recurrence.start_time: Can not specify tzinfo for start_time, use "
        "time_zone instead.",
    ),
    (
        "offset_start_time_string",
        SCHEDULE
        + 'recurrence = { frequency = "Day", interval = 1, start_time = "2026-01-01T10:00Z" }\n',
        "schedules[0].recurrence.start_time: Can not specify tzinfo for start_time, use "
        "time_zone instead.",
    ),
    (
        "offset_end_time",
        SCHEDULE
        + 'recurrence = { frequency = "Day", interval = 1 }\nend_time = 2026-01-01T10:00:00Z\n',
        "schedules[0].end_time: Can not specify tzinfo for end_time, use time_zone instead.",
    ),
    (
        "recurrence_unknown_key",
        SCHEDULE + 'recurrence = { frequency = "Day", interval = 1, hour = [1] }\n',
        "schedules[0].recurrence.hour: unknown key 'hour', did you mean 'hours'?",
    ),
    (
        "missing_pipeline",
        SCHEDULE.replace('"train"', '"trian"') + 'cron = "* * * * *"\n',
        "schedules[0].pipeline: unknown pipeline 'trian', did you mean 'train'?",
    ),
    (
        "missing_experiment",
        SCHEDULE.replace('experiment_name = "E"\n', "") + 'cron = "* * * * *"\n',
        "schedules[0].experiment_name: required",
    ),
    (
        "bad_duration",
        '[pipelines.p]\nkind = "http"\nurl = "http://h/"\ntimeout = "2 hours"\n',
        "pipelines.p.timeout: invalid duration '2 hours': expected <integer><unit>, unit one of "
        "ms s m h d",
    ),
    (
        "bad_size",
        '[pipelines.p]\nkind = "command"\nsteps = [["x"]]\nlog_limit = "1MB"\n',
        "pipelines.p.log_limit: invalid size '1MB': expected <integer><unit>, unit one of B KiB "
        "MiB GiB",
    ),
    (
        "huge_log_limit",
        '[pipelines.p]\nkind = "command"\nsteps = [["x"]]\nlog_limit = "65MiB"\n',
        "pipelines.p.log_limit: 65MiB is more than 64MiB: a run's log is kept in the state "
        "database (send more output to a file of your own)",
    ),
    (
        "unset_variable",
        SCHEDULE.replace('"E"', '"${EXPERIMENT}"') + 'cron = "* * * * *"\n',
        "schedules[0].experiment_name: environment variable EXPERIMENT is not set",
    ),
    (
        "unset_variable_nested",
        '[pipelines.p]\nkind = "command"\nsteps = [["x", "${ARG}"]]\n',
        "pipelines.p.steps[0][1]: environment variable ARG is not set",
    ),
    (
        "bad_variable_reference",
        '[daemon]\napi_hosts = ["${1X}"]\n',
        "daemon.api_hosts[0]: invalid variable reference '${1X}'",
    ),
    (
        "placeholder_unresolved",
        '[pipelines.p]\nkind = "command"\nsteps = [["x", "--in={missing}"]]\n'
        + SCHEDULE.replace('"train"', '"p"')
        + 'cron = "* * * * *"\n',
        "schedules[0].pipeline: unresolved placeholder {missing} in pipelines.p.steps[0][1]",
    ),
    (
        "placeholder_url_only_for_file",
        '[pipelines.p]\nkind = "http"\nurl = "http://h/{epochs.url}"\n'
        + SCHEDULE.replace('"train"', '"p"')
        + 'cron = "* * * * *"\npipeline_parameters = { epochs = "1" }\n',
        "schedules[0].pipeline: unresolved placeholder {epochs.url} in pipelines.p.url "
        "({NAME.url} is only defined for the data_path_parameter_name file of an azure_blob "
        "datastore)",
    ),
    (
        "both_triggers",
        SCHEDULE + 'cron = "* * * * *"\ndatastore = "inbox"\n',
        "schedules[0]: Can not specify both a Recurrence and a Datastore",
    ),
    (
        "recurrence_and_cron",
        SCHEDULE + 'cron = "* * * * *"\nrecurrence = { frequency = "Day", interval = 1 }\n',
        "schedules[0]: Can not specify both a Recurrence and a cron expression",
    ),
    (
        "data_path_without_datastore",
        SCHEDULE + 'cron = "* * * * *"\ndata_path_parameter_name = "f"\n',
        "schedules[0].data_path_parameter_name: Data Path parameter name can only be specified "
        "for Datastore schedules.",
    ),
    (
        "path_on_datastore_without_datastore",
        SCHEDULE + 'recurrence = { frequency = "Day", interval = 1 }\npath_on_datastore = "x"\n',
        "schedules[0].path_on_datastore: Path on datastore parameter can only be specified for "
        "Datastore schedules.",
    ),
    (
        "key_of_other_trigger",
        SCHEDULE + 'recurrence = { frequency = "Day", interval = 1 }\npolling_interval = 5\n',
        "schedules[0].polling_interval: 'polling_interval' is a key of datastore schedules, not "
        "of recurrence schedules",
    ),
    (
        "time_zone_outside_recurrence",
        SCHEDULE + 'recurrence = { frequency = "Day", interval = 1 }\ntime_zone = "UTC"\n',
        "schedules[0].time_zone: 'time_zone' is a key of cron schedules, not of recurrence "
        "schedules (put it inside recurrence)",
    ),
    (
        "key_of_other_pipeline_kind",
        '[pipelines.p]\nkind = "http"\nurl = "http://h/"\nsteps = [["x"]]\n',
        "pipelines.p.steps: 'steps' is a key of command pipelines, not of http pipelines",
    ),
    (
        "unknown_pipeline_kind",
        '[pipelines.p]\nkind = "htp"\n',
        "pipelines.p.kind: unknown kind 'htp', expected one of command, http, azureml, "
        "batch_endpoint, did you mean 'http'?",
    ),
    (
        "unknown_datastore",
        SCHEDULE + 'datastore = "inbx"\n',
        "schedules[0].datastore: unknown datastore 'inbx', did you mean 'inbox'?",
    ),
    (
        "path_escapes_root",
        SCHEDULE + 'datastore = "inbox"\npath_on_datastore = "a/../../etc"\n',
        "schedules[0].path_on_datastore: must be a relative path without '..', got 'a/../../etc'",
    ),
    (
        "absolute_path_on_datastore",
        SCHEDULE + 'datastore = "inbox"\npath_on_datastore = "/etc"\n',
        "schedules[0].path_on_datastore: must be a relative path without '..', got '/etc'",
    ),
    (
        "bad_cron",
        SCHEDULE + 'cron = "*/5 * * *"\n',
        "schedules[0].cron: Invalid cron expression '*/5 * * *': expected 5 fields (MIN HOUR "
        "DOM MON DOW), got 4",
    ),
    (
        "bad_catch_up",
        SCHEDULE + 'cron = "* * * * *"\ncatch_up = "some"\n',
        "schedules[0].catch_up: invalid value 'some', expected one of none, last, all",
    ),
    (
        "bad_status",
        SCHEDULE + 'cron = "* * * * *"\nstatus = "active"\n',
        "schedules[0].status: invalid value 'active', expected one of Active, Disabled",
    ),
    (
        "bad_schedule_id",
        SCHEDULE + 'cron = "* * * * *"\nid = "a b"\n',
        "schedules[0].id: invalid id 'a b': 1-64 characters from A-Z a-z 0-9 . _ -",
    ),
    (
        "events_on_blob",
        '[datastores.b]\nkind = "azure_blob"\ncontainer = "c1x"\nconnection_string = "x"\n'
        + SCHEDULE
        + 'datastore = "b"\nevents = true\n',
        "schedules[0].events: an azure_blob datastore ('b') takes its events from a Storage "
        'Queue: events = { queue = "blob-events" }, got true',
    ),
    (
        "polling_too_short",
        SCHEDULE + 'datastore = "inbox"\npolling_interval = "500ms"\n',
        "schedules[0].polling_interval: polling interval '500ms' is shorter than 1s",
    ),
    (
        "pattern_type",
        SCHEDULE + 'datastore = "inbox"\npattern = 5\n',
        "schedules[0].pattern: expected a string or an array of strings, got integer 5",
    ),
    (
        "pattern_empty",
        SCHEDULE + 'datastore = "inbox"\npattern = []\n',
        'schedules[0].pattern: needs at least one glob (all files: "*")',
    ),
    (
        "parameters_strings_only",
        '[pipelines.p]\nkind = "http"\nurl = "http://h/"\nparameters = { epochs = 10 }\n',
        'pipelines.p.parameters.epochs: expected a string, got integer 10 (write "10")',
    ),
    (
        "bad_pipeline_id",
        '[pipelines.p]\nkind = "http"\nurl = "http://h/"\nid = "no/slash"\n',
        "pipelines.p.id: invalid id 'no/slash': 1-64 characters from A-Z a-z 0-9 . _ -",
    ),
    (
        "on_failure_unknown",
        '[pipelines.p]\nkind = "http"\nurl = "http://h/"\non_failure = "notfy"\n',
        "pipelines.p.on_failure: unknown pipeline 'notfy', did you mean 'notify'?",
    ),
    (
        "blob_needs_a_credential_source",
        '[datastores.b]\nkind = "azure_blob"\ncontainer = "data"\n',
        "datastores.b: exactly one of connection_string or account_url is required",
    ),
    (
        "blob_sas_needs_account_url",
        '[datastores.b]\nkind = "azure_blob"\ncontainer = "data"\nconnection_string = "x"\n'
        'sas_token = "sv=1"\n',
        "datastores.b.sas_token: only valid with account_url",
    ),
    (
        "blob_container_name",
        '[datastores.b]\nkind = "azure_blob"\ncontainer = "My_Data"\naccount_url = "https://a"\n',
        "datastores.b.container: invalid container name 'My_Data': 3-63 lowercase letters, "
        "digits and single hyphens",
    ),
    (
        "daemon_api",
        '[daemon]\napi = "localhost"\n',
        'daemon.api: invalid address \'localhost\': expected "host:port", "unix:/path" or ""',
    ),
    (
        "daemon_log_format",
        '[daemon]\nlog_format = "text"\n',
        "daemon.log_format: invalid value 'text', expected one of auto, json, console",
    ),
    (
        "daemon_unknown_key",
        "[daemon]\nmax_concurent_runs = 2\n",
        "daemon.max_concurent_runs: unknown key 'max_concurent_runs', did you mean "
        "'max_concurrent_runs'?",
    ),
    (
        "top_level_unknown",
        "[[schedule]]\nname = 'x'\n",
        "schedule: unknown key 'schedule', did you mean 'schedules'?",
    ),
    (
        "schedules_not_array",
        '[schedules]\nname = "x"\n',
        "schedules: expected an array of tables ([[schedules]]), got a table",
    ),
    (
        "step_not_string",
        '[pipelines.p]\nkind = "command"\nsteps = [["x", 1]]\n',
        "pipelines.p.steps[0][1]: expected a string, got integer 1",
    ),
    (
        "empty_steps",
        '[pipelines.p]\nkind = "command"\nsteps = []\n',
        "pipelines.p.steps: expected a non-empty array of argv arrays, got an array",
    ),
    (
        "retry_exit_code_range",
        '[pipelines.p]\nkind = "command"\nsteps = [["x"]]\nretry_exit_codes = [0, 75]\n',
        "pipelines.p.retry_exit_codes[0]: must be at least 1, got 0",
    ),
    (
        "http_url_scheme",
        '[pipelines.p]\nkind = "http"\nurl = "ftp://h/x"\n',
        "pipelines.p.url: invalid URL 'ftp://h/x': expected http or https://…",
    ),
]


@pytest.mark.parametrize(("text", "line"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_config(tmp_path: Path, text: str, line: str) -> None:
    assert problems(tmp_path, BASE + text) == [line]  # that line alone: no cascade


@pytest.mark.parametrize(
    ("text", "lines"),
    [
        (
            SCHEDULE + 'recurence = { frequency = "Minute", interval = 15 }\n',
            [
                "schedules[0]: Must specify either a Recurrence or a Datastore.",
                "schedules[0].recurence: unknown key 'recurence', did you mean 'recurrence'?",
            ],
        ),
        (
            '[daemon]\napi_hosts = ["${1X}", "${OPEN"]\n',
            [
                "daemon.api_hosts[0]: invalid variable reference '${1X}'",
                "daemon.api_hosts[1]: unterminated variable reference '${OPEN'",
            ],
        ),
        (
            '[[schedules]]\nname = "A"\npipeline = "train"\nexperiment_name = "E"\n'
            'cron = "* * * * *"\n'
            '[[schedules]]\nname = "A"\npipeline = "train"\nexperiment_name = "E"\n'
            'cron = "0 * * * *"\n'
            '[[schedules]]\nname = "B"\nid = "x"\npipeline = "train"\nexperiment_name = "E"\n'
            'cron = "0 * * * *"\n'
            '[[schedules]]\nname = "C"\nid = "x"\npipeline = "train"\nexperiment_name = "E"\n'
            'cron = "0 * * * *"\n',
            [
                "schedules[1].name: duplicate name 'A' (also schedules[0])",
                "schedules[3].id: duplicate id 'x' (also schedules[2])",
            ],
        ),
        (  # a schedule with another error still takes its name: both are reported
            '[[schedules]]\nname = "r"\npipeline = "train"\nexperiment_name = "E"\n'
            'recurrence = { frequency = "hour", interval = 1 }\n'
            '[[schedules]]\nname = "r"\npipeline = "train"\nexperiment_name = "E"\n'
            'cron = "1 * * * *"\n',
            [
                "schedules[0].recurrence.frequency: Invalid value for frequency, only one of "
                "Minute, Hour, Day, Week, or Month accepted",
                "schedules[1].name: duplicate name 'r' (also schedules[0])",
            ],
        ),
        (
            '[datastores.d]\nkind = "local"\nrot = "/x"\n',
            [
                "datastores.d.rot: unknown key 'rot', did you mean 'root'?",
                "datastores.d.root: required",
            ],
        ),
        (
            '[pipelines.p]\nkind = "http"\nurl = "http://h/"\nid = "same"\n'
            '[pipelines.q]\nkind = "http"\nurl = "http://h/"\nid = "same"\n',
            ["pipelines.q.id: duplicate id 'same' (also pipelines.p)"],
        ),
        (
            '[datastores.b]\nkind = "azure_blob"\ncontainer = "data"\nconnection_string = "x"\n'
            'account_url = "https://a.blob.core.windows.net"\n',
            ["datastores.b.account_url: give either connection_string or account_url, not both"],
        ),
    ],
)
def test_bad_config_exact_lines(tmp_path: Path, text: str, lines: list[str]) -> None:
    assert problems(tmp_path, BASE + text) == lines


def test_toml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    found = problems(tmp_path, '[daemon]\napi = "x"\nmax_pending 5\n')
    assert found == [
        "TOML syntax error at line 3, column 13: Expected '=' after a key in a key/value pair"
    ]


def test_missing_file_and_bad_encoding(tmp_path: Path) -> None:
    with pytest.raises(ConfigErrors) as exc:
        load(tmp_path / "nope.toml", {})
    assert str(exc.value) == (
        f"{tmp_path}/nope.toml: 1 problem\n  config file {tmp_path}/nope.toml not found"
    )
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[daemon]\napi = "caf\xe9"\n')
    with pytest.raises(ConfigErrors, match="not valid UTF-8 at line 2"):
        load(path, {})


def test_every_problem_is_collected_in_one_raise(tmp_path: Path) -> None:
    text = """\
[daemon]
max_pending = 0

[datastores.d]
kind = "local"

[pipelines.p]
kind = "command"
steps = [["x", "{nope}"]]
timeout = "forever"

[[schedules]]
name = "A"
pipeline = "p"
experiment_name = "E"
recurrence = { frequency = "Minute", interval = 0 }

[[schedules]]
name = "B"
pipeline = "p"
experiment_name = "E"
datastore = "d"
"""
    with pytest.raises(ConfigErrors) as exc:
        load_text(tmp_path, text)
    assert [str(e) for e in exc.value.errors] == [
        "daemon.max_pending: must be at least 1, got 0",
        "datastores.d.root: required",
        "pipelines.p.timeout: invalid duration 'forever': expected <integer><unit>, unit one "
        "of ms s m h d",
        "schedules[0].recurrence.interval: Interval must be an integer greater than 0.",
    ]
    assert str(exc.value).startswith(f"{tmp_path}/watcherd.toml: 4 problems\n  daemon.")


def test_secrets_never_appear_in_errors(tmp_path: Path) -> None:
    text = """\
[daemon]
token = "${TOKEN}"
max_pending = "${TOKEN}"

[datastores.b]
kind = "azure_blob"
container = "data"
account_url = "https://user:hunter2pw@acct.blob.core.windows.net/?sv=1&sig=SIGSECRET"
sas_token = "?sv=2&sig=SASSECRET"
account_key = "ACCOUNTKEYSECRET"

[datastores.c]
kind = "azure_blob"
container = "data"
connection_string = "AccountName=a;AccountKey=CONNKEYSECRET;X=y"
account_key = "ACCOUNTKEYSECRET"

[pipelines.h]
kind = "http"
url = "ftp://h/x?token=URLSECRET"
headers = { Authorization = "Bearer HEADERSECRET", Count = 5 }

[pipelines.c]
kind = "command"
steps = [["x"]]
env = { API_KEY = "ENVSECRET", N = 1 }

[[schedules]]
name = "HEADERSECRET"
pipeline = "h"
experiment_name = "E"
"""
    with pytest.raises(ConfigErrors) as exc:
        load_text(tmp_path, text, {"TOKEN": "TOKENSECRET"})
    shown = str(exc.value)
    for secret in ("TOKENSECRET", "hunter2pw", "SIGSECRET", "SASSECRET", "ACCOUNTKEYSECRET",
                   "CONNKEYSECRET", "URLSECRET", "HEADERSECRET", "ENVSECRET"):  # fmt: skip
        assert secret not in shown
    assert "daemon.max_pending: expected an integer, got '***'" in shown
    assert "pipelines.h.url: invalid URL 'ftp://h/x?***': expected http or https://…" in shown
    assert "pipelines.h.headers.Count: expected a string, got an integer" in shown


def test_secrets_are_collected(tmp_path: Path) -> None:
    text = """\
[daemon]
token = "TOKENSECRET"

[datastores.b]
kind = "azure_blob"
container = "data"
account_url = "https://acct.blob.core.windows.net/?sv=1&sig=SIG"
sas_token = "?sv=2&sig=SAS"

[pipelines.h]
kind = "http"
url = "https://u:pw@h/x?k=URLQ"
headers = { Authorization = "Bearer H" }

[pipelines.c]
kind = "command"
steps = [["x"]]
env = { API_KEY = "E", EMPTY = "" }
"""
    cfg = load_text(tmp_path, text)
    # core.redact.url_secrets decides which parts of a URL count (query values too, issue #11).
    assert cfg.secrets >= {
        "TOKENSECRET", "sv=1&sig=SIG", "?sv=2&sig=SAS", "sv=2&sig=SAS", "u:pw", "pw", "k=URLQ",
        "Bearer H", "E",
    }  # fmt: skip
    assert not cfg.secrets & {"data", "acct", "https", "x", "API_KEY", ""}


def test_placeholder_values_and_precedence(tmp_path: Path) -> None:
    text = """\
[datastores.inbox]
kind = "azure_blob"
container = "inbox"
connection_string = "UseDevelopmentStorage=true"

[datastores.local]
kind = "local"
root = "local"

[pipelines.p]
kind = "command"
steps = [["x", "{a}", "{b}", "{file}", "{file.url}", "{{literal}}"]]
parameters = { a = "1" }

[pipelines.unused]
kind = "command"
steps = [["x", "{only_from_api}"]]

[[schedules]]
name = "S"
pipeline = "p"
experiment_name = "E"
datastore = "inbox"
data_path_parameter_name = "file"
pipeline_parameters = { b = "2" }
"""
    load_text(tmp_path, text)  # a pipeline no schedule uses is not checked at load
    found = problems(tmp_path, text.replace('data_path_parameter_name = "file"\n', ""))
    assert found == [
        "schedules[0].pipeline: unresolved placeholder {file} in pipelines.p.steps[0][3]",
        "schedules[0].pipeline: unresolved placeholder {file.url} in pipelines.p.steps[0][4] "
        "({NAME.url} is only defined for the data_path_parameter_name file of an azure_blob "
        "datastore)",
    ]
    found = problems(tmp_path, text.replace('datastore = "inbox"', 'datastore = "local"'))
    assert found == [
        "schedules[0].pipeline: unresolved placeholder {file.url} in pipelines.p.steps[0][4] "
        "({NAME.url} is only defined for the data_path_parameter_name file of an azure_blob "
        "datastore)",
    ]


def test_on_failure(tmp_path: Path) -> None:
    text = """\
[pipelines.p]
kind = "http"
url = "http://h/"
on_failure = "alert"

[pipelines.alert]
kind = "command"
steps = [["notify", "{failed_run}"]]
"""
    cfg = load_text(tmp_path, text)
    assert cfg.pipelines["p"].on_failure == cfg.pipelines["alert"].id
    found = problems(tmp_path, text.replace("{failed_run}", "{who}"))
    assert found == [
        "pipelines.p.on_failure: unresolved placeholder {who} in pipelines.alert.steps[0][1]"
    ]


def test_parse_takes_a_raw_mapping(tmp_path: Path) -> None:
    raw = {"pipelines": {"p": {"kind": "azureml", "endpoint": "https://x/y"}}}
    cfg = parse(raw, path=None, base_dir=tmp_path, env={})
    assert cfg.pipelines["p"].kind == "azureml"
    with pytest.raises(ConfigErrors) as exc:
        parse({"pipelines": {"p": {}}}, path=None, base_dir=tmp_path, env={})
    assert str(exc.value) == "config: 1 problem\n  pipelines.p.kind: required"


# ── API bodies: parse_schedule ────────────────────────────────────────────────


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return load_text(tmp_path, BASE + '[datastores.blob]\nkind = "azure_blob"\ncontainer = "data"\n'
                     'connection_string = "AccountName=a;AccountKey=K3Y"\n')  # fmt: skip


def api(cfg: Config, body: Mapping[str, object], existing: Schedule | None = None) -> Schedule:
    return parse_schedule(body, config=cfg, key_prefix="body", source=Source.API, existing=existing)


def api_errors(
    cfg: Config, body: Mapping[str, object], existing: Schedule | None = None
) -> list[str]:
    with pytest.raises(ConfigErrors) as exc:
        api(cfg, body, existing)
    return [str(e) for e in exc.value.errors]


BODY = {"name": "N", "pipeline": "train", "experiment_name": "E"}


def test_api_create(cfg: Config) -> None:
    s = api(cfg, {**BODY, "recurrence": {"frequency": "Hour", "interval": 2}, "description": None})
    assert s.source is Source.API
    assert s.pipeline == cfg.pipelines["train"].id
    assert len(s.id) == 36 and s.id != api(cfg, {**BODY, "cron": "* * * * *"}).id
    assert s.description == ""


@pytest.mark.parametrize(
    ("body", "lines"),
    [
        (
            {**BODY, "recurrence": {"frequency": "Hour", "interval": 2}, "datastore": "inbox"},
            ["body: Can not specify both a Recurrence and a Datastore"],
        ),
        (BODY, ["body: Must specify either a Recurrence or a Datastore."]),
        (
            {
                **BODY,
                "recurrence": {"frequency": "Hour", "interval": 2},
                "data_path_parameter_name": "f",
                "path_on_datastore": "x",
            },
            [
                "body.data_path_parameter_name: Data Path parameter name can only be specified "
                "for Datastore schedules.",
                "body.path_on_datastore: Path on datastore parameter can only be specified for "
                "Datastore schedules.",
            ],
        ),
        (
            {**BODY, "cron": "* * * * *", "path_on_datastore": "x"},
            [
                "body.path_on_datastore: Path on datastore parameter can only be specified for "
                "Datastore schedules."
            ],
        ),
        (
            {**BODY, "recurrence": {"frequency": "Hour", "interval": "2"}},
            ["body.recurrence.interval: Interval must be an integer greater than 0."],
        ),
        (
            {**BODY, "cron": "* * * * *", "id": "mine", "created_at": "x"},
            ["body.id: read-only key", "body.created_at: read-only key"],
        ),
        (
            {**BODY, "pipeline": "nope", "cron": "* * * * *"},
            ["body.pipeline: unknown pipeline 'nope'"],
        ),
        (
            {**BODY, "pipeline": "notify", "cron": "* * * * *", "extra": 1},
            ["body.extra: unknown key 'extra'"],
        ),
    ],
)
def test_api_create_errors(cfg: Config, body: dict[str, object], lines: list[str]) -> None:
    assert api_errors(cfg, body) == lines


def test_api_placeholders_are_checked(cfg: Config) -> None:
    text_cfg = parse(
        {"pipelines": {"p": {"kind": "command", "steps": [["x", "{who}"]]}}},
        path=None, base_dir=cfg.base_dir, env={},
    )  # fmt: skip
    body = {**BODY, "pipeline": "p", "cron": "* * * * *"}
    assert api_errors(text_cfg, body) == [
        "body.pipeline: unresolved placeholder {who} in pipelines.p.steps[0][1]"
    ]
    assert api(text_cfg, {**body, "pipeline_parameters": {"who": "me"}}).pipeline_parameters == {
        "who": "me"
    }


def test_api_patch(cfg: Config) -> None:
    first = api(cfg, {**BODY, "recurrence": {"frequency": "Hour", "interval": 2},
                      "pipeline_parameters": {"epochs": "3"}, "description": "d"})  # fmt: skip
    same = api(cfg, {"name": None, "description": None}, existing=first)
    assert same == first
    changed = api(cfg, {"recurrence": {"frequency": "Day", "interval": 1, "hours": [4]},
                        "pipeline_parameters": {}, "status": "Disabled",
                        "pipeline": "train"}, existing=first)  # fmt: skip
    assert (changed.id, changed.source, changed.description) == (first.id, Source.API, "d")
    assert changed.pipeline_parameters == {}
    assert changed.status is Status.DISABLED
    assert isinstance(changed.trigger, RecurrenceTrigger)
    assert changed.trigger.recurrence.hours == (4,)


@pytest.mark.parametrize(
    ("create", "patch", "line"),
    [
        (
            {"datastore": "inbox"},
            {"recurrence": {"frequency": "Hour", "interval": 1}},
            "body.recurrence: Can not specify a recurrence for a Datastore schedule.",
        ),
        (
            {"recurrence": {"frequency": "Hour", "interval": 1}},
            {"datastore": "inbox"},
            "body.datastore: Can not specify a Datastore for a Recurrence schedule.",
        ),
        (
            {"cron": "* * * * *"},
            {"datastore": "inbox"},
            "body.datastore: Can not specify a Datastore for a Recurrence schedule.",
        ),
        (
            {"datastore": "inbox"},
            {"cron": "* * * * *"},
            "body.cron: Can not specify a cron for a Datastore schedule.",
        ),
        (
            {"datastore": "inbox"},
            {"trigger": {"type": "cron", "expression": "* * * * *"}},
            "body.trigger: Can not specify a trigger for a Datastore schedule.",
        ),
        (
            {"trigger": {"type": "cron", "expression": "* * * * *"}},
            {"datastore": "inbox"},
            "body.datastore: Can not specify a Datastore for a Recurrence schedule.",
        ),
        ({"cron": "* * * * *"}, {"pipeline": "notify"},
         "body.pipeline: the pipeline of a schedule is fixed at creation"),
        ({"cron": "* * * * *"}, {"experiment_name": "Other"},
         "body.experiment_name: the experiment of a schedule is fixed at creation"),
        ({"cron": "* * * * *"}, {"id": "x"}, "body.id: read-only key"),
        ({"datastore": "inbox"}, {"end_time": "2027-01-01T00:00"},
         "body.end_time: 'end_time' is a key of recurrence schedules, not of datastore schedules"),
        ({"cron": "* * * * *"}, {"data_path_parameter_name": "f"},
         "body.data_path_parameter_name: Data Path parameter name can only be specified for "
         "Datastore schedules."),
    ],
)  # fmt: skip
def test_api_patch_refusals(
    cfg: Config, create: dict[str, object], patch: dict[str, object], line: str
) -> None:
    existing = api(cfg, {**BODY, **create})
    assert api_errors(cfg, patch, existing) == [line]


def test_schedule_to_dict_has_exactly_the_keys_of_its_kind(cfg: Config) -> None:
    common = {"id", "name", "description", "pipeline", "experiment_name", "status",
              "pipeline_parameters", "continue_on_step_failure", "source"}  # fmt: skip
    time_opts = {"end_time", "catch_up", "max_catch_up", "concurrency", "max_queued"}
    rec = api(cfg, {**BODY, "recurrence": {"frequency": "Hour", "interval": 2}})
    assert set(schedule_to_dict(rec, cfg)) == common | time_opts | {"recurrence"}
    cron = api(cfg, {**BODY, "cron": "0 9 * * 1-5", "time_zone": "Europe/Paris"})
    assert set(schedule_to_dict(cron, cfg)) == common | time_opts | {
        "cron", "time_zone", "start_time",
    }  # fmt: skip
    store = api(cfg, {**BODY, "datastore": "inbox", "polling_interval": "90s"})
    d = schedule_to_dict(store, cfg)
    assert set(d) == common | {
        "datastore", "path_on_datastore", "polling_interval", "data_path_parameter_name",
        "pattern", "ignore", "ignore_defaults", "settle", "initial", "events", "list_page_size",
    }  # fmt: skip
    assert d["list_page_size"] is None  # a local datastore: not applicable
    assert d["polling_interval"] == "90s"
    assert d["pipeline"] == cfg.pipelines["train"].id
    assert d["source"] == "api"
    assert schedule_to_dict(rec, cfg)["recurrence"] == {
        "frequency": "Hour", "interval": 2, "time_zone": "UTC",
    }  # fmt: skip
    five = api(cfg, {**BODY, "datastore": "inbox", "polling_interval": 5})
    assert schedule_to_dict(five, cfg)["polling_interval"] == 5


def test_export_round_trip(tmp_path: Path, cfg: Config) -> None:
    made = [
        api(cfg, {**BODY, "name": "rec", "description": 'quote " and \\ and \x7f',
                  "recurrence": {"frequency": "Week", "interval": 2, "week_days": ["Monday"],
                                 "hours": [4, 16], "minutes": [0, 30],
                                 "time_zone": "Pacific Standard Time",
                                 "start_time": "2026-01-05T04:50:00"},
                  "end_time": "2027-01-01T00:00", "catch_up": "last", "concurrency": "forbid",
                  "pipeline_parameters": {"epochs": "3", "odd key": "é"}}),
        api(cfg, {**BODY, "name": "cron", "cron": "0 9 * * 1-5", "time_zone": "Europe/Paris",
                  "start_time": "2026-02-01T00:00", "status": "Disabled",
                  "continue_on_step_failure": True}),
        api(cfg, {**BODY, "name": "files", "datastore": "blob", "path_on_datastore": "a/b",
                  "polling_interval": "30s", "pattern": ["*.csv", "*.tsv"], "ignore": ["x*"],
                  "settle": "250ms", "initial": "fire", "data_path_parameter_name": "f",
                  "events": False, "ignore_defaults": False}),
    ]  # fmt: skip
    text = export_toml(made, cfg)
    assert text.startswith("[[schedules]]\nid = ")
    assert f'pipeline = "{cfg.pipelines["train"].id}"  # train' in text
    loaded = load_text(tmp_path, BASE + '[datastores.blob]\nkind = "azure_blob"\n'
                       'container = "data"\nconnection_string = "x"\n' + text)  # fmt: skip
    assert loaded.schedules == tuple(replace(s, source=Source.FILE) for s in made)


def test_check_compat(tmp_path: Path, cfg: Config) -> None:
    train_id = cfg.pipelines["train"].id
    users = [
        api(cfg, {**BODY, "name": "a", "datastore": "inbox"}),
        api(cfg, {**BODY, "name": "b", "cron": "* * * * *"}),
        api(cfg, {**BODY, "name": "c", "pipeline": "notify", "cron": "* * * * *"}),
    ]
    gone = replace(users[0], name="gone", source=Source.REMOVED)
    assert check_compat(cfg, [*users, gone]) == []
    new = load_text(tmp_path, '[pipelines.notify]\nkind = "http"\nurl = "http://h/{x}"\n'
                    + SCHEDULE.replace("train", "notify").replace('"S"', '"b"')
                    + 'cron = "* * * * *"\npipeline_parameters = { x = "1" }\n')  # fmt: skip
    assert [str(e) for e in check_compat(new, [*users, gone])] == [
        "pipelines.notify: API-created schedule 'c': unresolved placeholder {x} in "
        "pipelines.notify.url",
        f"pipelines: pipeline id '{train_id}' is missing but API-created schedules use it: "
        "'a', 'b'",
        "datastores.inbox: datastore 'inbox' is missing but API-created schedules use it: 'a'",
        "schedules[0].name: name 'b' is taken by an API-created schedule",
    ]


def test_an_unset_variable_is_one_problem_not_two(tmp_path: Path) -> None:
    raw = {
        "daemon": {"max_pending": "${U1}"},
        "pipelines": {"p": {"kind": "http", "url": "${U2}"}},
        "schedules": [
            {"name": "a", "pipeline": "${U3}", "experiment_name": "e",
             "recurrence": {"frequency": "Hour", "interval": "${U4}"}},
        ],
    }  # fmt: skip
    with pytest.raises(ConfigErrors) as exc:
        parse(raw, path=None, base_dir=tmp_path, env={})
    assert [str(e) for e in exc.value.errors] == [
        "daemon.max_pending: environment variable U1 is not set",
        "pipelines.p.url: environment variable U2 is not set",
        "schedules[0].pipeline: environment variable U3 is not set",
        "schedules[0].recurrence.interval: environment variable U4 is not set",
    ]


def test_the_config_hash_is_what_replicas_share_as_written(tmp_path: Path) -> None:
    """Replicas compare this hash (SPEC §12): the same tables give the same hash wherever
    the file is, [daemon] aside; any change to a schedule, pipeline or datastore changes it,
    and so does a ${…} value."""
    from watcherd.engine.engine import config_hash

    base = (
        '[daemon]\nstate_dir = "{d}"\n[pipelines.p]\nkind = "command"\nsteps = [["${{CMD}}"]]\n'
        '[[schedules]]\nname = "s"\npipeline = "p"\nexperiment_name = "E"\ncron = "{c}"\n'
    )

    def hashed(where: str, *, d: str = "x", c: str = "0 3 * * *", cmd: str = "true") -> str:
        (tmp_path / where).mkdir(exist_ok=True)
        path = tmp_path / where / "watcherd.toml"
        path.write_text(base.format(d=tmp_path / d, c=c))
        return config_hash(load(path, {"CMD": cmd}))

    first = hashed("a")
    assert hashed("b") == first  # another directory (another host's path)
    assert hashed("c", d="other-state") == first  # [daemon] is each replica's own
    assert hashed("d", c="0 4 * * *") != first
    assert hashed("e", cmd="false") != first


# ── one rule, many schedules ──────────────────────────────────────────────────


def _hourly(name: str, interval: str, extra: str = "") -> str:
    return (
        f'\n[[schedules]]\nname = "{name}"\npipeline = "train"\nexperiment_name = "E"\n'
        f'recurrence = {{ frequency = "Hour", interval = {interval}{extra} }}\n'
    )


def test_schedules_with_the_same_recurrence_table_share_one_rule(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, BASE + _hourly("a", "2") + _hourly("b", "2") + _hourly("c", "3"))
    a, b, c = (s.trigger for s in cfg.schedules)
    assert isinstance(a, RecurrenceTrigger) and isinstance(b, RecurrenceTrigger)
    assert isinstance(c, RecurrenceTrigger)
    assert a.recurrence is b.recurrence and a.recurrence.interval == 2
    assert c.recurrence.interval == 3
    assert a.options is b.options  # no option set: the one default, immutable
    assert a is b and c is not a  # one trigger object for one (rule, end, options)


def test_schedules_with_the_same_cron_share_one_trigger_unless_an_option_differs(
    tmp_path: Path,
) -> None:
    def cron(name: str, extra: str = "") -> str:
        return (
            f'\n[[schedules]]\nname = "{name}"\npipeline = "train"\nexperiment_name = "E"\n'
            f'cron = "0 3 * * *"\ntime_zone = "Europe/Paris"\n{extra}'
        )

    cfg = load_text(tmp_path, BASE + cron("a") + cron("b") + cron("c", 'catch_up = "all"\n'))
    a, b, c = (s.trigger for s in cfg.schedules)
    assert isinstance(a, CronTrigger) and isinstance(c, CronTrigger)
    assert a is b and c is not a and c.cron is a.cron
    assert c.options.catch_up == "all" and a.options.catch_up == "none"


def test_a_table_that_reads_alike_but_is_typed_otherwise_is_still_checked(
    tmp_path: Path,
) -> None:
    """`true` equals `1` and a `${N}` equals its text: the shared rule must not hide that a
    later table is wrong (each error keeps its own key path)."""
    text = (
        BASE
        + _hourly("one", "1")
        + _hourly("yes", "true")
        + _hourly("env", '"${N}"')
        + _hourly("text", '"5"')
        + _hourly("env2", '"${N}"', ", hours = [1]")
    )
    found = problems(tmp_path, text, {"N": "5"})
    assert found == [
        "schedules[1].recurrence.interval: Interval must be an integer greater than 0.",
        "schedules[3].recurrence.interval: Interval must be an integer greater than 0.",
        "schedules[4].recurrence.hours: Can only specify hours if frequency is Week or Day.",
    ]


def test_a_config_that_shares_nothing_stops_looking_for_shared_rules() -> None:
    from watcherd.config.schedules import SHARED_MIN_HITS, SHARED_TRIAL, Shared

    apart: Shared[int] = Shared()
    for i in range(SHARED_TRIAL):
        assert apart.on and apart.get((i,)) is None
        apart.put((i,), i)
    assert not apart.on  # a file of all-different tables pays for SHARED_TRIAL keys only
    alike: Shared[int] = Shared()
    for i in range(4 * SHARED_TRIAL):
        key = (i % (SHARED_MIN_HITS - 1),)
        if alike.get(key) is None:
            alike.put(key, i)
    assert alike.on and alike.hits == 4 * SHARED_TRIAL - (SHARED_MIN_HITS - 1)
    assert alike.get(None) is None and alike.lookups == 4 * SHARED_TRIAL


def test_rules_stay_right_when_sharing_is_given_up(tmp_path: Path) -> None:
    from watcherd.config.schedules import SHARED_TRIAL

    n = SHARED_TRIAL + 20
    start = datetime(2020, 1, 1)
    text = BASE + "".join(  # all different: no rule is shared, the memo is given up
        _hourly(
            f"h{i}",
            str(1 + i % 168),
            f', start_time = "{start + timedelta(minutes=i):%Y-%m-%dT%H:%M:%S}"',
        )
        for i in range(n)
    )
    text += _hourly("again", "5") + _hourly("wrong", "true")
    with pytest.raises(ConfigErrors) as exc:
        load_text(tmp_path, text)
    assert [str(e) for e in exc.value.errors] == [
        f"schedules[{n + 1}].recurrence.interval: Interval must be an integer greater than 0."
    ]
    cfg = load_text(tmp_path, text.replace("interval = true", "interval = 6"))
    assert len({id(s.trigger) for s in cfg.schedules}) == n + 2
    got = [s.trigger.recurrence.interval for s in cfg.schedules]  # type: ignore[union-attr]
    assert got == [1 + i % 168 for i in range(n)] + [5, 6]


def test_keys_checked_without_a_key_path_of_their_own_still_report_at_theirs(
    tmp_path: Path,
) -> None:
    """Flat converters (schema.Field.flat) get the table's key path, not their own: what they
    refuse is still reported at the key."""
    text = BASE + (
        '\n[[schedules]]\nname = 5\npipeline = "nope"\nexperiment_name = ""\n'
        'status = "Maybe"\ncontinue_on_step_failure = "yes"\ncron = "0 3 * * *"\n'
        'catch_up = "sometimes"\nmax_queued = 0\n'
    )
    assert problems(tmp_path, text) == [
        "schedules[0].name: expected a string, got integer 5",
        "schedules[0].pipeline: unknown pipeline 'nope'",
        "schedules[0].experiment_name: must not be empty",
        "schedules[0].status: invalid value 'Maybe', expected one of Active, Disabled",
        "schedules[0].continue_on_step_failure: expected true or false, got string 'yes'",
        "schedules[0].catch_up: invalid value 'sometimes', expected one of none, last, all",
        "schedules[0].max_queued: must be at least 1, got 0",
    ]
