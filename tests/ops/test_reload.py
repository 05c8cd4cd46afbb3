"""SIGHUP applies a changed config without a restart (SPEC §2, §9), on a real daemon.

The daemon runs on a scaled clock (300×: a Minute slot every 0.2 s), so a few real seconds
show whether a reload loses, duplicates or wrongly keeps slots.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from signal import SIGHUP
from typing import Any

from tests.harness import DaemonProc, wait_until
from tests.ops.helpers import ScaledTime

SPEED = 300.0
MINUTE = timedelta(minutes=1)

HEAD = """
[daemon]
api = ""
log_format = "json"
shutdown_timeout = "5s"

[pipelines.p]
kind = "command"
steps = [["true"]]
"""


def _schedule(name: str, *, interval: int = 1, description: str = "") -> str:
    return f"""
[[schedules]]
name = "{name}"
description = "{description}"
pipeline = "p"
experiment_name = "E"
recurrence = {{ frequency = "Minute", interval = {interval} }}
"""


V1 = (
    HEAD
    + _schedule("keep")
    + _schedule("described", description="v1")
    + _schedule("doomed")
    + _schedule("retimed")
)
V2 = (
    HEAD
    + _schedule("keep")
    + _schedule("described", description="v2")
    + _schedule("retimed", interval=2)
    + _schedule("added")
)


def _rows(d: DaemonProc) -> dict[str, dict[str, Any]]:
    with d.db() as db:
        rows = {r["name"]: dict(r) for r in db.execute("SELECT * FROM schedules")}
    return rows


def _slots(d: DaemonProc) -> dict[str, list[datetime]]:
    """Schedule name → slot of every time-triggered run, in commit order."""
    ids = {r["id"]: name for name, r in _rows(d).items()}
    out: dict[str, list[datetime]] = {name: [] for name in ids.values()}
    for r in d.runs():
        trig = json.loads(r["trigger"])
        if trig.get("kind") == "time":  # the key has the slot to the microsecond
            out[ids[r["schedule_id"]]].append(datetime.fromisoformat(r["dedup"][len("slot:") :]))
    return out


def _assert_every_minute(name: str, slots: list[datetime], step: timedelta = MINUTE) -> None:
    counts = Counter(slots)
    dup = [s for s, c in counts.items() if c > 1]
    assert not dup, f"{name}: duplicate slots {dup}"
    ordered = sorted(slots)
    gaps = [(a, b) for a, b in zip(ordered, ordered[1:], strict=False) if b - a != step]
    assert not gaps, f"{name}: slots not {step} apart: {gaps[:3]}"


def _count(d: DaemonProc, name: str) -> int:
    return len(_slots(d).get(name, []))


def test_sighup_adds_removes_and_changes_schedules(tmp_path: Path) -> None:
    t = ScaledTime(SPEED)
    d = DaemonProc(tmp_path, V1, t.env)
    try:
        d.start()
        wait_until(lambda: min(len(v) for v in _slots(d).values()) >= 5, timeout=20)
        ids_before = {n: r["id"] for n, r in _rows(d).items()}

        d.config.write_text(V2)
        hup = t.now()
        d.signal(SIGHUP)
        done = wait_until(lambda: d.events("reload_done"), timeout=20)[0]
        applied = t.at_log(done["timestamp"])
        wait_until(lambda: _count(d, "added") >= 8, timeout=20)
        stopping = t.now()
        assert d.stop() == 0

        slots, rows = _slots(d), _rows(d)
        # ids are kept for everything still declared
        assert {n: rows[n]["id"] for n in ids_before} == ids_before
        # removed: Disabled, source "removed", history kept, nothing after the reload
        assert (rows["doomed"]["status"], rows["doomed"]["source"]) == ("Disabled", "removed")
        assert len(slots["doomed"]) >= 5
        assert max(slots["doomed"]) <= applied, "a removed schedule fired after the reload"
        _assert_every_minute("doomed", slots["doomed"])
        # unchanged and description-only changes: every minute, none lost, none twice
        for name in ("keep", "described"):
            _assert_every_minute(name, slots[name])
            assert max(slots[name]) >= stopping - 2 * MINUTE, f"{name} stopped firing"
            assert rows[name]["source"] == "file" and rows[name]["status"] == "Active"
        # added: fires on creation (the reload), then every minute
        first = min(slots["added"])
        assert hup - timedelta(seconds=1) <= first <= applied
        _assert_every_minute("added", slots["added"])
        # changed trigger: re-anchored at the reload, the old timeline ends there
        # The old timeline is every minute from its first slot; the new one starts at the
        # reload (its creation fire). Told apart by that grid, not by the SIGHUP's time: at
        # 300x, an old slot a few real ms before the signal is within a scaled second of it.
        grid = slots["retimed"][0]
        on_grid = [(s - grid) % MINUTE == timedelta(0) for s in slots["retimed"]]
        old = [s for s, g in zip(slots["retimed"], on_grid, strict=True) if g and s <= applied]
        new = [s for s, g in zip(slots["retimed"], on_grid, strict=True) if s not in old]
        _assert_every_minute("retimed (before)", old)
        assert new and min(new) <= applied, "no creation fire after the trigger changed"
        assert new[0] == min(new) and all(s <= applied for s in old)
        _assert_every_minute("retimed (after)", new, step=2 * MINUTE)
        assert len(new) >= 3
        # every run of every schedule was delivered
        assert {r["status"] for r in d.runs()} == {"Completed"}
    finally:
        d.close()


def test_broken_config_on_sighup_keeps_the_old_one(tmp_path: Path) -> None:
    t = ScaledTime(SPEED)
    d = DaemonProc(tmp_path, V1, t.env)
    try:
        d.start()
        wait_until(lambda: _count(d, "doomed") >= 3, timeout=20)
        broken = V2.replace("interval = 2 }", "interval = 0 }").replace(
            'name = "added"', 'name = "added"\nbogus_key = 1'
        )
        d.config.write_text(broken)
        d.signal(SIGHUP)
        (event,) = wait_until(lambda: d.events("reload_rejected"), timeout=20)
        errors = event["errors"]
        assert any(
            e.startswith("schedules[2].recurrence.interval: Interval must be an integer")
            for e in errors
        ), errors
        assert any(e.startswith("schedules[3].bogus_key") for e in errors), errors
        rejected_at = t.at_log(event["timestamp"])
        # the old config runs on: the schedule v2 would remove keeps firing, none is added
        n = _count(d, "doomed")
        wait_until(lambda: _count(d, "doomed") >= n + 5, timeout=20)
        assert "added" not in _rows(d)
        assert max(_slots(d)["doomed"]) > rejected_at + 3 * MINUTE
        # fixing the file and sending SIGHUP again applies it
        d.config.write_text(V2)
        d.signal(SIGHUP)
        wait_until(lambda: d.events("reload_done"), timeout=20)
        wait_until(lambda: _count(d, "added") >= 1, timeout=20)
        assert d.stop() == 0
        for name in ("keep", "described", "doomed"):
            _assert_every_minute(name, _slots(d)[name])
    finally:
        d.close()


def test_re_adding_a_removed_schedule_restores_it(tmp_path: Path) -> None:
    t = ScaledTime(SPEED)
    d = DaemonProc(tmp_path, V1, t.env)
    try:
        d.start()
        wait_until(lambda: _count(d, "doomed") >= 2, timeout=20)
        d.config.write_text(V2)
        d.signal(SIGHUP)
        wait_until(lambda: d.events("reload_done"), timeout=20)
        assert _rows(d)["doomed"]["source"] == "removed"
        before = _count(d, "doomed")
        time.sleep(0.6)  # three slots it does not fire
        assert _count(d, "doomed") == before
        d.config.write_text(V1)
        d.signal(SIGHUP)
        wait_until(lambda: len(d.events("reload_done")) == 2, timeout=20)
        wait_until(lambda: _count(d, "doomed") >= before + 3, timeout=20)
        row = _rows(d)["doomed"]
        assert (row["source"], row["status"]) == ("file", "Active")
        assert d.stop() == 0
        slots = _slots(d)["doomed"]
        assert len(set(slots)) == len(slots)
    finally:
        d.close()
