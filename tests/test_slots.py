"""Issue #12: check-config and the daemon answer "when is this due" alike (one slot module).

For a table of schedules (every frequency, cron, v2 triggers, start_time past/future/none, DST
gaps and folds in Los Angeles and Berlin, end_time) the daemon is started on a ManualClock and
its next fire times (the engine's, and the API's) are compared with check-config's report:
built before the daemon ever ran (an empty state: the schedule is created "now"), and built
from the state the daemon wrote (stored anchors and cursors), as `watcherd check-config` reads
it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.clocks import ManualClock
from tests.engine_helpers import eventually, load_config, running_engine
from watcherd.cli.checkconfig import FIRES, build_report
from watcherd.core.timefmt import format_utc, parse_utc, utc_texts, utc_values
from watcherd.state.sqlite.store import load_schedules

HEAD = """\
[daemon]
api = ""

[pipelines.p]
kind = "command"
steps = [["true"]]
"""

# (name, trigger lines): each becomes one [[schedules]] entry.
TABLE: list[tuple[str, str]] = [
    ("minute-none", 'recurrence = { frequency = "Minute", interval = 15 }'),
    ("minute-past", 'recurrence = { frequency = "Minute", interval = 7, '
                    'start_time = "2026-01-01T00:03:00" }'),
    ("hour-future", 'recurrence = { frequency = "Hour", interval = 5, '
                    'start_time = "2027-02-03T04:05:06", time_zone = "Europe/Berlin" }'),
    ("day-pattern-la", 'recurrence = { frequency = "Day", interval = 1, hours = [1, 2, 3], '
                       'minutes = [0, 30], time_zone = "Pacific Standard Time", '
                       'start_time = "2026-01-01T02:30:00" }'),
    ("day-none", 'recurrence = { frequency = "Day", interval = 2, time_of_day = "2:30", '
                 'time_zone = "W. Europe Standard Time" }'),
    ("week-berlin", 'recurrence = { frequency = "Week", interval = 1, week_days = ["Sunday"], '
                    'hours = [2], minutes = [30], time_zone = "Europe/Berlin", '
                    'start_time = "2026-01-04T00:00:00" }'),
    ("month-past", 'recurrence = { frequency = "Month", interval = 1, '
                   'start_time = "2025-01-31T02:30:00", time_zone = "America/Los_Angeles" }'),
    ("month-end", 'recurrence = { frequency = "Month", interval = 1, '
                  'start_time = "2026-01-08T09:00:00" }\nend_time = "2026-05-08T09:00:00"'),
    ("cron-fixed-la", 'cron = "30 2 * * *"\ntime_zone = "America/Los_Angeles"'),
    ("cron-elapsed-berlin", 'cron = "*/30 * * * *"\ntime_zone = "Europe/Berlin"'),
    ("cron-start-end", 'cron = "0 9 * * 1-5"\nstart_time = "2026-03-01T00:00"\n'
                       'end_time = "2026-11-30T00:00"\ntime_zone = "Europe/Berlin"'),
    ("v2-month", 'trigger = { type = "recurrence", frequency = "month", interval = 1, '
                 'schedule = { hours = [2], minutes = [30], month_days = [1, 8, 25] }, '
                 'start_time = "2026-01-01T02:30:00", time_zone = "Europe/Berlin" }'),
    ("v2-week-none", 'trigger = { type = "recurrence", frequency = "week", interval = 1, '
                     'schedule = { hours = [2], minutes = [30], week_days = ["sunday"] }, '
                     'time_zone = "America/Los_Angeles" }'),
    ("v2-cron-none", 'trigger = { type = "cron", expression = "15 2 * * *", '
                     'time_zone = "Pacific Standard Time" }'),
]  # fmt: skip

# Instants around the 2026 transitions: Los Angeles springs forward 2026-03-08 02:00 PST and
# falls back 2026-11-01 02:00 PDT; Berlin 2026-03-29 02:00 CET and 2026-10-25 03:00 CEST.
NOWS = [
    datetime(2026, 3, 7, 9, 0, tzinfo=UTC),  # a day before LA's gap, on a slot (01:00 PST)
    datetime(2026, 3, 8, 9, 10, tzinfo=UTC),  # LA's gap ahead (01:10 PST)
    datetime(2026, 3, 29, 0, 45, tzinfo=UTC),  # Berlin's gap ahead (01:45 CET)
    datetime(2026, 10, 25, 0, 10, tzinfo=UTC),  # Berlin's fold ahead (02:10 CEST)
    datetime(2026, 11, 1, 8, 10, tzinfo=UTC),  # LA's fold ahead (01:10 PDT)
    datetime(2026, 6, 15, 12, 0, 0, tzinfo=UTC),  # nothing special
]
# What the DST rule gives (SPEC §3.1), so the table is known to cross the transitions.
EXPECTED = {
    (NOWS[1], "day-pattern-la"): ["2026-03-08T09:30:00Z", "2026-03-08T10:00:00Z",
                                  "2026-03-08T10:30:00Z"],  # 02:00 and 02:30 → 03:00 PDT
    (NOWS[2], "cron-elapsed-berlin"): ["2026-03-29T01:00:00Z", "2026-03-29T01:30:00Z",
                                       "2026-03-29T02:00:00Z"],  # no 02:00/02:30 CET
    (NOWS[2], "week-berlin"): ["2026-03-29T01:00:00Z", "2026-04-05T00:30:00Z",
                               "2026-04-12T00:30:00Z"],  # 02:30 → 03:00 CEST
    (NOWS[3], "cron-elapsed-berlin"): ["2026-10-25T00:30:00Z", "2026-10-25T01:00:00Z",
                                       "2026-10-25T01:30:00Z"],  # both passes of the fold
    (NOWS[3], "week-berlin"): ["2026-10-25T00:30:00Z", "2026-11-01T01:30:00Z",
                               "2026-11-08T01:30:00Z"],  # once, at the first pass
    (NOWS[4], "day-pattern-la"): ["2026-11-01T08:30:00Z", "2026-11-01T10:00:00Z",
                                  "2026-11-01T10:30:00Z"],  # 01:00/01:30 PST not again
}  # fmt: skip


def config_text(table: list[tuple[str, str]]) -> str:
    parts = [HEAD]
    for name, trigger in table:
        parts.append(f'\n[[schedules]]\nname = "{name}"\npipeline = "p"\nexperiment_name = "E"\n'
                     f"{trigger}\n")  # fmt: skip
    return "".join(parts)


def report_times(cfg: object, now: datetime, stored: dict[str, object]) -> dict[str, list[str]]:
    report = build_report(cfg, now=now, stored=stored)  # type: ignore[arg-type]
    assert report.errors == ()
    return {r.name: [format_utc(t) for t in r.next_fire_times] for r in report.schedules}


@pytest.mark.parametrize("now", NOWS, ids=[n.strftime("%Y-%m-%dT%H:%M") for n in NOWS])
async def test_check_config_and_the_daemon_agree(tmp_path: Path, now: datetime) -> None:
    text = config_text(TABLE)
    cfg = load_config(tmp_path, text)
    before = report_times(cfg, now, {})  # nothing stored: every schedule is created now
    clock = ManualClock(now)
    async with running_engine(tmp_path, text, clock) as h:
        by_name = {s.name: s.id for s in h.engine.schedules.values()}
        # Due at once: creation fires, and slots falling exactly on `now`; check-config lists
        # them first, the daemon queues them as it starts.
        due_now = {name for name, times in before.items() if times and times[0] == format_utc(now)}
        await eventually(lambda: all(h.slots(name) for name in due_now))
        daemon = {
            name: [format_utc(t) for t in h.engine.next_fire_times(sid, FIRES)]
            for name, sid in by_name.items()
        }
        api = {name: await h.manager.next_fire_times(name, FIRES) for name in by_name}
        rows = {r.id: r for r in h.store.db.sync(load_schedules)}
        fired = {name: h.slots(name) for name in by_name}
        after = report_times(cfg, now, rows)  # type: ignore[arg-type]
    assert api == daemon
    assert after == daemon, "check-config on the daemon's state"
    for name, times in before.items():
        if name in due_now:
            assert len(fired[name]) == 1, name  # fired once, at `now`
            assert times[1:] == daemon[name][: FIRES - 1], name
        else:
            assert not fired[name], name
            assert times == daemon[name], name
    for (when, name), times in EXPECTED.items():
        if when == now:
            assert daemon[name] == times, name
    # And the table is not vacuous: every schedule has fire times, except the ended one.
    assert [n for n, t in daemon.items() if not t] == (["month-end"] if now.month >= 5 else [])


async def test_a_restart_keeps_the_agreement(tmp_path: Path) -> None:
    """After time passes and the daemon restarts on its state, both still agree (the cursor
    and anchor are the stored ones; no creation fire again)."""
    text = config_text(TABLE)
    cfg = load_config(tmp_path, text)
    start = NOWS[0]
    clock = ManualClock(start)
    state = tmp_path / "state"
    async with running_engine(tmp_path, text, clock, state=state) as h:
        await eventually(lambda: h.slots("minute-none"))
    later = start + timedelta(days=1, hours=3, minutes=7)
    clock = ManualClock(later)
    async with running_engine(tmp_path, text, clock, state=state) as h:
        await eventually(lambda: all(h.engine.next_fire_times(s.id, 1)
                                     for s in h.engine.schedules.values()
                                     if s.name != "month-end"))  # fmt: skip
        daemon = {
            s.name: [format_utc(t) for t in h.engine.next_fire_times(s.id, FIRES)]
            for s in h.engine.schedules.values()
        }
        rows = {r.id: r for r in h.store.db.sync(load_schedules)}
        assert len(h.slots("minute-none")) == 1  # no second creation fire
    assert report_times(cfg, later, rows) == daemon  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-25T10:15:00Z", datetime(2026, 11, 25, 10, 15, tzinfo=UTC)),
        ("2026-11-25T10:15:00.000001Z", datetime(2026, 11, 25, 10, 15, 0, 1, tzinfo=UTC)),
        ("2026-11-25T11:15:00+01:00", datetime(2026, 11, 25, 10, 15, tzinfo=UTC)),
        ("2026-11-25T05:15:00-05:00", datetime(2026, 11, 25, 10, 15, tzinfo=UTC)),
        ("0999-01-01T00:00:00.000000Z", datetime(999, 1, 1, tzinfo=UTC)),
    ],
)
def test_parse_utc_reads_any_offset_as_utc_and_round_trips_format_utc(
    text: str, expected: datetime
) -> None:
    got = parse_utc(text)
    assert got == expected and got is not None and got.tzinfo is UTC
    assert parse_utc(format_utc(got, micro=True)) == got
    assert parse_utc("") is None and parse_utc(None) is None
    with pytest.raises(ValueError):
        parse_utc(text.replace("-", "/"))


def test_a_batchs_instants_are_formatted_as_format_utc_does_each_once() -> None:
    paris = ZoneInfo("Europe/Paris")
    values = [
        datetime(2026, 11, 25, 10, 15, tzinfo=UTC),
        datetime(2026, 11, 25, 11, 15, tzinfo=paris),  # the same instant, another zone
        datetime(2026, 11, 25, 10, 15, 0, 1, tzinfo=UTC),
        None,
        datetime(999, 1, 1, tzinfo=UTC),
    ]
    fmt = utc_texts()
    texts = [fmt(v) for v in values * 2]
    assert texts == [None if v is None else format_utc(v, micro=True) for v in values * 2]
    at = utc_values()
    read = [*texts, "", "2026-11-25T11:15:00+01:00"]
    assert [at(t) for t in read] == [parse_utc(t) for t in read]
    assert at(texts[0]) is at(texts[1])  # one instant, one object


def test_a_recurrences_lists_are_sets_in_its_key_and_an_old_key_still_matches() -> None:
    from watcherd.core.models import RecurrenceTrigger
    from watcherd.core.recurrence import make_recurrence
    from watcherd.core.slots import same_trigger, trigger_key

    def week(days: list[str], hours: list[int]) -> RecurrenceTrigger:
        rule = make_recurrence(frequency="Week", interval=1, week_days=days, hours=hours)
        return RecurrenceTrigger(recurrence=rule)

    a, b = week(["Monday", "Friday"], [4, 16]), week(["Friday", "Monday", "Friday"], [16, 4])
    assert trigger_key(a) == trigger_key(b)
    assert trigger_key(a) != trigger_key(week(["Monday"], [4, 16]))
    # a key stored by a watcherd from before (the lists as written) is the same trigger
    written = repr(
        ("recurrence", "Week", 1, None, "UTC", (16, 4), None, ("Friday", "Monday", "Friday"))
    )
    assert written != trigger_key(b) and same_trigger(written, b)
    assert not same_trigger(written, a) and not same_trigger(None, a)


def test_a_changed_trigger_of_a_running_schedule_resumes_at_now_not_at_its_cursor() -> None:
    from watcherd.core.models import RecurrenceTrigger
    from watcherd.core.recurrence import make_recurrence
    from watcherd.core.slots import RELOAD_GRACE, changed_cursor

    rule = make_recurrence(frequency="Minute", interval=1, start_time=datetime(2026, 11, 25, 9, 0))
    t = RecurrenceTrigger(recurrence=rule)
    anchor = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
    ended = datetime(2026, 11, 25, 10, 5, tzinfo=UTC)  # its last slot, under the old end
    now = datetime(2026, 11, 25, 10, 12, 40, tzinfo=UTC)
    assert changed_cursor(t, anchor, ended, now) == now - RELOAD_GRACE
    recent = datetime(2026, 11, 25, 10, 12, tzinfo=UTC)  # it fired on time: nothing skipped
    assert changed_cursor(t, anchor, recent, now) == recent
    late = datetime(2026, 11, 25, 10, 13, 0, 500_000, tzinfo=UTC)  # 10:13 due 0.5 s ago
    assert changed_cursor(t, anchor, recent, late) == recent  # it still fires


def test_a_downtime_longer_than_the_slots_looked_at_says_so_and_its_oldest_slot() -> None:
    from watcherd.core.models import RecurrenceTrigger
    from watcherd.core.recurrence import make_recurrence
    from watcherd.core.slots import MISSED_LIMIT, catch_up

    rule = make_recurrence(frequency="Minute", interval=1, start_time=datetime(2026, 1, 1))
    t = RecurrenceTrigger(recurrence=rule)
    anchor = datetime(2026, 1, 1, tzinfo=UTC)
    cursor = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    short = catch_up(t, anchor, cursor, cursor + timedelta(minutes=90))
    assert short.oldest is None and len(short.not_run) == 90  # catch_up "none"
    long = catch_up(t, anchor, cursor, cursor + timedelta(days=3))  # 4,320 slots missed
    assert len(long.not_run) == MISSED_LIMIT  # the newest only: a lower bound
    assert long.oldest == cursor + timedelta(minutes=1)
    assert long.not_run[0] > long.oldest


def test_exactly_as_many_missed_slots_as_are_looked_at_is_an_exact_count() -> None:
    from watcherd.core.models import RecurrenceTrigger
    from watcherd.core.recurrence import make_recurrence
    from watcherd.core.slots import MISSED_LIMIT, catch_up

    rule = make_recurrence(frequency="Minute", interval=1, start_time=datetime(2026, 1, 1))
    t = RecurrenceTrigger(recurrence=rule)
    cursor = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    exact = catch_up(
        t, datetime(2026, 1, 1, tzinfo=UTC), cursor, cursor + timedelta(minutes=MISSED_LIMIT)
    )
    assert len(exact.not_run) == MISSED_LIMIT and exact.oldest is None
