"""Differential tests: watcherd against Azure ML's own packages, on thousands of seeded inputs.

Azure's packages run in their own virtualenv (`azure_env`, the session fixture: built at most
once, then reused) and are driven by subprocess (tests/compat/drivers); watcherd never imports
them. Both drivers start together when the first comparison needs them, and this process
computes watcherd's answers meanwhile. `classify_v1` / `classify_v2`
(tests/compat/differential.py) name every pair; anything not an agreement or a deliberate
difference of SPEC §11 / §13 fails the test, quoting the input (the rules themselves are tested
below on hand-made pairs, so a rule that waved disagreements through would fail too). Each
test prints its counts as one JSON line (`pytest -s` shows them).

1. v1: azureml-pipeline-core's `ScheduleRecurrence(**kwargs)` then `validate()` twice, against
   `watcherd.sdk.ScheduleRecurrence` (constructor, validate() twice, the same stage) and the
   daemon's check of the same recurrence in an API body; then what the SDK posts must be what
   the daemon accepts, and the stored values must be Azure's.
2. v2: azure-ai-ml's `load_schedule` on generated schedule YAML, against `schedules create
   --file`'s path (`schedule_body`, then `parse_schedule`): Azure's rejections are watcherd's;
   Azure's acceptances within v2's documented ranges are watcherd's, with the same trigger;
   the rest watcherd refuses at the right key paths.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.compat.azure_env import AZURE_TIMEOUT, AzureEnv, DriverOutput
from tests.compat.differential import (
    HOURS_RULE,
    INTERVAL_RULE,
    MINUTES_RULE,
    UNEXPLAINED,
    ZONE_RULE,
    Outcome,
    classify_v1,
    classify_v2,
    compare_v1_values,
    daemon_v1,
    sdk_v1,
    v1_as_json,
    v1_stored_differences,
    watcherd_v2,
)
from tests.compat.generators import PIPELINES, v1_recurrence_kwargs, v2_schedule_yamls
from watcherd.config import parse
from watcherd.core.models import Config
from watcherd.sdk import ScheduleRecurrence, TimeZone

SEED = 15
N_V1 = 4000
# azure-ai-ml's load_schedule costs ~7 ms a file and watcherd's side ~3 ms (both CPU-bound):
# 2,000 files keep the comparison near 20 s on 2 cores, the suite's budget for it.
N_V2 = 2000
SHOW = 25  # disagreements quoted in a failure
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 20× faster


@pytest.fixture(scope="module")
def config() -> Config:
    """A config with a pipeline for every `create_job: azureml:<name>` the generator writes."""
    pipelines = {name: {"kind": "command", "steps": [["true"]]} for name in PIPELINES}
    return parse({"pipelines": pipelines}, path=None, base_dir=Path("."), env={})


@dataclass(frozen=True)
class AzureRuns:
    """The seeded inputs, and both drivers' answers to them, still being computed."""

    v1_inputs: list[dict[str, Any]]
    v2_texts: list[str]
    v1: Future[DriverOutput]
    v2: Future[DriverOutput]


@pytest.fixture(scope="module")
def azure_runs(azure_env: AzureEnv) -> Iterator[AzureRuns]:
    """Both drivers start at once, in their subprocesses, when the first comparison needs
    them: their imports (~6 s each) overlap each other and watcherd's side of both tests."""
    v1_inputs, v2_texts = v1_recurrence_kwargs(SEED, N_V1), v2_schedule_yamls(SEED, N_V2)
    with ThreadPoolExecutor(2) as pool:
        yield AzureRuns(
            v1_inputs,
            v2_texts,
            pool.submit(azure_env.run_driver, "v1_recurrence", v1_inputs),
            pool.submit(azure_env.run_driver, "v2_load_schedule", v2_texts),
        )


def _counts(name: str, labels: list[str], both_reject: int, **extra: Any) -> dict[str, Any]:
    """The printed summary of one comparison; `both_reject` counts inputs both sides refuse
    (with the same message, or with another one a deliberate difference explains)."""
    c = Counter(labels)
    deliberate = {k.split(":", 1)[1]: v for k, v in sorted(c.items()) if k.startswith("delib")}
    return {
        "compare": name,
        "inputs": len(labels),
        "both_accept": c["both_accept"],
        "both_reject": both_reject,
        "same_message": c["same_message"],
        "deliberate_differences": sum(deliberate.values()),
        "deliberate": deliberate,
        "unexplained": sum(v for k, v in c.items() if k.startswith(UNEXPLAINED)),
        **extra,
    }


def _rejected_by_both(out: DriverOutput, ours: list[Outcome]) -> int:
    return sum(not t["accepted"] and not m.accepted for t, m in zip(out.results, ours, strict=True))


