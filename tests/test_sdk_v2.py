"""watcherd.sdk.v2, shaped like azure.ai.ml (SPEC §13): pure shapes first, then a real daemon.

The daemon-side parsing of v2 `trigger` bodies lands in the config layer; the tests marked
below need it.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.api.seed_daemon import PIPELINE_ID, SEED_CONFIG, start_daemon
from tests.harness import DaemonProc, wait_until
from watcherd.sdk import ConflictError, NotFoundError, Schedule, ScheduleRecurrence, Workspace
from watcherd.sdk import ValidationError as SdkValidationError
from watcherd.sdk.v2 import (
    CronTrigger,
    DatastoreTrigger,
    JobSchedule,
    LROPoller,
    MLClient,
    RecurrencePattern,
    RecurrenceTrigger,
    ScheduleListViewType,
    ScheduleTriggerResult,
    TimeZone,
)

PACIFIC = ZoneInfo("America/Los_Angeles")

# ── shapes (no daemon) ────────────────────────────────────────────────────────


def test_time_zone_is_azure_ai_ml_s() -> None:
    assert len(TimeZone) == 131
    assert TimeZone.UTC == "UTC" and isinstance(TimeZone.UTC, str)
    assert TimeZone["utc"] is TimeZone.UTC  # names in any case
    with pytest.raises(ValueError):
        TimeZone("utc")  # values exact
    assert TimeZone.PACIFIC_STANDARD_TIME.value == "Pacific Standard Time"
    assert TimeZone.UTC_11.value == "UTC-11" and TimeZone.UTC_12.value == "UTC+12"
    # azure-ai-ml 1.35's own misspellings, kept so its users' code runs.
    assert TimeZone.W_CENTEAL_AFRICA_STANDARD_TIME.value == "W. Central Africa Standard Time"
    assert TimeZone.TONGA__STANDARD_TIME.value == "Tonga Standard Time"
    assert [m.value for m in ScheduleListViewType] == ["EnabledOnly", "DisabledOnly", "All"]


def test_constructors_follow_azure_ai_ml() -> None:
    t = RecurrenceTrigger(frequency="day", interval=1)
    assert (t.type, t.time_zone, t.start_time, t.end_time) == (
        "recurrence",
        TimeZone.UTC,
        None,
        None,
    )
    assert (t.schedule.hours, t.schedule.minutes) == ([], [])  # "no pattern", as azure-ai-ml
    assert t.schedule.week_days is None and t.schedule.month_days is None
    c = CronTrigger(expression="0 * * * *")
    assert (c.type, c.expression, c.time_zone) == ("cron", "0 * * * *", TimeZone.UTC)
    # Constructors check nothing (azure-ai-ml): the daemon does, at create.
    RecurrenceTrigger(frequency="fortnightly", interval=-3)
    s = JobSchedule(name="n", trigger=t, create_job="azureml:train")
    assert s.is_enabled is None and s.tags == {} and s.create_job == "azureml:train"
    with pytest.raises(AttributeError):
        s.is_enabled = True  # type: ignore[misc]
    assert JobSchedule(name="n", trigger=t, create_job="x", is_enabled=False).is_enabled is False
    sig = inspect.signature(JobSchedule)
    assert list(sig.parameters)[:7] == [
        "name", "trigger", "create_job", "display_name", "description", "tags", "properties",
    ]  # fmt: skip


def test_api_bodies() -> None:
    t = RecurrenceTrigger(
        frequency="month",
        interval=1,
        schedule=RecurrencePattern(hours=4, minutes=[50], month_days=[1, 15]),
        start_time=datetime(2026, 1, 1, 8, 0, 0, 123456),
        end_time=datetime(2027, 1, 1, tzinfo=timezone(timedelta(hours=2))),
        time_zone=TimeZone.PACIFIC_STANDARD_TIME,
    )
    s = JobSchedule(
        name="monthly", trigger=t, create_job="azureml:train", tags={"experiment_name": "E"}
    )
    assert s._to_api() == {
        "name": "monthly",
        "pipeline": "train",
        "experiment_name": "E",
        "trigger": {
            "type": "recurrence",
            "frequency": "month",
            "interval": 1,
            "schedule": {"hours": 4, "minutes": [50], "month_days": [1, 15]},
            "start_time": "2026-01-01T08:00:00",
            "end_time": "2027-01-01T00:00:00+02:00",
            "time_zone": "Pacific Standard Time",
        },
    }
    cron = JobSchedule(name="c", trigger=CronTrigger("0 4 * * 1"), create_job="train")
    assert cron._to_api()["experiment_name"] == "c"  # no tag: the schedule's name
    assert cron._to_api()["trigger"] == {
        "type": "cron",
        "expression": "0 4 * * 1",
        "time_zone": "UTC",
    }
    files = JobSchedule(
        name="f",
        trigger=DatastoreTrigger("inbox", "in", "30s", "input_data", pattern="*.csv"),
        create_job="azureml:train",
        is_enabled=False,
    )
    assert files._to_api() == {
        "name": "f",
        "pipeline": "train",
        "experiment_name": "f",
        "status": "Disabled",
        "datastore": "inbox",
        "path_on_datastore": "in",
        "polling_interval": "30s",
        "data_path_parameter_name": "input_data",
        "pattern": "*.csv",
    }
    for bad in ("azureml:train:3", "azureml:train@latest", {"type": "pipeline"}, ""):
        with pytest.raises(SdkValidationError) as exc:
            JobSchedule(name="x", trigger=t, create_job=bad)._to_api()
        assert exc.value.key_path == "create_job"
    poller = LROPoller(5)
    assert (poller.result(), poller.done(), poller.status()) == (5, True, "Succeeded")


# ── against a daemon ──────────────────────────────────────────────────────────


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    d = start_daemon(tmp_path_factory.mktemp("sdkv2"), SEED_CONFIG)
    yield d
    d.close()


@pytest.fixture
def ml(daemon: DaemonProc) -> Iterator[MLClient]:
    with MLClient(url=daemon.url, token=daemon.token) as client:
        yield client


def _next(daemon: DaemonProc, sid: str, n: int = 10) -> list[datetime]:
    with daemon.client() as api:
        items = api.get(f"/api/v1/schedules/{sid}/next", params={"n": n}).json()["items"]
    return [datetime.fromisoformat(t.replace("Z", "+00:00")) for t in items]


def test_from_config_finds_the_daemon(daemon: DaemonProc, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("WATCHERD_URL", "WATCHERD_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(daemon.workdir)
    with MLClient.from_config(credential=object()) as ml:
        assert ml._client.url == daemon.url and ml._client.token == daemon.token
    with MLClient.from_config(object(), path=daemon.state_dir, file_name="config.json") as ml:
        assert ml._client.token == daemon.token
    with MLClient.from_config(path=daemon.state_dir / "config.json") as ml:
        assert ml._client.token == daemon.token


def test_docs_recurrence_example(daemon: DaemonProc, ml: MLClient) -> None:
    """Azure ML's documented schedule, with create_job naming a watcherd pipeline
    (needs the daemon's v2 trigger parsing)."""
    schedule = JobSchedule(
        name="simple_recurrence_job_schedule",
        display_name="Simple recurrence job schedule",
        description="a simple hourly recurrence job schedule",
        trigger=RecurrenceTrigger(
            frequency="day",
            interval=1,
            schedule=RecurrencePattern(hours=[4, 5, 10, 11, 12], minutes=[0, 30]),
            start_time="2022-07-10T10:00:00",
            time_zone=TimeZone.PACIFIC_STANDARD_TIME,
        ),
        create_job="azureml:train",
    )
    poller = ml.schedules.begin_create_or_update(schedule)
    created = poller.result()
    assert isinstance(created, JobSchedule) and created.is_enabled is True
    assert created.trigger == schedule.trigger
    assert created.create_job == PIPELINE_ID and created.experiment_name == schedule.name
    times = _next(daemon, created.id or "", 20)
    assert len(times) == 20
    for t in times:
        local = t.astimezone(PACIFIC)
        assert local.hour in (4, 5, 10, 11, 12) and local.minute in (0, 30), local
    per_day = {t.astimezone(PACIFIC).date() for t in times}
    assert len(times) / len(per_day) >= 5  # 10 runs a day
    got = ml.schedules.get("simple_recurrence_job_schedule")
    assert got.trigger == schedule.trigger and got.description == schedule.description


def test_docs_cron_example(daemon: DaemonProc, ml: MLClient) -> None:
    """(needs the daemon's v2 trigger parsing)"""
    schedule = JobSchedule(
        name="simple_cron_job_schedule",
        trigger=CronTrigger(
            expression="0 * * * *",
            start_time="2022-07-10T10:00:00",
            time_zone=TimeZone.PACIFIC_STANDARD_TIME,
        ),
        create_job="azureml:train",
    )
    created = ml.schedules.begin_create_or_update(schedule).result()
    assert created.trigger == schedule.trigger
    times = _next(daemon, created.id or "", 5)
    assert all(t.minute == 0 and t.second == 0 for t in times)
    assert [b - a for a, b in zip(times, times[1:], strict=False)] == [timedelta(hours=1)] * 4


def test_lifecycle_list_enable_disable_trigger_delete(daemon: DaemonProc, ml: MLClient) -> None:
    """(needs the daemon's v2 trigger parsing)"""
    s = JobSchedule(
        name="v2-life",
        trigger=RecurrenceTrigger("hour", 6, start_time="2026-01-01T00:00:00"),
        create_job="train",
        tags={"experiment_name": "V2"},
    )
    created = ml.schedules.begin_create_or_update(s).result()
    assert created.tags == {"experiment_name": "V2"}
    assert "v2-life" in [x.name for x in ml.schedules.list()]
    disabled = ml.schedules.begin_disable("v2-life").result()
    assert disabled.is_enabled is False
    assert "v2-life" not in [x.name for x in ml.schedules.list()]  # enabled only, by default
    assert "v2-life" in [x.name for x in ml.schedules.list(list_view_type=ScheduleListViewType.ALL)]
    off = ml.schedules.list(list_view_type=ScheduleListViewType.DISABLED_ONLY)
    assert [x.name for x in off] == ["v2-life"]
    assert ml.schedules.begin_enable("v2-life").result().is_enabled is True

    result = ml.schedules.trigger("v2-life")
    assert isinstance(result, ScheduleTriggerResult) and result.schedule_action_type == "CreateJob"
    with daemon.client() as api:
        run = wait_until(
            lambda: (
                (r := api.get(f"/api/v1/runs/{result.job_name}").json())["status"]
                not in ("Queued", "Running")
                and r
            )
        )
    assert run["status"] == "Completed" and run["experiment_name"] == "V2"

    # Update: change the trigger of what get() returned.
    got = ml.schedules.get("v2-life")
    assert isinstance(got.trigger, RecurrenceTrigger)
    got.trigger.interval = 12
    got.description = "twice a day"
    updated = ml.schedules.begin_create_or_update(got).result()
    assert isinstance(updated.trigger, RecurrenceTrigger) and updated.trigger.interval == 12
    assert updated.description == "twice a day"

    with pytest.raises(ConflictError):  # an enabled schedule is not deleted
        ml.schedules.begin_delete("v2-life")
    ml.schedules.begin_disable("v2-life")
    assert ml.schedules.begin_delete("v2-life").result() is None
    with pytest.raises(NotFoundError):
        ml.schedules.get("v2-life")


def test_daemon_refusals_are_validation_errors(ml: MLClient) -> None:
    """(needs the daemon's v2 trigger parsing)"""
    bad = JobSchedule(
        name="bad-v2",
        trigger=RecurrenceTrigger(frequency="daily", interval=1),
        create_job="azureml:train",
    )
    with pytest.raises(SdkValidationError) as exc:
        ml.schedules.begin_create_or_update(bad)
    assert exc.value.status == 422 and exc.value.key_path == "body.trigger.frequency"
    with pytest.raises(SdkValidationError) as exc:
        ml.schedules.begin_create_or_update(
            JobSchedule(name="bad-v2", trigger=RecurrenceTrigger("day", 0), create_job="train")
        )
    assert exc.value.key_path == "body.trigger.interval"


def test_data_trigger_in_v2(daemon: DaemonProc, ml: MLClient) -> None:
    s = JobSchedule(
        name="v2-files",
        trigger=DatastoreTrigger(
            "workspaceblobstore", polling_interval="1h", data_path_parameter_name="input_data"
        ),
        create_job="azureml:train",
    )
    created = ml.schedules.begin_create_or_update(s).result()
    assert isinstance(created.trigger, DatastoreTrigger)
    assert created.trigger.datastore == "workspaceblobstore"
    assert created.trigger.data_path_parameter_name == "input_data"
    assert created.trigger.polling_interval in (60, "1h")
    assert ml.schedules.begin_create_or_update(created).result().trigger == created.trigger
    (daemon.workdir / "inbox" / "v2.csv").write_text("1\n")
    result = ml.schedules.trigger("v2-files", path="v2.csv")
    with daemon.client() as api:
        run = wait_until(
            lambda: (
                (r := api.get(f"/api/v1/runs/{result.job_name}").json())["status"]
                not in ("Queued", "Running")
                and r
            )
        )
    assert run["trigger"]["path"] == "v2.csv"
    ml.schedules.begin_disable("v2-files")


def test_v1_schedule_seen_and_kept_through_v2(daemon: DaemonProc, ml: MLClient) -> None:
    ws = Workspace(daemon.url, daemon.token)
    rec = ScheduleRecurrence("Week", 1, week_days=["Monday"], hours=[6], minutes=[0])
    v1 = Schedule.create(ws, "v1-weekly", PIPELINE_ID, "Weekly", recurrence=rec)
    got = ml.schedules.get("v1-weekly")
    assert got.trigger == RecurrenceTrigger(
        "week", 1, RecurrencePattern([6], [0], ["monday"]), time_zone="UTC"
    )
    assert got.tags == {"experiment_name": "Weekly"}
    got.description = "edited through v2"
    ml.schedules.begin_create_or_update(got).result()
    again = Schedule.get(ws, v1.id)
    assert again.description == "edited through v2"
    assert again.recurrence is not None and again.recurrence.week_days == ["Monday"]
    assert not again.trigger  # still a v1 recurrence: the unchanged trigger was not resent
    again.disable()
    ws.close()


def test_v1_sdk_sees_a_v2_schedule(daemon: DaemonProc, ml: MLClient) -> None:
    """(needs the daemon's v2 trigger parsing)"""
    ml.schedules.begin_create_or_update(
        JobSchedule(name="v2-seen-by-v1", trigger=CronTrigger("15 16 * * 1"), create_job="train")
    ).result()
    ws = Workspace(daemon.url, daemon.token)
    s = Schedule.get(ws, "v2-seen-by-v1")
    assert s.recurrence is None and s.cron is None
    assert s.trigger == {"type": "cron", "expression": "15 16 * * 1", "time_zone": "UTC"}
    assert json.loads(json.dumps(s.trigger))["type"] == "cron"
    run = s.trigger()  # still the method that runs it now
    assert run.wait_for_completion(show_output=False) == "Completed"
    s.disable()
    ws.close()


def test_v2_import_pulls_in_no_server_stack() -> None:
    import subprocess
    import sys

    code = (
        "import sys, watcherd.sdk.v2, watcherd.sdk.v2.entities, watcherd.sdk.v2.constants\n"
        "heavy = ('aiohttp', 'sqlite3', 'watchdog', 'azure', 'yaml')\n"
        "print([m for m in heavy if m in sys.modules])"
    )
    env = {**os.environ}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout.strip()
    assert out == "[]"
    assert Path(__file__).exists() and UTC
