"""The compact snapshot, its diff, and the local directory scanner."""

from __future__ import annotations

import os
from pathlib import Path

from watcherd.core.matching import NameMatcher
from watcherd.core.snapshot import Snapshot, baseline_key
from watcherd.pollers.localfs import DirScanner, local_fingerprint, version_of


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


def _scanner(path: Path) -> DirScanner:
    return DirScanner(os.fsencode(path), NameMatcher(("*",), (".*",)), Snapshot(local_fingerprint))


def _accept(scanner: DirScanner) -> list[bytes]:
    scan = scanner.scan()
    names = sorted(n for n, _ in scan.changed)
    scanner.snapshot.apply([(n, version_of(o)) for n, o in scan.changed], scan.deleted)
    scanner.digest = scan.digest
    return names


def test_scanner_skips_diffing_an_unchanged_listing(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"1")
    (tmp_path / "b").write_bytes(b"2")
    (tmp_path / ".dot").write_bytes(b"3")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deep").write_bytes(b"4")
    s = _scanner(tmp_path)
    assert _accept(s) == [b"a", b"b"]
    assert s.scan().unchanged


def test_scanner_sees_size_mtime_inode_changes_and_deletions(tmp_path: Path) -> None:
    for n in "abcd":
        (tmp_path / n).write_bytes(b"1")
    s = _scanner(tmp_path)
    _accept(s)
    (tmp_path / "a").write_bytes(b"12")  # size
    os.utime(tmp_path / "b", ns=(1, 1))  # mtime
    st = os.stat(tmp_path / "c")
    (tmp_path / "c.new").write_bytes(b"1")
    os.utime(tmp_path / "c.new", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp_path / "c.new", tmp_path / "c")  # same size and mtime, new inode
    (tmp_path / "d").unlink()
    scan = s.scan()
    assert not scan.unchanged
    assert sorted(n for n, _ in scan.changed) == [b"a", b"b", b"c"]
    assert scan.deleted == [b"d"]


def test_scanner_keeps_a_file_replaced_by_a_directory_as_deleted(tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"1")
    s = _scanner(tmp_path)
    _accept(s)
    (tmp_path / "x").unlink()
    (tmp_path / "x").mkdir()
    assert s.scan().deleted == [b"x"]
