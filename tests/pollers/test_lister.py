"""Issue #14: the first listing of a big directory is made by a helper process (`lister`).

It must list exactly what a listing on a thread lists (hostile names included), report the
directory's own errors as the thread would, stop with its scan, and, when it cannot start or
dies, leave the daemon listing on threads. Its speed is in bench/big_dir.py."""

from __future__ import annotations

import asyncio
import os
import struct
import sys
import time
from array import array
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.pollers.local_helpers import SUB, WAIT, helper_starts, polled, running, write
from watcherd.core.children import WAITED
from watcherd.core.matching import NameMatcher
from watcherd.dispatch.process import Reaper
from watcherd.pollers import lister, localfs

HOSTILE = [
    b"new\nline.csv",
    b"sp ace.csv",
    b"\xff\xfe-not-utf8.csv",
    b"-rf",
    b"$(touch pwned).csv",
    b"quote'\"`.csv",
]


@pytest.fixture(autouse=True)
def helpers_on(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts with helpers usable and room for several, and ends with every
    helper it started waited for (a killed one is reaped by a thread: soon after)."""
    monkeypatch.setattr(lister, "_off_until", 0.0)
    monkeypatch.setattr(lister, "MAX_LIVE", 8)
    yield
    deadline = time.monotonic() + WAIT
    while lister._live and time.monotonic() < deadline:
        time.sleep(0.01)
    assert lister._live == 0


@pytest.fixture
def big(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every directory counts as big: its first listing goes to a helper."""
    monkeypatch.setattr(lister, "HELPER_MIN_BYTES", 0)


def _tree(root: Path) -> bytes:
    """A directory (its own name hostile) of regular files with hostile names, and entries a
    listing must leave out: a subdirectory, a FIFO, a symlink to a directory, a dangling one."""
    d = root / "in box\n$(x)"
    d.mkdir()
    base = os.fsencode(d)
    for name in HOSTILE + [b"f%03d.csv" % i for i in range(40)]:
        with open(base + b"/" + name, "wb") as f:
            f.write(name)
    (d / "sub").mkdir()
    write(d / "sub" / "deep.csv")
    os.mkfifo(d / "fifo")
    os.symlink(d / "sub", d / "dirlink")
    os.symlink(d / "nowhere", d / "dangling")
    os.symlink(d / "f000.csv", d / "filelink.csv")  # a file through a symlink: listed
    os.utime(d / "f001.csv", ns=(0, 10**19))  # after 2262: its mtime_ns is not an int64
    return base


def _list(
    path: bytes, *, quiet: bool, helper: bool, m: pytest.MonkeyPatch
) -> tuple[list[object], int]:
    """What a first listing gives (sorted), and how many calls it took."""
    m.setattr(lister, "HELPER_MIN_BYTES", 0 if helper else 1 << 62)
    scan = localfs.DirScan(path, NameMatcher(["*"], [".*"]), {}, quiet=quiet, first=True)
    rows: list[object] = []
    used = False
    calls = 0
    while True:
        calls += 1
        chunk = scan.next_chunk()
        used = used or scan._helper is not None
        assert not chunk.changed and not chunk.gone
        rows += zip(chunk.new_names, chunk.new_fps, chunk.new_versions, strict=True)
        if quiet:
            assert chunk.new_obs == []  # a skip-baseline keeps no versions as tuples
        else:
            rows += [("obs", o) for o in chunk.new_obs]
        if chunk.done:
            break
    assert used == helper
    assert scan.known == 0
    return sorted(rows, key=repr), calls


@pytest.mark.parametrize("quiet", [True, False])
def test_the_helper_lists_what_a_thread_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quiet: bool
) -> None:
    monkeypatch.setattr(localfs, "CHUNK", 7)  # many chunks, and one helper chunk per call
    path = _tree(tmp_path)
    on_thread = _list(path, quiet=quiet, helper=False, m=monkeypatch)
    by_helper = _list(path, quiet=quiet, helper=True, m=monkeypatch)
    assert by_helper == on_thread  # the same rows, in as many calls (the last says done)
    names = {row[0] for row in on_thread[0] if row[0] != "obs"}  # type: ignore[index]
    assert set(HOSTILE) <= names and b"filelink.csv" in names
    assert not names & {b"sub", b"fifo", b"dirlink", b"dangling", b"deep.csv"}
    assert len(names) == len(HOSTILE) + 40 + 1
    assert not (tmp_path / "pwned").exists()


