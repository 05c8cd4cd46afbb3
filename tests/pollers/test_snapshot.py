"""The compact snapshot, its diff, and the local directory scanner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from watcherd.core.matching import NameMatcher
from watcherd.core.snapshot import Snapshot, baseline_key, fingerprint
from watcherd.pollers import localfs
from watcherd.pollers.localfs import DirScan, local_fingerprint, missing_names, version_of


def test_diff_reports_new_modified_and_deleted() -> None:
    snap = Snapshot.from_versions({b"a": "e1", b"b": "e2", b"gone": "e3"})
    diff = snap.diff([(b"a", "e1"), (b"b", "e2-new"), (b"c", "e4")])
    assert diff.upserts == [(b"b", "e2-new"), (b"c", "e4")]
    assert diff.deletes == [b"gone"]
    snap.apply(diff.upserts, diff.deletes)
    assert not snap.diff([(b"a", "e1"), (b"b", "e2-new"), (b"c", "e4")])
    assert sorted(snap) == [b"a", b"b", b"c"] and len(snap) == 3


def test_diff_of_an_unchanged_listing_is_empty_and_a_repeat_counts_once() -> None:
    snap = Snapshot.from_versions({b"a": "1"})
    assert not snap.diff([(b"a", "1"), (b"a", "1")])
    assert snap.diff([(b"a", "1"), (b"a", "2")]).upserts == [(b"a", "2")]
    assert snap.changed(b"new", "1") and not snap.changed(b"a", "1")


def test_baseline_key_is_stable_and_sensitive() -> None:
    k = baseline_key("local", "/srv/inbox", "incoming", "*")
    assert k == baseline_key("local", "/srv/inbox", "incoming", "*")
    assert k != baseline_key("local", "/srv/inbox", "incoming", "*.csv")
    assert len(k) == 32


def test_local_fingerprint_matches_the_scan() -> None:
    obs = (10, 1_700_000_000_123_456_789, 42)
    snap = Snapshot(local_fingerprint)
    snap.apply([(b"a", version_of(obs))])
    assert snap.fps[b"a"] == hash(obs) & ((1 << 60) - 1)
    assert local_fingerprint("garbage") == -1


def test_a_frozen_snapshot_keeps_its_base_and_sees_through_its_overlay() -> None:
    snap = Snapshot.from_versions({b"a": "1", b"b": "2"})
    base = snap.freeze()
    snap.apply([(b"c", "3"), (b"a", "1b")], [b"b"])
    assert dict(base) == {b"a": fingerprint("1"), b"b": fingerprint("2")}  # untouched
    assert snap.get(b"a") == fingerprint("1b") and snap.get(b"b") is None
    assert len(snap) == 2 and sorted(snap) == [b"a", b"c"] and b"b" not in snap
    snap.thaw()
    assert not snap.frozen and snap.fps == {b"a": fingerprint("1b"), b"c": fingerprint("3")}


def test_a_baseline_built_while_frozen_becomes_the_base_without_a_copy() -> None:
    snap = Snapshot()
    snap.freeze()
    snap.apply([(b"a", "1"), (b"b", "2")], [b"b"])
    overlay = snap.overlay
    snap.thaw()
    assert snap.fps is overlay and snap.fps == {b"a": fingerprint("1")}


def _scan(path: Path, snap: Snapshot) -> tuple[list[bytes], list[bytes], int]:
    """One pass: (changed names, gone names, known count); applies the changes."""
    scan = DirScan(os.fsencode(path), NameMatcher(("*",), (".*",)), snap.freeze())
    changed, gone = [], []
    while True:
        chunk = scan.next_chunk()
        changed += chunk.changed + list(zip(chunk.new_names, chunk.new_obs, strict=True))
        gone += chunk.gone
        if chunk.done:
            break
    snap.thaw()
    snap.apply([(n, version_of(o)) for n, o in changed], gone)
    return sorted(n for n, _ in changed), sorted(gone), scan.known


def test_scan_lists_eligible_files_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(localfs, "CHUNK", 2)  # several chunks
    for n in "abcde":
        (tmp_path / n).write_bytes(b"1")
    (tmp_path / ".dot").write_bytes(b"3")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deep").write_bytes(b"4")
    snap = Snapshot(local_fingerprint)
    assert _scan(tmp_path, snap) == ([b"a", b"b", b"c", b"d", b"e"], [], 0)
    assert _scan(tmp_path, snap) == ([], [], 5)  # unchanged: every known name met


def test_scan_sees_size_mtime_inode_changes_and_counts_deletions(tmp_path: Path) -> None:
    for n in "abcd":
        (tmp_path / n).write_bytes(b"1")
    snap = Snapshot(local_fingerprint)
    _scan(tmp_path, snap)
    (tmp_path / "a").write_bytes(b"12")  # size
    os.utime(tmp_path / "b", ns=(1, 1))  # mtime
    st = os.stat(tmp_path / "c")
    (tmp_path / "c.new").write_bytes(b"1")
    os.utime(tmp_path / "c.new", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp_path / "c.new", tmp_path / "c")  # same size and mtime, new inode
    (tmp_path / "d").unlink()
    changed, gone, known = _scan(tmp_path, snap)
    assert changed == [b"a", b"b", b"c"] and gone == []
    assert known == 3 < 4  # one known name was not listed: missing_names says which
    assert missing_names(os.fsencode(tmp_path), {b"a": 1, b"d": 2}) == [b"d"]


def test_scan_reports_a_file_replaced_by_a_directory_as_gone(tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"1")
    snap = Snapshot(local_fingerprint)
    _scan(tmp_path, snap)
    (tmp_path / "x").unlink()
    (tmp_path / "x").mkdir()
    assert _scan(tmp_path, snap) == ([], [b"x"], 0)
