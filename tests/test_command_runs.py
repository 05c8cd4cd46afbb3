"""Command pipelines through the real engine: argv safety, steps, env, timeout, retries."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.clocks import ManualClock
from tests.engine_helpers import eventually, running_engine
from tests.harness import DaemonProc, wait_until
from watcherd.core.models import RunStatus

PY = sys.executable
HOSTILE = [
    "two words",
    'quote\'s "double"',
    "$(touch pwned) `touch pwned2`; rm -rf /nonexistent && echo hi | cat",
    "new\nline",
    "-leading-dash",
    "*.glob ~ $HOME ${PATH}",
]


def _dump(out: Path) -> str:
    code = "import sys,json,os; open(sys.argv[1],'a').write(json.dumps(sys.argv[2:])+'\\n')"
    return json.dumps([PY, "-c", code, str(out)])


def _clock() -> ManualClock:
    return ManualClock(datetime(2026, 11, 25, 10, 0, tzinfo=UTC))


async def test_hostile_parameters_reach_the_command_as_one_argv_element(tmp_path: Path) -> None:
    out = tmp_path / "argv.jsonl"
    steps = json.loads(_dump(out)) + ["{p}", "pre-{p}-post"]
    text = f"""
[daemon]
api = ""
[pipelines.dump]
kind = "command"
steps = [{json.dumps(steps)}]
parameters = {{ p = "default" }}
[[schedules]]
name = "manual"
pipeline = "dump"
experiment_name = "E"
status = "Disabled"
cron = "0 0 1 1 *"
"""
    async with running_engine(tmp_path, text, _clock()) as h:
        for value in HOSTILE:
            await h.manager.trigger_schedule("manual", parameters={"p": value})
        await h.settle()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(map(tuple, lines)) == sorted((v, f"pre-{v}-post") for v in HOSTILE)
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()


async def test_steps_env_and_continue_on_step_failure(tmp_path: Path) -> None:
    out = tmp_path / "env.json"
    os.environ["WATCHERD_TEST_SECRETISH"] = "must-not-leak"
    code = (
        "import os,json,sys; json.dump({k: v for k, v in os.environ.items()}, "
        "open(sys.argv[1], 'w'))"
    )
    text = f"""
[daemon]
api = ""
[pipelines.multi]
kind = "command"
continue_on_step_failure = true
env = {{ EXTRA = "x" }}
steps = [["sh", "-c", "exit 3"], [{json.dumps(PY)}, "-c", {json.dumps(code)}, "{out}"]]
[pipelines.stop]
kind = "command"
steps = [["sh", "-c", "exit 4"], ["sh", "-c", "touch {tmp_path}/never"]]
[[schedules]]
name = "a"
pipeline = "multi"
experiment_name = "Exp"
recurrence = {{ frequency = "Hour", interval = 1 }}
[[schedules]]
name = "b"
pipeline = "stop"
experiment_name = "Exp"
recurrence = {{ frequency = "Hour", interval = 1 }}
"""
    try:
        async with running_engine(tmp_path, text, _clock()) as h:
            await eventually(lambda: len(h.runs()) == 2)
            await h.settle()
            ra, rb = h.runs("a")[0], h.runs("b")[0]
    finally:
        del os.environ["WATCHERD_TEST_SECRETISH"]
    assert ra.status is RunStatus.FAILED and ra.exit_code == 3  # every step ran, run Failed
    env = json.loads(out.read_text())
    assert env["EXTRA"] == "x"
    assert env["WATCHERD_RUN_ID"] == ra.id
    assert env["WATCHERD_SCHEDULE_NAME"] == "a"
    assert env["WATCHERD_EXPERIMENT"] == "Exp"
    assert env["WATCHERD_TRIGGER_TIME"] == "2026-11-25T10:00:00Z"
    assert env["WATCHERD_ATTEMPT"] == "1"
    assert env["WATCHERD_CONTINUE_ON_STEP_FAILURE"] == "true"
    assert "WATCHERD_TEST_SECRETISH" not in env
    assert set(env) - {"PATH", "HOME", "LANG", "TZ", "TMPDIR", "EXTRA", "PWD", "SHLVL", "_"} <= {
        k for k in env if k.startswith(("WATCHERD_", "LC_"))
    }
    assert rb.status is RunStatus.FAILED and rb.exit_code == 4
    assert "step 0 exited 4" in (rb.error or "")
    assert not (tmp_path / "never").exists()


async def test_timeout_fails_the_run_and_kills_the_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    text = f"""
[daemon]
api = ""
[pipelines.hang]
kind = "command"
timeout = "300ms"
steps = [["sh", "-c", "sleep 1000 & echo $! > {pidfile}; wait"]]
[[schedules]]
name = "h"
pipeline = "hang"
experiment_name = "E"
recurrence = {{ frequency = "Hour", interval = 1 }}
"""
    async with running_engine(tmp_path, text, _clock()) as h:
        await eventually(lambda: h.runs() and h.runs()[0].status is RunStatus.FAILED, 20)
        run = h.runs()[0]
    assert run.error == "timeout after 300ms"
    grandchild = int(pidfile.read_text())
    await eventually(lambda: not _alive(grandchild))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


async def test_retry_exit_codes_retry_then_on_failure_runs(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    text = f"""
[daemon]
api = ""
[pipelines.flaky]
kind = "command"
retry = {{ attempts = 3, max_delay = "1s" }}
retry_exit_codes = [75]
on_failure = "alert"
steps = [["sh", "-c", "echo x >> {counter}; exit 75"]]
[pipelines.alert]
kind = "command"
steps = [["sh", "-c", "printf %s \\"$WATCHERD_FAILED_RUN\\" > {tmp_path}/failed.json"]]
[[schedules]]
name = "f"
pipeline = "flaky"
experiment_name = "E"
recurrence = {{ frequency = "Hour", interval = 1 }}
"""
    clock = _clock()

    def tries() -> int:
        return counter.read_text().count("x") if counter.exists() else 0

    async with running_engine(tmp_path, text, clock) as h:
        for n in (2, 3):  # two backoffs, slept on the injected clock
            await eventually(lambda n=n: h.runs() and h.runs()[0].attempt == n)
            async with asyncio.timeout(10):
                # The run saved attempt n, then sleeps on the clock: advance until it ran.
                while tries() < n:  # noqa: ASYNC110
                    await h.advance(seconds=2)
                    await asyncio.sleep(0.01)
        await eventually(lambda: len(h.runs()) == 2)
        await h.settle()
        failed, alert = h.runs()
    assert counter.read_text().count("x") == 3
    assert failed.status is RunStatus.FAILED and failed.attempt == 3
    assert "retries exhausted after 3 attempts" in (failed.error or "")
    assert len(failed.attempts) == 3
    assert alert.status is RunStatus.COMPLETED and alert.trigger["kind"] == "on_failure"
    assert json.loads((tmp_path / "failed.json").read_text())["id"] == failed.id


def _long_run(script: str, shutdown_timeout: str) -> str:
    """A daemon whose one schedule starts `sh -c script` at once (a creation fire)."""
    return f"""