def _fake_helper(tmp_path: Path, body: str) -> str:
    """An executable standing in for the interpreter: `body` runs instead of the lister."""
    fake = tmp_path / "fake-python"
    head = "import os, struct, sys, time\nfrom array import array\n"
    fake.write_text(f"#!{sys.executable}\n{head}{body}\n")
    fake.chmod(0o755)
    return str(fake)


def _chunk(
    names: list[bytes], *, last: bool, obs: list[tuple[int, int, int]] | None = None
) -> bytes:
    """One chunk on the wire; each name's (size, mtime_ns, inode) from `obs`, else (its
    index, 2, 3)."""
    obs = obs or [(i, 2, 3) for i in range(len(names))]
    nums = array("q", [n for o in obs for n in o]).tobytes()
    blob = b"\0".join(names)
    return struct.pack("=5I", 1 if last else 0, len(names), len(blob), 0, 0) + blob + nums


def _started(path: bytes, chunk: int = 16) -> lister.Lister:
    fd = os.open(path, os.O_RDONLY)
    try:
        helper = lister.start(fd, path, chunk)
    finally:
        os.close(fd)
    assert helper is not None
    return helper


def test_a_directory_the_helper_cannot_list_raises_what_a_thread_would(tmp_path: Path) -> None:
    """The helper's error reading the directory (here its descriptor is a file's) comes back
    as the OSError `os.scandir` raises, and is not the helper's failure."""
    (tmp_path / "file").write_bytes(b"x")
    path = os.fsencode(tmp_path / "file")
    helper = _started(path)
    with pytest.raises(NotADirectoryError) as by_helper:
        helper.read()
    with pytest.raises(NotADirectoryError) as on_thread:
        os.scandir(path)
    assert str(by_helper.value) == str(on_thread.value)
    assert helper._proc.returncode == 0  # reaped; an error of the directory, not the helper
    assert lister.usable() and lister._live == 0 and helper._proc.pid not in WAITED


def test_the_helper_lists_the_directory_that_was_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, big: None
) -> None:
    """The directory is swapped for another between the check and the helper's start (its
    interpreter takes tens of ms to start): the helper still lists the one checked, through
    the descriptor it inherits, not whatever is at the path by then."""
    path = _tree(tmp_path)
    moved = os.fsencode(tmp_path / "moved")
    swap = (
        f"os.rename({path!r}, {moved!r}); os.mkdir({path!r})\n"
        f"open({path + b'/new.csv'!r}, 'wb').close()\n"
        f"os.execv({sys.executable!r}, [{sys.executable!r}, *sys.argv[1:]])"
    )
    monkeypatch.setattr(sys, "executable", _fake_helper(tmp_path, swap))
    scan = localfs.DirScan(path, NameMatcher(["*"]), {}, quiet=True, first=True)
    chunk = scan.next_chunk()
    # (filelink.csv now dangles: its target's absolute path went with the old directory)
    assert chunk.done and set(chunk.new_names) == {*HOSTILE, *(b"f%03d.csv" % i for i in range(40))}
    assert os.path.exists(path + b"/new.csv")


