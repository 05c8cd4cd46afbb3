"""Crash safety of time schedules: SIGKILL a real daemon mid-flight, restart, count slots.

The daemon runs on a scaled clock (`$WATCHERD_TEST_CLOCK`, 600× real time), so one real
second holds ten Minute slots per schedule.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.harness import DaemonProc, wait_until

SPEED = 600.0
N_SCHEDULES = 4


def _config(tmp_path: Path) -> str:
    text = """
[daemon]
api = ""
max_concurrent_runs = 4
shutdown_timeout = "5s"

[pipelines.p]
kind = "command"
steps = [["true"]]
"""
    for i in range(N_SCHEDULES):
        text += f"""
[[schedules]]
name = "s{i}"
pipeline = "p"
experiment_name = "E"
recurrence = {{ frequency = "Minute", interval = 1 }}
catch_up = "all"
max_catch_up = 1000
"""
    return text


def _slots(d: DaemonProc) -> dict[str, list[datetime]]:
    out: dict[str, list[datetime]] = {}
    import json

    for r in d.runs():
        trig = json.loads(r["trigger"])
        if trig.get("kind") == "time":
            slot = datetime.fromisoformat(trig["slot"].replace("Z", "+00:00"))
            out.setdefault(r["schedule_id"], []).append(slot)
    return out


def test_sigkill_loses_and_duplicates_no_slot(tmp_path: Path) -> None:
    origin = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    origin_real = time.time()
    env = {"WATCHERD_TEST_CLOCK": f"{origin_real}|{origin.isoformat()}|{SPEED}"}
    d = DaemonProc(tmp_path, _config(tmp_path), env)
    try:
        for _round in range(3):
            d.start()
            before = len(d.runs())
            wait_until(lambda b=before: len(d.runs()) >= b + 4 * N_SCHEDULES, timeout=30)
            d.kill()  # SIGKILL while slots are being recorded and runs dispatched
            time.sleep(0.3)  # down for ~3 fake minutes
        restarted = origin + timedelta(seconds=(time.time() - origin_real) * SPEED)
        d.start()
        # after the last restart every missed slot is caught up, then timers go on
        wait_until(
            lambda: all(r["status"] in ("Completed",) for r in d.runs()) and len(d.runs()) > 0,
            timeout=30,
        )
        assert d.stop() == 0
        slots = _slots(d)
        assert len(slots) == N_SCHEDULES
        for sid, got in slots.items():
            counts = Counter(got)
            assert max(counts.values()) == 1, f"duplicate slot for {sid}"
            got.sort()
            # contiguous minutes from the creation fire to the last slot: none lost
            expected = [got[0] + timedelta(minutes=k) for k in range(len(got))]
            assert got == expected, f"gap in slots of {sid}"
            assert len(got) >= 12
            assert got[-1] >= restarted - timedelta(minutes=1), "downtime slots not caught up"
        # Slots keep falling due (600× time) between the wait and the stop: those runs may be
        # Queued (re-queued by the shutdown); nothing else may be left unfinished or failed.
        assert all(r["status"] in ("Completed", "Queued") for r in d.runs())
    finally:
        d.close()
