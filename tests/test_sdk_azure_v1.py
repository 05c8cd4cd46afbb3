"""Issue #15's fixes to the v1 SDK, against a real daemon: time_of_day and validate(),
Azure ML's wait_for_completion, and PublishedPipeline.submit (SPEC §7)."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.seed_daemon import PIPELINE_ID, SEED_CONFIG, start_daemon
from tests.harness import DaemonProc, wait_until
from watcherd.sdk import (
    ActivityFailedException,
    ConflictError,
    PipelineRun,
    PublishedPipeline,
    Schedule,
    ScheduleRecurrence,
    ValidationError,
    WatcherdError,
    Workspace,
)

CONFIG = (
    SEED_CONFIG
    + """
[pipelines.fails]
kind = "command"
steps = [["sh", "-c", "echo about to fail; exit 3"]]

[pipelines.slow]
kind = "command"
steps = [["sh", "-c", "echo started; sleep 30"]]
"""
)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    d = start_daemon(tmp_path_factory.mktemp("sdkv1"), CONFIG)
    yield d
    d.close()


@pytest.fixture
def ws(daemon: DaemonProc) -> Iterator[Workspace]:
    w = Workspace(daemon.url, daemon.token)
    yield w
    w.close()


def _pipeline(ws: Workspace, name: str) -> PublishedPipeline:
    return next(p for p in PublishedPipeline.list(ws, active_only=False) if p.name == name)


# ── ScheduleRecurrence ────────────────────────────────────────────────────────


def test_time_of_day_validates_any_number_of_times(ws: Workspace) -> None:
    # Azure ML's own docstring example; its Schedule.create calls validate() again.
    rec = ScheduleRecurrence(frequency="Day", interval=1, time_of_day="18:30")
    for _ in range(3):
        rec.validate()
    assert (rec.hours, rec.minutes, rec.time_of_day) == ([18], [30], None)
    s = Schedule.create(ws, "evening", PIPELINE_ID, "E", recurrence=rec)
    assert s.recurrence is not None and (s.recurrence.hours, s.recurrence.minutes) == ([18], [30])
    rec.validate()
    s.update(recurrence=ScheduleRecurrence("Week", 1, week_days=["Friday"], time_of_day="7:05"))
    assert s.recurrence is not None and s.recurrence.hours == [7] and s.recurrence.minutes == [5]
    # Setting time_of_day again next to the hours it became is "both", as in Azure ML.
    rec.time_of_day = "10:00"
    with pytest.raises(ValidationError, match="Can not specify time_of_day and hours or minutes."):
        rec.validate()
    s.disable()


# ── wait_for_completion ───────────────────────────────────────────────────────


def test_wait_for_completion_has_azure_signature() -> None:
    params = inspect.signature(PipelineRun.wait_for_completion).parameters
    assert [(p.name, p.default) for p in list(params.values())[1:]] == [
        ("show_output", True),
        ("timeout_seconds", sys.maxsize),
        ("raise_on_error", True),
    ]


def test_wait_for_completion_shows_status_and_log(
    ws: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _pipeline(ws, "train").submit(ws, "Waiting", pipeline_parameters={"input_data": "w.csv"})
    out = capsys.readouterr().out
    assert out.startswith(f"Submitted PipelineRun {run.id}\n")
    assert f"Link to the watcherd page: {ws.url}/#run-{run.id}" in out
    # Positional True is show_output (the issue: it used to be a 1 s timeout).
    assert run.wait_for_completion(True) == "Completed"
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"PipelineRunId: {run.id}"
    assert "PipelineRun Status: Completed" in lines
    assert "training on w.csv" in out  # the log tail
    summary = lines.index("PipelineRun Execution Summary")
    assert lines[summary + 2] == "PipelineRun Status: Completed"
    assert lines[-1].startswith("{") and run.id in lines[-1]  # the final details, as Azure


def test_wait_for_completion_raises_on_failed_and_canceled(
    ws: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    fails = _pipeline(ws, "fails")
    run = fails.submit(ws, "Failing")
    with pytest.raises(ActivityFailedException) as exc:
        run.wait_for_completion(show_output=False)
    assert exc.value.run_status == "Failed" and exc.value.run_id == run.id
    assert isinstance(exc.value, WatcherdError)
    capsys.readouterr()
    assert run.wait_for_completion(raise_on_error=False) == "Failed"
    out = capsys.readouterr().out
    assert "about to fail" in out and "\nError:\n" in out and "exited 3" in out

    slow = _pipeline(ws, "slow").submit(ws, "Slow")
    wait_until(lambda: slow.get_status() == "Running")
    slow.cancel()
    with pytest.raises(ActivityFailedException, match="Canceled"):
        slow.wait_for_completion(show_output=False)


def test_wait_for_completion_times_out_without_raising(
    ws: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _pipeline(ws, "slow").submit(ws, "Slow")
    capsys.readouterr()
    status = run.wait_for_completion(show_output=True, timeout_seconds=1.0)
    assert status in ("Queued", "Running")
    out = capsys.readouterr().out
    assert "Timed out of waiting. Elapsed time: " in out
    assert f"PipelineRun Status: {status}" in out
    # watcherd honours timeout_seconds without show_output too (Azure ML ignores it there).
    assert run.wait_for_completion(show_output=False, timeout_seconds=0.5) in ("Queued", "Running")
    run.cancel()


# ── PublishedPipeline.submit ──────────────────────────────────────────────────


def test_submit_is_a_manual_run_without_schedule(
    ws: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    train = PublishedPipeline.get(ws, id=PIPELINE_ID)
    run = train.submit(
        ws, "Manual", pipeline_parameters={"input_data": 7}, continue_on_step_failure=True
    )
    assert isinstance(run, PipelineRun) and run.experiment_name == "Manual"
    assert run.wait_for_completion(show_output=False) == "Completed"
    details = run.get_details()
    assert details["schedule_id"] is None
    assert (details["trigger"]["kind"], details["trigger"]["by"]) == ("manual", "sdk")
    assert details["parameters"]["input_data"] == "7"
    assert "training on 7" in run.get_log()
    # Azure ML's keyword arguments are accepted.
    train.submit(workspace=ws, experiment_name="Manual", parent_run_id="x").wait_for_completion(
        show_output=False
    )
    with pytest.raises(ValidationError):
        train.submit(ws, "   ")
    capsys.readouterr()


def test_submit_refused_while_disabled(ws: Workspace) -> None:
    fails = _pipeline(ws, "fails")
    fails.disable()
    try:
        with pytest.raises(ConflictError) as exc:
            fails.submit(ws, "E")
        assert exc.value.status == 409
    finally:
        fails.enable()


def test_trigger_file_named_with_bytes(daemon: DaemonProc, ws: Workspace) -> None:
    files = Schedule.create(
        ws, "bytes-files", PIPELINE_ID, "E", datastore="workspaceblobstore", polling_interval=60
    )
    raw = b"r\xe9sum\xe9.csv"
    with open(Path(daemon.workdir, "inbox").as_posix().encode() + b"/" + raw, "wb") as f:
        f.write(b"1\n")
    run = files.trigger(path=raw)
    assert run.wait_for_completion(show_output=False) == "Completed"
    assert run.get_details()["trigger"]["path"] == "r\\xe9sum\\xe9.csv"
    files.disable()