@pytest.mark.parametrize("helper", [True, False])
def test_a_directory_replaced_since_its_check_is_not_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, helper: bool
) -> None:
    """By a helper or on a thread, the listing is of the directory `next_chunk` checked:
    another one at the path is refused as the poller's `DirChanged`, nothing started."""
    monkeypatch.setattr(lister, "HELPER_MIN_BYTES", 0 if helper else 1 << 62)
    started = helper_starts(monkeypatch)
    path = _tree(tmp_path)
    scan = localfs.DirScan(path, NameMatcher(["*"]), {}, quiet=True, first=True)
    scan.ident = (0, 0)  # as if checked when another directory was there
    with pytest.raises(localfs.DirChanged, match="directory replaced"):
        scan.next_chunk()
    assert started == [] and scan._helper is None and scan._it is None
    scan.close()


def test_closing_a_scan_stops_its_helper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, big: None
) -> None:
    """A helper with more to say (one chunk, then it would take a minute) is killed by the
    scan's close, which does not wait: a thread reaps it, then frees its pid and its slot."""
    path = _tree(tmp_path)
    one = _chunk([b"a.csv"], last=False)
    body = f"sys.stdout.buffer.write({one!r}); sys.stdout.flush(); time.sleep(60)"
    monkeypatch.setattr(sys, "executable", _fake_helper(tmp_path, body))
    scan = localfs.DirScan(path, NameMatcher(["*"]), {}, quiet=True, first=True)
    assert scan.next_chunk().new_names == [b"a.csv"]
    helper = scan._helper
    assert helper is not None
    proc = helper._proc
    assert proc.pid in WAITED and lister._live == 1
    scan.close()
    deadline = time.monotonic() + WAIT
    while (proc.pid in WAITED or lister._live) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.returncode == -9 and proc.pid not in WAITED and lister._live == 0
    with pytest.raises(ProcessLookupError):
        os.kill(proc.pid, 0)  # and reaped: no zombie left
    assert scan.next_chunk().done


def test_at_most_max_live_helpers_run_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, big: None
) -> None:
    """Each helper takes a core: a first listing that finds MAX_LIVE running goes on a
    thread (and lists the same), and a helper's end frees its slot."""
    monkeypatch.setattr(localfs, "CHUNK", 2)  # so the first scan's helper is still there
    monkeypatch.setattr(lister, "MAX_LIVE", 1)
    path = _tree(tmp_path)
    started = helper_starts(monkeypatch)
    first = localfs.DirScan(path, NameMatcher(["*"]), {}, quiet=True, first=True)
    first.next_chunk()
    assert first._helper is not None
    second = localfs.DirScan(path, NameMatcher(["*"]), {}, quiet=True, first=True)
    names: list[bytes] = []
    while True:
        chunk = second.next_chunk()
        names += chunk.new_names
        if chunk.done:
            break
    assert started[1] is None and len(set(names)) == len(HOSTILE) + 41
    while not first.next_chunk().done:  # read to its end: its helper is waited for
        pass
    assert lister._live == 0
    third = localfs.DirScan(path, NameMatcher(["*"]), {}, quiet=True, first=True)
    third.next_chunk()
    assert started[2] is not None
    third.close()


def test_a_name_longer_than_linux_name_max_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """exFAT, NTFS3 and CIFS names reach 765 bytes in UTF-8: a header announcing them is
    not a malformed one (that would turn helpers off for RETRY_AFTER and fail a poll)."""
    long = ("é" * 382).encode() + b".csv"  # 768 bytes
    body = f"sys.stdout.buffer.write({_chunk([long, b'b.csv'], last=True)!r})"
    monkeypatch.setattr(sys, "executable", _fake_helper(tmp_path, body))
    helper = _started(os.fsencode(tmp_path))
    names, obs, last = helper.read()
    assert names == [long, b"b.csv"] and list(obs) == [(0, 2, 3), (1, 2, 3)] and last
    assert lister.usable()


