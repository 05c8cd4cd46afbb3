"""Issue #11, the run-target items: 2 (a background child holding stdout), 4 (placeholders in
URLs), 5 (secrets echoed back in part), 13 (exception text on a console) and 18 (`setsid`
descendants). Real processes, a real aiohttp server on 127.0.0.1, the real engine.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.clocks import ManualClock
from tests.engine_helpers import eventually, load_config, running_engine
from watcherd.core.errors import DispatchUnavailable
from watcherd.core.models import (
    DatastoreTrigger,
    FileRef,
    HttpTarget,
    Pipeline,
    Run,
    RunStatus,
    Schedule,
)
from watcherd.dispatch.http import HttpDispatcher
from watcherd.engine.ports import RunContext
from watcherd.logs import configure, redaction_processor

TERMINAL = {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELED}
TOKEN = "s3cr3t-hook-token-4711"
SIG = "t0ps3cretSigValue"


def _clock() -> ManualClock:
    return ManualClock(datetime(2026, 11, 25, 10, 0, tzinfo=UTC))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False


def _kill(pid: int) -> None:
    """Kill the test's leftover `sleep 1000`, if it is still that: a dead one's pid can already
    be another process's (pid_max is 32768 here; a suite starts thousands)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if f.read().split(b"\0")[:2] != [b"sleep", b"1000"]:
                return
        os.kill(pid, 9)
    except (FileNotFoundError, ProcessLookupError):
        pass


def _command_config(steps: list[list[str]], timeout: str | None = None) -> str:
    limit = f'timeout = "{timeout}"\n' if timeout else ""
    return f"""
[daemon]
api = ""
[pipelines.cmd]
kind = "command"
{limit}steps = {json.dumps(steps)}
[[schedules]]
name = "manual"
pipeline = "cmd"
experiment_name = "E"
status = "Disabled"
cron = "0 0 1 1 *"
"""


async def _one_run(tmp_path: Path, text: str, within: float = 30.0) -> tuple[Any, bytes]:
    async with running_engine(tmp_path, text, _clock()) as h:
        await h.manager.trigger_schedule("manual")
        await eventually(lambda: h.runs() and h.runs()[0].status in TERMINAL, within)
        run = h.runs()[0]
        return run, (await h.store.run_log(run.id)) or b""


# ── item 2 ────────────────────────────────────────────────────────────────────


async def test_sec_2_background_child_holding_stdout_does_not_hang_the_run(
    tmp_path: Path,
) -> None:
    pidfile = tmp_path / "pid"
    script = f"sleep 1000 & echo $! > {pidfile}; echo step-output"
    text = _command_config([["sh", "-c", script]], timeout="4s")
    run, logtext = await _one_run(tmp_path, text)
    child = int(pidfile.read_text())
    try:
        assert (run.status, run.error, run.exit_code) == (RunStatus.COMPLETED, None, 0)
        assert b"step-output" in logtext
        assert f"SIGTERM to {child} (sleep)".encode() in logtext  # the log says what was stopped
        await eventually(lambda: not _alive(child))
    finally:
        _kill(child)


async def test_sec_2_a_finished_step_leaves_nothing_running(tmp_path: Path) -> None:
    """Step 0 exits at once leaving a child (stdout elsewhere); step 1 then times out."""
    pidfile = tmp_path / "pid"
    script = f"sleep 1000 > /dev/null 2>&1 & echo $! > {pidfile}"
    text = _command_config([["sh", "-c", script], ["sleep", "1000"]], timeout="1s")
    run, _ = await _one_run(tmp_path, text)
    child = int(pidfile.read_text())
    try:
        assert run.status is RunStatus.FAILED and run.error == "timeout after 1s"
        await eventually(lambda: not _alive(child))
    finally:
        _kill(child)


