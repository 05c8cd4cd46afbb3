"""Time schedules end to end in-process: real SQLite, real commands, an injected clock."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.clocks import ManualClock
from tests.engine_helpers import eventually, running_engine, settles
from watcherd.core import slots
from watcherd.core.models import RunStatus
from watcherd.engine import arming, timers
from watcherd.engine.runner import Runner

PIPE = """
[daemon]
api = ""
[pipelines.p]
kind = "command"
steps = [["true"]]
"""


def _z(*a: int) -> str:
    return datetime(*a, tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _schedule_s(recurrence: str, extra: str = "") -> str:
    """A `[[schedules]]` table: schedule "s" of pipeline "p", experiment "E"."""
    return (
        '\n[[schedules]]\nname = "s"\npipeline = "p"\nexperiment_name = "E"\n'
        f"recurrence = {{ {recurrence} }}\n{extra}"
    )


async def test_seed_recurrence_fires_at_creation_then_every_15_minutes(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2026, 11, 25, 10, 0, 7, 250000, tzinfo=UTC))
    text = (
        PIPE
        + """
[[schedules]]
name = "MyRecurringSchedule"
pipeline = "p"
experiment_name = "MyExperiment"
recurrence = { frequency = "Minute", interval = 15 }
"""
    )
    async with running_engine(tmp_path, text, clock) as h:
        await eventually(lambda: h.slots() == [_z(2026, 11, 25, 10, 0, 7)])
        await h.advance(minutes=14, seconds=59)
        await h.settle()
        assert h.slots() == [_z(2026, 11, 25, 10, 0, 7)]
        await h.advance(seconds=1)
        await eventually(lambda: len(h.slots()) == 2)
        await h.advance(minutes=15)
        await eventually(lambda: len(h.slots()) == 3)
        await h.settle()
        assert h.slots() == [
            _z(2026, 11, 25, 10, 0, 7),
            _z(2026, 11, 25, 10, 15, 7),
            _z(2026, 11, 25, 10, 30, 7),
        ]
        assert {r.status for r in h.runs()} == {RunStatus.COMPLETED}


async def test_restart_does_not_refire_creation_and_catch_up_all(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2026, 11, 25, 10, 0, 0, tzinfo=UTC))
    text = PIPE + _schedule_s(
        'frequency = "Minute", interval = 10', 'catch_up = "all"\nmax_catch_up = 3\n'
    )
    async with running_engine(tmp_path, text, clock) as h:
        await eventually(lambda: len(h.slots()) == 1)
    clock.advance(minutes=55)  # down for 55 min: slots 10:10 … 10:50 missed (5 of them)
    async with running_engine(tmp_path, text, clock) as h:
        await eventually(lambda: len(h.slots()) == 4)
        await h.settle()
        assert h.slots() == [
            _z(2026, 11, 25, 10, 0),
            _z(2026, 11, 25, 10, 30),
            _z(2026, 11, 25, 10, 40),
            _z(2026, 11, 25, 10, 50),
        ]
        await h.advance(minutes=5)
        await eventually(lambda: len(h.slots()) == 5)
        assert h.slots()[-1] == _z(2026, 11, 25, 11, 0)


async def test_past_start_time_does_not_backfill(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2026, 11, 25, 10, 7, 0, tzinfo=UTC))
    text = PIPE + _schedule_s(
        'frequency = "Minute", interval = 5, start_time = "2026-11-20T00:00:00"'
    )
    async with running_engine(tmp_path, text, clock) as h:
        await h.advance(seconds=1)
        await h.settle()
        assert h.slots() == []
        await h.advance(minutes=3)  # 10:10:01
        await eventually(lambda: h.slots() == [_z(2026, 11, 25, 10, 10)])


async def test_catch_up_none_skips_missed_and_disabled_never_fires(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2026, 11, 25, 10, 0, 0, tzinfo=UTC))
    text = (
        PIPE
        + """
[[schedules]]
name = "s"
pipeline = "p"
experiment_name = "E"
recurrence = { frequency = "Minute", interval = 1, start_time = "2026-11-25T10:00:30" }

