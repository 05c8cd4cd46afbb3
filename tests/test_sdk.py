"""watcherd.sdk: the seed article's snippets, run verbatim (imports changed) on a real daemon,
plus Azure ML's client-side checks, discovery and error types."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.seed_daemon import PIPELINE_ID, SEED_CONFIG, start_daemon
from tests.harness import DaemonProc
from watcherd import client as client_mod
from watcherd.core import errors as core_errors
from watcherd.core.timezones import WINDOWS_ZONE_NAMES
from watcherd.sdk import (
    ConflictError,
    DaemonUnreachable,
    Datastore,
    NotFoundError,
    PublishedPipeline,
    Schedule,
    ScheduleRecurrence,
    TimeZone,
    ValidationError,
    WatcherdError,
    Workspace,
)

# The article's code blocks, in order. Only the import lines differ from the article.
SEED_BLOCKS = [
    """
    from watcherd.sdk import (Workspace, Experiment, PublishedPipeline, Schedule,
                              ScheduleRecurrence, TimeZone, Datastore)

    ws = Workspace.from_config()

    experiments = Experiment.list(ws)
    for experiment in experiments:
        print(experiment.name)

    published_pipelines = PublishedPipeline.list(ws)
    for published_pipeline in  published_pipelines:
        print(f"{published_pipeline.name},'{published_pipeline.id}'")

    experiment_name = "MyExperiment"
    pipeline_id = "aaaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
    """,
    """
    recurrence = ScheduleRecurrence(frequency="Minute", interval=15)
    recurring_schedule = Schedule.create(ws, name="MyRecurringSchedule",
                                description="Based on time",
                                pipeline_id=pipeline_id,
                                experiment_name=experiment_name,
                                recurrence=recurrence)
    """,
    """
    datastore = Datastore(workspace=ws, name="workspaceblobstore")

    reactive_schedule = Schedule.create(ws, name="MyReactiveSchedule", description="Based on time",
                                pipeline_id=pipeline_id, experiment_name=experiment_name, datastore=datastore, data_path_parameter_name="input_data")
    """,  # noqa: E501 - verbatim from the article
    """
    pipeline = PublishedPipeline.get(ws, id=pipeline_id)
    pipeline.disable()
    """,
    """
    ss = Schedule.list(ws)
    for s in ss:
        print(s)
    """,
    """
    def stop_by_schedule_id(ws, schedule_id):
        s = next(s for s in Schedule.list(ws) if s.id == schedule_id)
        s.disable()
        return s

    stop_by_schedule_id(ws, schedule_id)
    """,
]


def _run(block: str, ns: dict[str, Any]) -> None:
    exec(compile(textwrap.dedent(block), "<seed>", "exec"), ns)  # noqa: S102 - the test's point


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("WATCHERD_URL", "WATCHERD_TOKEN"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def seed_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_env: None
) -> Iterator[DaemonProc]:
    d = start_daemon(tmp_path, SEED_CONFIG)
    monkeypatch.chdir(tmp_path)  # Workspace.from_config() finds .watcherd/config.json here
    yield d
    d.close()


def test_seed_snippets_in_order(
    seed_daemon: DaemonProc, capsys: pytest.CaptureFixture[str]
) -> None:
    ns: dict[str, Any] = {}
    _run(SEED_BLOCKS[0], ns)
    assert capsys.readouterr().out == f"train,'{PIPELINE_ID}'\n"
    _run(SEED_BLOCKS[1], ns)
    _run(SEED_BLOCKS[2], ns)
    assert ns["recurring_schedule"].recurrence.frequency == "Minute"
    assert ns["reactive_schedule"].datastore_name == "workspaceblobstore"
    assert ns["reactive_schedule"].polling_interval == 5

    # The pipeline is scheduled: disabling it raises and names both Active schedules.
    with pytest.raises(ConflictError) as exc:
        _run(SEED_BLOCKS[3], ns)
    assert "MyRecurringSchedule" in exc.value.message
    assert "MyReactiveSchedule" in exc.value.message
    assert exc.value.status == 409

    _run(SEED_BLOCKS[4], ns)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2
    assert any("MyRecurringSchedule" in line and "every 15 minutes" in line for line in printed)
    assert all("Status: Active" in line for line in printed)

    for s in ns["ss"]:
        ns["schedule_id"] = s.id
        _run(SEED_BLOCKS[5], ns)
    # "Si vous réexécutez ensuite Schedule.list(ws), vous devez obtenir une liste vide."
    assert Schedule.list(ns["ws"]) == []
    _run(SEED_BLOCKS[3], ns)
    assert ns["pipeline"].status == "Disabled"
    assert PublishedPipeline.list(ns["ws"]) == []
    assert len(PublishedPipeline.list(ns["ws"], active_only=False)) == 1
    # The experiment now exists (the recurring schedule fired once, at creation).
    assert [e.name for e in ns["Experiment"].list(ns["ws"])] == ["MyExperiment"]


def test_schedule_methods(seed_daemon: DaemonProc) -> None:
    ws = Workspace.from_config()
    rec = ScheduleRecurrence(
        frequency="Day",
        interval=1,
        time_of_day="7:05",
        time_zone=TimeZone.WEuropeStandardTime,
        start_time="2026-01-01T00:00:00",
    )
    s = Schedule.create(
        ws,
        "daily",
        PIPELINE_ID,
        "E",
        recurrence=rec,
        pipeline_parameters={"input_data": 3},
        continue_on_step_failure=True,
    )
    assert s.recurrence is not None and s.recurrence.hours == [7]
    assert s.recurrence.time_zone == "W. Europe Standard Time"
    assert s.pipeline_parameters == {"input_data": "3"} and s.continue_on_step_failure is True
    assert "07:05" in repr(s) or "7:05" in repr(s)
    assert Schedule.get(ws, s.id).name == "daily" and Schedule.get(ws, "daily").id == s.id

    s.update(description="new")
    assert s.description == "new" and s.pipeline_parameters == {"input_data": "3"}
    s.update(pipeline_parameters={})
    assert s.pipeline_parameters == {}
    with pytest.raises(ValidationError, match="Can not specify a Datastore for a Recurrence"):
        s.update(datastore="workspaceblobstore")
    with pytest.raises(ValidationError, match="Status must be either Active or Disabled"):
        s.update(status="Paused")

    assert s.get_last_pipeline_run() is None
    run = s.trigger(parameters={"input_data": "x.csv"})
    assert run.wait_for_completion(show_output=False, timeout_seconds=20) == "Completed"
    assert run.get_details()["trigger"] == {"kind": "manual", "by": "sdk"}
    assert "training on x.csv" in run.get_log()
    last = s.get_last_pipeline_run()
    assert last is not None and last.id == run.id
    assert [r.id for r in s.get_pipeline_runs()] == [run.id]

    s.disable()
    assert s.status == "Disabled"
    assert [x.id for x in Schedule.list(ws, pipeline_id=PIPELINE_ID)] == [s.id]
    assert Schedule.list(ws) == []
    s.enable()
    assert Schedule.list(ws)[0].status == "Active"

    cron = Schedule.create_cron(
        ws, "weekdays", PIPELINE_ID, "E", "30 6 * * 1-5", time_zone=TimeZone.PacificStandardTime
    )
    assert cron.cron == "30 6 * * 1-5" and cron.schedule_type == "Cron"
    with pytest.raises(ValidationError, match="Can not specify a Datastore"):
        cron.update(datastore="workspaceblobstore")

    reactive = Schedule.create(
        ws,
        "files",
        PIPELINE_ID,
        "E",
        datastore="workspaceblobstore",
        polling_interval=1,
        path_on_datastore="",
        pattern="*.csv",
    )
    with pytest.raises(ValidationError, match="Can not specify a recurrence for a Datastore"):
        reactive.update(recurrence=ScheduleRecurrence("Hour", 1))
    (seed_daemon.workdir / "inbox" / "a.csv").write_text("1,2\n")
    run = reactive.trigger(path="a.csv")
    assert run.wait_for_completion(show_output=False, timeout_seconds=20) == "Completed"
    reactive.disable()
    reactive.delete()
    with pytest.raises(NotFoundError):
        Schedule.get(ws, reactive.id)


def test_schedule_lists_follow_cursors_a_page_at_a_time(
    seed_daemon: DaemonProc, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 10,000 schedules one unpaged answer is 12 MB: the SDK reads pages (issue #14)."""
    ws = Workspace.from_config()
    names = [f"s{i}" for i in range(5)]
    for name in names:
        Schedule.create_cron(ws, name, PIPELINE_ID, "E", "0 3 * * *")
    monkeypatch.setattr(client_mod, "LIST_PAGE", 2)
    asked: list[dict[str, Any]] = []
    real = client_mod.Client.call

    def call(self: client_mod.Client, method: str, path: str, **kw: Any) -> Any:
        if path == "/schedules" and method == "GET":
            asked.append(dict(kw.get("params") or {}))
        return real(self, method, path, **kw)

    monkeypatch.setattr(client_mod.Client, "call", call)
    listed = [x.name for x in Schedule.list(ws)]
    assert listed == sorted(listed)  # pages come by name
    assert set(names) <= set(listed) and len(listed) == len(set(listed))
    assert len(asked) >= 3 and all(a["limit"] == 2 for a in asked)
    assert "cursor" not in asked[0] and all("cursor" in a for a in asked[1:])
    mine = Schedule.list(ws, pipeline_id=PIPELINE_ID)
    assert set(names) <= {x.name for x in mine}