@pytest.mark.parametrize("executable", ["/bin/true", "/bin/echo"])
def test_a_helper_that_fails_at_once_leaves_the_listing_to_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, big: None, executable: str
) -> None:
    """/bin/true says nothing; /bin/echo says something that is not the wire format (its
    header would ask for gigabytes: refused before any is read)."""
    path = _tree(tmp_path)
    now = [1000.0]
    monkeypatch.setattr(lister, "time", SimpleNamespace(monotonic=lambda: now[0]))
    real = sys.executable
    monkeypatch.setattr(sys, "executable", executable)
    scan = localfs.DirScan(path, NameMatcher(["*"]), {}, quiet=True, first=True)
    chunk = scan.next_chunk()
    assert scan._helper is None and chunk.done and len(chunk.new_names) == len(HOSTILE) + 41
    assert not lister.usable()  # later listings use threads from the start ...
    monkeypatch.setattr(sys, "executable", real)
    now[0] += lister.RETRY_AFTER - 1
    assert not lister.usable()
    now[0] += 1  # ... for RETRY_AFTER seconds: then a helper is tried again
    assert lister.usable()
    started = helper_starts(monkeypatch)
    again = localfs.DirScan(path, NameMatcher(["*"]), {}, quiet=True, first=True)
    chunk = again.next_chunk()
    assert len(started) == 1 and started[0] is not None and chunk.done
    assert len(chunk.new_names) == len(HOSTILE) + 41 and lister.usable()


def test_a_helper_that_dies_mid_listing_fails_that_poll_and_later_ones_use_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, big: None
) -> None:
    path = _tree(tmp_path)
    fake = tmp_path / "one-chunk-then-dies"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import struct, sys\n"
        "from array import array\n"
        "sys.stdout.buffer.write(struct.pack('=5I', 0, 1, 5, 0, 0) + b'a.csv'"
        " + array('q', [1, 2, 3]).tobytes())\n"
    )
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    scan = localfs.DirScan(path, NameMatcher(["*"]), {}, quiet=False, first=True)
    chunk = scan.next_chunk()
    assert chunk.new_names == [b"a.csv"] and chunk.new_obs == [(1, 2, 3)] and not chunk.done
    with pytest.raises(lister.HelperFailed, match="listing helper failed"):
        scan.next_chunk()
    assert isinstance(lister.HelperFailed(), OSError)  # the poller's path for a failed poll
    assert not lister.usable()
    scan.close()
    again = localfs.DirScan(path, NameMatcher(["*"]), {}, quiet=True, first=True)
    chunk = again.next_chunk()
    assert again._helper is None and chunk.done and len(chunk.new_names) == len(HOSTILE) + 41


def test_a_helper_that_cannot_start_leaves_the_listing_to_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, big: None
) -> None:
    path = _tree(tmp_path)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    scan = localfs.DirScan(path, NameMatcher(["*"]), {}, quiet=False, first=True)
    chunk = scan.next_chunk()
    assert scan._helper is None and chunk.done and len(chunk.new_obs) == len(HOSTILE) + 41
    assert not lister.usable()


def test_only_a_first_listing_of_a_big_directory_uses_a_helper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(localfs, "CHUNK", 2)  # so a helper is still there after one call
    path = _tree(tmp_path)
    size = os.stat(path).st_size
    monkeypatch.setattr(lister, "HELPER_MIN_BYTES", size + 1)
    small = localfs.DirScan(path, NameMatcher(["*"]), {}, quiet=True, first=True)
    small.next_chunk()
    small.close()
    assert small._helper is None
    monkeypatch.setattr(lister, "HELPER_MIN_BYTES", size)
    rescan = localfs.DirScan(path, NameMatcher(["*"]), {b"f000.csv": 1}, quiet=True, first=True)
    rescan.next_chunk()
    rescan.close()
    assert rescan._helper is None  # a snapshot to compare against: listed on a thread
    emptied = localfs.DirScan(path, NameMatcher(["*"]), {}, quiet=True)
    emptied.next_chunk()
    emptied.close()
    assert emptied._helper is None  # an empty snapshot after a baseline: not a first listing
    first = localfs.DirScan(path, NameMatcher(["*"]), {}, quiet=True, first=True)
    first.next_chunk()
    assert first._helper is not None
    first.close()


