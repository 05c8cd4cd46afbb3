"""The local poller inside the real engine (SQLite store, ManualClock)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.clocks import ManualClock
from tests.engine_helpers import eventually, running_engine


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
