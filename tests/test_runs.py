"""core.runs: the one transition table, run identity, what a run carries from queue time."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from watcherd.core.errors import InvalidTransition
from watcherd.core.models import (
    NAMESPACE,
    TERMINAL,
    CommandTarget,
    DatastoreTrigger,
    FileRef,
    Pipeline,
    RecurrenceTrigger,
    Run,
    RunStatus,
    Schedule,
    StoredSchedule,
    TimeOptions,
)
from watcherd.core.recurrence import Recurrence
from watcherd.core.runs import (
    ALLOWED,
    concurrency_gate,
    file_run,
    on_failure_run,
    run_id_for,
    slot_dedup,
    slot_run,
    slot_runs,
    sources_of,
    submit_run,
    transition,
)
from watcherd.core.timefmt import format_utc

Q, R = RunStatus.QUEUED, RunStatus.RUNNING
PIPE = Pipeline(
    id="p", name="p", target=CommandTarget(steps=(("true",),)), parameters={"a": "1", "b": "1"}
)


def _schedule(trigger: object, **kw: object) -> Schedule:
    return Schedule(
        id="s",
        name="S",
        pipeline="p",
        experiment_name="E",
        trigger=trigger,
        **kw,  # type: ignore[arg-type]
    )


# Every (from, to) the lifecycle of SPEC §5 allows; everything else is refused.
LIFECYCLE = {
    (Q, R), (Q, RunStatus.CANCELED), (Q, RunStatus.SKIPPED), (Q, RunStatus.FAILED),
    (R, RunStatus.COMPLETED), (R, RunStatus.FAILED), (R, RunStatus.SUBMITTED),
    (R, RunStatus.CANCELED), (R, Q),
    *((t, Q) for t in TERMINAL),
}  # fmt: skip


@pytest.mark.parametrize("frm", list(RunStatus))
@pytest.mark.parametrize("to", list(RunStatus))
def test_transition_allows_exactly_the_lifecycle(frm: RunStatus, to: RunStatus) -> None:
    if (frm, to) in LIFECYCLE:
        assert transition("r1", frm, to) is to
    else:
        with pytest.raises(InvalidTransition) as err:
            transition("r1", frm, to)
        assert (err.value.from_status, err.value.to_status) == (frm.value, to.value)
        assert f"from {frm.value} to {to.value}" in str(err.value) and err.value.code


def test_sources_of_names_where_a_status_comes_from_and_refuses_a_bad_ask() -> None:
    assert sources_of(R) == {Q}
    assert sources_of(Q) == {R, *TERMINAL}
    assert sources_of(Q, [RunStatus.FAILED]) == {RunStatus.FAILED}
    with pytest.raises(InvalidTransition, match="Queued to Completed"):
        sources_of(RunStatus.COMPLETED, [Q])
    assert set(ALLOWED) == set(RunStatus)


def test_run_ids_are_stable_for_their_key() -> None:
    slot = datetime(2026, 11, 25, 10, 15, tzinfo=UTC)
    s = _schedule(RecurrenceTrigger(recurrence=Recurrence(frequency="Minute", interval=15)))
    a, b = slot_run(s, PIPE, slot), slot_run(s, PIPE, slot)
    assert a.id == b.id == run_id_for("s", a.dedup)
    assert a.trigger == {"kind": "time", "slot": "2026-11-25T10:15:00Z"}


@pytest.mark.parametrize(
    ("schedule_id", "dedup"),
    [("s", "slot:2026-11-25T10:15:00.000000Z"), ("a1b2", "file:x\\xff/y:1:2:3"), ("é", "ü" * 300)],
)
def test_run_ids_are_the_uuid5_of_their_key(schedule_id: str, dedup: str) -> None:
    """Run ids written by earlier versions (uuid.uuid5) and now (hashlib) are the same."""
    want = str(uuid.uuid5(NAMESPACE, f"run/{schedule_id}/{dedup}"))
    assert run_id_for(schedule_id, dedup) == want
    assert uuid.UUID(want).version == 5


def test_a_file_run_carries_its_parameters_and_file_from_queue_time() -> None:
    trig = DatastoreTrigger(datastore="inbox", data_path_parameter_name="input")
    s = _schedule(trig, pipeline_parameters={"b": "2"})
    ref = FileRef(
        datastore="inbox",
        relative_path=b"in/\xffa.csv",
        local_path=b"/srv/in/\xffa.csv",
        version="1:2:3",
        parameter="input",
    )
    run = file_run(s, PIPE, ref)
    # pipeline < schedule < the file, as its trigger shows it (SPEC §5: stored with the run)
    assert run.parameters == {"a": "1", "b": "2", "input": "in/\\xffa.csv"}
    assert run.file == ref and run.path == b"in/\xffa.csv"
    assert run.trigger["path"] == "in/\\xffa.csv"  # shown with invalid bytes as \xNN
    assert file_run(s, PIPE, ref).id == run.id  # one run per (file, version)
    assert file_run(s, PIPE, dataclasses.replace(ref, version="1:2:4")).id != run.id


def test_a_catch_ups_runs_are_each_slots_own_run() -> None:
    trig = RecurrenceTrigger(
        recurrence=Recurrence(frequency="Hour", interval=1),
        options=TimeOptions(concurrency="forbid"),
    )
    s = _schedule(trig, pipeline_parameters={"b": "2"})
    slots = [datetime(2026, 1, 1, h, 0, 7, 250, tzinfo=UTC) for h in (3, 4, 5)]
    runs = slot_runs(s, PIPE, slots)
    assert runs == [slot_run(s, PIPE, slot) for slot in slots]
    assert [r.trigger["slot"] for r in runs] == [f"2026-01-01T0{h}:00:07Z" for h in (3, 4, 5)]
    assert len({r.id for r in runs}) == 3 and all(r.gate == trig.options for r in runs)
    assert runs[0].parameters == {"a": "1", "b": "2"}
    assert slot_runs(s, PIPE, []) == []


@pytest.mark.parametrize(
    "slot",
    [
        datetime(2026, 11, 25, 10, 15, tzinfo=UTC),
        datetime(2026, 11, 25, 10, 15, 59, 999999, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(999, 12, 31, 23, 59, 59, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 3, 29, 2, 30, 0, 500, tzinfo=ZoneInfo("Europe/Paris")),  # not UTC
    ],
)
def test_a_slot_runs_key_and_trigger_are_its_instant_formatted(slot: datetime) -> None:
    """`slot_runs` formats each slot once and cuts the trigger's text from it: the same
    texts as `slot_dedup` and `format_utc` (seconds, truncated), for every year."""
    s = _schedule(RecurrenceTrigger(recurrence=Recurrence(frequency="Hour", interval=1)))
    (run,) = slot_runs(s, PIPE, [slot])
    assert run.dedup == slot_dedup(slot)
    assert run.trigger == {"kind": "time", "slot": format_utc(slot)}


def test_a_moved_row_differs_from_its_original_only_in_cursor_and_next_slot() -> None:
    """`StoredSchedule.moved` copies each field by hand: a field added later must be too."""
    at = datetime(2026, 1, 1, tzinfo=UTC)
    values = {f.name: f"v-{f.name}" for f in dataclasses.fields(StoredSchedule)}
    row = StoredSchedule(**values)  # type: ignore[arg-type]
    hint = ("k", at)
    assert row.moved(at, hint) == dataclasses.replace(row, cursor=at, next_hint=hint)


def test_submit_and_on_failure_runs() -> None:
    a = submit_run(
        PIPE, "E", by="sdk", parameters={"b": "9"}, continue_on_step_failure=True, nonce="n"
    )
    assert a.schedule_id == "" and a.parameters == {"a": "1", "b": "9"}
    assert a.trigger == {"kind": "manual", "by": "sdk", "continue_on_step_failure": True}
    failed = Run(
        id="r", schedule_id="s", pipeline_id="p", experiment_name="E",
        status=RunStatus.FAILED, trigger={"kind": "time"},
    )  # fmt: skip
    f = on_failure_run(failed, "alert", error="boom", exit_code=3)
    assert f.pipeline_id == "alert" and f.dedup == "on_failure:r"
    assert json.loads(f.parameters["failed_run"])["exit_code"] == 3
    assert json.loads(f.parameters["failed_run"])["schedule_id"] == "s"
    # a submit's run has no schedule: null, as the API shows it (not "")
    submitted = dataclasses.replace(failed, schedule_id="")
    g = on_failure_run(submitted, "alert", error=None, exit_code=1)
    assert json.loads(g.parameters["failed_run"])["schedule_id"] is None


@pytest.mark.parametrize(
    ("concurrency", "queued", "running", "why"),
    [
        ("allow", 5, 5, None),
        ("forbid", 0, 0, None),
        ("forbid", 1, 0, "previous run still active (concurrency = forbid)"),
        ("forbid", 0, 1, "previous run still active (concurrency = forbid)"),
        ("queue", 9, 1, None),
        ("queue", 10, 0, "queue full"),
    ],
)
def test_concurrency_gate(concurrency: str, queued: int, running: int, why: str | None) -> None:
    opts = TimeOptions(concurrency=concurrency, max_queued=10)  # type: ignore[arg-type]
    assert concurrency_gate(opts, queued=queued, running=running) == why


def test_the_two_slots_of_a_zones_repeated_hour_are_two_runs() -> None:
    """Slots of one instant share their key and trigger texts across schedules (computed
    once); two wall times of a zone's repeated hour compare equal as datetimes, yet are
    two instants, so two runs with their own texts, whichever came first."""
    s = _schedule(RecurrenceTrigger(recurrence=Recurrence(frequency="Hour", interval=1)))
    first = datetime(2026, 10, 25, 2, 30, tzinfo=ZoneInfo("Europe/Paris"))  # CEST
    second = first.replace(fold=1)  # the same wall time an hour later, CET
    assert first == second  # why the texts are keyed by the UTC instant
    for order in ([first, second], [second, first]):
        runs = slot_runs(s, PIPE, order)
        assert [r.trigger["slot"] for r in runs] == [format_utc(t) for t in order]
        assert [r.dedup for r in runs] == [slot_dedup(t) for t in order]
    assert {r.trigger["slot"] for r in runs} == {"2026-10-25T00:30:00Z", "2026-10-25T01:30:00Z"}


def test_a_slots_runs_share_a_read_only_trigger() -> None:
    """The runs of one instant share their trigger texts (computed once), so no run may
    change its trigger: it would be every other run's."""
    rule = RecurrenceTrigger(recurrence=Recurrence(frequency="Hour", interval=1))
    slot = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    (a,) = slot_runs(_schedule(rule), PIPE, [slot])
    (b,) = slot_runs(dataclasses.replace(_schedule(rule), id="other"), PIPE, [slot])
    assert a.trigger == b.trigger == {"kind": "time", "slot": "2026-11-25T10:00:00Z"}
    assert a.id != b.id
    with pytest.raises(TypeError):
        a.trigger["slot"] = "changed"  # type: ignore[index]
    assert b.trigger["slot"] == "2026-11-25T10:00:00Z"