async def test_sec_2_a_timeout_keeps_the_log_of_what_was_stopped(tmp_path: Path) -> None:
    """On cancellation the dispatcher can only re-raise; `partial_log` keeps the output and
    the stop lines for the runner."""
    from watcherd.core.models import CommandTarget
    from watcherd.dispatch.command import CommandDispatcher

    pidfile = tmp_path / "pid"
    script = f"echo started; sleep 1000 & echo $! > {pidfile}; wait"
    pipeline = Pipeline(id="p", name="p", target=CommandTarget(steps=(("sh", "-c", script),)))
    run = Run(id="r-2", schedule_id="s", pipeline_id="p", experiment_name="E",
              status=RunStatus.RUNNING, trigger={"kind": "time"})  # fmt: skip
    ctx = RunContext(
        run=run, pipeline=pipeline, schedule=None, parameters={}, file=None,
        trigger_time=datetime(2026, 11, 25, tzinfo=UTC), continue_on_step_failure=False,
        config_dir=tmp_path, attempt=1,
    )  # fmt: skip
    d = CommandDispatcher()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.0):
            await d.dispatch(ctx)
    child = int(pidfile.read_text())
    logtext = d.partial_log("r-2") or b""
    assert logtext.startswith(b"$ sh -c ") and b"started\n" in logtext
    assert b"step 0 interrupted: SIGTERM to " in logtext
    assert f"{child} (sleep)".encode() in logtext
    assert d.partial_log("r-2") is None  # handed out once
    assert not _alive(child)


# ── item 18 ───────────────────────────────────────────────────────────────────