async def test_a_poller_takes_its_baseline_through_a_helper_then_runs_new_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, big: None
) -> None:
    monkeypatch.setattr(localfs, "CHUNK", 16)
    inbox = tmp_path / SUB
    inbox.mkdir()
    for i in range(100):
        write(inbox / f"old{i:03d}.csv")
    started = helper_starts(monkeypatch)
    poller, sink, _, clock = polled(tmp_path)
    async with running(poller):
        await clock.wait_for_wait()
        assert len(started) == 1 and started[0] is not None
        assert len(sink.snapshot or {}) == 100 and sink.fired == []  # skipped, recorded
        assert sink.marker == ""  # the baseline is complete
        version = write(inbox / "new.csv")
        await clock.step(60)
        await clock.step(2)  # settle
    assert [(c.name, c.version) for c in sink.fired] == [(b"incoming/new.csv", version)]
    assert len(started) == 1  # the rescan compared against the snapshot, on a thread


def test_the_orphan_reaper_leaves_a_helper_to_its_lister(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A helper that has exited while its last chunk waits in the pipe (a scan paused by
    max_pending) is a zombie child of the daemon: the orphan reaper (the daemon as PID 1)
    must not reap it, or the lister's wait() and kill() would act on a pid the kernel may
    have given to another process."""
    body = f"sys.stdout.buffer.write({_chunk([b'a.csv'], last=True)!r})"
    monkeypatch.setattr(sys, "executable", _fake_helper(tmp_path, body))
    helper = _started(os.fsencode(tmp_path))
    pid = helper._proc.pid
    deadline = time.monotonic() + WAIT
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the helper did not exit"
        time.sleep(0.01)
    reaper = Reaper()
    assert reaper.reap() == [] and reaper.reap() == []  # a zombie at two passes: still left
    names, _, last = helper.read()
    assert names == [b"a.csv"] and last and helper._proc.returncode == 0
    assert pid not in WAITED


async def test_a_helper_dying_mid_listing_leaves_the_pollers_events_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, big: None
) -> None:
    """The poll fails (its chunks so far are taken) but the directory is fine: its watch
    stays, and a file written after the failure still runs through its event."""
    inbox = tmp_path / SUB
    inbox.mkdir()
    for i in range(5):
        write(inbox / f"old{i}.csv")
    st = os.stat(inbox / "old0.csv")  # its true version: it has not changed since
    one = _chunk([b"old0.csv"], last=False, obs=[(st.st_size, st.st_mtime_ns, st.st_ino)])
    body = f"sys.stdout.buffer.write({one!r})"
    monkeypatch.setattr(sys, "executable", _fake_helper(tmp_path, body))  # then it dies
    poller, sink, health, clock = polled(tmp_path, events=True)
    async with running(poller):
        await health.until_polls(1)
        ok, _, error = health.polls[0]
        assert not ok and error is not None and "listing helper failed" in error
        assert isinstance(poller._events.watching(), tuple)  # still watched
        await clock.step(60)  # the retry lists on a thread: the baseline
        assert health.polls[-1][0] and sink.fired == []
        version = write(inbox / "new.csv")
        async with asyncio.timeout(WAIT):
            while not sink.fired:
                await clock.step(1)
        await clock.step(5)  # past every settle deadline: nothing else runs
    assert [(c.name, c.version) for c in sink.fired] == [(b"incoming/new.csv", version)]


def test_a_directory_opened_as_a_standard_fd_is_listed(tmp_path: Path) -> None:
    """A daemon started with stdin closed opens the directory as fd 0, which the child's
    own stdin would replace: the helper gets a copy above 2 instead."""
    path = _tree(tmp_path)
    saved = os.dup(0)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        os.dup2(fd, 0)
        os.close(fd)
        helper = lister.start(0, path, 1000)
    finally:
        os.dup2(saved, 0)
        os.close(saved)
    assert helper is not None
    names, _, last = helper.read()
    assert last and set(HOSTILE) <= set(names) and lister.usable()
