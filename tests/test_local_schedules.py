"""Change-based schedules on a local directory, end to end: a real daemon, real files."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path

from tests.harness import DaemonProc, wait_until

PY = sys.executable
RECORD = (
    "import sys, os, json; open(sys.argv[1], 'a').write(json.dumps({"
    "'arg': os.fsdecode(sys.argv[2]), 'path': os.environ['WATCHERD_PATH'], "
    "'rel': os.environ['WATCHERD_RELATIVE_PATH'], 'ds': os.environ['WATCHERD_DATASTORE'], "
    "'run': os.environ['WATCHERD_RUN_ID']}) + '\\n')"
)


def _config(tmp_path: Path, *, interval: str = "1s", extra: str = "") -> str:
    out = tmp_path / "out.jsonl"
    return f"""
[daemon]
api = ""
max_concurrent_runs = 4

[datastores.inbox]
kind = "local"
root = "inbox"

[pipelines.record]
kind = "command"
steps = [[{json.dumps(PY)}, "-c", {json.dumps(RECORD)}, "{out}", "{{input_data}}"]]

[[schedules]]
name = "MyReactiveSchedule"
pipeline = "record"
experiment_name = "MyExperiment"
datastore = "inbox"
path_on_datastore = "incoming"
polling_interval = "{interval}"
data_path_parameter_name = "input_data"
{extra}
"""


def _records(tmp_path: Path) -> list[dict[str, str]]:
    out = tmp_path / "out.jsonl"
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines() if line]


def _names(tmp_path: Path) -> list[str]:
    return sorted(os.path.basename(r["arg"]) for r in _records(tmp_path))


def _inbox(tmp_path: Path) -> Path:
    d = tmp_path / "inbox" / "incoming"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _ready(d: DaemonProc) -> None:
    # the first poll has recorded its baseline
    wait_until(
        lambda: d.events("poll_finished") or d.events("baseline_taken") or '"poll' in d.logs(),
        timeout=20,
    )


def test_one_run_per_file_exact_directory_only(tmp_path: Path) -> None:
    inbox = _inbox(tmp_path)
    (inbox / "old.csv").write_text("present before start: baseline, no run")
    d = DaemonProc(tmp_path, _config(tmp_path)).start()
    try:
        time.sleep(0.3)  # let the baseline poll finish; nothing should run from it
        (inbox / "a.csv").write_text("a")
        wait_until(lambda: _names(tmp_path) == ["a.csv"])
        rec = _records(tmp_path)[0]
        assert rec["arg"] == str((inbox / "a.csv").resolve()) == rec["path"]
        assert rec["rel"] == "incoming/a.csv" and rec["ds"] == "inbox"
        (inbox / "sub").mkdir()
        (inbox / "sub" / "deep.csv").write_text("never")
        (inbox / ".hidden").write_text("never")
        (inbox / "partial.tmp").write_text("never")
        for n in ("b.csv", "c.csv", "d.csv"):
            (inbox / n).write_text(n)
        wait_until(lambda: len(_names(tmp_path)) == 4)
        (inbox / "a.csv").write_text("rewritten, longer")
        wait_until(lambda: len(_names(tmp_path)) == 5)
        (inbox / "b.csv").unlink()
        (inbox / "sentinel.csv").write_text("s")
        wait_until(lambda: "sentinel.csv" in _names(tmp_path))
        time.sleep(1.5)  # one more full poll: still nothing for sub/, dot-files, *.tmp, deletes
        assert _names(tmp_path) == ["a.csv", "a.csv", "b.csv", "c.csv", "d.csv", "sentinel.csv"]
    finally:
        assert d.stop() == 0


def test_slow_writer_and_rename_into_directory(tmp_path: Path) -> None:
    inbox = _inbox(tmp_path)
    d = DaemonProc(tmp_path, _config(tmp_path, interval="1s")).start()
    try:
        time.sleep(0.3)
        with (inbox / "slow.bin").open("wb") as f:
            for _ in range(8):
                f.write(b"x" * 4096)
                f.flush()
                time.sleep(0.25)  # a slow writer: 2 s, longer than the poll interval
            assert _names(tmp_path) == []  # nothing before close
        wait_until(lambda: _names(tmp_path) == ["slow.bin"])
        staged = tmp_path / "staged.csv"
        staged.write_text("moved in")
        os.rename(staged, inbox / "moved.csv")
        wait_until(lambda: "moved.csv" in _names(tmp_path))
        time.sleep(1.2)
        assert _names(tmp_path) == ["moved.csv", "slow.bin"]
        runs = d.runs()
        assert all(r["status"] == "Completed" for r in runs)
    finally:
        d.stop()


def test_restart_runs_files_added_while_down_and_not_handled_ones(tmp_path: Path) -> None:
    inbox = _inbox(tmp_path)
    d = DaemonProc(tmp_path, _config(tmp_path)).start()
    try:
        time.sleep(0.3)
        (inbox / "first.csv").write_text("1")
        wait_until(lambda: _names(tmp_path) == ["first.csv"])
    finally:
        assert d.stop() == 0
    (inbox / "while-down.csv").write_text("2")
    (inbox / "first.csv").write_text("modified while down")
    d.start()
    try:
        wait_until(lambda: len(_names(tmp_path)) == 3, timeout=30)
        time.sleep(1.5)
        assert _names(tmp_path) == ["first.csv", "first.csv", "while-down.csv"]
    finally:
        d.stop()


def test_sigkill_during_burst_of_1000_arrivals(tmp_path: Path) -> None:
    inbox = _inbox(tmp_path)
    cfg = _config(tmp_path).replace("max_concurrent_runs = 4", "max_concurrent_runs = 8")
    # runs are counted through the API: a step that starts no interpreter keeps 1000 runs cheap
    cfg = re.sub(r"(?m)^steps = .*$", 'steps = [["true", "{input_data}"]]', cfg)
    d = DaemonProc(tmp_path, cfg).start()
    names = [f"f{i:04d}.dat" for i in range(1000)]
    try:
        time.sleep(0.3)
        for i, n in enumerate(names):
            (inbox / n).write_bytes(b"x")
            if i in (250, 600):
                d.kill()  # SIGKILL mid-burst, then restart while files keep arriving
                d.start()
        wait_until(lambda: len(d.runs()) >= 1000, timeout=120)
        wait_until(
            lambda: all(r["status"] in ("Completed", "Skipped") for r in d.runs()), timeout=120
        )
    finally:
        d.stop(timeout=120)
    per_file = Counter(bytes(r["path"]).decode() for r in d.runs())
    assert set(per_file) == {f"incoming/{n}" for n in names}
    assert max(per_file.values()) == 1