async def test_sec_18_setsid_grandchild_is_stopped_on_timeout(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    script = f"setsid sleep 1000 > /dev/null 2>&1 & echo $! > {pidfile}; wait"
    run, _ = await _one_run(tmp_path, _command_config([["sh", "-c", script]], timeout="700ms"))
    child = int(pidfile.read_text())
    try:
        assert run.status is RunStatus.FAILED and run.error == "timeout after 700ms"
        await eventually(lambda: not _alive(child))
    finally:
        _kill(child)


async def test_sec_18_orphan_in_its_own_session_is_found_by_the_run_marker(
    tmp_path: Path,
) -> None:
    """`setsid -f`: the grandchild's parent exits at once; only its environment ties it to
    the run (its parent is now init, or the daemon as a subreaper)."""
    pidfile = tmp_path / "pid"
    inner = f"echo $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; exec sleep 1000"
    script = f"setsid -f sh -c '{inner}' > /dev/null 2>&1; while [ ! -s {pidfile} ]; do :; done"
    run, logtext = await _one_run(tmp_path, _command_config([["sh", "-c", script]]))
    child = int(pidfile.read_text())
    try:
        assert run.status is RunStatus.COMPLETED
        # its name is "sh" or "sleep", as the stop catches it before or after its exec
        assert f"SIGTERM to {child} (".encode() in logtext
        await eventually(lambda: not _alive(child))
    finally:
        _kill(child)


async def test_sec_18_descendant_recorded_while_the_step_ran(tmp_path: Path) -> None:
    """No marker (`env -i`) and no parent link at stop time: the step's recorded pids."""
    pidfile = tmp_path / "pid"
    inner = f"echo $$ > {pidfile}; exec sleep 1000"
    script = f"env -i setsid sh -c '{inner}' > /dev/null 2>&1 & sleep 1.5"
    run, logtext = await _one_run(tmp_path, _command_config([["sh", "-c", script]]))
    child = int(pidfile.read_text())
    try:
        assert run.status is RunStatus.COMPLETED
        assert f"to {child} (sleep)".encode() in logtext
        await eventually(lambda: not _alive(child))
    finally:
        _kill(child)


# ── items 4 and 5: a webhook double ──────────────────────────────────────────


class Hook:
    """Records every request; answers with the queued (status, text) or 200."""

    def __init__(self) -> None:
        self.seen: list[web.Request] = []
        self.headers: list[dict[str, str]] = []
        self.answers: list[tuple[int, str]] = []
        self.server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(request)
        self.headers.append(dict(request.headers))
        await request.read()
        status, text = self.answers.pop(0) if self.answers else (200, "ok")
        return web.Response(status=status, text=text)

    @property
    def port(self) -> int:
        assert self.server is not None and self.server.port is not None
        return self.server.port


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    rec = Hook()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    async with TestServer(app, host="127.0.0.1", port=0) as server:
        rec.server = server
        yield rec


@pytest.fixture
async def dispatcher() -> AsyncIterator[HttpDispatcher]:
    d = HttpDispatcher()
    yield d
    await d.aclose()


def _ctx(
    url: str, *, params: dict[str, str] | None = None, path: bytes | None = None
) -> RunContext:
    target = HttpTarget(
        url=url,
        headers={"Authorization": f"Bearer {TOKEN}"},
        request_timeout=timedelta(seconds=2),
    )
    pipeline = Pipeline(id="p", name="hook", target=target)
    schedule = Schedule(
        id="s", name="S", pipeline="p", experiment_name="E",
        trigger=DatastoreTrigger(datastore="inbox", data_path_parameter_name="input_data"),
    )  # fmt: skip
    ref = None
    if path is not None:
        ref = FileRef(
            datastore="inbox",
            relative_path=path,
            local_path=b"/srv/inbox/" + path,
            parameter="input_data",
        )
    run = Run(id="r-1", schedule_id="s", pipeline_id="p", experiment_name="E",
              status=RunStatus.RUNNING, trigger={"kind": "file"})  # fmt: skip
    return RunContext(
        run=run, pipeline=pipeline, schedule=schedule, parameters=params or {}, file=ref,
        trigger_time=datetime(2026, 11, 25, 10, 0, tzinfo=UTC), continue_on_step_failure=False,
        config_dir=Path("."), attempt=1,
    )  # fmt: skip


async def test_sec_4_a_file_name_cannot_rewrite_the_query(
    hook: Hook, dispatcher: HttpDispatcher
) -> None:
    name = b"x&admin=1&sig=forged#.hook"
    url = f"http://127.0.0.1:{hook.port}/hooks/run?f={{input_data}}&sig=real"
    outcome = await dispatcher.dispatch(_ctx(url, path=name))
    assert outcome.status is RunStatus.SUBMITTED
    [seen] = hook.seen
    assert seen.path == "/hooks/run"
    assert list(seen.query.items()) == [("f", "/srv/inbox/" + name.decode()), ("sig", "real")]


async def test_sec_4_a_placeholder_cannot_change_the_host(
    hook: Hook, dispatcher: HttpDispatcher
) -> None:
    template = "http://{region}.hooks.invalid/run"
    for region in (f"127.0.0.1:{hook.port}/steal#", "169.254.169.254/x#", "a@127.0.0.1"):
        outcome = await dispatcher.dispatch(_ctx(template, params={"region": region}))
        assert outcome.status is RunStatus.FAILED, region
        assert outcome.error is not None and "{region}" in outcome.error
        assert "host" in outcome.error
    assert hook.seen == []  # nothing sent, so no Authorization header went anywhere
    # A value that is one DNS label fills the host as the template says.
    outcome = await dispatcher.dispatch(
        _ctx(f"http://{{a}}.0.0.1:{hook.port}/run", params={"a": "127"})
    )
    assert outcome.status is RunStatus.SUBMITTED and len(hook.seen) == 1


async def test_sec_4_placeholders_cannot_change_scheme_port_or_path_structure(
    hook: Hook, dispatcher: HttpDispatcher
) -> None:
    bad = [
        ("http://127.0.0.1:{port}/run", {"port": str(hook.port)}),
        ("{scheme}://127.0.0.1/run", {"scheme": "http"}),
        (f"http://127.0.0.1:{hook.port}/hooks/{{p}}/run", {"p": ".."}),
    ]
    for url, params in bad:
        outcome = await dispatcher.dispatch(_ctx(url, params=params))
        assert outcome.status is RunStatus.FAILED, url
    assert hook.seen == []
    url = f"http://127.0.0.1:{hook.port}/hooks/{{p}}/run#{{p}}"
    outcome = await dispatcher.dispatch(_ctx(url, params={"p": "../a b?c"}))
    assert outcome.status is RunStatus.SUBMITTED
    assert hook.seen[0].raw_path == "/hooks/..%2Fa%20b%3Fc/run"


async def test_sec_5_secrets_echoed_in_part_are_masked(
    hook: Hook, dispatcher: HttpDispatcher
) -> None:
    url = f"http://127.0.0.1:{hook.port}/hook?sig={SIG}&sv=2024-08-04"
    hook.answers = [(400, f"bad token {TOKEN} for signature {SIG}")]
    with structlog.testing.capture_logs() as logs:
        outcome = await dispatcher.dispatch(_ctx(url))
    assert outcome.status is RunStatus.FAILED and outcome.error is not None
    text = outcome.error + repr(logs)
    assert TOKEN not in text and SIG not in text
    assert outcome.error == "HTTP 400: bad token *** for signature ***"


async def test_sec_5_echoed_secrets_are_masked_in_the_run_the_api_and_the_log(
    tmp_path: Path, hook: Hook
) -> None:
    hook.answers = [(400, f"echo {TOKEN} / {SIG}")]
    text = f"""
[daemon]
api = ""
[pipelines.notify]
kind = "http"
url = "http://127.0.0.1:{hook.port}/hook?sig={SIG}&sv=2024-08-04"
headers = {{ Authorization = "Bearer {TOKEN}" }}
[[schedules]]
name = "manual"
pipeline = "notify"
experiment_name = "E"
status = "Disabled"
cron = "0 0 1 1 *"
"""
    async with running_engine(tmp_path, text, _clock()) as h:
        await h.manager.trigger_schedule("manual")
        await eventually(lambda: h.runs() and h.runs()[0].status in TERMINAL)
        run = h.runs()[0]
        shown = json.dumps(await h.manager.get_run(run.id))  # what the API and page show
    assert run.status is RunStatus.FAILED and run.error == "HTTP 400: echo *** / ***"
    assert TOKEN not in shown and SIG not in shown and "echo *** / ***" in shown
    # The daemon's log processor, with the config's secrets, masks each part alone too.
    secrets = load_config(tmp_path, text).secrets
    event = redaction_processor(secrets)(None, "info", {"event": "x", "body": f"{TOKEN} {SIG}"})
    assert event["body"] == "*** ***"


# ── item 13 (second half) ─────────────────────────────────────────────────────


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_sec_13_console_exception_text_is_masked() -> None:
    out = _Tty()
    before = structlog.get_config()
    configure("console", secrets=[TOKEN], stream=out)
    try:
        logger = structlog.get_logger("test")
        try:
            raise ValueError(f"refused {TOKEN} at https://h.example/x?sig={SIG}&sv=1")
        except ValueError:
            logger.exception("commit_failed")
    finally:
        structlog.configure(**before)
    text = out.getvalue()
    assert "commit_failed" in text and "ValueError" in text
    assert TOKEN not in text and SIG not in text


async def test_sec_4_the_metadata_address_is_never_asked(dispatcher: HttpDispatcher) -> None:
    """The brief's example: refused before any connection (here an egress proxy would answer
    403 for 169.254.169.254, so only the error says whether a request was made)."""
    ctx = _ctx("http://{region}.hooks.example.com/run", params={"region": "169.254.169.254/x#"})
    try:
        outcome = await asyncio.wait_for(dispatcher.dispatch(ctx), 10)
    except DispatchUnavailable as exc:  # it tried to connect: the bug
        pytest.fail(f"a request was attempted: {exc}")
    assert outcome.status is RunStatus.FAILED and outcome.http_status is None
    assert outcome.error is not None and "{region}" in outcome.error


# ── SPEC §8: a command's own `env` values in its log ──────────────────────────

ENV_TOKEN = "Zq9XwV7kT3pL"  # no character repeats: any 3 of its characters in a row are its


def _leaky(tmp_path: Path, script: str, log_limit: str = "1MiB") -> str:
    return f"""
[daemon]
api = ""
[pipelines.leaky]
kind = "command"
env = {{ API_KEY = "{ENV_TOKEN}", AUTH = "Bearer {TOKEN}" }}
log_limit = "{log_limit}"
steps = [["sh", "-c", {json.dumps(script.replace("${", "$${"))}]]
[[schedules]]
name = "manual"
pipeline = "leaky"
experiment_name = "E"
status = "Disabled"
cron = "0 0 1 1 *"
"""


async def test_sec_8_env_values_echoed_by_a_command_are_masked_in_its_log(
    tmp_path: Path,
) -> None:
    """`set -x` and debug prints put a command's secrets in its output; the run's log (API,
    page, `runs logs`) shows each as ***, also a credential echoed without its scheme word."""
    script = 'echo "key=$API_KEY"; echo "$AUTH" >&2; echo "${AUTH#Bearer }"; printf "\\377"; exit 3'
    async with running_engine(tmp_path, _leaky(tmp_path, script), _clock()) as h:
        await h.manager.trigger_schedule("manual")
        await eventually(lambda: h.runs() and h.runs()[0].status in TERMINAL)
        run = h.runs()[0]
        log = await h.manager.get_run_log(run.id)
        shown = json.dumps(await h.manager.get_run(run.id))
    assert run.status is RunStatus.FAILED and run.exit_code == 3
    assert b"key=***\n" in log and b"\n***\n" in log and b"\xff" in log
    assert ENV_TOKEN.encode() not in log and TOKEN.encode() not in log
    assert ENV_TOKEN not in shown and TOKEN not in shown


async def test_sec_8_a_secret_cut_by_the_log_limit_leaves_no_part(tmp_path: Path) -> None:
    """The log keeps its last `log_limit` bytes: a secret across the cut, at every offset,
    shows neither whole nor in part."""
    # 40 lines of growing filler and the secret: the cut falls inside it at many offsets.
    script = 'p=; i=0; while [ $i -lt 40 ]; do echo "$p$API_KEY"; p="$p."; i=$((i+1)); done'
    async with running_engine(tmp_path, _leaky(tmp_path, script, "64B"), _clock()) as h:
        await h.manager.trigger_schedule("manual")
        await eventually(lambda: h.runs() and h.runs()[0].status in TERMINAL)
        log = await h.manager.get_run_log(h.runs()[0].id)
    assert 0 < len(log) <= 64 and log.endswith(b"***\n")
    parts = {ENV_TOKEN[i : i + 3] for i in range(len(ENV_TOKEN) - 2)}
    assert not [p for p in parts if p.encode() in log], log


def test_sec_8_a_reloaded_configs_secrets_are_masked_in_the_log_from_then_on() -> None:
    """The daemon's log processor learns a reloaded config's secrets (SIGHUP adds a pipeline
    with a header token) and keeps masking the old ones."""
    from watcherd import logs

    out = io.StringIO()
    before = structlog.get_config()
    configure("json", secrets=[SIG], stream=out)
    try:
        logger = structlog.get_logger("test")
        logger.info("before", body=f"{TOKEN} {SIG}")
        logs.add_secrets([TOKEN])  # what Daemon._reload does with the new config's secrets
        logger.info("after", body=f"{TOKEN} {SIG}")
    finally:
        structlog.configure(**before)
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["body"] == f"{TOKEN} ***"  # unknown before the reload
    assert second["body"] == "*** ***"


async def test_sec_8_a_big_log_is_masked_too(tmp_path: Path) -> None:
    """Over 64 KiB the log is masked in a thread, not on the event loop: the same result."""
    script = 'echo "$API_KEY"; head -c 300000 /dev/zero | tr "\\0" x; echo; echo "$API_KEY"'
    async with running_engine(tmp_path, _leaky(tmp_path, script), _clock()) as h:
        await h.manager.trigger_schedule("manual")
        await eventually(lambda: h.runs() and h.runs()[0].status in TERMINAL)
        log = await h.manager.get_run_log(h.runs()[0].id)
    assert len(log) > 300000 and log.count(b"***") == 2 and ENV_TOKEN.encode() not in log


def test_sec_8_the_tail_never_shows_part_of_a_secret_at_any_cut() -> None:
    """The log tail is cut at every offset around a short secret and a long one: no piece of
    either shows (a short one that starts in the bytes dropped at the head is masked whole)."""
    from watcherd.core.redact import BytesMask
    from watcherd.dispatch.command import _Tail

    short, long = ENV_TOKEN, "Lx4Vb7Qm2Zr9Tn6Wc3Hp8Jd5Kf1Gs0Y"
    mask = BytesMask([short, long])
    pieces = {s[i : i + 4] for s in (short, long) for i in range(len(s) - 3)}
    for pad in range(len(long) + 8):
        for secret in (short, long):
            tail = _Tail(64, mask)
            tail.add(b"." * pad + secret.encode() + b"." * 3)
            for _ in range(3):  # enough to be cut (more than 2 x 64 + spare)
                tail.add(b"-" * 40 + secret.encode() + b"\n")
            shown = tail.value().decode()
            assert len(shown.encode()) <= 64
            assert not [p for p in pieces if p in shown], (pad, secret, shown)
