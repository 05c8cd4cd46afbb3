"""Issue #11 items of the local trigger: write completion (3), symlinks (9), commit failures
(13), and `max_pending` as a hard cap (14). Real files, a StepClock."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import pytest
import structlog

from tests.pollers.local_helpers import (
    SUB,
    WAIT,
    RecordingSink,
    mark,
    polled,
    running,
    write,
)
from watcherd.core.errors import StateError
from watcherd.engine.ports import FileChange


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    (tmp_path / SUB).mkdir()
    return tmp_path / SUB


def fired(sink: RecordingSink, name: str) -> list[FileChange]:
    return [c for c in sink.fired if c.name == f"{SUB}/{name}".encode()]


# ── item 3: a file open for writing runs once, at its close ──────────────────


async def test_sec_3_writer_pausing_longer_than_settle_runs_once_at_close(
    tmp_path: Path, inbox: Path
) -> None:
    poller, sink, _, clock = polled(tmp_path, events=True, settle=timedelta(seconds=2))
    async with running(poller):
        await clock.wait_for_wait()  # the baseline
        fd = os.open(inbox / "big.csv", os.O_WRONLY | os.O_CREAT)
        try:
            for i in range(3):
                os.write(fd, b"x" * 1000)
                await mark(sink, inbox, f"m{i}.csv")  # the write's events are handled
                await clock.step(5)  # the writer pauses 5 s (> settle), the file open
            assert fired(sink, "big.csv") == []
        finally:
            os.close(fd)
        await sink.until(lambda: bool(fired(sink, "big.csv")))
        await mark(sink, inbox, "last.csv")
        await clock.step(5)
    assert [c.version.split(":")[0] for c in fired(sink, "big.csv")] == ["3000"]


async def test_sec_3_a_created_file_waits_for_its_close_even_before_its_first_write(
    tmp_path: Path, inbox: Path
) -> None:
    poller, sink, _, clock = polled(tmp_path, events=True, settle=timedelta(seconds=2))
    async with running(poller):
        await clock.wait_for_wait()
        fd = os.open(inbox / "late.csv", os.O_WRONLY | os.O_CREAT)
        try:
            await mark(sink, inbox)
            await clock.step(5)
            assert fired(sink, "late.csv") == []  # never an empty file
            os.write(fd, b"abc")
        finally:
            os.close(fd)
        await sink.until(lambda: bool(fired(sink, "late.csv")))
    assert [c.version.split(":")[0] for c in fired(sink, "late.csv")] == ["3"]


async def test_a_hard_link_made_into_the_directory_runs_after_settle(
    tmp_path: Path, inbox: Path
) -> None:
    # link() makes a name with no open() and so no close: settle applies, as without events
    (tmp_path / "staged.csv").write_bytes(b"done")
    poller, sink, _, clock = polled(tmp_path, events=True, settle=timedelta(seconds=2))
    async with running(poller):
        await clock.wait_for_wait()
        os.link(tmp_path / "staged.csv", inbox / "linked.csv")
        await mark(sink, inbox)
        assert fired(sink, "linked.csv") == []
        await clock.step(2)
    assert len(fired(sink, "linked.csv")) == 1


# ── item 9: symlinks never make a run point outside the datastore root ──────


def _links(root: Path, outside: Path) -> None:
    inbox = root / SUB
    (outside / "secret.txt").write_bytes(b"token")
    (root / "shared.csv").write_bytes(b"inside")
    os.symlink(outside / "secret.txt", inbox / "leak.csv")
    os.symlink(os.path.relpath(outside / "secret.txt", inbox), inbox / "rel.csv")
    os.symlink(root / "shared.csv", inbox / "inside.csv")
    os.symlink(outside, inbox / "dir.csv")  # a directory: never entered


async def test_sec_9_symlinks_leading_outside_the_root_never_run_and_log_once(
    tmp_path: Path,
) -> None:
    root, outside = tmp_path / "ds", tmp_path / "etc"
    (root / SUB).mkdir(parents=True)
    outside.mkdir()
    _links(root, outside)
    poller, sink, _, clock = polled(root, initial="fire", settle=timedelta(0))
    with structlog.testing.capture_logs() as logs:
        async with running(poller):
            await clock.wait_for_wait()
            await clock.step(60)  # more rescans see the same links
            await clock.step(60)
    assert sink.names() == [f"{SUB}/inside.csv".encode()]
    skipped = [e for e in logs if e["event"] == "symlink_outside_root"]
    assert sorted(e["path"] for e in skipped) == [f"{SUB}/leak.csv", f"{SUB}/rel.csv"]
    assert skipped[0]["target"] == str(outside / "secret.txt")


async def test_sec_9_a_symlink_made_while_watching_is_checked_before_it_runs(
    tmp_path: Path,
) -> None:
    root, outside = tmp_path / "ds", tmp_path / "etc"
    (root / SUB).mkdir(parents=True)
    outside.mkdir()
    poller, sink, _, clock = polled(root, events=True, settle=timedelta(seconds=2))
    async with running(poller):
        await clock.wait_for_wait()
        _links(root, outside)
        await mark(sink, root / SUB)
        await clock.step(2)
    assert sorted(sink.names()) == [f"{SUB}/inside.csv".encode(), f"{SUB}/zz-marker.csv".encode()]


async def test_sec_9_follow_symlinks_always_follows_any_target(tmp_path: Path) -> None:
    root, outside = tmp_path / "ds", tmp_path / "etc"
    (root / SUB).mkdir(parents=True)
    outside.mkdir()
    _links(root, outside)
    poller, sink, _, clock = polled(root, initial="fire", settle=timedelta(0), follow="always")
    async with running(poller):
        await clock.wait_for_wait()
    assert sorted(sink.names()) == [
        f"{SUB}/{n}".encode() for n in ("inside.csv", "leak.csv", "rel.csv")
    ]


async def test_sec_9_a_watched_directory_that_is_a_symlink_outside_the_root_is_refused(
    tmp_path: Path,
) -> None:
    root, outside = tmp_path / "ds", tmp_path / "etc"
    root.mkdir()
    outside.mkdir()
    (outside / "shadow").write_bytes(b"x")
    os.symlink(outside, root / SUB)
    poller, sink, health, clock = polled(root, initial="fire", settle=timedelta(0))
    async with running(poller):
        await clock.wait_for_wait()
    assert sink.fired == [] and health.polls[0][0] is False
    assert "outside the datastore root" in (health.polls[0][2] or "")


async def test_sec_9_a_watched_directory_that_is_a_symlink_inside_the_root_is_followed(
    tmp_path: Path,
) -> None:
    root = tmp_path / "ds"
    (root / "real").mkdir(parents=True)
    (root / "real" / "a.csv").write_bytes(b"a")
    os.symlink(root / "real", root / SUB)
    poller, sink, _, clock = polled(root, initial="fire", settle=timedelta(0))
    async with running(poller):
        await clock.wait_for_wait()
    assert sink.names() == [f"{SUB}/a.csv".encode()]


async def test_sec_9_the_watched_directory_replaced_by_a_symlink_stops_runs(
    tmp_path: Path,
) -> None:
    root, outside = tmp_path / "ds", tmp_path / "etc"
    (root / SUB).mkdir(parents=True)
    outside.mkdir()
    poller, sink, health, clock = polled(root, events=True, settle=timedelta(seconds=2))
    async with running(poller):
        await clock.wait_for_wait()
        os.rename(root / SUB, root / "old")
        os.symlink(outside, root / SUB)
        (outside / "shadow").write_bytes(b"x")
        await health.until_polls(2)  # the move of the watched directory forced a rescan
        await clock.step(5)
        await clock.step(60)
    assert sink.fired == []
    assert not health.polls[-1][0] and "outside the datastore root" in (health.polls[-1][2] or "")


# ── item 13: a failing commit is logged once, then summarized ───────────────


class FailingSink(RecordingSink):
    def __init__(self) -> None:
        super().__init__()
        self.failing = False
        self.attempts = 0

    async def commit(
        self,
        schedule_id: str,
        baseline_key: str,
        upserts: Sequence[tuple[bytes, str]],
        deletes: Sequence[bytes],
        fire: Sequence[FileChange],
        marker: str | None = None,
    ) -> int:
        if self.failing:
            self.attempts += 1
            raise StateError("database or disk is full")
        return await super().commit(schedule_id, baseline_key, upserts, deletes, fire, marker)


async def test_sec_13_failing_commits_log_once_then_a_summary_never_a_traceback(
    tmp_path: Path, inbox: Path
) -> None:
    sink = FailingSink()
    poller, _, _, clock = polled(tmp_path, sink=sink, settle=timedelta(0))
    with structlog.testing.capture_logs() as logs:
        async with running(poller):
            await clock.wait_for_wait()  # the baseline
            sink.failing = True
            write(inbox / "a.csv")
            await clock.step(60)  # found, settled at once, the commit fails
            for _ in range(40):  # 200 s of a full disk
                await clock.step(5)
            assert sink.attempts >= 5  # backing off: 1, 2, 4 … 60 s
            sink.failing = False
            await clock.step(60)
    assert sink.names() == [f"{SUB}/a.csv".encode()]
    events = [e["event"] for e in logs]
    assert events.count("commit_failed") == 1
    assert 2 <= events.count("commit_still_failing") <= 4  # about one a minute
    assert events.count("commit_recovered") == 1
    assert not [e for e in logs if e["event"].startswith("commit_") and e.get("exc_info")]


# ── item 14: max_pending is never exceeded ───────────────────────────────────


class QueueSink(RecordingSink):
    """Counts the runs it queued; `take(n)` runs n of them."""

    def __init__(self) -> None:
        super().__init__()
        self.most = 0
        self._drained = asyncio.Event()

    async def commit(
        self,
        schedule_id: str,
        baseline_key: str,
        upserts: Sequence[tuple[bytes, str]],
        deletes: Sequence[bytes],
        fire: Sequence[FileChange],
        marker: str | None = None,
    ) -> int:
        n = await super().commit(schedule_id, baseline_key, upserts, deletes, fire, marker)
        self.queued += n
        self.most = max(self.most, self.queued)
        return n

    async def wait_below(self, schedule_id: str, limit: int) -> None:
        self.paused.set()
        while self.queued > limit:
            self._drained.clear()
            await self._drained.wait()

    def take(self, n: int) -> None:
        self.queued = max(0, self.queued - n)
        self._drained.set()


async def test_sec_14_a_rescan_never_queues_more_than_max_pending(
    tmp_path: Path, inbox: Path
) -> None:
    sink = QueueSink()
    poller, _, _, clock = polled(tmp_path, sink=sink, settle=timedelta(0), max_pending=100)
    async with running(poller):
        await clock.wait_for_wait()  # the (empty) baseline
        for i in range(250):
            write(inbox / f"f{i:03d}.csv")
        await clock.step(60)  # one rescan finds 250 new files
        assert sink.queued == 100
        # the snapshot holds exactly what was queued
        assert sorted(sink.snapshot or {}) == sorted(sink.names())
        async with asyncio.timeout(WAIT):
            while len(sink.fired) < 250:
                sink.take(30)
                await sink.until(lambda: sink.queued == 100 or len(sink.fired) == 250)
    assert sink.most == 100
    assert sorted(sink.names()) == sorted(f"{SUB}/f{i:03d}.csv".encode() for i in range(250))


# ── a `writing` state no close ends: the rescan asks the kernel (USERS 17) ───


async def test_a_file_truncated_by_path_runs_at_the_next_rescan(
    tmp_path: Path, inbox: Path
) -> None:
    """truncate(2) by path is a modify event with no open and so no close."""
    poller, sink, health, clock = polled(tmp_path, events=True, settle=timedelta(seconds=2))
    async with running(poller):
        await clock.wait_for_wait()
        write(inbox / "a.csv", b"abcdef")
        await sink.until(lambda: bool(fired(sink, "a.csv")))
        os.truncate(inbox / "a.csv", 3)
        await mark(sink, inbox)
        await clock.step(5)
        assert len(fired(sink, "a.csv")) == 1  # waits for a close: none comes
        await clock.step(60)  # the next rescan
        await sink.until(lambda: len(fired(sink, "a.csv")) == 2)
    assert [c.version.split(":")[0] for c in fired(sink, "a.csv")] == ["6", "3"]


async def test_a_file_created_by_an_open_for_reading_runs_at_the_next_rescan(
    tmp_path: Path, inbox: Path
) -> None:
    poller, sink, _, clock = polled(tmp_path, events=True, settle=timedelta(seconds=2))
    async with running(poller):
        await clock.wait_for_wait()
        os.close(os.open(inbox / "empty.csv", os.O_RDONLY | os.O_CREAT))
        await mark(sink, inbox)
        await clock.step(60)
        await sink.until(lambda: bool(fired(sink, "empty.csv")))
    assert [c.version.split(":")[0] for c in fired(sink, "empty.csv")] == ["0"]


async def test_a_writer_holding_its_file_open_is_waited_for_across_rescans(
    tmp_path: Path, inbox: Path
) -> None:
    poller, sink, health, clock = polled(tmp_path, events=True, settle=timedelta(seconds=2))
    async with running(poller):
        await clock.wait_for_wait()
        fd = os.open(inbox / "log.csv", os.O_WRONLY | os.O_CREAT)
        try:
            os.write(fd, b"x" * 100)
            await mark(sink, inbox)
            polls = len(health.polls)
            for _ in range(3):  # three rescans, the writer quiet but its file open
                await clock.step(60)
            await health.until_polls(polls + 3)
            assert fired(sink, "log.csv") == []
            os.write(fd, b"y" * 100)
        finally:
            os.close(fd)
        await sink.until(lambda: bool(fired(sink, "log.csv")))
        await mark(sink, inbox, "last.csv")
    assert [c.version.split(":")[0] for c in fired(sink, "log.csv")] == ["200"]


async def test_a_write_event_handled_after_an_overflow_does_not_hold_its_file(
    tmp_path: Path, inbox: Path
) -> None:
    """An overflow loses events: a modify read before it but handled after it must not wait
    for a close that may be among them (the inotify thread posts both, in that order)."""
    poller, sink, _, clock = polled(tmp_path, events=True, settle=timedelta(seconds=2))
    async with running(poller):
        await clock.wait_for_wait()
        write(inbox / "a.csv", b"abcdef")
        await sink.until(lambda: bool(fired(sink, "a.csv")))
        os.truncate(inbox / "a.csv", 3)  # a writer "has it open"
        await mark(sink, inbox)
        poller._post("writing", b"a.csv")  # read, not yet handled, when the queue overflows
        poller._post("overflow", b"")
        async with asyncio.timeout(WAIT):  # handled: waiting for its settle, not for a close
            while b"a.csv" not in poller._track.pending:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        await clock.step(2)
        await sink.until(lambda: len(fired(sink, "a.csv")) == 2)  # not a poll later
    assert [c.version.split(":")[0] for c in fired(sink, "a.csv")] == ["6", "3"]


async def test_where_the_kernel_cannot_tell_a_quiet_writer_waits_an_interval_then_settle(
    tmp_path: Path, inbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No lease (another user's file, a file system without them): a name with no event for a
    polling interval, and 5 minutes at least, is left to the settle rule."""
    from watcherd.pollers import localchanges

    monkeypatch.setattr(localchanges, "open_for_writing", lambda _, names: dict.fromkeys(names))
    poller, sink, _, clock = polled(tmp_path, events=True, settle=timedelta(seconds=2))
    async with running(poller):
        await clock.wait_for_wait()
        os.close(os.open(inbox / "b.csv", os.O_RDONLY | os.O_CREAT))
        await mark(sink, inbox)
        for _ in range(4):  # rescans 60, 120, 180, 240 s after its event: it waits
            await clock.step(60)
        assert fired(sink, "b.csv") == []
        await clock.step(60)  # the rescan 5 minutes after its event
        await clock.step(2)  # its settle
        await sink.until(lambda: bool(fired(sink, "b.csv")))
    assert [c.version.split(":")[0] for c in fired(sink, "b.csv")] == ["0"]
