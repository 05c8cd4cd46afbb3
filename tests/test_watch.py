"""`watcherd watch` end to end: a real `python -m watcherd watch` on real files in tmp_path.

Readiness and progress are read from the watcher's log lines on stderr; output files written
by the commands are polled under `asyncio.timeout`, never slept on.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from watcherd.cli.watch import command_for, main, parse_args

WAIT = 10.0
RECORD = "import sys,os; open(sys.argv[1],'ab').write(os.fsencode(sys.argv[2])+b'\\0')"


class Watcher:
    """A running `watcherd watch` and the log lines it wrote so far."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._line = asyncio.Event()

    async def read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace"))
            self._line.set()

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    async def logged(self, text: str, n: int = 1) -> None:
        async with asyncio.timeout(WAIT):
            while self.count(text) < n:
                self._line.clear()
                await self._line.wait()

    async def stop(self, sig: int = signal.SIGINT) -> int:
        self.proc.send_signal(sig)
        async with asyncio.timeout(20):
            return await self.proc.wait()


@asynccontextmanager
async def watching(directory: Path, *args: str | bytes) -> AsyncIterator[Watcher]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "watcherd",
        "watch",
        os.fsencode(directory),
        *args,
        stderr=asyncio.subprocess.PIPE,
        cwd=Path(__file__).parent.parent,
    )
    w = Watcher(proc)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(w.read())
        try:
            await w.logged("baseline_taken")
            yield w
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def until(pred: Callable[[], bool]) -> None:
    """Poll a condition on files a child process writes: nothing signals those writes."""
    async with asyncio.timeout(WAIT):
        while not pred():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