def _failures(rows: Iterable[tuple[str, Any]], side: str = "") -> list[str]:
    """The unexplained pairs, each quoted with its input (`side` names who disagreed)."""
    return [f"{side}{label}\n    input: {json.dumps(item)}" for label, item in rows
            if label.startswith(UNEXPLAINED)]  # fmt: skip


# ── v1: ScheduleRecurrence ────────────────────────────────────────────────────


@pytest.mark.azure_compat
@AZURE_TIMEOUT
def test_v1_recurrence_agrees_with_azureml_pipeline_core(
    azure_runs: AzureRuns, config: Config
) -> None:
    inputs = azure_runs.v1_inputs
    pipeline = PIPELINES[0]
    started = time.perf_counter()
    sdk = [sdk_v1(k) for k in inputs]
    daemon = [daemon_v1(v1_as_json(k), config, pipeline) for k in inputs]
    ours_seconds = time.perf_counter() - started
    out = azure_runs.v1.result()
    sdk_labels, daemon_labels, failures = [], [], []
    stages: Counter[str | None] = Counter()
    for kwargs, theirs, s, d in zip(inputs, out.results, sdk, daemon, strict=True):
        sdk_labels.append(classify_v1(kwargs, theirs, s))
        daemon_labels.append(classify_v1(kwargs, theirs, d))
        if sdk_labels[-1] == "same_message":  # classify_v1 checked the stage too
            stages[s.stage] += 1
        if (s.accepted, s.message) != (d.accepted, d.message):  # one rule order (issue #15)
            failures.append(
                f"SDK {s.message or 'accepts'} | daemon {d.message or 'accepts'}"
                f"\n    input: {json.dumps(kwargs)}"
            )
        if s.accepted:
            # What Schedule.create posts is what the daemon accepts, and the same recurrence.
            sent = daemon_v1(s.values["sent"], config, pipeline)
            if not sent.accepted or (d.accepted and sent.values != d.values):
                failures.append(
                    f"SDK accepts, daemon on its to_dict() {s.values['sent']}: "
                    f"{sent.message or sent.values} (raw: {d.message or d.values})"
                    f"\n    input: {json.dumps(kwargs)}"
                )
        if theirs["accepted"] and s.accepted:
            # What the attributes hold after construction: Azure's text for a datetime
            # start_time, TimeZone.UTC for a start_time without a zone.
            failures += [
                f"SDK stores {k} {s.values['stored'][k]!r}, Azure {theirs['normalized'][k]!r}"
                f"\n    input: {json.dumps(kwargs)}"
                for k in v1_stored_differences(theirs, s)
            ]
        if theirs["accepted"] and s.accepted and d.accepted:
            failures += [
                f"{p}\n    input: {json.dumps(kwargs)}" for p in compare_v1_values(theirs, s, d)
            ]
    failures += _failures(zip(sdk_labels, inputs, strict=True), "SDK ")
    failures += _failures(zip(daemon_labels, inputs, strict=True), "daemon ")

    timing = {
        "azure_seconds": out.wall_seconds,
        "azure_import_seconds": out.import_seconds,
        "watcherd_seconds": round(ours_seconds, 2),
        "versions": out.versions,
    }
    sdk_counts = _counts("v1_recurrence", sdk_labels, _rejected_by_both(out, sdk),
                         side="watcherd.sdk", same_message_at=dict(stages), **timing)  # fmt: skip
    daemon_counts = _counts("v1_recurrence", daemon_labels, _rejected_by_both(out, daemon),
                            side="daemon (API body)")  # fmt: skip
    print(json.dumps(sdk_counts))
    print(json.dumps(daemon_counts))
    assert not failures, f"{len(failures)} disagreements, first {SHOW}:\n" + "\n".join(
        failures[:SHOW]
    )
    assert sdk_counts["unexplained"] == daemon_counts["unexplained"] == 0
    # The generator reaches every rule: a broken driver or generator would show here.
    assert sdk_counts["both_accept"] > N_V1 // 5
    assert sdk_counts["same_message"] > N_V1 // 5
    assert set(sdk_counts["deliberate"]) == {
        "azure_type_error", "float_or_bool", "interval_over_100_years", "start_time_format",
        "time_of_day_newline", "time_zone_string",
    }  # fmt: skip


# ── v2: load_schedule ─────────────────────────────────────────────────────────


def _azure_keys(result: dict[str, Any]) -> set[str]:
    return {re.sub(r"\.\d+", "", path) for path, _ in result.get("errors", [])}