def test_daemon_errors_map_to_sdk_errors(seed_daemon: DaemonProc) -> None:
    ws = Workspace.from_config()
    with pytest.raises(ValidationError) as exc:  # bypasses the client check: the daemon's 422
        Schedule.create(
            ws, "bad", PIPELINE_ID, "E", recurrence={"frequency": "Minutes", "interval": 1}
        )
    assert exc.value.status == 422
    assert exc.value.message == (
        "Invalid value for frequency, only one of Minute, Hour, Day, Week, or Month accepted"
    )
    assert exc.value.key_path == "body.recurrence.frequency"
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, WatcherdError)
    with pytest.raises(NotFoundError):
        Datastore(workspace=ws, name="nope")
    with pytest.raises(NotFoundError):
        PublishedPipeline.get(ws, id="nope")
    Schedule.create(ws, "taken", PIPELINE_ID, "E", recurrence=ScheduleRecurrence("Hour", 1))
    with pytest.raises(ConflictError) as conflict:
        Schedule.create(ws, "taken", PIPELINE_ID, "E", recurrence=ScheduleRecurrence("Hour", 1))
    assert conflict.value.status == 409 and conflict.value.code


def test_mutations_without_token_raise_authentication_error(
    seed_daemon: DaemonProc,
) -> None:
    ws = Workspace(seed_daemon.url)  # no token: reads work on loopback, writes do not
    assert [p.id for p in PublishedPipeline.list(ws)] == [PIPELINE_ID]
    with pytest.raises(client_mod.AuthenticationError) as exc:
        PublishedPipeline.get(ws, id=PIPELINE_ID).disable()
    assert exc.value.status == 401