def records(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\0")[:-1] if path.exists() else []


def put(path: Path | bytes, data: bytes = b"x") -> None:
    with open(path, "wb") as f:
        f.write(data)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != b"Z"


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    (tmp_path / "w").mkdir()
    return tmp_path / "w"


async def test_hostile_names_arrive_as_exactly_one_argv_element(
    tmp_path: Path, inbox: Path
) -> None:
    out = tmp_path / "out"
    names = [
        b"with space.csv",
        b"quote'\"s.csv",
        b"$(touch pwned).csv",
        b"new\nline.csv",
        b"-leading-dash.csv",
        b"caf\xe9-\xff\xfe.csv",
        b"semi;colon&amp|pipe.csv",
    ]
    async with watching(inbox, "--", sys.executable, "-c", RECORD, str(out)) as w:
        for name in names:
            put(os.path.join(os.fsencode(inbox), name))
        await until(lambda: len(records(out)) == len(names))
        assert await w.stop() == 0
    base = os.fsencode(inbox) + b"/"
    assert sorted(records(out)) == sorted(base + n for n in names)
    assert not (tmp_path / "pwned").exists() and not (inbox / "pwned").exists()


async def test_path_placeholder_inside_an_element_and_subdirectories_ignored(
    tmp_path: Path, inbox: Path
) -> None:
    out = tmp_path / "out"
    code = "import sys; open(sys.argv[1],'ab').write('|'.join(sys.argv[2:]).encode()+b'\\0')"
    async with watching(inbox, "--", sys.executable, "-c", code, str(out), "--in={path}") as w:
        (inbox / "sub").mkdir()
        put(inbox / "sub" / "deep.csv")
        put(inbox / ".hidden")
        put(inbox / "part.tmp")
        put(inbox / "a.csv")
        await until(lambda: len(records(out)) == 1)
        assert await w.stop() == 0
    assert records(out) == [f"--in={inbox}/a.csv".encode()]


async def test_sigint_stops_the_process_group_and_exits_0(tmp_path: Path, inbox: Path) -> None:
    pids = tmp_path / "pids"
    # A non-interactive sh's background job ignores SIGINT: this takes the SIGTERM step.
    script = f'sleep 1000 & echo "$$ $!" > {pids}.tmp; mv {pids}.tmp {pids}; wait'
    async with watching(inbox, "--", "sh", "-c", script) as w:
        put(inbox / "a.csv")
        await until(pids.exists)
        child, grandchild = (int(p) for p in pids.read_text().split())
        assert alive(child) and alive(grandchild)
        assert await w.stop(signal.SIGINT) == 0
        signalled = [line for line in w.lines if "command_signalled" in line]
    assert not alive(child) and not alive(grandchild)
    assert "SIGINT" in signalled[0]
    assert all("SIGKILL" not in line for line in signalled)
    assert w.count("watch_stopped") == 1


async def test_a_second_signal_kills_at_once(tmp_path: Path, inbox: Path) -> None:
    pids = tmp_path / "pids"
    script = f"trap '' INT TERM; echo $$ > {pids}.tmp; mv {pids}.tmp {pids}; sleep 1000"
    async with watching(inbox, "--", "sh", "-c", script) as w:
        put(inbox / "a.csv")
        await until(pids.exists)
        child = int(pids.read_text())
        w.proc.send_signal(signal.SIGINT)
        await w.logged("command_signalled")
        t0 = time.monotonic()
        assert await w.stop(signal.SIGINT) == 0
        assert time.monotonic() - t0 < 4
        assert w.count("watch_forced") == 1 and w.count("signal=SIGKILL") == 1
    assert not alive(child)


async def test_sigterm_stops_a_command_that_exits_on_sigint(tmp_path: Path, inbox: Path) -> None:
    started = tmp_path / "started"
    code = f"import time; open({str(started)!r},'w').close(); time.sleep(1000)"
    async with watching(inbox, "--", sys.executable, "-c", code) as w:
        put(inbox / "a.csv")
        await until(started.exists)
        t0 = time.monotonic()
        assert await w.stop(signal.SIGTERM) == 0
        assert time.monotonic() - t0 < 4  # SIGINT was enough
        assert w.count("command_stopped") == 1


async def test_a_file_changed_while_its_command_runs_runs_once_more(
    tmp_path: Path, inbox: Path
) -> None:
    out, fifo = tmp_path / "out", tmp_path / "gate"
    os.mkfifo(fifo)
    # Record the file's content, then block until the test opens the gate.
    code = (
        "import sys; open(sys.argv[1],'ab').write(open(sys.argv[3],'rb').read()+b'\\0');"
        "open(sys.argv[2],'rb').read()"
    )

    async def release() -> None:
        def _open() -> None:
            os.close(os.open(fifo, os.O_WRONLY))

        await asyncio.to_thread(_open)

    async with watching(
        inbox, "--jobs", "1", "--", sys.executable, "-c", code, str(out), str(fifo)
    ) as w:
        put(inbox / "f.csv", b"1")
        await until(lambda: records(out) == [b"1"])
        put(inbox / "f.csv", b"22")
        put(inbox / "f.csv", b"333")
        await w.logged("file_changed", 3)
        await release()
        await until(lambda: len(records(out)) == 2)
        put(inbox / "zz.csv", b"marker")  # with --jobs 1, it runs after any other f.csv run
        await release()
        await until(lambda: len(records(out)) == 3)
        await release()
        assert await w.stop() == 0
    assert records(out) == [b"1", b"333", b"marker"]


async def test_debounce_waits_for_quiet_and_runs_the_newest_version_once(
    tmp_path: Path, inbox: Path
) -> None:
    out = tmp_path / "out"
    code = (
        "import sys,time; open(sys.argv[1],'ab').write("
        "b'%f ' % time.time() + open(sys.argv[2],'rb').read() + b'\\0')"
    )
    async with watching(inbox, "--debounce", "400ms", "--", sys.executable, "-c", code, str(out)):
        put(inbox / "f.csv", b"1")
        put(inbox / "f.csv", b"22")
        last = time.time()
        await until(lambda: len(records(out)) == 1)
        put(inbox / "g.csv", b"g")
        await until(lambda: len(records(out)) == 2)
    (t, data), second = records(out)[0].split(b" ", 1), records(out)[1]
    assert data == b"22" and second.endswith(b" g")
    assert float(t) - last >= 0.4


async def test_a_file_gone_before_its_command_starts_runs_nothing(
    tmp_path: Path, inbox: Path
) -> None:
    """Deleted or moved away during its debounce (or while it waits for a job slot): its
    command does not run; a rename inside the directory runs the new name only."""
    out = tmp_path / "out"
    args = ("--debounce", "2s", "--", sys.executable, "-c", RECORD, str(out))
    async with watching(inbox, *args) as w:
        put(inbox / "gone.csv")
        put(inbox / "away.csv")
        put(inbox / "src.csv")
        await w.logged("file_changed", 3)  # each is waiting for its debounce now
        os.unlink(inbox / "gone.csv")
        os.rename(inbox / "away.csv", tmp_path / "away.csv")
        os.rename(inbox / "src.csv", inbox / "dst.csv")
        await until(lambda: len(records(out)) == 1)
        await w.logged("file_gone", 3)
    assert records(out) == [os.fsencode(inbox / "dst.csv")]


async def test_initial_runs_present_files_and_poll_mode_works(tmp_path: Path, inbox: Path) -> None:
    out = tmp_path / "out"
    put(inbox / "present.csv")
    args = ("--initial", "--poll", "0.2", "--", sys.executable, "-c", RECORD, str(out))
    async with watching(inbox, *args) as w:
        await until(lambda: len(records(out)) == 1)
        put(inbox / "later.csv")
        await until(lambda: len(records(out)) == 2)
        assert await w.stop() == 0
    assert records(out) == [os.fsencode(inbox / "present.csv"), os.fsencode(inbox / "later.csv")]


# ── the command line, in-process ──────────────────────────────────────────────


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["DIR"], "expected '-- CMD"),
        (["DIR", "--"], "no command after '--'"),
        (["DIR", "--debounce", "1x", "--", "true"], "--debounce: invalid duration '1x'"),
        (["DIR", "--jobs", "0", "--", "true"], "--jobs must be at least 1"),
        (["DIR", "--poll", "0", "--", "true"], "--poll must be a number of seconds in (0, "),
        (["DIR", "--poll", "inf", "--", "true"], "--poll must be a number of seconds in (0, "),
        (["DIR", "--poll", "1e300", "--", "true"], "--poll must be a number of seconds in (0, "),
        (["DIR", "--bogus", "--", "true"], "unrecognized arguments: --bogus"),
        (["MISSING", "--", "true"], "MISSING: not a directory"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    argv = [
        str(tmp_path) if a == "DIR" else str(tmp_path / a) if a == "MISSING" else a for a in argv
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("watcherd watch: error:")


@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["DIR", "--help", "--", "true"]])
def test_help_lists_every_option_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    assert main([str(tmp_path) if a == "DIR" else a for a in argv]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: watcherd watch DIR [options] -- CMD [ARG...]")
    for flag in ("--pattern", "--ignore", "--debounce", "--jobs", "--initial", "--poll"):
        assert flag in out


def test_a_help_after_the_command_is_the_commands(tmp_path: Path) -> None:
    opts = parse_args([str(tmp_path), "--", "tool", "--help"])
    assert opts.command == (b"tool", b"--help")


def test_debounce_takes_a_duration_or_a_bare_zero(tmp_path: Path) -> None:
    assert parse_args([str(tmp_path), "--debounce", "0", "--", "true"]).debounce == 0
    assert parse_args([str(tmp_path), "--debounce", "250ms", "--", "true"]).debounce == 0.25


def test_parse_args_defaults_and_command_bytes(tmp_path: Path) -> None:
    opts = parse_args([str(tmp_path), "--ignore", "*.log", "--", "echo", "caf\udce9", "{path}"])
    assert opts.directory == os.fsencode(tmp_path) and opts.ignore == ("*.log",)
    assert opts.command == (b"echo", b"caf\xe9", b"{path}")
    assert opts.jobs == (os.cpu_count() or 1) and opts.debounce == 0 and opts.poll is None
    assert opts.patterns == ("*",) and not opts.initial


def test_command_for_appends_or_substitutes() -> None:
    assert command_for([b"cat"], b"/d/a b") == [b"cat", b"/d/a b"]
    assert command_for([b"cp", b"{path}", b"{path}.bak"], b"/d/x") == [b"cp", b"/d/x", b"/d/x.bak"]


async def test_job_slots_serve_waiters_in_order_and_skip_cancelled_ones() -> None:
    from watcherd.cli.watch import _Slots

    slots, order = _Slots(1), []

    async def job(name: str, hold: asyncio.Event) -> None:
        async with slots:
            order.append(name)
            await hold.wait()

    holds = {n: asyncio.Event() for n in "abcde"}
    tasks = {n: asyncio.create_task(job(n, holds[n])) for n in "abcde"}
    await asyncio.sleep(0)
    assert order == ["a"]
    tasks["b"].cancel()  # waiting: skipped when its turn comes
    tasks["d"].cancel()
    holds["a"].set()
    await asyncio.sleep(0)
    tasks["c"].cancel()  # its turn has come (a released) but it has not run yet
    for _ in range(5):
        await asyncio.sleep(0)
    assert order == ["a", "e"]  # c passed its turn on to the next live waiter
    holds["e"].set()
    await asyncio.gather(*tasks.values(), return_exceptions=True)
    async with asyncio.timeout(1):  # the slot is free again
        async with slots:
            pass