def _same_key(theirs: set[str], outcome: Outcome) -> bool:
    """watcherd names a key Azure names, or one that holds it (`trigger.schedule` for
    `trigger.schedule.hours`: minute and hour take no schedule at all), or one inside it."""
    ours = {re.sub(r"\[\d+\]", "", p).removeprefix("body.") for p in outcome.paths}
    return any(
        a == o or a.startswith(o + ".") or o.startswith(a + ".") for a in theirs for o in ours
    )


@pytest.mark.azure_compat
@AZURE_TIMEOUT
def test_v2_schedule_yaml_agrees_with_azure_ai_ml(azure_runs: AzureRuns, config: Config) -> None:
    texts = azure_runs.v2_texts
    started = time.perf_counter()
    ours = [watcherd_v2(t, config) for t in texts]
    ours_seconds = time.perf_counter() - started
    out = azure_runs.v2.result()
    ids = {name: p.id for name, p in config.pipelines.items()}
    labels, keyed, same_key, not_key_path = [], 0, 0, 0
    for text, theirs, mine in zip(texts, out.results, ours, strict=True):
        doc = yaml.load(text, Loader=_LOADER) if theirs["accepted"] else None
        labels.append(classify_v2(doc, theirs, mine, ids))
        if not mine.accepted:
            not_key_path += not all(p.startswith("body") for p in mine.paths)
            if not theirs["accepted"] and (keys := _azure_keys(theirs)):
                keyed += 1
                same_key += _same_key(keys, mine)
    failures = _failures(zip(labels, texts, strict=True))

    counts = _counts(
        "v2_load_schedule",
        labels,
        _rejected_by_both(out, ours),
        azure_named_a_key=keyed,
        same_key_path=same_key,
        azure_seconds=out.wall_seconds,
        azure_import_seconds=out.import_seconds,
        watcherd_seconds=round(ours_seconds, 2),
        versions=out.versions,
    )
    print(json.dumps(counts))
    assert not failures, f"{len(failures)} disagreements, first {SHOW}:\n" + "\n".join(
        failures[:SHOW]
    )
    assert counts["unexplained"] == 0
    assert not_key_path == 0  # every refusal names its key path
    assert same_key == keyed  # … and, where Azure names a key, a key Azure names (§13)
    assert counts["both_accept"] > N_V2 // 4 and counts["both_reject"] > N_V2 // 10
    assert set(counts["deliberate"]) == {"iana_zone", "interval_over_100_years", "out_of_range"}


# ── the rules themselves (no Azure needed): a disagreement is not waved through ──


def _azure(accepted: bool, message: str | None = None, **kw: Any) -> dict[str, Any]:
    return {"accepted": accepted, "message": message, "error_type": kw.get("kind", "ValueError"),
            "stage": kw.get("stage", "validate"), "normalized": kw.get("normalized"),
            "errors": kw.get("errors", [])}  # fmt: skip


def test_v1_rules_flag_what_no_deviation_explains() -> None:
    day: dict[str, Any] = {"frequency": "Day", "interval": 1}
    ok = _azure(True)
    refused = Outcome(False, HOURS_RULE, "validate")
    assert classify_v1(day, ok, Outcome(True)) == "both_accept"
    assert classify_v1(day, ok, refused).startswith(UNEXPLAINED)
    # A float hour explains the hours message, not the minutes one.
    floaty = {**day, "hours": [1.5]}
    assert classify_v1(floaty, ok, refused) == "deliberate:float_or_bool"
    assert classify_v1(floaty, ok, Outcome(False, MINUTES_RULE, "validate")).startswith(UNEXPLAINED)
    # The same message at another stage (constructor vs validate) is a difference.
    early = _azure(False, HOURS_RULE, stage="init")
    assert classify_v1(day, early, refused).startswith(UNEXPLAINED)
    # Accepting a zone string Azure wants as an enum is §11; accepting anything else is not.
    no_zone = _azure(False, ZONE_RULE)
    assert classify_v1({**day, "time_zone": "UTC"}, no_zone, Outcome(True)) == (
        "deliberate:time_zone_string"
    )
    mars = {**day, "time_zone": "Mars/Olympus_Mons"}
    assert classify_v1(mars, no_zone, Outcome(True)).startswith(UNEXPLAINED)
    assert classify_v1(day, _azure(False, INTERVAL_RULE), Outcome(True)).startswith(UNEXPLAINED)
    # Azure's TypeError on a wrong type: watcherd refuses with any message, never accepts.
    crash = _azure(False, "'<' not supported", kind="TypeError")
    text_interval = {**day, "interval": "1"}
    assert classify_v1(text_interval, crash, refused) == "deliberate:azure_type_error"
    assert classify_v1(text_interval, crash, Outcome(True)).startswith(UNEXPLAINED)
    # watcherd crashing is never an answer.
    boom = Outcome(False, "TypeError: x", "init", "TypeError")
    assert classify_v1(text_interval, crash, boom).startswith(UNEXPLAINED)
    # Only Azure's TypeError excuses a message; any other Python error does not.
    odd = _azure(False, "'NoneType' has no attribute", kind="AttributeError")
    assert classify_v1(text_interval, odd, refused).startswith(UNEXPLAINED)
    # And an unexplained label is reported, whichever side it is about.
    label = classify_v1(day, ok, refused)
    assert _failures([(label, day)], "SDK ") == [f"SDK {label}\n    input: {json.dumps(day)}"]
    assert _failures([("both_accept", day), ("deliberate:float_or_bool", day)], "SDK ") == []