[daemon]
api = ""
shutdown_timeout = "{shutdown_timeout}"
[pipelines.long]
kind = "command"
steps = [["sh", "-c", {json.dumps(script)}]]
[[schedules]]
name = "l"
pipeline = "long"
experiment_name = "E"
recurrence = {{ frequency = "Day", interval = 1 }}
"""


def test_sigterm_drains_then_requeues_and_resumes(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    text = _long_run(f"echo $WATCHERD_ATTEMPT >> {marker}; sleep 30", "300ms")
    d = DaemonProc(tmp_path, text)
    try:
        d.start()
        wait_until(lambda: marker.exists())
        d.signal(signal.SIGTERM)
        assert d.proc is not None and d.proc.wait(20) == 0
        (run,) = d.runs()
        assert run["status"] == "Queued" and run["error"] == "interrupted by shutdown"
        d.start()
        wait_until(lambda: marker.read_text().split() == ["1", "2"])
        (run,) = d.runs()
        assert run["status"] == "Running" and run["attempt"] == 2
    finally:
        d.close()


def test_a_second_sigterm_forces_the_exit_and_leaves_no_command_running(tmp_path: Path) -> None:
    """The first SIGTERM drains (shutdown_timeout); a second forces the exit at once, and
    takes the running commands' process groups with it: none runs on beside the next start's
    attempt of its run."""
    pidfile = tmp_path / "pid"
    d = DaemonProc(tmp_path, _long_run(f"echo $$ > {pidfile}; exec sleep 1000", "60s"))
    try:
        d.start()
        wait_until(lambda: pidfile.exists() and pidfile.read_text().strip())
        child = int(pidfile.read_text())
        d.signal(signal.SIGTERM)
        wait_until(lambda: d.events("daemon_stopping"))
        d.signal(signal.SIGTERM)
        assert d.proc is not None and d.proc.wait(20) == 1
        wait_until(lambda: not _alive(child), timeout=10)
    finally:
        d.close()


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        (
            'recurrence = { frequency = "minute", interval = 1 }',
            "schedules[0].recurrence.frequency: Invalid value for frequency, only one of Minute, "
            "Hour, Day, Week, or Month accepted",
        ),
        (
            'recurrence = { frequency = "Minute", interval = 1, hours = [1] }',
            "schedules[0].recurrence.hours: Can only specify hours if frequency is Week or Day.",
        ),
        (
            'recurrence = { frequency = "Day", interval = 1, time_zone = "Mars Standard Time" }',
            "schedules[0].recurrence.time_zone: Time zone is not a valid TimeZone enum.",
        ),
        (
            'recurrence = { frequency = "Day", interval = 1 }\nfrobnicate = 1',
            "schedules[0].frobnicate:",
        ),
    ],
)
def test_bad_config_exits_2_with_key_path(tmp_path: Path, snippet: str, expected: str) -> None:
    from watcherd.cli import main

    cfg = tmp_path / "w.toml"
    cfg.write_text(f"""
