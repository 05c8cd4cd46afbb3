"""Azure ML v2's documented schedule examples, end to end: `watcherd schedules create --file`
and `watcherd.sdk.v2`, through the real API, firing at the times the documentation describes.

The YAML texts are the documentation's (tests/test_yaml_schedules.py: DOC_RECURRENCE,
DOC_CRON), `create_job` naming a watcherd pipeline the way the page's commented-out line does.
What the page says they do ("Schedule machine learning pipeline jobs", how-to-schedule-
pipeline-job): the recurrence runs every day at each hours × minutes pair, 04:00 … 12:30
Pacific, 10 runs a day, from start_time 2022-07-10T10:00 Pacific; the cron runs at minute 0 of
every hour, Pacific, from the same start. `doc_times` writes that down with plain datetime
arithmetic, independent of watcherd's slot code.

Two engines (real SQLite stores, the real API served on 127.0.0.1) share one timeline on
injected ManualClocks, starting at 09:30 Pacific, before start_time. Into one, the real CLI
(`python -m watcherd schedules create --file <example>.yml --json`, a subprocess) posts the two
files; into the other, `watcherd.sdk.v2` creates the same schedules as azure-ai-ml code writes
them. Both must give the same API objects, and, moved half an hour at a time to 05:30 the next
day, both must fire exactly the documented slots. The pure-function side (fire lists from a
fixed instant, a start in the past, no start_time) is in test_yaml_schedules.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from tests.clocks import ManualClock
from tests.engine_helpers import Harness, eventually, running_engine
from tests.test_yaml_schedules import DOC_CRON, DOC_RECURRENCE
from watcherd.api.app import make_app, serve
from watcherd.sdk.v2 import (
    CronTrigger,
    JobSchedule,
    MLClient,
    RecurrencePattern,
    RecurrenceTrigger,
    TimeZone,
)

PACIFIC = ZoneInfo("America/Los_Angeles")
START = datetime(2022, 7, 10, 10, 0, tzinfo=PACIFIC)  # the examples' start_time
BEGIN = START - timedelta(minutes=30)  # the engines' clocks start here
END = datetime(2022, 7, 11, 5, 30, tzinfo=PACIFIC)  # through the next morning's slots
STEP = timedelta(minutes=30)
REC, CRON = "simple_recurrence_job_schedule", "simple_cron_job_schedule"
TOKEN = "doc-examples-token"
CONFIG = """
[daemon]
api = ""