[[schedules]]
name = "off"
pipeline = "p"
experiment_name = "E"
status = "Disabled"
recurrence = { frequency = "Minute", interval = 1 }
"""
    )
    async with running_engine(tmp_path, text, clock) as h:
        await h.advance(seconds=30)
        await eventually(lambda: len(h.slots("s")) == 1)
    clock.advance(minutes=10)
    async with running_engine(tmp_path, text, clock) as h:
        await h.advance(seconds=1)
        await h.settle()
        assert len(h.slots("s")) == 1  # catch_up = "none": nothing back-filled
        not_run = h.engine.metrics.registry.get_sample_value(
            "watcherd_slots_not_run_total", {"schedule": "s"}
        )
        assert not_run == 10  # 10:01 … 10:10, counted
        await h.advance(minutes=1)
        await eventually(lambda: len(h.slots("s")) == 2)
        assert h.slots("off") == []
        # enabling never fires by itself
        await h.manager.set_schedule_status("off", "Active")
        await h.advance(seconds=1)
        await h.settle()
        assert h.slots("off") == []


async def test_concurrency_forbid_skips_while_running(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2026, 11, 25, 10, 0, 0, tzinfo=UTC))
    gate = tmp_path / "gate"
    text = f"""
[daemon]
api = ""
[pipelines.slow]
kind = "command"
steps = [["sh", "-c", "while [ ! -e '{gate}' ]; do sleep 0.02; done"]]

[[schedules]]
name = "s"
pipeline = "slow"
experiment_name = "E"
recurrence = {{ frequency = "Minute", interval = 1 }}
concurrency = "forbid"
"""
    async with running_engine(tmp_path, text, clock) as h:
        await eventually(lambda: h.engine.runner.total_running() == 1)
        await h.advance(minutes=1)
        await eventually(lambda: len(h.runs()) == 2)
        statuses = [r.status for r in h.runs()]
        assert statuses[1] is RunStatus.SKIPPED
        gate.touch()
        await h.settle()
        assert [r.status for r in h.runs()] == [RunStatus.COMPLETED, RunStatus.SKIPPED]


def _hinted_rows(h: Any) -> int:
    """Schedules whose next slot is stored (after arming, the saving is in the background)."""
    row = h.store.db.sync(
        lambda c: c.execute("SELECT count(*) FROM schedules WHERE next_for IS NOT NULL").fetchone()
    )
    return int(row[0])


async def test_a_restart_arms_from_the_stored_next_slots_and_recomputes_stale_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next slot of each time schedule is stored (after arming, and with every cursor a
    timer commits): a restart with nothing missed computes none, arms the deadlines a fresh
    computation gives, and recomputes only a stored slot whose schedule changed since."""
    clock = ManualClock(datetime(2026, 11, 25, 10, 0, 0, tzinfo=UTC))
    text = PIPE + "".join(
        f'\n[[schedules]]\nname = "s{i}"\npipeline = "p"\nexperiment_name = "E"\n'
        f'cron = "{i} 12 * * *"\n'
        for i in range(5)
    )
    async with running_engine(tmp_path, text, clock) as h:
        fresh = {sid: a.due for sid, a in h.engine.timers.armed.items()}
        await eventually(lambda: _hinted_rows(h) == 5)
    calls: list[str] = []

    def counting(trigger: Any, anchor: datetime, after: datetime) -> datetime | None:
        calls.append(repr(trigger))
        return slots.next_slot(trigger, anchor, after)

    monkeypatch.setattr(arming, "next_slot", counting)
    monkeypatch.setattr(timers, "next_slot", counting)
    clock.advance(minutes=30)  # down 30 min, no slot missed
    async with running_engine(tmp_path, text, clock) as h:
        restarted = {sid: a.due for sid, a in h.engine.timers.armed.items()}
        assert calls == []
        assert restarted == fresh and len(fresh) == 5
        await h.advance(hours=2)  # 12:00 passes: every schedule fires, then re-arms itself
        await eventually(lambda: len(h.slots()) == 5)
        assert all(a.due is not None and a.due.day == 26 for a in h.engine.timers.armed.values())
        after_fire = {sid: a.due for sid, a in h.engine.timers.armed.items()}
        calls.clear()
    async with running_engine(tmp_path, text, clock) as h:  # the timers' commits stored them
        assert calls == []
        assert {sid: a.due for sid, a in h.engine.timers.armed.items()} == after_fire
        # a cursor moved behind the daemon's back (a state restored, a tool): stale hint
        sid = h.engine.schedule("s3").id
        h.store.db.sync(
            lambda c: c.execute(
                "UPDATE schedules SET cursor='2026-11-25T12:30:00.000000Z' WHERE id=?", (sid,)
            )
        )
    async with running_engine(tmp_path, text, clock) as h:
        assert len(calls) == 1 and "3 12 * * *" in calls[0]
        assert {sid: a.due for sid, a in h.engine.timers.armed.items()} == after_fire


