"""The local poller inside the real engine (SQLite store, ManualClock)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.clocks import ManualClock
from tests.engine_helpers import eventually, running_engine
from tests.pollers.local_helpers import helper_starts
from watcherd.pollers import lister, localfs


def _config(root: Path) -> str:
    return f"""
[daemon]
api = ""

[datastores.inbox]
kind = "local"
root = {json.dumps(str(root))}

[pipelines.p]
kind = "command"
steps = [[{json.dumps(sys.executable)}, "-c", "pass"]]

[[schedules]]
name = "files"
pipeline = "p"
experiment_name = "e"
datastore = "inbox"
path_on_datastore = "in"
polling_interval = "1h"
"""


async def test_one_file_is_one_detection_lag_observation(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox" / "in"
    inbox.mkdir(parents=True)
    async with running_engine(tmp_path, _config(tmp_path / "inbox"), ManualClock()) as h:
        await eventually(lambda: any(st.attempts for st in h.engine.poll.values()))  # baseline
        (inbox / "a.csv").write_bytes(b"data")  # closed: eligible at once, no clock needed
        await eventually(lambda: len(h.runs("files")) == 1)
        metrics = h.engine.metrics
    count = metrics.registry.get_sample_value(
        "watcherd_detection_lag_seconds_count", {"schedule": "files"}
    )
    assert count == 1


async def test_a_big_first_listing_goes_through_a_helper_into_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue #14: the baseline a listing helper made is the store's snapshot (nothing runs
    for it, a restart lists on a thread against it); the next new file runs once."""
    monkeypatch.setattr(lister, "_off_until", 0.0)
    monkeypatch.setattr(lister, "HELPER_MIN_BYTES", 0)  # every directory is big here
    monkeypatch.setattr(localfs, "CHUNK", 64)
    started = helper_starts(monkeypatch)
    inbox = tmp_path / "inbox" / "in"
    inbox.mkdir(parents=True)
    for i in range(300):
        (inbox / f"old{i:03d}.csv").write_bytes(b"x")
    cfg = _config(tmp_path / "inbox")
    async with running_engine(tmp_path, cfg, ManualClock()) as h:
        await eventually(lambda: any(st.attempts for st in h.engine.poll.values()))  # baseline
        assert len(started) == 1 and started[0] is not None
        rows = await h.store.db.read(
            lambda c: c.execute("SELECT count(*) FROM snapshots").fetchone()
        )
        assert rows == (300,) and h.runs("files") == []
    async with running_engine(tmp_path, cfg, ManualClock()) as h:
        await eventually(lambda: any(st.attempts for st in h.engine.poll.values()))
        assert len(started) == 1  # a snapshot to compare against: no helper
        (inbox / "new.csv").write_bytes(b"data")
        await eventually(lambda: len(h.runs("files")) == 1)
        assert h.runs("files")[0].file.relative_path == b"in/new.csv"
