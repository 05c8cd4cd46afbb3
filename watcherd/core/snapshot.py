"""A compact in-memory snapshot of one watched listing, and its diff against a new listing.

The state database keeps every `name → version` pair; a poller only needs to know whether a
version changed. So in memory a snapshot is `dict[bytes, int]`: the name, and a 60-bit
fingerprint of its version (an int below 2**60 takes 32 bytes, as a small one does, so the
extra bits are free). With a 15-byte name that is about 130 bytes per entry, against about
220 for the version string itself. Fingerprints are per-process values (Python's `hash`), so
they are never stored: a snapshot is rebuilt from the persisted versions at start.

A snapshot loaded or built in one go (a baseline, a restart) has its entries allocated among
many short-lived objects (directory entries, stat results, version strings, the loaded dict),
which pins nearly all of that memory after they are freed: ~360 B/file of RSS for 130 B of
live data. `compact()` re-creates the entries contiguously and hands the freed pages back.

Datastore-agnostic: names are bytes, versions are str (a blob ETag, a local
"size:mtime_ns:inode"); a poller may pass its own `fingerprint` function as long as it is a
pure function of the version string.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

__all__ = ["FINGERPRINT_MASK", "Diff", "Snapshot", "baseline_key", "fingerprint"]

FINGERPRINT_MASK = (1 << 60) - 1


def fingerprint(version: str) -> int:
    """The default fingerprint: 60 bits of the version string's hash."""
    return hash(version) & FINGERPRINT_MASK


def baseline_key(*parts: str) -> str:
    """A stable key for the things whose change means a new baseline (SPEC §4)."""
    raw = json.dumps(parts, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(raw.encode("utf-8", "surrogateescape")).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Diff:
    """What a listing changed: new or modified `(name, version)` pairs, and deleted names."""

    upserts: list[tuple[bytes, str]] = field(default_factory=list)
    deletes: list[bytes] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.upserts or self.deletes)


class Snapshot:
    """`name → fingerprint(version)` of the files a poller has committed.

    `fps` is the dict itself, exposed for pollers whose hot loop compares fingerprints
    directly; other code uses the methods.
    """

    __slots__ = ("fingerprint", "fps")

    def __init__(self, fingerprint: Callable[[str], int] = fingerprint) -> None:
        self.fingerprint = fingerprint
        self.fps: dict[bytes, int] = {}

    @classmethod
    def from_versions(
        cls,
        versions: Mapping[bytes, str],
        fingerprint: Callable[[str], int] = fingerprint,
    ) -> Snapshot:
        """A snapshot of persisted `{name: version}` pairs."""
        snap = cls(fingerprint)
        fp = snap.fingerprint
        snap.fps = {name: fp(v) for name, v in versions.items()}
        return snap

    def __len__(self) -> int:
        return len(self.fps)

    def __contains__(self, name: object) -> bool:
        return name in self.fps

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.fps)

    def changed(self, name: bytes, version: str) -> bool:
        """True when `name` is new or its version differs from the snapshot's."""
        return self.fps.get(name) != self.fingerprint(version)

    def apply(self, upserts: Iterable[tuple[bytes, str]], deletes: Iterable[bytes] = ()) -> None:
        """Record committed changes."""
        fps, fp = self.fps, self.fingerprint
        for name, version in upserts:
            fps[name] = fp(version)
        for name in deletes:
            fps.pop(name, None)

    def compact(self) -> None:
        """Re-allocate every entry contiguously, then return freed heap pages to the OS.

        The entries are copied out to one bytes blob and two arrays (not small objects), the
        old dict and its objects are dropped (their memory is then entirely free, so the
        allocator can release it), and the dict is rebuilt from the copies. O(n); call it
        after a large load or baseline, not per poll.
        """
        if not self.fps:
            return
        lengths = array("Q", map(len, self.fps))
        values = array("q", self.fps.values())
        blob = b"".join(self.fps)
        self.fps = {}
        fps: dict[bytes, int] = {}
        start = 0
        for length, value in zip(lengths, values, strict=True):
            end = start + length
            fps[blob[start:end]] = value
            start = end
        self.fps = fps
        del blob, lengths, values
        _trim_heap()

    def diff(self, listing: Iterable[tuple[bytes, str]]) -> Diff:
        """Compare a complete listing of `(name, version)` pairs with the snapshot.

        Names listed more than once count once (the last version wins). Does not change the
        snapshot: call `apply` once the diff is committed.
        """
        fps, fp = self.fps, self.fingerprint
        latest: dict[bytes, str] = {}
        known = 0
        for name, version in listing:
            if name not in latest and name in fps:
                known += 1
            latest[name] = version
        upserts = [(n, v) for n, v in latest.items() if fps.get(n) != fp(v)]
        deletes = [n for n in fps if n not in latest] if known < len(fps) else []
        return Diff(upserts, deletes)


def _trim_heap() -> None:
    """glibc keeps freed heap pages mapped; malloc_trim(0) returns them (no-op elsewhere)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return trim