def _spy_catch_up(
    monkeypatch: pytest.MonkeyPatch, batch: int
) -> tuple[list[set[str]], list[tuple[int, list[str]]]]:
    """Record the catch-up's commits (schedules of each) and its hand-overs to the runner
    ((commits made by then, schedules of the runs)), with batches of `batch` schedules."""
    commits: list[set[str]] = []
    handed: list[tuple[int, list[str]]] = []
    record, enqueue = arming.Arming._record, Runner.enqueue_new

    async def spy(self: arming.Arming, batches: list[Any], now: datetime) -> Any:
        commits.append({b.schedule_id for b in batches})
        return await record(self, batches, now)

    def spy_enqueue(self: Runner, runs: list[Any], inserted: list[str], now: datetime) -> None:
        handed.append((len(commits), [r.schedule_id for r in runs]))
        enqueue(self, runs, inserted, now)

    monkeypatch.setattr(arming.Arming, "_record", spy)
    monkeypatch.setattr(Runner, "enqueue_new", spy_enqueue)
    monkeypatch.setattr(arming, "CATCH_UP_BATCH", batch)
    return commits, handed


@pytest.mark.parametrize("batch", [1, 500])
async def test_catch_up_commits_the_due_schedules_first_and_trusts_no_stale_stored_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    """At a restart the schedules whose stored next slot is past are caught up first, in a
    commit of their own made before the others are checked, whatever their order in the file
    and however big a batch may be. A stored next slot that looks not yet due but no longer
    holds (its cursor moved back behind the daemon's back) is not trusted: that schedule's
    missed slots run too, in a later commit."""
    clock = ManualClock(datetime(2026, 11, 25, 9, 59, 30, tzinfo=UTC))
    text = PIPE + "".join(
        f'\n[[schedules]]\nname = "s{i}"\npipeline = "p"\nexperiment_name = "E"\n'
        'recurrence = { frequency = "Hour", interval = 1, '
        f'start_time = "2026-11-25T00:{0 if i == 2 else 10:02d}:00" }}\ncatch_up = "all"\n'
        for i in range(3)
    )
    async with running_engine(tmp_path, text, clock) as h:
        await eventually(lambda: _hinted_rows(h) == 3)
        ids = {f"s{i}": h.engine.schedule(f"s{i}").id for i in range(3)}
        # s1: its cursor moved back 3 hours, its stored next slot (10:10) left as it was
        h.store.db.sync(
            lambda c: c.execute(
                "UPDATE schedules SET cursor='2026-11-25T07:00:30.000000Z' WHERE id=?",
                (ids["s1"],),
            )
        )
    commits, handed = _spy_catch_up(monkeypatch, batch)
    clock.advance(minutes=6)  # 10:05:30: s2's 10:00 slot passed unseen; s0's next is 10:10
    async with running_engine(tmp_path, text, clock) as h:
        await eventually(lambda: len(h.slots()) == 4)
        assert commits == [{ids["s2"]}, {ids["s1"]}]  # s2: last in the file, first caught up
        # The due schedule's runs go to the runner once its commit is made, before the others
        # are checked; nothing is handed over between two commits of due schedules.
        assert [(n, set(sids)) for n, sids in handed[:2]] == [(1, {ids["s2"]}), (2, {ids["s1"]})]
        assert h.slots("s2") == [_z(2026, 11, 25, 10, 0, 0)]
        assert h.slots("s1") == [_z(2026, 11, 25, h, 10, 0) for h in (7, 8, 9)]
        assert h.slots("s0") == []


