"""Azure ML v2 schedule YAML (SPEC §13): safe reading, the body it makes, the documentation's
examples firing as v2 describes them, and export → create round trips in TOML and YAML."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from watcherd.config import export_toml, load, parse_schedule, schedule_to_dict
from watcherd.config.yaml import (
    VALUES_MAX,
    export_yaml,
    load_yaml,
    schedule_body,
    split_documents,
)
from watcherd.core import slots
from watcherd.core.errors import ConfigErrors
from watcherd.core.models import Config, CronTrigger, RecurrenceTrigger, Schedule, Source

BASE = """\
[datastores.inbox]
kind = "local"
root = "inbox"

[datastores.blob]
kind = "azure_blob"
container = "data"
connection_string = "UseDevelopmentStorage=true"
azureml_datastore = "workspaceblobstore"

[pipelines.simple-pipeline-job]
kind = "http"
url = "http://127.0.0.1:9000/hook/{who}"
parameters = { who = "me" }

[pipelines.score]
kind = "batch_endpoint"
endpoint = "https://ep.westeurope.inference.ml.azure.com/jobs"
"""
PACIFIC = ZoneInfo("America/Los_Angeles")

# The two schedules of Azure ML's "Schedule machine learning pipeline jobs" page
# (azureml-examples cli/schedules/*.yml), `create_job` pointed at a watcherd pipeline in the
# form the page leaves commented out: the only change.
DOC_RECURRENCE = """\
$schema: https://azuremlschemas.azureedge.net/latest/schedule.schema.json
name: simple_recurrence_job_schedule
display_name: Simple recurrence job schedule
description: a simple hourly recurrence job schedule

trigger:
  type: recurrence
  frequency: day #can be minute, hour, day, week, month
  interval: 1 #every day
  schedule:
    hours: [4,5,10,11,12]
    minutes: [0,30]
  start_time: "2022-07-10T10:00:00" # optional - default will be schedule creation time
  time_zone: "Pacific Standard Time" # optional - default will be UTC

create_job: azureml:simple-pipeline-job
"""
DOC_CRON = """\
$schema: https://azuremlschemas.azureedge.net/latest/schedule.schema.json
name: simple_cron_job_schedule
display_name: Simple cron job schedule
description: a simple hourly cron job schedule

trigger:
  type: cron
  expression: "0 * * * *"
  start_time: "2022-07-10T10:00:00" # optional - default will be schedule creation time
  time_zone: "Pacific Standard Time" # optional - default will be UTC