def test_unix_socket_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_env: None) -> None:
    sock = tmp_path / "api.sock"
    config = SEED_CONFIG.replace('api = "127.0.0.1:0"', f'api = "unix:{sock}"')
    d = start_daemon(tmp_path, config)
    try:
        monkeypatch.chdir(tmp_path)
        ws = Workspace.from_config()
        assert ws.url == f"unix:{sock}"
        s = Schedule.create(
            ws, "via-socket", PIPELINE_ID, "E", recurrence=ScheduleRecurrence("Hour", 1)
        )
        assert [x.name for x in Schedule.list(ws)] == ["via-socket"]
        s.disable()
    finally:
        d.close()


# ── no daemon needed ──────────────────────────────────────────────────────────

OFFLINE = Workspace("http://127.0.0.1:1")
REC = ScheduleRecurrence(frequency="Minute", interval=15)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"recurrence": REC, "datastore": "ds"},
            "Can not specify both a Recurrence and a Datastore",
        ),
        ({}, "Must specify either a Recurrence or a Datastore."),
        (
            {"recurrence": REC, "data_path_parameter_name": "x"},
            "Data Path parameter name can only be specified for Datastore schedules.",
        ),
        (
            {"recurrence": REC, "path_on_datastore": "in"},
            "Path on datastore parameter can only be specified for Datastore schedules.",
        ),
    ],
)
def test_create_checks_like_azure_ml(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as exc:
        Schedule.create(OFFLINE, "n", "p", "e", **kwargs)
    assert str(exc.value) == message and exc.value.message == message


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"frequency": "minute", "interval": 1},
            "Invalid value for frequency, only one of Minute, Hour, Day, Week, or Month accepted",
        ),
        ({"frequency": "Minute", "interval": 0}, "Interval must be an integer greater than 0."),
        (
            {"frequency": "Hour", "interval": 1, "hours": [1]},
            "Can only specify hours if frequency is Week or Day.",
        ),
        (
            {"frequency": "Day", "interval": 1, "week_days": ["Monday"]},
            "Can only specify week days if frequency is Week.",
        ),
        (
            {"frequency": "Minute", "interval": 1, "time_of_day": "10:00"},
            "Can only specify hours if frequency is Week or Day.",
        ),
        (
            {"frequency": "Day", "interval": 1, "time_zone": "Mars Standard Time"},
            "Time zone is not a valid TimeZone enum.",
        ),
    ],
)
def test_recurrence_rules_at_validate(kwargs: dict[str, Any], message: str) -> None:
    """As azureml-pipeline-core 1.62: the constructor takes it, validate() (and so
    Schedule.create, which calls it) refuses it with Azure ML's message."""
    rec = ScheduleRecurrence(**kwargs)
    for _ in range(2):
        with pytest.raises(ValidationError) as exc:
            rec.validate()
        assert exc.value.message == message
        assert isinstance(exc.value, ValueError)
        assert isinstance(exc.value, core_errors.ValidationError)
    with pytest.raises(ValidationError, match=message.replace(".", r"\.")):
        Schedule.create(OFFLINE, "n", "p", "e", recurrence=rec)  # before any request


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"frequency": "Day", "interval": 1, "time_of_day": "25:00"},
            "Time of day hour value must be between 0 and 23.",
        ),
        (
            {"frequency": "Day", "interval": 1, "time_of_day": "99:99"},
            "Time of day hour value must be between 0 and 23.",
        ),
        (
            {"frequency": "Day", "interval": 1, "time_of_day": "7:60"},
            "Time of day minute value must be between 0 and 59.",
        ),
        (
            {"frequency": "Day", "interval": 1, "time_of_day": "18:30:00"},
            "time_of_day should be in the format hh:mm.",
        ),
        (
            {"frequency": "Day", "interval": 1, "time_of_day": "18:30", "hours": [1]},
            "Can not specify time_of_day and hours or minutes.",
        ),
        (
            {"frequency": "Daily", "interval": 0, "start_time": "2026-01-01T00:00:00+02:00"},
            "Can not specify tzinfo for start_time, use time_zone instead.",
        ),
    ],
)
def test_recurrence_checks_at_construction(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as exc:
        ScheduleRecurrence(**kwargs)
    assert exc.value.message == message


def test_time_zone_enum() -> None:
    assert len(TimeZone) == len(WINDOWS_ZONE_NAMES) == 131
    assert TimeZone.PacificStandardTime.value == "Pacific Standard Time"
    assert TimeZone.UTC11.value == "UTC-11"
    assert TimeZone("UTC") is TimeZone.UTC
    rec = ScheduleRecurrence("Week", 2, time_zone=TimeZone.UTC11, week_days=["Monday"])
    assert rec.to_dict()["time_zone"] == "UTC-11"


def test_unreachable_daemon() -> None:
    with pytest.raises(DaemonUnreachable) as exc:
        Schedule.list(OFFLINE)
    assert isinstance(exc.value, ConnectionError) and exc.value.status is None
    assert "daemon not reachable at http://127.0.0.1:1" in exc.value.message


def test_discovery_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_env: None) -> None:
    deep = tmp_path / "project" / "notebooks"
    deep.mkdir(parents=True)
    state = tmp_path / "project" / ".watcherd"
    state.mkdir()
    (state / "token").write_text("from-file\n")
    (state / "config.json").write_text(
        json.dumps({"url": "http://127.0.0.1:9999", "token_file": str(state / "token")})
    )
    assert client_mod.discover(cwd=deep) == ("http://127.0.0.1:9999", "from-file")
    monkeypatch.setenv("WATCHERD_TOKEN", "from-env")
    assert client_mod.discover(cwd=deep) == ("http://127.0.0.1:9999", "from-env")
    monkeypatch.setenv("WATCHERD_URL", "http://10.0.0.1:1")
    assert client_mod.discover(cwd=deep) == ("http://10.0.0.1:1", "from-env")
    assert client_mod.discover("unix:/x.sock", "t", cwd=deep) == ("unix:/x.sock", "t")
    monkeypatch.delenv("WATCHERD_URL")
    (state / "token").chmod(0o000)
    url, token = client_mod.discover(cwd=deep)
    assert url == "http://127.0.0.1:9999"
    (state / "token").chmod(0o600)
    ws = Workspace.from_config(state / "config.json")
    assert ws.url == "http://127.0.0.1:9999"