async def test_catch_up_hands_the_due_runs_over_once_all_their_commits_are_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Due schedules committed in several batches: their runs reach the runner in one call,
    after the last of those commits (not between two), and each run once."""
    clock = ManualClock(datetime(2026, 11, 25, 9, 59, 30, tzinfo=UTC))
    text = PIPE + "".join(
        f'\n[[schedules]]\nname = "s{i}"\npipeline = "p"\nexperiment_name = "E"\n'
        'recurrence = { frequency = "Hour", interval = 1, '
        f'start_time = "2026-11-25T00:{i:02d}:00" }}\ncatch_up = "all"\n'
        for i in range(3)
    )
    async with running_engine(tmp_path, text, clock) as h:
        await eventually(lambda: _hinted_rows(h) == 3)
        ids = {h.engine.schedule(f"s{i}").id for i in range(3)}
    commits, handed = _spy_catch_up(monkeypatch, 1)
    clock.advance(hours=2)  # 11:59:30: each missed its 10:0i and 11:0i slots
    async with running_engine(tmp_path, text, clock) as h:
        await eventually(lambda: len(h.slots()) == 6)
        assert [len(c) for c in commits] == [1, 1, 1] and set().union(*commits) == ids
        assert len(handed) == 1
        at, sids = handed[0]
        assert at == 3 and sorted(sids) == sorted([*ids, *ids])
        await h.settle()  # each run once, and all of them started
        assert sorted(r.status for r in h.runs()) == [RunStatus.COMPLETED] * 6


async def test_arming_in_one_pass_shares_a_next_slot_only_for_the_same_rule_anchor_and_cursor(
    tmp_path: Path,
) -> None:
    """`Timers.arm(..., same=…)` computes a next slot once per (rule, end, anchor, cursor):
    each schedule still gets what arming it alone gives, whatever it shares."""
    from watcherd.core.cron import make_cron
    from watcherd.core.models import CronTrigger, RecurrenceTrigger, Schedule, TimeOptions
    from watcherd.core.recurrence import make_recurrence
    from watcherd.engine.metrics import Metrics
    from watcherd.engine.timers import SameRules, Timers

    async def never(*_: object) -> list[object]:
        raise AssertionError("nothing fires here")

    def timers() -> Timers:
        return Timers(
            clock=ManualClock(),
            metrics=Metrics(),
            slot_run=lambda s, slot: None,
            commit=never,  # type: ignore[arg-type]
            active_runs=lambda sid: (0, 0),
        )

    hourly = make_recurrence("Hour", 2)
    daily = make_cron("30 6 * * *", "Europe/Paris")
    rec = RecurrenceTrigger(recurrence=hourly)
    rec_end = RecurrenceTrigger(recurrence=hourly, end_time=datetime(2026, 11, 25, 11, 0))
    cron = CronTrigger(cron=daily)
    cron_opt = CronTrigger(cron=daily, options=TimeOptions(catch_up="all"))
    t0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
    cases = [
        (rec, t0, t0),
        (rec, t0, t0),  # shared: same rule, anchor, cursor
        (rec, t0 + timedelta(minutes=30), t0 + timedelta(minutes=30)),  # another anchor
        (rec, t0, t0 + timedelta(hours=2)),  # another cursor
        (rec_end, t0, t0 + timedelta(hours=2)),  # another end: ended
        (cron, t0, t0),
        (cron_opt, t0, t0),  # another trigger object, the same rule: the same slot
        (cron, t0, t0 + timedelta(days=1)),
    ]
    schedules = [
        Schedule(id=f"s{i}", name=f"s{i}", pipeline="p", experiment_name="E", trigger=t)
        for i, (t, _, _) in enumerate(cases)
    ]
    together, apart = timers(), timers()
    same = SameRules()
    got = [together.arm(s, a, c, same=same) for s, (_, a, c) in zip(schedules, cases, strict=True)]
    want = [apart.arm(s, a, c) for s, (_, a, c) in zip(schedules, cases, strict=True)]
    assert got == want
    assert got[1] == got[0] and got[2] != got[0] and got[3] != got[0] and got[4] is None
    assert got[6] == got[5] and got[7] != got[5]
    assert len(same) == 6  # one computation per distinct (rule, end, anchor, cursor)


async def test_a_slot_is_prepared_before_its_instant_committed_at_it_and_a_change_between_wins(
    tmp_path: Path,
) -> None:
    """The timer prepares a slot's commit (its run, the next slot) a little before the slot's
    instant: nothing is committed before the instant, and a schedule changed between the
    preparation and the instant runs as changed."""
    clock = ManualClock(datetime(2026, 11, 25, 10, 0, 0, tzinfo=UTC))
    text = PIPE + 'parameters = { x = "default" }\n'
    async with running_engine(tmp_path, text, clock) as h:
        created = await h.manager.create_schedule(
            {"name": "api", "pipeline": "p", "experiment_name": "E",
             "recurrence": {"frequency": "Minute", "interval": 1},
             "pipeline_parameters": {"x": "before"}}
        )  # fmt: skip
        await eventually(lambda: len(h.runs("api")) == 1)  # the creation fire, 10:00:00
        t = h.engine.timers
        await h.advance(seconds=59, microseconds=999_500)  # 0.5 ms before 10:01:00
        ahead = await eventually(lambda: t._ahead.get(created["id"]))
        assert ahead.due == datetime(2026, 11, 25, 10, 1, tzinfo=UTC)
        assert ahead.next_due == datetime(2026, 11, 25, 10, 2, tzinfo=UTC)
        await h.settle()
        assert h.slots("api") == [_z(2026, 11, 25, 10, 0, 0)]  # not before its instant

        await h.manager.update_schedule(created["id"], {"pipeline_parameters": {"x": "after"}})
        await h.advance(microseconds=500)
        await eventually(lambda: len(h.runs("api")) == 2)
        run = h.runs("api")[1]
        assert str(run.trigger["slot"]) == _z(2026, 11, 25, 10, 1, 0)
        assert h.runs("api")[0].parameters == {"x": "before"}
        assert run.parameters == {"x": "after"}
        assert run.queued_at == datetime(2026, 11, 25, 10, 1, tzinfo=UTC)
        assert t.armed[created["id"]].due == datetime(2026, 11, 25, 10, 2, tzinfo=UTC)


async def test_a_reload_between_a_slots_preparation_and_its_instant_is_what_runs(
    tmp_path: Path,
) -> None:
    """A config reload that changes a pipeline's parameters after the slot was prepared:
    the slot runs with the new ones."""
    from tests.engine_helpers import load_config

    clock = ManualClock(datetime(2026, 11, 25, 10, 0, 30, tzinfo=UTC))
    text = (
        PIPE
        + 'parameters = { x = "one" }\n'
        + _schedule_s('frequency = "Minute", interval = 1, start_time = "2026-11-25T09:00:00"')
    )
    async with running_engine(tmp_path, text, clock) as h:
        t = h.engine.timers
        sid = next(iter(t.armed))
        await h.advance(seconds=29, microseconds=999_500)  # 0.5 ms before 10:01:00
        ahead = await eventually(lambda: t._ahead.get(sid))
        assert ahead.run is not None and ahead.run.parameters == {"x": "one"}
        await h.engine.reload(load_config(tmp_path, text.replace('"one"', '"two"')))
        await h.advance(microseconds=500)
        await eventually(lambda: len(h.runs("s")) == 1)
        run = h.runs("s")[0]
        assert str(run.trigger["slot"]) == _z(2026, 11, 25, 10, 1, 0)
        assert run.parameters == {"x": "two"}


async def test_the_deadline_counts_follow_arms_disarms_and_fires_and_size_the_lead() -> None:
    """`Timers._at` (how many schedules each deadline has, which sizes how early a batch is
    prepared) stays equal to the armed schedules' deadlines through arms, re-arms, disarms
    and fires; a prepared batch is committed whole at its instant."""
    from collections import Counter

    from watcherd.core.models import RecurrenceTrigger, Schedule
    from watcherd.core.recurrence import make_recurrence
    from watcherd.core.runs import NewRun
    from watcherd.engine.metrics import Metrics
    from watcherd.engine.timers import MIN_LEAD, Timers

    clock = ManualClock(datetime(2026, 11, 25, 10, 0, 0, 500000, tzinfo=UTC))
    made: list[tuple[str, datetime, datetime]] = []  # (schedule, slot, clock) at slot_run
    committed: list[tuple[datetime, list[str]]] = []

    def slot_run(s: Schedule, slot: datetime) -> NewRun:
        made.append((s.id, slot, clock.now()))
        return NewRun(
            schedule_id=s.id, pipeline_id="p", experiment="E", dedup=f"slot:{slot}",
            trigger={"kind": "time"}, parameters={},
        )  # fmt: skip

    async def commit(batch: list[Any], now: datetime) -> list[Any]:
        committed.append((now, sorted(b.schedule_id for b in batch)))
        return batch

    t = Timers(
        clock=clock,
        metrics=Metrics(),
        slot_run=slot_run,
        commit=commit,
        active_runs=lambda sid: (0, 0),
    )

    def check() -> None:
        live = Counter(a.due for a in t.armed.values() if a.due is not None)
        assert t._at == live

    minute, two = make_recurrence("Minute", 1), make_recurrence("Minute", 2)
    t0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)

    def sched(i: int, rule: Any = minute) -> Schedule:
        trig = RecurrenceTrigger(recurrence=rule)
        return Schedule(id=f"s{i}", name=f"s{i}", pipeline="p", experiment_name="E", trigger=trig)

    for i in range(5):
        t.arm(sched(i), t0, t0)
    check()
    t.arm(sched(1, two), t0, t0)  # re-armed: its deadline moves to 10:02
    t.arm(sched(2), t0, t0)  # re-armed on the same deadline
    t.disarm("s3")
    t.disarm("s3")  # twice: nothing more
    check()
    assert t._at == Counter({t0 + timedelta(minutes=1): 3, t0 + timedelta(minutes=2): 1})
    t._cost = 0.02  # measured cost of one slot: 3 slots due at 10:01 → lead 0.12 s
    task = asyncio.ensure_future(t.run())
    try:
        clock.set(t0 + timedelta(minutes=1, seconds=-0.2))  # before the lead
        await _turns()
        assert made == []
        clock.set(t0 + timedelta(minutes=1, seconds=-0.1))  # within it: prepared, not fired
        await _turns()
        assert sorted(m[0] for m in made) == ["s0", "s2", "s4"]
        assert committed == []
        clock.set(t0 + timedelta(minutes=1))
        await _turns()
        assert committed == [(t0 + timedelta(minutes=1), ["s0", "s2", "s4"])]
        assert len(made) == 3  # nothing computed twice
        check()
        assert t._at == Counter({t0 + timedelta(minutes=2): 4})
        assert min(0.5, 2 * t._cost * 4) >= MIN_LEAD
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _turns(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


# ── reloads that keep the trigger's key (SPEC §3.1: no back-fill, no second creation fire) ──


async def test_a_reload_extending_an_ended_schedule_back_fills_nothing(tmp_path: Path) -> None:
    from tests.engine_helpers import load_config

    clock = ManualClock(datetime(2026, 11, 25, 10, 0, 30, tzinfo=UTC))
    rule = 'frequency = "Minute", interval = 1, start_time = "2026-11-25T09:00:00"'
    text = PIPE + _schedule_s(rule, 'end_time = "2026-11-25T10:05:00"\n')
    async with running_engine(tmp_path, text, clock) as h:
        for _ in range(12):  # to 10:12:30: 10:01 … 10:05, then the schedule has ended
            await h.advance(minutes=1)
        await eventually(lambda: len(h.slots("s")) == 5)
        await h.advance(seconds=10)
        await h.engine.reload(load_config(tmp_path, text.replace("10:05:00", "12:00:00")))
        await h.advance(seconds=30)  # 10:13:10
        await settles(lambda: len(h.slots("s")) > 6, within=0.5)  # a back-fill would show
        assert h.slots("s")[4:] == [_z(2026, 11, 25, 10, 5, 0), _z(2026, 11, 25, 10, 13, 0)]


async def test_a_reload_that_reorders_a_recurrences_lists_is_the_same_trigger(
    tmp_path: Path,
) -> None:
    """No start_time: the creation fire, once; the same days and hours in another order (or
    twice) are the same normalised recurrence: no second creation fire, no re-anchoring."""
    from tests.engine_helpers import load_config

    clock = ManualClock(datetime(2026, 11, 25, 10, 0, 30, tzinfo=UTC))  # a Wednesday
    rule = 'frequency = "Week", interval = 1, week_days = ["Monday", "Friday"], hours = [4, 16]'
    text = PIPE + _schedule_s(rule)
    async with running_engine(tmp_path, text, clock) as h:
        await eventually(lambda: len(h.slots("s")) == 1)  # on creation
        row = next(iter(h.engine.book.rows.values()))
        swapped = rule.replace('"Monday", "Friday"', '"Friday", "Monday", "Friday"').replace(
            "[4, 16]", "[16, 4]"
        )
        await h.advance(minutes=10)  # a creation fire now would be a new slot
        await h.engine.reload(load_config(tmp_path, PIPE + _schedule_s(swapped)))
        await h.advance(seconds=30)
        await settles(lambda: len(h.slots("s")) > 1, within=0.5)  # a second fire would show
        after = next(iter(h.engine.book.rows.values()))
        assert len(h.slots("s")) == 1
    assert after.anchor == row.anchor  # not re-anchored at the reload
    assert after.cursor == datetime(2026, 11, 25, 10, 0, 30, tzinfo=UTC)  # the creation fire
