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

A reader in another thread (the local poller's one-pass rescan) needs the snapshot not to change
under it: `freeze()` hands it the base dict, and until `thaw()` every change goes to a small
overlay that `get`/`put`/`drop`/`len` see through; `thaw()` folds it in (a baseline built while
frozen becomes the base itself, without a copy).

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
from typing import cast

__all__ = ["FINGERPRINT_MASK", "Diff", "Snapshot", "baseline_key", "fingerprint", "trim_heap"]

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

    `fps` is the base dict, exposed for pollers whose hot loop compares fingerprints
    directly (only while not frozen, or as a read-only view while frozen); other code uses the
    methods, which also see the overlay.
    """

    __slots__ = ("_tombstones", "fingerprint", "fps", "overlay")

    def __init__(self, fingerprint: Callable[[str], int] = fingerprint) -> None:
        self.fingerprint = fingerprint
        self.fps: dict[bytes, int] = {}
        self.overlay: dict[bytes, int | None] | None = None  # set while frozen; None = deleted
        self._tombstones = 0  # None values in the overlay

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
        n, base = len(self.fps), self.fps
        for name, value in (self.overlay or {}).items():
            if name in base:
                n -= value is None
            else:
                n += value is not None
        return n

    def __contains__(self, name: object) -> bool:
        return isinstance(name, bytes) and self.get(name) is not None

    def __iter__(self) -> Iterator[bytes]:
        overlay = self.overlay
        if not overlay:
            return iter(self.fps)
        return _chain_live(self.fps, overlay)

    def get(self, name: bytes) -> int | None:
        """The fingerprint of `name`, None when it is not in the snapshot."""
        overlay = self.overlay
        if overlay is not None and name in overlay:
            return overlay[name]
        return self.fps.get(name)

    def put(self, name: bytes, fp: int) -> None:
        overlay = self.overlay
        if overlay is None:
            self.fps[name] = fp
            return
        if self._tombstones and name in overlay and overlay[name] is None:
            self._tombstones -= 1
        overlay[name] = fp

    def put_many(self, items: Iterable[tuple[bytes, int]]) -> None:
        """`put` of many (a dict update, when no deleted name can be among them)."""
        if self.overlay is None:
            self.fps.update(items)
        elif self._tombstones:
            for name, fp in items:
                self.put(name, fp)
        else:
            self.overlay.update(items)

    def drop(self, name: bytes) -> None:
        overlay = self.overlay
        if overlay is None:
            self.fps.pop(name, None)
        elif overlay.get(name, 0) is not None:
            overlay[name] = None
            self._tombstones += 1

    @property
    def frozen(self) -> bool:
        return self.overlay is not None

    def freeze(self) -> Mapping[bytes, int]:
        """The base, which stays unchanged (changes go to the overlay) until `thaw()`."""
        if self.overlay is None:
            self.overlay = {}
        return self.fps

    def thaw(self) -> None:
        """Fold the overlay into the base."""
        overlay, self.overlay = self.overlay, None
        tombstones, self._tombstones = self._tombstones, 0
        if not overlay:
            return
        base = self.fps
        if not base:  # e.g. a baseline: the overlay becomes the base, no copy (nor a pass)
            if tombstones:
                for name in [n for n, v in overlay.items() if v is None]:
                    del overlay[name]
            self.fps = cast(dict[bytes, int], overlay)
            return
        for name, value in overlay.items():
            if value is None:
                base.pop(name, None)
            else:
                base[name] = value

    def changed(self, name: bytes, version: str) -> bool:
        """True when `name` is new or its version differs from the snapshot's."""
        return self.get(name) != self.fingerprint(version)

    def apply(self, upserts: Iterable[tuple[bytes, str]], deletes: Iterable[bytes] = ()) -> None:
        """Record committed changes."""
        fp = self.fingerprint
        for name, version in upserts:
            self.put(name, fp(version))
        for name in deletes:
            self.drop(name)

    def compact(self) -> None:
        """Re-allocate every entry contiguously, then return freed heap pages to the OS.

        The entries are copied out to one bytes blob and two arrays (not small objects), the
        old dict and its objects are dropped (their memory is then entirely free, so the
        allocator can release it), and the dict is rebuilt from the copies. O(n); call it
        after a large load or baseline, not per poll.
        """
        if self.overlay is not None:
            raise RuntimeError("compact() while frozen")
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
        trim_heap()

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


def _chain_live(base: dict[bytes, int], overlay: dict[bytes, int | None]) -> Iterator[bytes]:
    for name in base:
        if overlay.get(name, 0) is not None:
            yield name
    for name, value in overlay.items():
        if value is not None and name not in base:
            yield name


def trim_heap() -> None:
    """glibc keeps freed heap pages mapped; malloc_trim(0) returns them (no-op elsewhere).

    Worth calling after building something large in chunks (a first poll): the chunks' lists
    came from the worker threads' malloc arenas, which otherwise keep them."""
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