[pipelines.simple-pipeline-job]
kind = "command"
steps = [["true"]]
"""
# Read-only keys that differ between two creations of the same schedule (SPEC §8).
VOLATILE = ("id", "created_at", "updated_at", "last_run")


def doc_times(name: str, after: datetime, until: datetime) -> list[str]:
    """The documentation's fire times in (after, until], UTC, never before start_time (a slot
    exactly at it fires: v2, SPEC §13)."""
    out = []
    day = START.date()
    while datetime.combine(day, datetime.min.time(), PACIFIC) <= until:
        if name == REC:
            local = [(h, m) for h in (4, 5, 10, 11, 12) for m in (0, 30)]
        else:
            local = [(h, 0) for h in range(24)]
        for h, m in local:
            t = datetime(day.year, day.month, day.day, h, m, tzinfo=PACIFIC)
            if t >= START and after < t <= until:
                out.append(t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        day += timedelta(days=1)
    return sorted(out)


def test_doc_times_is_the_page() -> None:
    """The oracle itself, against the page's words: 10 runs a day at the listed local times,
    none before the start; hourly on the hour for the cron."""
    day = doc_times(REC, START - STEP, START + timedelta(days=1) - STEP)
    local = [f"{datetime.fromisoformat(t).astimezone(PACIFIC):%d %H:%M}" for t in day]
    assert local == ["10 10:00", "10 10:30", "10 11:00", "10 11:30", "10 12:00", "10 12:30",
                     "11 04:00", "11 04:30", "11 05:00", "11 05:30"]  # fmt: skip
    hourly = doc_times(CRON, START - STEP, START + timedelta(hours=3))
    assert [t[11:] for t in hourly] == ["17:00:00Z", "18:00:00Z", "19:00:00Z", "20:00:00Z"]


@contextlib.asynccontextmanager
async def _engine(tmp: Path) -> AsyncIterator[tuple[Harness, str]]:
    """An engine on its own ManualClock at BEGIN, its API on 127.0.0.1 (url returned)."""
    await asyncio.to_thread(tmp.mkdir)
    clock = ManualClock(BEGIN.astimezone(UTC))
    async with running_engine(tmp, CONFIG, clock) as h, contextlib.AsyncExitStack() as stack:
        app = make_app(h.manager, token=TOKEN, bind="127.0.0.1:0")
        yield h, await serve(app, "127.0.0.1:0", stack)


async def _create_with_cli(url: str, tmp: Path) -> list[dict[str, Any]]:
    """`watcherd schedules create --file <example>.yml --url … --token … --json`, one file per
    example as the page has them, run as the installed CLI is."""

    async def one(name: str, text: str) -> dict[str, Any]:
        path = tmp / f"{name}.yml"
        path.write_text(text, encoding="utf-8")
        argv = ["schedules", "create", "--file", str(path), "--url", url, "--token", TOKEN]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "watcherd", *argv, "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, (proc.returncode, out, err)
        created: dict[str, Any] = json.loads(out)
        return created

    return list(await asyncio.gather(one(REC, DOC_RECURRENCE), one(CRON, DOC_CRON)))


def _create_with_sdk(url: str) -> list[JobSchedule]:
    """The same two schedules written with watcherd.sdk.v2, as azure-ai-ml code writes them."""
    recurrence = JobSchedule(
        name=REC,
        display_name="Simple recurrence job schedule",
        description="a simple hourly recurrence job schedule",
        trigger=RecurrenceTrigger(
            frequency="day",
            interval=1,
            schedule=RecurrencePattern(hours=[4, 5, 10, 11, 12], minutes=[0, 30]),
            start_time="2022-07-10T10:00:00",
            time_zone=TimeZone.PACIFIC_STANDARD_TIME,
        ),
        create_job="azureml:simple-pipeline-job",
    )
    cron = JobSchedule(
        name=CRON,
        display_name="Simple cron job schedule",
        description="a simple hourly cron job schedule",
        trigger=CronTrigger(
            expression="0 * * * *",
            start_time="2022-07-10T10:00:00",
            time_zone=TimeZone.PACIFIC_STANDARD_TIME,
        ),
        create_job="azureml:simple-pipeline-job",
    )
    with MLClient(url=url, token=TOKEN) as ml:
        return [ml.schedules.begin_create_or_update(s).result() for s in (recurrence, cron)]


def _has_fired(h: Harness, name: str, n: int) -> Callable[[], bool]:
    return lambda: len(h.slots(name)) >= n


def _get(url: str, path: str) -> Any:
    r = httpx.get(f"{url}/api/v1{path}", headers={"Authorization": f"Bearer {TOKEN}"})
    r.raise_for_status()
    return r.json()


async def test_documented_examples_via_cli_and_sdk_v2_fire_at_the_documented_times(
    tmp_path: Path,
) -> None:
    async with (
        _engine(tmp_path / "cli") as (cli, cli_url),
        _engine(tmp_path / "sdk") as (
            sdk,
            sdk_url,
        ),
    ):
        printed, made = await asyncio.gather(
            _create_with_cli(cli_url, tmp_path), asyncio.to_thread(_create_with_sdk, sdk_url)
        )

        # What the CLI printed is the documented schedule as written, one trigger shape (§13).
        rec, cron = printed
        assert (rec["name"], rec["description"], rec["experiment_name"], rec["status"]) == (
            REC, "a simple hourly recurrence job schedule", REC, "Active",
        )  # fmt: skip
        assert rec["trigger"] == {
            "type": "recurrence", "frequency": "day", "interval": 1,
            "schedule": {"hours": [4, 5, 10, 11, 12], "minutes": [0, 30]},
            "start_time": "2022-07-10T10:00:00", "time_zone": "Pacific Standard Time",
        }  # fmt: skip
        assert cron["trigger"] == {
            "type": "cron", "expression": "0 * * * *",
            "start_time": "2022-07-10T10:00:00", "time_zone": "Pacific Standard Time",
        }  # fmt: skip
        assert "recurrence" not in rec and "cron" not in cron
        [pipeline] = (await asyncio.to_thread(_get, cli_url, "/pipelines"))["items"]
        assert rec["pipeline"] == cron["pipeline"] == pipeline["id"]
        assert [s.name for s in made] == [REC, CRON] and all(s.is_enabled for s in made)

        # The SDK's schedules are the same API objects, with the same upcoming times: the
        # documented ones from the start on (created before it: the start itself is first).
        for s, by_cli in zip(made, printed, strict=True):
            by_sdk = await asyncio.to_thread(_get, sdk_url, f"/schedules/{s.id}")
            strip = [{k: v for k, v in o.items() if k not in VOLATILE} for o in (by_cli, by_sdk)]
            assert strip[0] == strip[1], s.name
            upcoming = doc_times(s.name, BEGIN, START + timedelta(days=3))
            assert by_cli["next_fire_times"] == upcoming[: len(by_cli["next_fire_times"])]
            assert by_cli["next_fire_times"][0] == "2022-07-10T17:00:00Z"  # 10:00 PDT

        # Half an hour at a time to END: after each step, exactly the documented slots so far
        # have fired in both engines (waited for, then compared whole: none extra, none twice).
        now = BEGIN
        while now < END:
            now += STEP
            for h in (cli, sdk):
                await h.advance(seconds=STEP.total_seconds())
            for name in (REC, CRON):
                expected = doc_times(name, BEGIN, now)
                for h in (cli, sdk):
                    await eventually(_has_fired(h, name, len(expected)))
                    assert sorted(h.slots(name)) == expected, (name, now)
        for h in (cli, sdk):
            await h.settle()
            assert all(r.status.value == "Completed" for r in h.runs())
        assert len(cli.slots(REC)) == 10 and len(cli.slots(CRON)) == 20
