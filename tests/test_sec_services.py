"""Issue #11 at the services layer: secrets of a blob trigger's queue never shown (item 5);
parameters given by hand are checked like config values (item 11)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.clocks import ManualClock
from tests.engine_helpers import running_engine
from watcherd.core.errors import ValidationError

NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
KEY = "c2VjcmV0LWtleS1mb3ItdGhlLXF1ZXVl"
CONFIG = f"""
[daemon]
api = ""

[datastores.blobs]
kind = "azure_blob"
connection_string = "DefaultEndpointsProtocol=http;AccountName=a;AccountKey={KEY};BlobEndpoint=http://127.0.0.1:9/a;"
container = "data"

[pipelines.p]
kind = "command"
steps = [["true"]]

[[schedules]]
name = "hourly"
pipeline = "p"
experiment_name = "E"
# A start_time ahead: no creation fire (SPEC §3.1) to race with "nothing was queued" below.
recurrence = {{ frequency = "Hour", interval = 1, start_time = "2099-01-01T00:00:00" }}
"""


async def test_sec_5_queue_secrets_never_shown_by_the_api(tmp_path: Path) -> None:
    async with running_engine(tmp_path, CONFIG, ManualClock(NOW)) as h:
        body = {
            "name": "events",
            "pipeline": "p",
            "experiment_name": "E",
            "datastore": "blobs",
            "status": "Disabled",
            "events": {
                "queue": "blob-events",
                "queue_connection_string": (
                    f"DefaultEndpointsProtocol=http;AccountName=a;AccountKey={KEY}2;"
                    "QueueEndpoint=http://127.0.0.1:9/a;"
                ),
            },
        }
        created = await h.manager.create_schedule(body)
        for shown in (created, await h.manager.get_schedule("events")):
            assert shown["events"]["queue"] == "blob-events"
            assert shown["events"]["queue_connection_string"] == "***"
            assert KEY not in repr(shown)
        listed = (await h.manager.list_schedules())[0]
        assert KEY not in repr(listed)


@pytest.mark.parametrize(
    ("parameters", "key_path"),
    [
        ({"x": "a\x00b"}, "parameters.x"),
        ({"x": "y" * 70000}, "parameters.x"),
        ({"n" * 300: "v"}, "parameters"),
    ],
)
async def test_sec_11_parameters_given_by_hand_are_checked(
    tmp_path: Path, parameters: dict[str, str], key_path: str
) -> None:
    async with running_engine(tmp_path, CONFIG, ManualClock(NOW)) as h:
        with pytest.raises(ValidationError) as err:
            await h.manager.trigger_schedule("hourly", parameters=parameters)
        assert err.value.key.startswith(key_path)
        with pytest.raises(ValidationError):
            await h.manager.submit_pipeline("p", experiment_name="E", parameters=parameters)
        assert (await h.manager.list_runs())[0] == []  # nothing was queued
