"""dispatch.process: the one stop of a command's processes, the subreaper and the reaper.

Real processes; the subreaper and reaper checks run in a child Python process so that this
test process never becomes a subreaper itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import structlog

from watcherd.dispatch.process import ProcessGroup, Reaper
from watcherd.dispatch.procfs import read_process, scan_processes

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs Linux /proc")

ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    procs = scan_processes() or {}
    return pid in procs and not procs[pid].dead


def _text(path: Path) -> str:
    return path.read_text().strip() if path.exists() else ""


async def _pid_in(path: Path) -> int:
    async with asyncio.timeout(10):
        while not _text(path):  # noqa: ASYNC110  (a child writes it; nothing signals that)
            await asyncio.sleep(0.01)
    return int(_text(path))


async def test_wait_returns_at_the_exit_though_a_child_holds_the_pipe(tmp_path: Path) -> None:
    pid = tmp_path / "pid"
    group = await ProcessGroup.start(
        ["sh", "-c", f"sleep 1000 & echo $! > {pid}; exit 3"],
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(10):
            assert await group.wait() == 3
        child = await _pid_in(pid)
        assert _alive(child)
        async with asyncio.timeout(10):  # the shell forked it; the exec of sleep may lag
            while (info := read_process(child)) is not None and info.comm != "sleep":  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        with structlog.testing.capture_logs() as logs:
            lines = await group.stop(((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)))
        assert lines == [f"SIGTERM to {child} (sleep)"]
        assert [e["event"] for e in logs] == ["process_signalled", "process_stopped"]
        assert not _alive(child)
        assert group.proc.stdout is not None
        async with asyncio.timeout(10):
            await group.proc.stdout.read()  # EOF: nothing holds the pipe any more
    finally:
        await group.close()


async def test_stop_escalates_to_sigkill_and_logs_each_step(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    script = f"trap '' TERM; echo $$ > {ready}; while :; do sleep 0.05; done"
    group = await ProcessGroup.start(["sh", "-c", script])
    try:
        leader = await _pid_in(ready)
        with structlog.testing.capture_logs() as logs:
            lines = await group.stop(((signal.SIGTERM, 0.3), (signal.SIGKILL, 5.0)), event="cmd")
        assert [line.split(" to ")[0] for line in lines] == ["SIGTERM", "SIGKILL"]
        assert f"{leader} (sh)" in lines[0]
        events = [(e["event"], e.get("signal", e.get("after"))) for e in logs]
        assert events == [
            ("cmd_signalled", "SIGTERM"),
            ("cmd_signalled", "SIGKILL"),
            ("cmd_stopped", "SIGKILL"),
        ]
        assert group.proc.returncode == -signal.SIGKILL
    finally:
        await group.close()


async def test_force_skips_to_sigkill(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    script = f"trap '' INT TERM; echo $$ > {ready}; while :; do sleep 0.05; done"
    group = await ProcessGroup.start(["sh", "-c", script])
    force = asyncio.Event()
    try:
        await _pid_in(ready)
        with structlog.testing.capture_logs() as logs:
            stopping = asyncio.create_task(
                group.stop(((signal.SIGINT, 60.0), (signal.SIGKILL, 5.0)), force=force)
            )
            async with asyncio.timeout(10):
                while not logs:  # noqa: ASYNC110  (the SIGINT step has been sent)
                    await asyncio.sleep(0.01)
                force.set()
                lines = await stopping
        assert [line.split(" to ")[0] for line in lines] == ["SIGINT", "SIGKILL"]
    finally:
        await group.close()


async def test_nothing_left_is_a_no_op() -> None:
    group = await ProcessGroup.start(["true"])
    try:
        assert await group.wait() == 0
        with structlog.testing.capture_logs() as logs:
            assert await group.stop() == []
        assert logs == []
    finally:
        await group.close()


_ORPHANS = textwrap.dedent(
    """
    import asyncio, json, os, sys
    from watcherd.dispatch.process import Reaper, set_child_subreaper
    from watcherd.dispatch.procfs import child_pids, read_process

    def zombies():
        return [p for p in child_pids(os.getpid()) if (i := read_process(p)) and i.state == "Z"]

    async def main(reap):
        subreaper = set_child_subreaper()
        reaper = Reaper(interval=0.2)
        task = asyncio.create_task(reaper.run()) if reap else None
        codes = []
        for i in range(100):
            p = await asyncio.create_subprocess_exec("sh", "-c", f"sleep 0.1 & exit {i % 7}")
            codes.append(await p.wait())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while loop.time() < deadline:  # the orphans' sleeps end, then the reaper's passes
            await asyncio.sleep(0.1)
            kids = child_pids(os.getpid())
            if (reap and not kids) or (not reap and len(zombies()) >= 100):
                break
        print(json.dumps({"subreaper": subreaper, "codes": codes,
                          "zombies": len(zombies()), "reaped": reaper.reaped}))
        if task:
            task.cancel()

    asyncio.run(main(sys.argv[1] == "reap"))
    """
)


@pytest.mark.parametrize("mode", ["reap", "no-reaper"])
def test_subreaper_orphans_are_reaped_and_asyncio_keeps_its_statuses(mode: str) -> None:
    res = subprocess.run(
        [sys.executable, "-c", _ORPHANS, mode],
        capture_output=True, text=True, timeout=90, cwd=ROOT, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["subreaper"] is True
    assert out["codes"] == [i % 7 for i in range(100)]  # no status stolen from asyncio
    if mode == "reap":
        assert (out["zombies"], out["reaped"]) == (0, 100)
    else:  # what PID 1 without a reaper looks like: every orphan stays a zombie
        assert out["zombies"] == 100


def test_reaper_leaves_livechild_pids_and_nonchild_pids_alone() -> None:
    proc = subprocess.Popen(["sleep", "5"])
    try:
        reaper = Reaper()
        assert reaper.reap() == [] and reaper.reap() == []
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


_FAST_END = textwrap.dedent(
    """
    import asyncio, json, os, sys
    from watcherd.dispatch import process
    from watcherd.dispatch.process import ProcessGroup, set_child_subreaper
    from watcherd.dispatch.procfs import read_process

    scans = []
    full = ProcessGroup.remaining
    def counted(self):
        scans.append(self.pid)
        return full(self)
    ProcessGroup.remaining = counted

    async def step(argv, pidfile=None):
        env = dict(os.environ, WATCHERD_RUN_ID="fast")  # what the command dispatcher sets
        group = await ProcessGroup.start(argv, env=env, marker=b"WATCHERD_RUN_ID=fast")
        await group.wait()
        before = len(scans)
        lines = await group.stop(((process.signal.SIGTERM, 5.0), (process.signal.SIGKILL, 5.0)))
        await group.close()
        left = pid = None
        if pidfile:
            pid = int(open(pidfile).read())
            info = read_process(pid)
            left = info is not None and not info.dead
        return {"lines": lines, "scanned": len(scans) > before, "left": left, "pid": pid}

    async def main(tmp):
        out = {"subreaper": set_child_subreaper()}
        out["true"] = await step(["true"])
        # an orphan that left the session: now a child of ours, found and stopped
        pid = os.path.join(tmp, "pid")
        # the step exits once its orphan has become `sleep` (setsid execs it, same pid)
        script = (
            f"setsid sleep 1000 </dev/null >/dev/null 2>&1 & p=$!; echo $p > {pid}; i=0; "
            'while [ "$(cat /proc/$p/comm 2>/dev/null)" != sleep ] && [ $i -lt 100000 ]; '
            "do i=$((i+1)); done"
        )
        out["setsid"] = await step(["sh", "-c", script], pid)
        print(json.dumps(out))

    asyncio.run(main(sys.argv[1]))
    """
)


def test_a_subreaper_ends_a_clean_step_without_scanning_proc(tmp_path: Path) -> None:
    """With orphans adopted, a step that left nothing is proven empty by its group, its
    recorded descendants and our own children; an orphan that left the session still makes
    the stop look properly, and it is stopped."""
    res = subprocess.run(
        [sys.executable, "-c", _FAST_END, str(tmp_path)],
        capture_output=True, text=True, timeout=90, cwd=ROOT, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["subreaper"] is True
    assert out["true"] == {"lines": [], "scanned": False, "left": None, "pid": None}
    assert out["setsid"]["scanned"] is True
    lines, pid = out["setsid"]["lines"], out["setsid"]["pid"]
    assert lines == [f"SIGTERM to {pid} (sleep)"]
    assert out["setsid"]["left"] is False


def test_commands_are_waited_for_without_a_thread_each() -> None:
    """`use_pidfd_child_watcher` (called by `watcherd run` and `watch` before their loop):
    40 commands at once start no waitpid() thread and all report their exit codes. (Python
    3.11 starts one thread per child otherwise; 3.12 waits through pidfds by itself.)"""
    code = textwrap.dedent(
        """
        import asyncio, json, sys, threading
        from watcherd.dispatch.process import ProcessGroup, use_pidfd_child_watcher

        took = use_pidfd_child_watcher()

        async def main():
            groups = [
                await ProcessGroup.start([sys.executable, "-c", f"import sys, time; "
                                          f"time.sleep(0.5); sys.exit({i % 3})"])
                for i in range(40)
            ]
            threads = threading.active_count()
            codes = [await g.wait() for g in groups]
            for g in groups:
                await g.close()
            return threads, codes

        threads, codes = asyncio.run(main())
        print(json.dumps({"took": took, "threads": threads, "codes": codes}))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    assert got["codes"] == [i % 3 for i in range(40)]
    assert got["took"] == (sys.version_info < (3, 12))
    assert got["threads"] == 1  # the main thread only: no waitpid-N thread per child