def test_default_url_when_nothing_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_env: None
) -> None:
    monkeypatch.setattr(client_mod, "RUNTIME_CONFIG", tmp_path / "none.json")
    assert client_mod.discover(cwd=tmp_path) == (client_mod.DEFAULT_URL, None)


def test_public_surface() -> None:
    import watcherd.sdk as sdk

    assert sorted(sdk.__all__) == [
        "ActivityFailedException",
        "AuthenticationError",
        "ConflictError",
        "DaemonUnreachable",
        "Datastore",
        "Experiment",
        "NotFoundError",
        "PipelineRun",
        "PublishedPipeline",
        "Schedule",
        "ScheduleRecurrence",
        "TimeZone",
        "ValidationError",
        "WatcherdError",
        "Workspace",
    ]
    assert issubclass(sdk.ValidationError, sdk.WatcherdError)
    assert issubclass(sdk.ValidationError, ValueError)
    assert issubclass(sdk.DaemonUnreachable, sdk.WatcherdError)
    assert issubclass(sdk.DaemonUnreachable, ConnectionError)


def test_sdk_import_pulls_in_no_server_stack() -> None:
    import subprocess
    import sys

    code = (
        "import sys, watcherd.sdk\n"
        "print([m for m in ('aiohttp', 'sqlite3', 'watchdog', 'azure') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"
