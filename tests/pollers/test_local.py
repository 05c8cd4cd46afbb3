"""LocalPoller on real files in tmp_path, with a recording ChangeSink.

Event tests use the real clock, a far-away settle and poll, and a marker file as the sync
point: events are processed in order, so once the marker has fired every earlier event has
been handled, and the exact change set can be asserted. Settle tests turn events off and move
a StepClock (a ManualClock that also says when the poller is waiting again).
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog

from tests.pollers.local_helpers import (
    SUB,
    WAIT,
    RecordingHealth,
    RecordingSink,
    StepClock,
    evented,
    make,
    mark,
    polled,
    running,
    write,
)
from watcherd.engine.clock import SystemClock
from watcherd.pollers import local, localfs, localwatch
from watcherd.pollers.local import LocalPoller


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    (tmp_path / SUB).mkdir()
    return tmp_path / SUB


# ── events ────────────────────────────────────────────────────────────────────


async def test_dropped_file_fires_once_with_its_root_relative_name(
    tmp_path: Path, inbox: Path
) -> None:
    async with evented(tmp_path) as (_, sink):
        version = write(inbox / "a.csv", b"hello")
        await mark(sink, inbox)
    assert [(c.name, c.version) for c in sink.fired[:1]] == [(b"incoming/a.csv", version)]
    assert sink.names() == [b"incoming/a.csv", b"incoming/zz-marker.csv"]
    assert sink.fired[0].modified is not None


async def test_file_in_a_subdirectory_never_fires(tmp_path: Path, inbox: Path) -> None:
    async with evented(tmp_path) as (_, sink):
        (inbox / "sub").mkdir()
        write(inbox / "sub" / "deep.csv")
        await mark(sink, inbox)
    assert sink.names() == [b"incoming/zz-marker.csv"]


async def test_three_files_are_three_changes(tmp_path: Path, inbox: Path) -> None:
    async with evented(tmp_path) as (_, sink):
        for n in ("a.csv", "b.csv", "c.csv"):
            write(inbox / n)
        await mark(sink, inbox)
    assert sorted(sink.names()[:3]) == [b"incoming/a.csv", b"incoming/b.csv", b"incoming/c.csv"]
    assert len(sink.fired) == 4


async def test_rewrite_fires_once_more_and_delete_fires_nothing(
    tmp_path: Path, inbox: Path
) -> None:
    async with evented(tmp_path) as (_, sink):
        v1 = write(inbox / "a.csv", b"1")
        await sink.until(lambda: len(sink.fired) == 1)
        v2 = write(inbox / "a.csv", b"22")
        await sink.until(lambda: len(sink.fired) == 2)
        (inbox / "a.csv").unlink()
        await sink.until(lambda: b"incoming/a.csv" not in (sink.snapshot or {}))
        await mark(sink, inbox)
    assert [c.version for c in sink.fired[:2]] == [v1, v2]
    assert sink.names()[2:] == [b"incoming/zz-marker.csv"]
    assert [b"incoming/a.csv"] in [d for _, d, _ in sink.commits]


async def test_ignored_names_never_fire(tmp_path: Path, inbox: Path) -> None:
    async with evented(tmp_path) as (_, sink):
        for n in (".hidden", "x.tmp", "y.part", "z.partial", "d.crdownload", ".a.swp", "b~"):
            write(inbox / n)
        write(inbox / "~$report.docx")
        await mark(sink, inbox)
    assert sink.names() == [b"incoming/zz-marker.csv"]


async def test_slow_writer_fires_once_only_after_close(tmp_path: Path, inbox: Path) -> None:
    async with evented(tmp_path) as (_, sink):
        fd = os.open(inbox / "big.csv", os.O_WRONLY | os.O_CREAT)
        try:
            for _ in range(3):
                os.write(fd, b"x" * 4096)
            await mark(sink, inbox, "m1.csv")
            assert sink.names() == [b"incoming/m1.csv"]  # in progress: no fire yet
            os.write(fd, b"y" * 4096)
        finally:
            os.close(fd)
        await sink.until(lambda: len(sink.fired) == 2)
        await mark(sink, inbox, "m2.csv")
    big = [c for c in sink.fired if c.name == b"incoming/big.csv"]
    assert len(big) == 1 and big[0].version.startswith(f"{4 * 4096}:")
    assert sink.names() == [b"incoming/m1.csv", b"incoming/big.csv", b"incoming/m2.csv"]


async def test_file_renamed_into_the_directory_fires_once(tmp_path: Path, inbox: Path) -> None:
    outside = tmp_path / "staging"
    outside.mkdir()
    write(outside / "a.csv", b"abc")
    async with evented(tmp_path) as (_, sink):
        os.rename(outside / "a.csv", inbox / "a.csv")
        write(inbox / "b.csv.tmp", b"partial")
        os.rename(inbox / "b.csv.tmp", inbox / "b.csv")
        await mark(sink, inbox)
    assert sink.names() == [b"incoming/a.csv", b"incoming/b.csv", b"incoming/zz-marker.csv"]


async def test_symlink_to_file_followed_symlink_to_dir_ignored(tmp_path: Path, inbox: Path) -> None:
    (tmp_path / "target.csv").write_bytes(b"t")
    (tmp_path / "somedir").mkdir()
    (tmp_path / "somedir" / "inner.csv").write_bytes(b"i")
    sched, ds = make(tmp_path, events=False, initial="fire", settle=timedelta(0))
    sink, clock = RecordingSink(), StepClock()
    os.symlink(tmp_path / "target.csv", inbox / "link.csv")
    os.symlink(tmp_path / "somedir", inbox / "dirlink.csv")
    poller = LocalPoller(
        schedule=sched, datastore=ds, sink=sink, health=RecordingHealth(), clock=clock
    )
    async with running(poller):
        await clock.wait_for_wait()
    target = os.stat(tmp_path / "target.csv")
    assert [(c.name, c.version) for c in sink.fired] == [
        (b"incoming/link.csv", f"1:{target.st_mtime_ns}:{target.st_ino}")
    ]


async def test_pattern_selects_names(tmp_path: Path, inbox: Path) -> None:
    async with evented(tmp_path, pattern=("*.csv", "data_??")) as (_, sink):
        for n in ("a.txt", "data_01", "data_001", "b.csv"):
            write(inbox / n)
        await mark(sink, inbox)
    assert sorted(sink.names()) == [
        b"incoming/b.csv",
        b"incoming/data_01",
        b"incoming/zz-marker.csv",
    ]


async def test_non_utf8_name_stays_bytes(tmp_path: Path, inbox: Path) -> None:
    raw = os.path.join(os.fsencode(inbox), b"caf\xe9 $(x)\n.csv")
    async with evented(tmp_path) as (_, sink):
        os.close(os.open(raw, os.O_WRONLY | os.O_CREAT))
        await mark(sink, inbox)
    assert sink.names()[0] == b"incoming/caf\xe9 $(x)\n.csv"


async def test_mtime_only_change_right_after_eligibility_is_the_same_version(
    tmp_path: Path, inbox: Path
) -> None:
    async with evented(tmp_path, settle=timedelta(seconds=30)) as (_, sink):
        write(inbox / "a.csv", b"data")
        await sink.until(lambda: len(sink.fired) == 1)
        os.utime(inbox / "a.csv", ns=(1, 1_000_000_000))  # e.g. shutil.copy2's copystat
        await sink.until(
            lambda: (sink.snapshot or {})[b"incoming/a.csv"].split(":")[1] == "1000000000"
        )
        await mark(sink, inbox)
    assert sink.names() == [b"incoming/a.csv", b"incoming/zz-marker.csv"]


async def test_a_same_size_rewrite_right_after_eligibility_is_new_content(
    tmp_path: Path, inbox: Path
) -> None:
    """Only the mtime differs, within `settle`, but a close after a write reports it: a file
    rewritten while its run reads it runs again (USERS 19); a `touch` (above) does not."""
    async with evented(tmp_path, settle=timedelta(seconds=30)) as (_, sink):
        write(inbox / "a.csv", b"AAAA")
        await sink.until(lambda: len(sink.fired) == 1)
        rewritten = write(inbox / "a.csv", b"BBBB")
        await mark(sink, inbox)
    assert sink.names() == [b"incoming/a.csv", b"incoming/a.csv", b"incoming/zz-marker.csv"]
    assert sink.fired[1].version == rewritten


async def test_overflow_forces_a_full_rescan(tmp_path: Path, inbox: Path) -> None:
    health = RecordingHealth()
    sched, ds = make(tmp_path, events=True)
    sink = RecordingSink()
    poller = LocalPoller(
        schedule=sched, datastore=ds, sink=sink, health=health, clock=SystemClock()
    )
    with structlog.testing.capture_logs() as logs:
        async with running(poller):
            await sink.until(lambda: bool(sink.commits))
            assert len(health.polls) == 1
            watch = poller._events.watch
            assert watch is not None
            watch.on_queue_overflow()  # what watchdog's InotifyFD calls
            await health.until_polls(2)
        assert not watch.alive  # removed on cancel
    assert "events_overflow" in [e["event"] for e in logs]


# ── settle, polling, baseline, failures ───────────────────────────────────────


async def test_events_off_change_fires_after_settle_at_its_own_deadline(
    tmp_path: Path, inbox: Path
) -> None:
    poller, sink, _, clock = polled(tmp_path)
    async with running(poller):
        await clock.wait_for_wait()
        version = write(inbox / "a.csv")
        await clock.step(60)  # the poll finds it, not yet settled
        assert sink.fired == []
        await clock.step(1.9)
        assert sink.fired == []
        await clock.step(0.1)  # 2 s after the poll: re-stat, unchanged, eligible
        assert [(c.name, c.version) for c in sink.fired] == [(b"incoming/a.csv", version)]
        await clock.step(60)  # the next poll sees nothing new
    assert len(sink.fired) == 1


async def test_a_growing_file_waits_until_it_stops_changing(tmp_path: Path, inbox: Path) -> None:
    poller, sink, _, clock = polled(tmp_path, settle=timedelta(seconds=5))
    async with running(poller):
        await clock.wait_for_wait()
        write(inbox / "a.csv", b"1")
        await clock.step(60)
        write(inbox / "a.csv", b"12")
        await clock.step(5)  # changed since the poll: a new 5 s deadline
        assert sink.fired == []
        await clock.step(4)
        assert sink.fired == []
        await clock.step(1)
    assert [c.version.split(":")[0] for c in sink.fired] == ["2"]


async def test_baseline_skip_records_present_files_and_fires_nothing(
    tmp_path: Path, inbox: Path
) -> None:
    v = write(inbox / "old.csv")
    poller, sink, health, clock = polled(tmp_path)
    with structlog.testing.capture_logs() as logs:
        async with running(poller):
            await clock.wait_for_wait()
            await clock.step(10)
    assert sink.commits == [([(b"incoming/old.csv", v)], [], [])]
    assert health.polls[0] == (True, 1, None)
    assert {"event": "baseline_taken", "files": 1, "initial": "skip", "log_level": "info"} in logs


async def test_baseline_fire_fires_present_files_once_settled(tmp_path: Path, inbox: Path) -> None:
    v = write(inbox / "old.csv")
    poller, sink, _, clock = polled(tmp_path, initial="fire")
    async with running(poller):
        await clock.wait_for_wait()
        assert sink.commits == [([], [], [])]  # the baseline, empty
        await clock.step(2)
    assert [(c.name, c.version) for c in sink.fired] == [(b"incoming/old.csv", v)]


async def test_changes_while_down_fire_and_deletions_are_recorded(
    tmp_path: Path, inbox: Path
) -> None:
    same = write(inbox / "same.csv")
    write(inbox / "changed.csv", b"old")
    sched, ds = make(tmp_path, events=False)
    key = LocalPoller(
        schedule=sched,
        datastore=ds,
        sink=RecordingSink(),
        health=RecordingHealth(),
        clock=StepClock(),
    ).baseline_key
    before = {
        b"incoming/same.csv": same,
        b"incoming/changed.csv": "3:1:1",
        b"incoming/gone.csv": "1:1:1",
    }
    new = write(inbox / "new.csv")
    sink = RecordingSink(before, key)
    poller, _, _, clock = polled(tmp_path, sink=sink)
    async with running(poller):
        await clock.wait_for_wait()
        assert sink.commits[0][1] == [b"incoming/gone.csv"] and sink.fired == []
        await clock.step(2)
    assert sorted((c.name, c.version) for c in sink.fired) == sorted(
        [
            (b"incoming/changed.csv", sink.snapshot[b"incoming/changed.csv"]),  # type: ignore[index]
            (b"incoming/new.csv", new),
        ]
    )


async def test_missing_directory_fails_once_then_recovers(tmp_path: Path) -> None:
    poller, sink, health, clock = polled(tmp_path, polling_interval=timedelta(seconds=30))
    with structlog.testing.capture_logs() as logs:
        async with running(poller):
            await clock.wait_for_wait()
            await clock.step(2)  # backoff 1-2 s (engine.retry.backoff_delay: with jitter)
            await clock.step(3)  # then 2-3 s
            assert [ok for ok, _, _ in health.polls] == [False, False, False]
            assert "No such file or directory" in (health.polls[0][2] or "")
            (tmp_path / SUB).mkdir()
            write(tmp_path / SUB / "a.csv")
            await clock.step(5)
            assert health.polls[-1] == (True, 1, None)
            assert sink.commits and sink.fired == []  # the baseline, taken on recovery
    events = [e["event"] for e in logs]
    assert events.count("poll_failed") == 1
    assert "poll_recovered" in events


async def test_backpressure_pauses_diffing_without_advancing_the_snapshot(
    tmp_path: Path, inbox: Path
) -> None:
    poller, sink, health, clock = polled(tmp_path, settle=timedelta(0), max_pending=2)
    with structlog.testing.capture_logs() as logs:
        async with running(poller):
            await clock.wait_for_wait()
            sink.queued = 3
            write(inbox / "a.csv")
            clock.advance(60)
            async with asyncio.timeout(WAIT):
                await sink.paused.wait()
            assert len(health.polls) == 1 and len(sink.commits) == 1  # paused
            sink.queued = 0
            sink.released.set()
            await sink.until(lambda: len(sink.fired) == 1)
    assert [e["event"] for e in logs if e["event"].startswith("poll_")] == [
        "poll_paused",
        "poll_resumed",
    ]


async def test_events_unavailable_falls_back_to_polling(
    tmp_path: Path, inbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kw: Any) -> None:
        raise OSError(28, "inotify watch limit reached")

    monkeypatch.setattr(localwatch, "start_dir_watch", refuse)
    sched, ds = make(tmp_path, events=True, polling_interval=timedelta(seconds=60))
    sink, clock = RecordingSink(), StepClock()
    poller = LocalPoller(
        schedule=sched, datastore=ds, sink=sink, health=RecordingHealth(), clock=clock
    )
    with structlog.testing.capture_logs() as logs:
        async with running(poller):
            await clock.wait_for_wait()
            write(inbox / "a.csv")
            await clock.step(60)
            await clock.step(2)
            await clock.step(60)
    assert sink.names() == [b"incoming/a.csv"]
    assert [e["event"] for e in logs].count("events_unavailable") == 1


async def test_a_directory_unreadable_for_a_while_gets_its_events_back(
    tmp_path: Path, inbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """inotify refused with EACCES (the directory unreadable, as its listing is): the poll
    fails and is retried, and once it can be read the watch starts; events are not given up
    for good as when inotify itself is unavailable (above). Root reads any directory, so the
    kernel's refusal is played once here."""
    real, refused = localwatch.start_dir_watch, []

    def once(*args: Any, **kw: Any) -> Any:
        if not refused:
            refused.append(True)
            raise PermissionError(13, "inotify_add_watch refused")
        return real(*args, **kw)

    monkeypatch.setattr(localwatch, "start_dir_watch", once)
    health = RecordingHealth()
    sched, ds = make(tmp_path, events=True, settle=timedelta(minutes=10))
    sink = RecordingSink()
    poller = LocalPoller(
        schedule=sched, datastore=ds, sink=sink, health=health, clock=SystemClock()
    )
    with structlog.testing.capture_logs() as logs:
        async with running(poller):
            await health.until_polls(2)  # the refused attempt, then the retry's baseline
            write(inbox / "a.csv")  # an event: settle is 10 min, so only an event fires it
            await sink.until(lambda: sink.names() == [b"incoming/a.csv"])
    assert health.polls[0][0] is False and health.polls[1][0] is True
    assert "events_unavailable" not in [e["event"] for e in logs]


async def test_an_overrun_is_logged_counted_and_missed_ticks_skipped(
    tmp_path: Path, inbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    poller, _, health, clock = polled(tmp_path)
    slow = [True]

    class SlowScan(localfs.DirScan):
        def next_chunk(self) -> localfs.ScanChunk:
            if slow[0]:  # the scan "takes" 90 s of a 60 s interval
                clock._now += timedelta(seconds=90)
                clock._mono += 90
            return super().next_chunk()

    monkeypatch.setattr(local, "DirScan", SlowScan)
    with structlog.testing.capture_logs() as logs:
        async with running(poller):
            await clock.wait_for_wait()
            slow[0] = False
            await clock.step(29)  # t=119: the ticks at 60 were missed, the next is 120
            assert len(health.polls) == 1
            await clock.step(1)
            assert len(health.polls) == 2
    overruns = [e for e in logs if e["event"] == "poll_overrun"]
    assert len(overruns) == 1 and overruns[0]["interval"] == 60.0
    metrics = poller._metrics
    assert metrics is not None
    assert metrics.poll_overruns.labels(schedule="reactive")._value.get() == 1