V2_TEXT = """\
name: s
trigger:
  type: recurrence
  frequency: day
  interval: 1
  schedule: {hours: [4], minutes: [0]}
  start_time: "2024-01-01T10:00:00"
  time_zone: %s
create_job: azureml:p1
"""
V2_NORMALIZED: dict[str, Any] = {
    "trigger": {"type": "recurrence", "frequency": "day", "interval": 1,
                "schedule": {"hours": [4], "minutes": [0], "week_days": None, "month_days": None},
                "start_time": {"$datetime": "2024-01-01T10:00:00"}, "end_time": None,
                "time_zone": "Pacific Standard Time"},
    "create_job": "p1",
}  # fmt: skip


def test_v2_rules_flag_what_no_deviation_explains(config: Config) -> None:
    ids = {name: p.id for name, p in config.pipelines.items()}
    text = V2_TEXT % '"Pacific Standard Time"'
    doc, ours = yaml.safe_load(text), watcherd_v2(text, config)
    accepted = _azure(True, normalized=V2_NORMALIZED)
    assert classify_v2(doc, accepted, ours, ids) == "both_accept"
    assert classify_v2(None, _azure(False, "x"), ours, ids).startswith(UNEXPLAINED)
    other = {**V2_NORMALIZED, "trigger": {**V2_NORMALIZED["trigger"], "interval": 2}}
    assert classify_v2(doc, _azure(True, normalized=other), ours, ids).startswith(UNEXPLAINED)
    moved = {**V2_NORMALIZED, "create_job": "etl.v2"}
    assert classify_v2(doc, _azure(True, normalized=moved), ours, ids).startswith(UNEXPLAINED)
    # Out of v2's ranges: refused, at that key and no other.
    late = text.replace("hours: [4]", "hours: [24]")
    late_doc, late_ours = yaml.safe_load(late), watcherd_v2(late, config)
    assert late_ours.paths == ("body.trigger.schedule.hours[0]",)
    assert classify_v2(late_doc, accepted, late_ours, ids) == "deliberate:out_of_range"
    elsewhere = Outcome(False, "x", paths=("body.trigger.schedule.minutes",))
    assert classify_v2(late_doc, accepted, elsewhere, ids).startswith(UNEXPLAINED)
    assert classify_v2(late_doc, accepted, ours, ids).startswith(UNEXPLAINED)
    # An IANA zone: Azure leaves it to the service, watcherd takes it (§11).
    berlin = V2_TEXT % "Europe/Berlin"
    in_berlin = {
        **V2_NORMALIZED,
        "trigger": {**V2_NORMALIZED["trigger"], "time_zone": "Europe/Berlin"},
    }
    assert classify_v2(yaml.safe_load(berlin), _azure(True, normalized=in_berlin),
                       watcherd_v2(berlin, config), ids) == "deliberate:iana_zone"  # fmt: skip


def test_v1_stored_attributes_are_azures() -> None:
    """azureml-pipeline-core 1.62 (schedule.py, ScheduleRecurrence.__init__) keeps a datetime
    start_time as strftime('%Y-%m-%dT%H:%M:%S') text and defaults the zone to TimeZone.UTC
    only when a start_time is given; the v1 differential test checks it on every input."""
    rec = ScheduleRecurrence("Day", 1, start_time=datetime(2030, 9, 10, 4, 43, 0, 500))
    assert (rec.start_time, rec.time_zone) == ("2030-09-10T04:43:00", TimeZone["UTC"])
    rec.validate()
    assert ScheduleRecurrence("Day", 1).time_zone is None
    text = ScheduleRecurrence("Day", 1, start_time="2030-09-10T04:43", time_zone="UTC")
    assert (text.start_time, text.time_zone) == ("2030-09-10T04:43", "UTC")  # as given
