"""Command pipelines: steps of argv run in order, without a shell, each in its own session."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping

import structlog

from watcherd.core.errors import DispatchUnavailable
from watcherd.core.models import CommandTarget, RunStatus
from watcherd.core.placeholders import expand_bytes
from watcherd.engine.ports import Outcome, RunContext

__all__ = ["CommandDispatcher", "build_argv", "build_env", "stop_process_group"]

log = structlog.get_logger(__name__)

_PASS_ENV = ("PATH", "HOME", "LANG", "TZ", "TMPDIR")
STOP_GRACE = 10.0


def _file_values(ctx: RunContext) -> tuple[dict[str, bytes], dict[str, bytes]]:
    values = {k: v.encode("utf-8", "surrogateescape") for k, v in ctx.parameters.items()}
    urls: dict[str, bytes] = {}
    if ctx.file is not None and ctx.data_path_parameter_name:
        f = ctx.file
        values[ctx.data_path_parameter_name] = f.local_path or f.relative_path
        if f.url:
            urls[ctx.data_path_parameter_name] = f.url.encode()
    return values, urls


def build_argv(step: tuple[str, ...], ctx: RunContext) -> list[bytes]:
    """Expand placeholders element by element: a value never leaves its argv element."""
    values, urls = _file_values(ctx)
    return [expand_bytes(arg, values, urls) for arg in step]


def build_env(ctx: RunContext, target: CommandTarget) -> dict[bytes, bytes]:
    """The minimal environment of SPEC §5: no API token, no datastore credentials."""
    env: dict[str, str] = {}
    for k, v in os.environ.items():
        if k in _PASS_ENV or k.startswith("LC_"):
            env[k] = v
    for k in target.inherit_env:
        if k in os.environ:
            env[k] = os.environ[k]
    env.update(target.env)
    run = ctx.run
    env.update(
        WATCHERD_RUN_ID=run.id,
        WATCHERD_SCHEDULE_ID=run.schedule_id,
        WATCHERD_SCHEDULE_NAME=ctx.schedule.name if ctx.schedule else "",
        WATCHERD_EXPERIMENT=run.experiment_name,
        WATCHERD_TRIGGER_TIME=ctx.trigger_time.strftime("%Y-%m-%dT%H:%M:%SZ"),
        WATCHERD_ATTEMPT=str(ctx.attempt),
        WATCHERD_CONTINUE_ON_STEP_FAILURE="true" if ctx.continue_on_step_failure else "false",
    )
    env.update(ctx.extra_env)
    out = {k.encode(): v.encode("utf-8", "surrogateescape") for k, v in env.items()}
    if ctx.file is not None:
        out[b"WATCHERD_DATASTORE"] = ctx.file.datastore.encode()
        out[b"WATCHERD_RELATIVE_PATH"] = ctx.file.relative_path
        if ctx.file.local_path is not None:
            out[b"WATCHERD_PATH"] = ctx.file.local_path
        if ctx.file.url is not None:
            out[b"WATCHERD_BLOB_URL"] = ctx.file.url.encode()
    return out


async def stop_process_group(proc: asyncio.subprocess.Process, grace: float = STOP_GRACE) -> None:
    """SIGTERM the child's process group, wait `grace`, then SIGKILL; logs each step."""
    if proc.returncode is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        log.info("process_signal", pid=proc.pid, signal=sig.name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            async with asyncio.timeout(grace):
                await proc.wait()
            break
        except TimeoutError:
            continue
    # A group member that outlived its leader still gets the final SIGKILL.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


class _Tail:
    """The last `limit` bytes of a stream."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buf = bytearray()

    def add(self, chunk: bytes) -> None:
        self.buf += chunk
        if len(self.buf) > 2 * self.limit:
            del self.buf[: len(self.buf) - self.limit]

    def value(self) -> bytes:
        return bytes(self.buf[-self.limit :]) if self.limit else b""


class CommandDispatcher:
    """Runs a command pipeline's steps."""

    async def dispatch(self, ctx: RunContext) -> Outcome:
        target = ctx.pipeline.target
        assert isinstance(target, CommandTarget)
        env = build_env(ctx, target)
        cwd = target.cwd or ctx.config_dir
        tail = _Tail(target.log_limit)
        codes: list[int] = []
        failed: str | None = None
        for i, step in enumerate(target.steps):
            argv = build_argv(step, ctx)
            tail.add(b"$ " + b" ".join(argv) + b"\n")
            try:
                code = await self._run_step(argv, env, cwd, tail)
            except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
                tail.add(f"watcherd: cannot start step {i}: {exc}\n".encode())
                codes.append(127)
                failed = failed or f"step {i}: cannot start {step[0]!r}: {exc.strerror or exc}"
                if not ctx.continue_on_step_failure:
                    break
                continue
            codes.append(code)
            if code == 0:
                continue
            if code in target.retry_exit_codes:
                raise DispatchUnavailable(f"step {i} exited {code} (retryable)")
            failed = failed or f"step {i} exited {code}"
            if not ctx.continue_on_step_failure:
                break
        last = codes[-1] if codes else None
        worst = next((c for c in codes if c != 0), last)
        return Outcome(
            status=RunStatus.FAILED if failed else RunStatus.COMPLETED,
            error=failed,
            exit_code=worst,
            exit_codes=tuple(codes),
            log=tail.value(),
        )

    @staticmethod
    async def _run_step(
        argv: list[bytes], env: Mapping[bytes, bytes], cwd: os.PathLike[str] | str, tail: _Tail
    ) -> int:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
        try:
            assert proc.stdout is not None
            while chunk := await proc.stdout.read(65536):
                tail.add(chunk)
            return await proc.wait()
        except asyncio.CancelledError:
            await asyncio.shield(stop_process_group(proc))
            raise

    async def aclose(self) -> None:
        return None
