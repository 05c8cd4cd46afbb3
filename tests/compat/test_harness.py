"""Smoke tests of the differential harness: the Azure virtualenv, its drivers, the generators.

They check the drivers' output shape and a few pinned facts about Azure's packages, not
watcherd's behaviour (the comparison lives in the differential tests).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from tests.compat.azure_env import AZURE_TIMEOUT, AzureEnv
from tests.compat.generators import (
    WINDOWS_ZONES,
    decode_v1_kwargs,
    v1_recurrence_kwargs,
    v2_schedule_yamls,
    zone_member_name,
)
from tests.test_yaml_schedules import DOC_CRON, DOC_RECURRENCE  # the documentation's examples

SEED = 15
N = 50


def _check_result_shape(result: dict[str, Any]) -> None:
    assert isinstance(result["accepted"], bool)
    if result["accepted"]:
        assert result["message"] is None and result["error_type"] is None
        assert isinstance(result["normalized"], dict)
    else:
        assert isinstance(result["message"], str) and result["message"]
        assert isinstance(result["error_type"], str)
        assert result["normalized"] is None


def _summary(results: list[dict[str, Any]]) -> str:
    counts = Counter("accepted" if r["accepted"] else r["error_type"] for r in results)
    return ", ".join(f"{k}: {v}" for k, v in counts.most_common())


# ------------------------------------------------------------- generators (no Azure needed)


def test_generators_are_seeded_and_json() -> None:
    v1 = v1_recurrence_kwargs(SEED, 300)
    v2 = v2_schedule_yamls(SEED, 300, variants=True)
    assert v1 == v1_recurrence_kwargs(SEED, 300)
    assert v2 == v2_schedule_yamls(SEED, 300, variants=True)
    assert v1 != v1_recurrence_kwargs(SEED + 1, 300)
    assert json.loads(json.dumps(v1)) == v1
    assert all(isinstance(text, str) and text.endswith("\n") for text in v2)
    assert len({json.dumps(k, sort_keys=True) for k in v1}) > 250  # varied


def test_generators_cover_both_triggers_and_the_tags() -> None:
    v2 = v2_schedule_yamls(SEED, 500)
    assert sum("type: cron" in t.lower() for t in v2) > 100
    assert sum("type: recurrence" in t.lower() for t in v2) > 250
    assert all("create_job: azureml:" in t for t in v2)  # no variants unless asked
    v1 = v1_recurrence_kwargs(SEED, 500)
    tags = Counter(
        next(iter(v)) for k in v1 for v in k.values() if isinstance(v, dict) and len(v) == 1
    )
    assert {"$datetime", "$timezone", "$tuple"} <= set(tags)


def test_decode_v1_kwargs() -> None:
    class Zones:
        def __class_getitem__(cls, name: str) -> str:
            return f"zone:{name}"

    kwargs = {
        "start_time": {"$datetime": "2024-01-02T03:04:00+02:00"},
        "time_zone": {"$timezone": zone_member_name("UTC-11")},
        "hours": {"$tuple": [1, 2]},
    }
    decoded = decode_v1_kwargs(kwargs, Zones)
    assert decoded["start_time"].utcoffset().total_seconds() == 7200
    assert decoded["time_zone"] == "zone:UTC11"
    assert decoded["hours"] == (1, 2)


# ------------------------------------------------------------------- drivers (Azure venv)


@AZURE_TIMEOUT
def test_v1_driver_shape(azure_env: AzureEnv) -> None:
    inputs = v1_recurrence_kwargs(SEED, N)
    out = azure_env.run_driver("v1_recurrence", inputs)
    assert len(out.results) == N
    for result in out.results:
        _check_result_shape(result)
        assert result["stage"] in ("init", "validate")
    assert out.versions["azureml-pipeline-core"].startswith("1.")
    print(f"v1 driver: {N} inputs in {out.wall_seconds}s: {_summary(out.results)}")


@AZURE_TIMEOUT
def test_v1_pinned_facts(azure_env: AzureEnv) -> None:
    probes = [
        # Azure's own docstring example; validate() twice, as Schedule.create does.
        {"frequency": "Day", "interval": 1, "time_of_day": "18:30"},
        {"frequency": "Daily", "interval": 1},
        {"frequency": "Day", "interval": 1, "time_of_day": "18:30", "hours": [1]},
        {"frequency": "Day", "interval": 1, "hours": 5},
        *(
            {"frequency": "Day", "interval": 1, "time_zone": {"$timezone": zone_member_name(z)}}
            for z in WINDOWS_ZONES
        ),
    ]
    results = azure_env.run_driver("v1_recurrence", probes).results
    assert results[0]["accepted"]
    assert results[0]["normalized"]["hours"] == [18]
    assert results[0]["normalized"]["minutes"] == [30]
    assert results[1]["stage"] == "validate"  # the constructor takes any frequency
    assert results[1]["message"].startswith("Invalid value for frequency")
    assert results[2]["stage"] == "init"
    assert results[2]["message"] == "Can not specify time_of_day and hours or minutes."
    assert results[3]["error_type"] == "TypeError"  # a scalar: "'int' object is not iterable"
    assert all(r["accepted"] for r in results[4:])  # every sampled zone is a member


@AZURE_TIMEOUT
def test_v2_driver_shape(azure_env: AzureEnv) -> None:
    inputs = v2_schedule_yamls(SEED, N, variants=True)
    out = azure_env.run_driver("v2_load_schedule", inputs)
    assert len(out.results) == N
    for result in out.results:
        _check_result_shape(result)
        assert isinstance(result["errors"], list)
        if result["accepted"]:
            trigger = result["normalized"]["trigger"]
            assert trigger["type"] in ("recurrence", "cron")
            assert "time_zone" in trigger and "start_time" in trigger
        elif result["error_type"] == "ValidationError":
            assert result["errors"], result["message"]
            assert all(isinstance(p, str) and isinstance(m, str) for p, m in result["errors"])
    assert out.versions["azure-ai-ml"]
    print(f"v2 driver: {N} inputs in {out.wall_seconds}s: {_summary(out.results)}")


@AZURE_TIMEOUT
def test_v2_documentation_examples_load(azure_env: AzureEnv) -> None:
    rec, cron = azure_env.run_driver("v2_load_schedule", [DOC_RECURRENCE, DOC_CRON]).results
    assert rec["accepted"] and cron["accepted"], (rec["message"], cron["message"])
    trigger = rec["normalized"]["trigger"]
    assert trigger["frequency"] == "day" and trigger["interval"] == 1
    assert trigger["schedule"]["hours"] == [4, 5, 10, 11, 12]
    assert trigger["schedule"]["minutes"] == [0, 30]
    assert trigger["start_time"] == {"$datetime": "2022-07-10T10:00:00"}
    assert trigger["time_zone"] == "Pacific Standard Time"
    assert rec["normalized"]["create_job"] == "simple-pipeline-job"  # "azureml:" stripped
    assert cron["normalized"]["trigger"]["expression"] == "0 * * * *"
    assert cron["normalized"]["trigger"]["time_zone"] == "Pacific Standard Time"


REJECTED_TRIGGERS = [
    ("{type: recurrence, frequency: daily, interval: 1}", "trigger.frequency"),
    ("{type: recurrence, frequency: day, interval: true}", "trigger.interval"),
    ("{type: recurrence, frequency: day, interval: 1, timezone: UTC}", "trigger.timezone"),
    (
        "{type: recurrence, frequency: day, interval: 1, pattern: {hours: 1, minutes: 0}}",
        "trigger.pattern",
    ),
    (
        "{type: cron, expression: '0 4 * * *', start_time: 2024-01-01T10:00:00}",
        "trigger.start_time",
    ),
    (
        "{type: recurrence, frequency: week, interval: 1, schedule: {hours: 1}}",
        "trigger.schedule.minutes",
    ),
]


@AZURE_TIMEOUT
def test_v2_rejections_name_the_key(azure_env: AzureEnv) -> None:
    texts = [f"name: s\ntrigger: {t}\ncreate_job: azureml:p1\n" for t, _ in REJECTED_TRIGGERS]
    results = azure_env.run_driver("v2_load_schedule", texts).results
    for (_, path), result in zip(REJECTED_TRIGGERS, results, strict=True):
        assert not result["accepted"], path
        assert path in {p for p, _ in result["errors"]}, result["message"]
