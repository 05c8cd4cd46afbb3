"""One daemon per state directory (SPEC §9): a second one exits 1 with a clear error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.harness import DaemonProc, wait_until

CONFIG = """
[daemon]
state_dir = "{state}"
api = "127.0.0.1:0"
log_format = "json"

[pipelines.p]
kind = "command"
steps = [["true"]]

[[schedules]]
name = "s"
pipeline = "p"
experiment_name = "E"
cron = "0 3 * * *"
"""


def _second(workdir: Path, state: Path) -> subprocess.CompletedProcess[str]:
    workdir.mkdir(exist_ok=True)
    cfg = workdir / "watcherd.toml"
    cfg.write_text(CONFIG.format(state=state))
    return subprocess.run(
        [sys.executable, "-m", "watcherd", "run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=workdir,
    )


def _error_event(out: str) -> dict[str, object]:
    events = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
    errors = [e for e in events if e.get("level") == "error"]
    assert len(errors) == 1, out
    return dict(errors[0])


def test_second_daemon_exits_1_and_first_keeps_running(tmp_path: Path) -> None:
    state = tmp_path / "first" / ".watcherd"
    (tmp_path / "first").mkdir()
    first = DaemonProc(tmp_path / "first", CONFIG.format(state=state)).start()
    try:
        pid = (state / "lock").read_text().strip()
        res = _second(tmp_path / "second", state)
        assert res.returncode == 1, res.stdout + res.stderr
        assert "Traceback" not in res.stdout + res.stderr
        err = _error_event(res.stdout)
        assert err["event"] == "already_running"
        assert f"another watcherd is running on state directory {state}" in str(err["error"])
        # the first one is untouched: alive, still holding the lock, still answering
        assert first.proc is not None and first.proc.poll() is None
        assert (state / "lock").read_text().strip() == pid
        with first.client() as c:
            assert c.get("/healthz").status_code == 200
        assert first.stop() == 0
        # stopped: the lock is free again
        again = DaemonProc(tmp_path / "second", CONFIG.format(state=state)).start()
        assert again.stop() == 0
    finally:
        first.close()


def test_lock_of_a_killed_daemon_does_not_block_the_next(tmp_path: Path) -> None:
    """flock(2) dies with its process: a SIGKILLed daemon leaves no stale lock behind."""
    state = tmp_path / ".watcherd"
    d = DaemonProc(tmp_path, CONFIG.format(state=state)).start()
    try:
        d.kill()
        assert (state / "lock").exists()
        d.start()
        wait_until(lambda: (state / "lock").read_text().splitlines()[0] == str(d.proc.pid))  # type: ignore[union-attr]
        assert d.stop() == 0
    finally:
        d.close()