create_job: azureml:simple-pipeline-job
"""


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Config:
    path = tmp_path_factory.mktemp("yaml") / "watcherd.toml"
    path.write_text(BASE)
    return load(path, {})


def create(cfg: Config, text: str) -> Schedule:
    """What `schedules create --file` / POST with application/yaml does."""
    body = schedule_body(text, config=cfg)
    return parse_schedule(body, config=cfg, key_prefix="body", source=Source.API)


def yaml_errors(cfg: Config, text: str) -> list[str]:
    with pytest.raises(ConfigErrors) as exc:
        schedule_body(text, config=cfg)
    return [str(e) for e in exc.value.errors]


def local_fires(s: Schedule, now: datetime, n: int) -> list[str]:
    trigger = s.trigger
    assert isinstance(trigger, RecurrenceTrigger | CronTrigger)
    anchor, cursor = slots.new_timer(trigger, now, active=True)
    return [
        f"{t.astimezone(PACIFIC):%m-%d %H:%M}" for t in slots.upcoming(trigger, anchor, cursor, n)
    ]


# ── the documentation's examples ─────────────────────────────────────────────


def test_doc_recurrence_fires_as_v2_describes(cfg: Config) -> None:
    s = create(cfg, DOC_RECURRENCE)
    assert (s.name, s.description, s.experiment_name) == (
        "simple_recurrence_job_schedule", "a simple hourly recurrence job schedule",
        "simple_recurrence_job_schedule",
    )  # fmt: skip
    assert s.pipeline == cfg.pipelines["simple-pipeline-job"].id
    # Created before the start: the first job at start_time itself (10:00 is a slot: v2 fires
    # it), then every hours × minutes pair of every day, Pacific time: 10 runs a day.
    before = datetime(2022, 7, 1, tzinfo=UTC)
    assert local_fires(s, before, 16) == [
        "07-10 10:00", "07-10 10:30", "07-10 11:00", "07-10 11:30", "07-10 12:00", "07-10 12:30",
        "07-11 04:00", "07-11 04:30", "07-11 05:00", "07-11 05:30", "07-11 10:00", "07-11 10:30",
        "07-11 11:00", "07-11 11:30", "07-11 12:00", "07-11 12:30",
    ]  # fmt: skip
    # "If the start time is in the past, the first job will run at the next calculated run time."
    later = datetime(2026, 11, 25, 18, 40, tzinfo=UTC)  # 10:40 PST
    assert local_fires(s, later, 3) == ["11-25 11:00", "11-25 11:30", "11-25 12:00"]


def test_doc_cron_fires_as_v2_describes(cfg: Config) -> None:
    s = create(cfg, DOC_CRON)
    assert isinstance(s.trigger, CronTrigger) and s.trigger.cron.zone == "America/Los_Angeles"
    before = datetime(2022, 7, 1, tzinfo=UTC)
    assert local_fires(s, before, 3) == ["07-10 10:00", "07-10 11:00", "07-10 12:00"]
    later = datetime(2026, 11, 25, 18, 40, tzinfo=UTC)
    assert local_fires(s, later, 2) == ["11-25 11:00", "11-25 12:00"]


def test_doc_examples_without_start_time_fire_on_creation(cfg: Config) -> None:
    """ "start_time: optional - default will be schedule creation time" (the first job runs
    instantly)."""
    now = datetime(2026, 11, 25, 18, 40, 5, tzinfo=UTC)
    for doc in (DOC_RECURRENCE, DOC_CRON):
        text = "\n".join(line for line in doc.splitlines() if "start_time" not in line)
        s = create(cfg, text + "\n")
        assert local_fires(s, now, 2)[0] == "11-25 10:40"


# ── safe reading ──────────────────────────────────────────────────────────────

SURPRISES = [
    ("name: s\nis_enabled: no\n", "body.is_enabled: 'no' is a boolean in YAML 1.1: quote it "
     "(\"no\") for the text, or write true or false"),
    ("name: s\ntags: {experiment_name: on}\n", "body.tags.experiment_name: 'on' is a boolean in "
     "YAML 1.1: quote it (\"on\") for the text, or write true or false"),
    ("name: s\ntrigger: {type: cron, expression: '0 4 * * *', start_time: 2022-07-10T10:00:00}\n",
     "body.trigger.start_time: unquoted date-time '2022-07-10T10:00:00' is a YAML timestamp: "
     "quote it (\"2022-07-10T10:00:00\")"),
    ("name: s\ntrigger: {schedule: {hours: [010]}}\n", "body.trigger.schedule.hours[0]: ambiguous "
     "number '010' (YAML 1.1 reads a leading 0 as octal, and 0x, 0b, 1:30 or _ forms "
     "differently): write it in plain decimal, or quote it for the text"),
    ("name: s\ntrigger: {interval: 0x10}\n", "body.trigger.interval: ambiguous number '0x10' "
     "(YAML 1.1 reads a leading 0 as octal, and 0x, 0b, 1:30 or _ forms differently): write it "
     "in plain decimal, or quote it for the text"),
    ("name: s\ntrigger: {interval: 1:30}\n", "body.trigger.interval: ambiguous number '1:30' "
     "(YAML 1.1 reads a leading 0 as octal, and 0x, 0b, 1:30 or _ forms differently): write it "
     "in plain decimal, or quote it for the text"),
    ("on: 1\n", "body.on: 'on' is a boolean in YAML 1.1: quote it (\"on\") for the text, or "
     "write true or false"),
    ("name: a\nname: b\n", "body.name: duplicate key 'name'"),
    ("name: s\ntrigger: {type: cron, type: cron}\n", "body.trigger.type: duplicate key 'type'"),
    ("base: &b {type: cron}\ntrigger:\n  <<: *b\n", "body.trigger: merge keys (<<) are not "
     "accepted: write the keys out"),
    ("name: !!python/object/apply:os.system [echo]\n", "body.name: YAML tag "
     "'tag:yaml.org,2002:python/object/apply:os.system' is not accepted"),
    ("name: !custom x\n", "body.name: YAML tag '!custom' is not accepted"),
    ("name: s\nx: &a [*a]\n", "body.x[0]: recursive alias"),
    ("name: s\n---\nname: t\n", "body: one schedule per YAML document: this text holds several"),
    ("name: [s\n", "body: YAML syntax error at line 2, column 1: expected ',' or ']', but got "
     "'<stream end>'"),
    ("", "body: empty YAML document: expected a schedule"),
    ("- name: s\n", "body: expected a mapping (a v2 schedule), got an array"),
    ("name: s\ntrigger: {expression: * * * * *}\n", "body: YAML syntax error at line 2, column "
     "24: expected alphabetic or numeric character, but found ' ' (quote values that start with "
     "* or &)"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "line"), SURPRISES)
def test_yaml_surprises_are_caught(cfg: Config, text: str, line: str) -> None:
    assert yaml_errors(cfg, text) == [line]


def test_yaml_size_and_alias_caps(cfg: Config) -> None:
    big = "name: s\ndescription: '" + "x" * (1024 * 1024) + "'\n"
    assert yaml_errors(cfg, big) == ["body: YAML larger than 1 MiB"]
    laughs = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        laughs.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    (line,) = yaml_errors(cfg, "\n".join(laughs) + "\n")
    assert line.endswith(f": more than {VALUES_MAX} values once aliases are expanded")
    # Aliases within the cap are fine (YAML anchors are a normal thing to write).
    ok = load_yaml("a: &x {k: 1}\nb: *x\nc: [*x, *x]\n")
    assert ok == {"a": {"k": 1}, "b": {"k": 1}, "c": [{"k": 1}, {"k": 1}]}


def test_yaml_has_no_env_substitution(cfg: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHERD_SECRET", "s3cret")
    s = create(cfg, "name: s\ndescription: '${WATCHERD_SECRET} $${x}'\n"
                    "trigger: {type: cron, expression: '0 4 * * *'}\n"
                    "create_job: simple-pipeline-job\n"
                    "pipeline_parameters: {who: '${HOME}'}\n")  # fmt: skip
    assert s.description == "${WATCHERD_SECRET} $${x}"
    assert s.pipeline_parameters == {"who": "${HOME}"}


# ── the body ──────────────────────────────────────────────────────────────────

CRON = "trigger: {type: cron, expression: '0 4 * * *'}\n"


@pytest.mark.parametrize(
    ("create_job", "pipeline"),
    [("azureml:simple-pipeline-job", "simple-pipeline-job"), ("simple-pipeline-job",
      "simple-pipeline-job"), ("azureml:score", "score"), (" azureml:score ", "score")],
)  # fmt: skip
def test_create_job_names_a_pipeline(cfg: Config, create_job: str, pipeline: str) -> None:
    s = create(cfg, f"name: s\n{CRON}create_job: '{create_job}'\n")
    assert s.pipeline == cfg.pipelines[pipeline].id
    by_id = create(cfg, f"name: s\n{CRON}create_job: azureml:{cfg.pipelines[pipeline].id}\n")
    assert by_id.pipeline == s.pipeline


@pytest.mark.parametrize(
    ("create_job", "line"),
    [
        ("azureml:score:3", "body.create_job: 'azureml:score:3' has a :version suffix, which "
         "watcherd does not support (its pipelines have no versions): write azureml:score"),
        ("azureml:score@latest", "body.create_job: 'azureml:score@latest' has an @label suffix, "
         "which watcherd does not support (its pipelines have no versions): write azureml:score"),
        ("./simple-pipeline-job.yml", "body.create_job: './simple-pipeline-job.yml' names a job "
         "file or an Azure resource id: inline job definitions are not supported; name a watcherd "
         "pipeline (azureml:<pipeline name or id>)"),
        ("azureml:/subscriptions/x/resourceGroups/y", "body.create_job: "
         "'azureml:/subscriptions/x/resourceGroups/y' names a job file or an Azure resource id: "
         "inline job definitions are not supported; name a watcherd pipeline "
         "(azureml:<pipeline name or id>)"),
        ("{type: pipeline, job: 'azureml:score'}", "body.create_job: inline job definitions are "
         "not supported: name a watcherd pipeline (azureml:<pipeline name or id>)"),
        ("azureml:scor", "body.create_job: unknown pipeline 'scor', did you mean 'score'?"),
    ],
)  # fmt: skip
def test_create_job_refusals(cfg: Config, create_job: str, line: str) -> None:
    value = create_job if create_job.startswith("{") else f"'{create_job}'"
    assert yaml_errors(cfg, f"name: s\n{CRON}create_job: {value}\n") == [line]


def test_body_keys(cfg: Config) -> None:
    text = """\
