"""Command pipelines: steps of argv run in order, without a shell, each in its own session.

A step ends when its process exits, whatever it left behind: a background child holding the
output pipe must not hold the run (issue #11 item 2). After a short drain of the pipe, what
remains of the step (its process group, `setsid` descendants, orphans carrying the run's
`WATCHERD_RUN_ID`) is stopped with SIGTERM, 10 s, SIGKILL, and the run's log says what was
stopped. Cancellation (timeout, `runs cancel`, shutdown) stops it the same way, also when the
step's own process has already exited. `process.ProcessGroup` is the one implementation.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Mapping

import structlog

from watcherd.core.errors import DispatchUnavailable
from watcherd.core.models import CommandTarget, RunStatus
from watcherd.core.placeholders import expand_bytes
from watcherd.core.redact import BytesMask
from watcherd.core.timefmt import format_utc
from watcherd.dispatch.process import RUN_STOP, ProcessGroup
from watcherd.engine.ports import Outcome, RunContext

__all__ = ["DRAIN", "CommandDispatcher", "build_argv", "build_env", "refusal"]

log = structlog.get_logger(__name__)

_PASS_ENV = ("PATH", "HOME", "LANG", "TZ", "TMPDIR")
DRAIN = 0.25  # seconds to read what a step wrote once it exited, before stopping the rest
_KEEP_INTERRUPTED = 64


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
    """The minimal environment of SPEC §5: no API token, no datastore credentials.

    A run without a schedule (a pipeline submit) has no `WATCHERD_SCHEDULE_*` at all.
    """
    env: dict[str, str] = {}
    for k, v in os.environ.items():
        if k in _PASS_ENV or k.startswith("LC_"):
            env[k] = v
    for k in target.inherit_env:
        if k in os.environ:
            env[k] = os.environ[k]
    env.update(target.env)
    run = ctx.run
    env["WATCHERD_RUN_ID"] = run.id
    if ctx.schedule is not None:
        env["WATCHERD_SCHEDULE_ID"] = ctx.schedule.id
        env["WATCHERD_SCHEDULE_NAME"] = ctx.schedule.name
    elif run.schedule_id:  # its schedule was deleted since: the id is still the run's
        env["WATCHERD_SCHEDULE_ID"] = run.schedule_id
    env.update(
        WATCHERD_EXPERIMENT=run.experiment_name,
        WATCHERD_TRIGGER_TIME=format_utc(ctx.trigger_time),
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


def refusal(ctx: RunContext) -> str | None:
    """Why this run must not start a command at all, or None.

    A blob whose name starts with `-` would read as an option (SPEC §5). The engine skips
    such runs before dispatch; this is the last line of defence.
    """
    f = ctx.file
    if f is not None and f.local_path is None and f.relative_path.startswith(b"-"):
        return "blob name starts with '-': it would read as an option, no command was started"
    return None


class _Tail:
    """The last `limit` bytes of a stream, the config's secrets masked (SPEC §8).

    Masked when read, over `mask.longest` more bytes than are kept, so that a secret across
    the cut is still found; a head cut away may have split one, so the bytes where its end
    could be are dropped with it."""

    def __init__(self, limit: int, mask: BytesMask | None = None) -> None:
        self.limit = limit
        self.mask = mask
        self.spare = mask.longest if mask is not None else 0
        self.buf = bytearray()
        self.cut = False

    def add(self, chunk: bytes) -> None:
        self.buf += chunk
        if len(self.buf) > 2 * self.limit + self.spare:
            del self.buf[: len(self.buf) - self.limit - self.spare]
            self.cut = True

    def value(self) -> bytes:
        if not self.limit:
            return b""
        data = bytes(self.buf)
        # The head a cut left may start with the end of a secret cut in two: its first
        # `spare - 1` bytes are dropped (a whole secret crossing that line is masked whole).
        start = self.spare - 1 if self.cut and self.spare else 0
        data = self.mask(data, start) if self.mask is not None else data[start:]
        return data[-self.limit :]

    def copy(self) -> _Tail:
        """The output so far, kept apart from what may still arrive."""
        other = _Tail(self.limit, self.mask)
        other.buf, other.cut = bytearray(self.buf), self.cut
        return other

    async def masked(self) -> bytes:
        """`value()`, in a thread when the buffer is big: searching a MiB for every secret
        takes tens of ms, which the event loop (timers, other runs) must not wait for."""
        if self.mask is None or len(self.buf) <= _MASK_ON_LOOP:
            return self.value()
        return await asyncio.to_thread(self.value)


_MASK_ON_LOOP = 64 * 1024  # bytes of output masked on the loop (well under a millisecond)


@functools.lru_cache(maxsize=16)
def _mask(secrets: frozenset[str]) -> BytesMask | None:
    """The mask of a config's secrets, its commands' `env` values among them (compiled once
    per distinct set)."""
    mask = BytesMask(secrets)
    return mask if mask.longest else None


async def _pump(stream: asyncio.StreamReader, tail: _Tail) -> None:
    while chunk := await stream.read(65536):
        tail.add(chunk)


class CommandDispatcher:
    """Runs a command pipeline's steps."""

    def __init__(self) -> None:
        self._interrupted: dict[str, _Tail] = {}  # run id -> log of an interrupted attempt

    def partial_log(self, run_id: str) -> bytes | None:
        """The log of the run's attempt that was cancelled (timeout, cancel, shutdown), once.

        A cancelled dispatch can only re-raise CancelledError; this is where its output and
        what was stopped can still be had (the runner may store it with the run).
        """
        tail = self._interrupted.pop(run_id, None)
        return tail.value() if tail is not None else None

    async def dispatch(self, ctx: RunContext) -> Outcome:
        """Run the steps; a step's non-zero exit in `retry_exit_codes` raises
        DispatchUnavailable; on cancellation the log so far is kept for `partial_log`."""
        target = ctx.pipeline.target
        assert isinstance(target, CommandTarget)
        tail = _Tail(target.log_limit, _mask(ctx.secrets | frozenset(target.env.values())))
        try:
            return await self._dispatch(ctx, target, tail)
        except asyncio.CancelledError:
            self._interrupted[ctx.run.id] = tail.copy()  # masked when fetched (`partial_log`)
            while len(self._interrupted) > _KEEP_INTERRUPTED:  # never fetched: forget the oldest
                del self._interrupted[next(iter(self._interrupted))]
            raise

    async def _dispatch(self, ctx: RunContext, target: CommandTarget, tail: _Tail) -> Outcome:
        if (why := refusal(ctx)) is not None:
            log.warning("command_refused", run_id=ctx.run.id, reason=why)
            return Outcome(status=RunStatus.FAILED, error=why)
        env = build_env(ctx, target)
        # The run and its attempt: a replica that lost its claim must never stop the next
        # attempt of the same run, started by another replica on the same host (SPEC §12).
        marker = b"WATCHERD_RUN_ID=%s\0WATCHERD_ATTEMPT=%d" % (ctx.run.id.encode(), ctx.attempt)
        cwd = target.cwd or ctx.config_dir
        codes: list[int] = []
        failed: str | None = None
        for i, step in enumerate(target.steps):
            argv = build_argv(step, ctx)
            tail.add(b"$ " + b" ".join(argv) + b"\n")
            try:
                code = await self._run_step(i, argv, env, cwd, tail, marker)
            except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
                tail.add(f"watcherd: cannot start step {i}: {exc}\n".encode())
                codes.append(127)
                # The working directory is named when it is what failed (not the command).
                cwd_ok = await asyncio.to_thread(os.path.isdir, cwd)
                where = "" if cwd_ok else f" (in cwd {os.fspath(cwd)!r})"
                reason = f"{exc.strerror or exc}{where}"
                failed = failed or f"step {i}: cannot start {step[0]!r}: {reason}"
                if not ctx.continue_on_step_failure:
                    break
                continue
            codes.append(code)
            if code == 0:
                continue
            if code in target.retry_exit_codes:
                raise DispatchUnavailable(
                    f"step {i} exited {code} (retryable)",
                    exit_codes=tuple(codes),
                    log=await tail.masked(),
                )
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
            log=await tail.masked(),
        )

    @staticmethod
    async def _run_step(
        index: int,
        argv: list[bytes],
        env: Mapping[bytes, bytes],
        cwd: os.PathLike[str] | str,
        tail: _Tail,
        marker: bytes,
    ) -> int:
        """Run one step to its process's exit, then stop whatever it left running."""
        group = await ProcessGroup.start(
            argv,
            env=env,
            cwd=cwd,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            marker=marker,
        )
        assert group.proc.stdout is not None
        pump = asyncio.ensure_future(_pump(group.proc.stdout, tail))
        stopping: asyncio.Future[list[str]] | None = None
        try:
            code = await group.wait()
            await asyncio.wait({pump}, timeout=DRAIN)  # its last words, unless a child holds on
            stopping = asyncio.ensure_future(group.stop(RUN_STOP))
            lines = await asyncio.shield(stopping)
            if lines:
                await asyncio.wait({pump}, timeout=DRAIN)  # what the stopped ones wrote
                for line in lines:
                    tail.add(f"watcherd: step {index} left processes running: {line}\n".encode())
            return code
        except asyncio.CancelledError:
            # Timeout, cancel or shutdown: stop the rest even if the step itself has exited.
            if stopping is None:
                stopping = asyncio.ensure_future(group.stop(RUN_STOP))
            for line in await asyncio.shield(stopping):
                tail.add(f"watcherd: step {index} interrupted: {line}\n".encode())
            raise
        finally:
            pump.cancel()
            await group.close()

    async def aclose(self) -> None:
        return None