[pipelines.p]
kind = "command"
steps = [["true"]]
[[schedules]]
name = "s"
pipeline = "p"
experiment_name = "E"
{snippet}
""")
    import subprocess

    res = subprocess.run(
        [PY, "-m", "watcherd", "run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert expected in res.stderr
    assert main(["check-config", "--config", str(cfg)]) == 2


def test_missing_pipeline_is_a_config_error(tmp_path: Path) -> None:
    import subprocess

    cfg = tmp_path / "w.toml"
    cfg.write_text("""
[[schedules]]
name = "s"
pipeline = "nope"
experiment_name = "E"
recurrence = { frequency = "Day", interval = 1 }
""")
    res = subprocess.run(
        [PY, "-m", "watcherd", "run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert "schedules[0].pipeline:" in res.stderr and "nope" in res.stderr


async def test_a_pipeline_submit_has_no_schedule_in_its_environment(tmp_path: Path) -> None:
    out = tmp_path / "env.json"
    code = "import os,json,sys; json.dump(dict(os.environ), open(sys.argv[1], 'w'))"
    text = f"""
[daemon]
api = ""
[pipelines.dump]
kind = "command"
steps = [[{json.dumps(PY)}, "-c", {json.dumps(code)}, "{out}"]]
"""
    async with running_engine(tmp_path, text, _clock()) as h:
        run = await h.manager.submit_pipeline("dump", experiment_name="Adhoc")
        await h.settle()
        (done,) = h.runs()
    assert done.id == run["id"] and done.status is RunStatus.COMPLETED
    env = json.loads(out.read_text())
    assert env["WATCHERD_RUN_ID"] == done.id and env["WATCHERD_EXPERIMENT"] == "Adhoc"
    assert not [k for k in env if k.startswith("WATCHERD_SCHEDULE_")]


async def test_a_blob_named_like_an_option_never_reaches_a_command(tmp_path: Path) -> None:
    """The engine skips such runs (SPEC §5); the dispatcher refuses them all the same."""
    from watcherd.core.models import CommandTarget, FileRef, Pipeline, Run
    from watcherd.dispatch.command import CommandDispatcher
    from watcherd.engine.ports import RunContext

    marker = tmp_path / "ran"
    pipeline = Pipeline(
        id="p", name="p", target=CommandTarget(steps=(("touch", str(marker), "{f}"),))
    )
    run = Run(id="r", schedule_id="s", pipeline_id="p", experiment_name="E",
              status=RunStatus.RUNNING, trigger={"kind": "file"})  # fmt: skip
    ctx = RunContext(
        run=run, pipeline=pipeline, schedule=None, parameters={},
        file=FileRef(datastore="b", relative_path=b"--help", url="https://a/c/--help",
                     parameter="f"),
        trigger_time=datetime(2026, 11, 25, tzinfo=UTC), continue_on_step_failure=False,
        config_dir=tmp_path, attempt=1,
    )  # fmt: skip
    outcome = await CommandDispatcher().dispatch(ctx)
    assert outcome.status is RunStatus.FAILED and "starts with '-'" in (outcome.error or "")
    assert not marker.exists()


async def test_a_missing_cwd_is_named_in_the_runs_error(tmp_path: Path) -> None:
    """A `cwd` that does not exist fails the run with the directory named, not as if the
    command were missing (both are ENOENT from exec)."""
    text = f"""
[daemon]
api = ""
[pipelines.p]
kind = "command"
cwd = "{tmp_path / "gone"}"
steps = [["true"]]
[[schedules]]
name = "manual"
pipeline = "p"
experiment_name = "E"
status = "Disabled"
cron = "0 0 1 1 *"
"""
    async with running_engine(tmp_path, text, _clock()) as h:
        await h.manager.trigger_schedule("manual")
        await h.settle()
        (run,) = h.runs()
    assert run.status is RunStatus.FAILED
    gone = str(tmp_path / "gone")
    assert run.error == f"step 0: cannot start 'true': No such file or directory (in cwd {gone!r})"