name: nightly
description: d
tags: {experiment_name: Exp, team: ml}
is_enabled: false
trigger:
  type: cron
  expression: "0 4 * * *"
create_job: azureml:simple-pipeline-job
pipeline_parameters: {who: you}
continue_on_step_failure: true
catch_up: last
concurrency: queue
"""
    body = schedule_body(text, config=cfg)
    assert body == {
        "name": "nightly", "description": "d", "experiment_name": "Exp",
        "status": "Disabled", "pipeline": "simple-pipeline-job",
        "trigger": {"type": "cron", "expression": "0 4 * * *"},
        "pipeline_parameters": {"who": "you"}, "continue_on_step_failure": True,
        "catch_up": "last", "concurrency": "queue",
    }  # fmt: skip
    assert yaml_errors(cfg, "name: s\ndescripton: x\n" + CRON + "create_job: score\n") == [
        "body.descripton: unknown key 'descripton', did you mean 'description'?"
    ]
    assert yaml_errors(cfg, "name: s\npipeline: score\n" + CRON) == [
        "body.pipeline: a v2 schedule YAML gives the pipeline in create_job",
        "body.create_job: required (azureml:<pipeline name or id>)",
    ]
    assert yaml_errors(cfg, "name: s\nis_enabled: true\nstatus: Active\n" + CRON
                       + "create_job: score\n") == [
        "body.status: give either is_enabled or status, not both"
    ]  # fmt: skip
    assert yaml_errors(cfg, "name: s\ntags: {experiment_name: 5}\n" + CRON + "create_job: score\n") == [  # noqa: E501
        "body.tags.experiment_name: expected a string, got integer 5"
    ]  # fmt: skip
    assert yaml_errors(cfg, "name: s\ntrigger: {type: recurrence, frequency: day, interval: 0}\n"
                       "create_job: score\n") == ["body.trigger.interval: must be at least 1, got 0"]  # fmt: skip  # noqa: E501


def test_datastore_trigger_type(cfg: Config) -> None:
    text = """\
name: files
trigger:
  type: datastore
  datastore: blob
  path_on_datastore: incoming
  polling_interval: 1
  data_path_parameter_name: who
  pattern: "*.csv"
  events: {queue: blob-events}
create_job: azureml:score
"""
    s = create(cfg, text)
    d = schedule_to_dict(s, cfg)
    assert (d["datastore"], d["path_on_datastore"], d["polling_interval"], d["pattern"]) == (
        "blob", "incoming", 1, ["*.csv"])  # fmt: skip
    assert d["events"] == {"queue": "blob-events"}
    bad = text.replace("incoming", "../up").replace("blob-events", "Bad")
    assert yaml_errors(cfg, bad) == [
        "body.trigger.path_on_datastore: must be a relative path without '..', got '../up'",
        "body.trigger.events.queue: invalid queue name 'Bad': 3-63 lowercase letters, digits and "
        "single hyphens, starting and ending with a letter or digit",
    ]
    local = text.replace("datastore: blob", "datastore: inbox").replace(
        "  events: {queue: blob-events}\n", "")  # fmt: skip
    assert yaml_errors(cfg, local) == [
        "body.create_job: pipeline 'score' is a batch_endpoint, which reads its input from Azure "
        "storage: local datastore 'inbox' cannot feed it (use an azure_blob datastore)"
    ]
    assert yaml_errors(cfg, "name: s\ntrigger: {type: datastore}\ncreate_job: score\n") == [
        "body.trigger.datastore: required"
    ]


# ── export → create round trips ───────────────────────────────────────────────

BODIES: list[dict[str, Any]] = [
    {"name": "v1-rec", "description": "quote \" and ' and ${X} and \n newline",
     "recurrence": {"frequency": "Week", "interval": 2, "week_days": ["Monday"], "hours": [4, 16],
                    "minutes": [0, 30], "time_zone": "Pacific Standard Time",
                    "start_time": "2026-01-05T04:50:00"},
     "end_time": "2027-01-01T00:00", "catch_up": "last", "concurrency": "forbid",
     "pipeline_parameters": {"who": "yes", "odd key": "é", "no": "0755"}},
    {"name": "v1-time-of-day", "recurrence": {"frequency": "Day", "interval": 1,
                                              "time_of_day": "18:30"}},
    {"name": "v1-cron", "cron": "0 9 * * 1-5", "time_zone": "Europe/Paris",
     "start_time": "2026-02-01T00:00", "end_time": "2026-12-31T23:59:59", "status": "Disabled",
     "continue_on_step_failure": True},
    {"name": "v2-rec", "trigger": {"type": "recurrence", "frequency": "Month", "interval": 2,
                                   "schedule": {"hours": 4, "minutes": [50],
                                                "month_days": [1, 15], "week_days": "Friday"},
                                   "start_time": "2026-01-01T04:50:00-08:00",
                                   "end_time": "2030-01-01 00:00", "timezone": "UTC"},
     "max_catch_up": 3, "catch_up": "all", "max_queued": 2, "concurrency": "queue"},
    {"name": "v2-cron", "trigger": {"type": "cron", "expression": "0 * * * *",
                                    "time_zone": "Tokyo Standard Time"}},
    {"name": "files", "datastore": "blob", "path_on_datastore": "a/b", "polling_interval": "30s",
     "pattern": ["*.csv", "*.tsv"], "ignore": ["x*"], "settle": "250ms", "initial": "fire",
     "data_path_parameter_name": "who", "ignore_defaults": False, "list_page_size": 10,
     "events": {"queue": "evq", "poison_queue": "evq-dead"}},
    {"name": "local-files", "datastore": "inbox", "events": False, "polling_interval": 2},
]  # fmt: skip


@pytest.fixture(scope="module")
def made(cfg: Config) -> list[Schedule]:
    return [
        parse_schedule({"pipeline": "simple-pipeline-job", "experiment_name": "Exp", **b},
                       config=cfg, key_prefix="body", source=Source.API)
        for b in BODIES
    ]  # fmt: skip


def api_object(s: Schedule, cfg: Config) -> dict[str, object]:
    return {k: v for k, v in schedule_to_dict(s, cfg).items() if k not in ("id", "source")}


def test_export_toml_then_load_gives_identical_objects(
    tmp_path: Path, cfg: Config, made: list[Schedule]
) -> None:
    text = export_toml(made, cfg)
    path = tmp_path / "w.toml"
    path.write_text(BASE + text)
    loaded = load(path, {"X": "expanded?"})
    assert loaded.schedules == tuple(replace(s, source=Source.FILE) for s in made)
    assert [schedule_to_dict(s, loaded) for s in loaded.schedules] == [
        {**schedule_to_dict(s, cfg), "source": "file"} for s in made
    ]


def test_export_yaml_then_create_gives_identical_objects(cfg: Config, made: list[Schedule]) -> None:
    text = export_yaml(schedule_to_dict(s, cfg) for s in made)
    docs = split_documents(text)
    assert len(docs) == len(made)
    again = [create(cfg, doc) for doc in docs]
    assert [api_object(s, cfg) for s in again] == [api_object(s, cfg) for s in made]
    assert [s.trigger for s in again] == [s.trigger for s in made]
    # Each document alone, and the v2 ones in v2's own shape.
    v2 = docs[3]
    assert "trigger:\n  type: recurrence\n  frequency: month\n" in v2.lower()
    assert "create_job: azureml:" in v2 and "tags: {experiment_name: Exp}" in v2
    assert "is_enabled: false" in docs[2]
    files = docs[5]
    assert "trigger:\n  type: datastore\n  datastore: blob\n" in files


# ── fuzz: any text gives a body or ConfigErrors, never another exception ─────

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_PIECES = [DOC_RECURRENCE, DOC_CRON, "- a\n", "&a [*a]\n", "on: no\n", "x: !!binary aGk=\n",
           "{a: 1, a: 2}\n", "'\\ud800'\n", "\x00", "\t", "---\n", ": : :\n", "<<: *x\n",
           "trigger: {type: datastore, datastore: blob, events: {queue: x}}\n"]  # fmt: skip


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    parts=st.lists(st.sampled_from(_PIECES) | st.text(max_size=40), max_size=6),
    cut=st.integers(min_value=0, max_value=2000),
)
def test_yaml_fuzz_never_crashes(cfg: Config, parts: list[str], cut: int) -> None:
    text = "".join(parts)
    for candidate in (text, text[:cut], text[cut:]):
        try:
            body = schedule_body(candidate, config=cfg)
        except ConfigErrors as exc:
            assert exc.errors and all(e.key_path.startswith("body") for e in exc.errors)
        else:
            parse_schedule(body, config=cfg, key_prefix="body", source=Source.API)


# ── end to end: the daemon fires the documentation's schedules ───────────────


async def test_the_daemon_fires_the_doc_schedules_at_v2s_times(tmp_path: Path) -> None:
    from tests.clocks import ManualClock
    from tests.engine_helpers import eventually, running_engine

    text = (
        '[daemon]\napi = ""\n'
        '[pipelines.simple-pipeline-job]\nkind = "command"\nsteps = [["true"]]\n'
    )
    clock = ManualClock(datetime(2022, 7, 10, 16, 30, tzinfo=UTC))  # 09:30 PDT, before start
    async with running_engine(tmp_path, text, clock) as h:
        await h.manager.create_schedule_yaml(DOC_RECURRENCE)
        await h.manager.create_schedule_yaml(DOC_CRON)
        rec = await h.manager.get_schedule("simple_recurrence_job_schedule")
        assert rec["trigger"]["schedule"] == {"hours": [4, 5, 10, 11, 12], "minutes": [0, 30]}
        assert rec["next_fire_times"][:3] == [
            "2022-07-10T17:00:00Z", "2022-07-10T17:30:00Z", "2022-07-10T18:00:00Z"
        ]  # fmt: skip
        for _ in range(5):  # to 12:00 PDT, a half hour at a time
            await h.advance(minutes=30)
        await eventually(lambda: len(h.slots("simple_recurrence_job_schedule")) == 5)
        await eventually(lambda: len(h.slots("simple_cron_job_schedule")) == 3)
        assert h.slots("simple_cron_job_schedule") == [
            "2022-07-10T17:00:00Z", "2022-07-10T18:00:00Z", "2022-07-10T19:00:00Z"
        ]  # fmt: skip
        assert h.slots("simple_recurrence_job_schedule") == [
            "2022-07-10T17:00:00Z", "2022-07-10T17:30:00Z", "2022-07-10T18:00:00Z",
            "2022-07-10T18:30:00Z", "2022-07-10T19:00:00Z",
        ]  # fmt: skip


def test_the_empty_pattern_azure_ai_ml_writes_for_an_hourly_trigger_is_taken(cfg: Config) -> None:
    """azure-ai-ml dumps `RecurrenceTrigger(frequency="hour", interval=3)` with an empty
    `schedule`: it is no pattern; a pattern with values stays refused for hour and minute."""
    text = """\
name: every_three_hours
create_job: azureml:simple-pipeline-job
trigger:
  type: recurrence
  frequency: hour
  interval: 3
  schedule:
    hours: []
    minutes: []
  start_time: "2030-01-01T00:00:00"
"""
    s = create(cfg, text)
    assert isinstance(s.trigger, RecurrenceTrigger)
    assert (s.trigger.recurrence.frequency, s.trigger.recurrence.interval) == ("Hour", 3)
    with pytest.raises(ConfigErrors) as exc:
        create(cfg, text.replace("hours: []", "hours: [1]"))
    assert "frequency hour takes no schedule" in str(exc.value)
