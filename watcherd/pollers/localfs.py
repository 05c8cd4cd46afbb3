"""The local file system edge of the local poller: one-level listings, stats, symlink rules.

Everything here blocks; the poller runs it on the shared pool (`fspool.off_loop`).

A rescan is one pass: `DirScan` lists the directory a chunk at a time, each chunk one short
pool job, and compares each entry with the snapshot as it goes (the snapshot's base is frozen
while the scan runs, so the scan can count the known names it met: when that count is the
snapshot's size, nothing was deleted, and no second pass is needed). Only when some known name
was not met does `missing_names` list the names once more (no stat) to say which. The first
listing of a big directory (no snapshot yet) is made by a helper process instead (`lister`),
so that its stats do not share the daemon's GIL.

Symlinks (SPEC §4, `follow_symlinks`): the scan follows them, as a listing; a version becomes
eligible only through `stat_names`, which, under "within_root", resolves a symlinked entry and
reports it `outside` unless its target lies inside the datastore's real root. `check_dir` holds
the watched directory itself to the same rule.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import islice
from operator import attrgetter
from typing import Literal

from watcherd.core.matching import NameMatcher
from watcherd.core.snapshot import FINGERPRINT_MASK
from watcherd.pollers import lister

__all__ = [
    "CHUNK",
    "DirChanged",
    "DirScan",
    "Obs",
    "OutsideRoot",
    "ScanChunk",
    "Stats",
    "check_dir",
    "local_fingerprint",
    "missing_names",
    "open_for_writing",
    "stat_names",
    "version_of",
]

Obs = tuple[int, int, int]  # (size, mtime_ns, inode): one observed version of a file

CHUNK = 4096  # entries per scan job: a few ms each, so events and other schedules interleave

_S_IFMT, _S_IFREG = 0o170000, 0o100000
_OBS = attrgetter("st_size", "st_mtime_ns", "st_ino")


def version_of(obs: Obs) -> str:
    """The persisted version string "size:mtime_ns:inode"."""
    return f"{obs[0]}:{obs[1]}:{obs[2]}"


def local_fingerprint(version: str) -> int:
    """The snapshot fingerprint of a persisted local version: `hash(obs) & FINGERPRINT_MASK`."""
    try:
        size, mtime_ns, ino = (int(part) for part in version.split(":"))
    except ValueError:
        return -1  # never a real fingerprint: the file counts as changed
    return hash((size, mtime_ns, ino)) & FINGERPRINT_MASK


class OutsideRoot(OSError):
    """The watched directory resolves outside the datastore's real root."""


class DirChanged(OSError):
    """Another directory than the one last polled is at the watched path now."""


def _inside(path: bytes, root: bytes) -> bool:
    return path == root or path.startswith(root.rstrip(b"/") + b"/")


def real_root(root: bytes) -> bytes:
    return os.path.realpath(root)


def check_dir(path: bytes, root: bytes | None) -> os.stat_result:
    """The stat of the watched directory; with `root` (follow_symlinks="within_root"), it
    must resolve inside root's real path.

    Raises:
        FileNotFoundError, NotADirectoryError: it is gone.
        OutsideRoot: it is (or goes through) a symlink leading outside the root.
    """
    info = os.stat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", os.fsdecode(path))
    if root is not None:
        real, top = os.path.realpath(path), real_root(root)
        if not _inside(real, top):
            shown = real.decode("utf-8", "backslashreplace")
            raise OutsideRoot(errno.EXDEV, f"resolves to {shown}, outside the datastore root")
    return info


# ── the rescan ────────────────────────────────────────────────────────────────


@dataclass(slots=True)
class ScanChunk:
    """What one chunk of a listing showed against the snapshot's base."""

    changed: list[tuple[bytes, Obs]] = field(default_factory=list)  # known files, modified
    new_names: list[bytes] = field(default_factory=list)  # files not in the base (matching)
    new_obs: list[Obs] = field(default_factory=list)  # their versions (not when quiet)
    new_fps: list[int] = field(default_factory=list)  # ... as snapshot fingerprints
    new_versions: list[str] = field(default_factory=list)  # ... as persisted version strings
    gone: list[bytes] = field(default_factory=list)  # known names listed but no file any more
    done: bool = False  # the listing is complete


class DirScan:
    """One pass over one directory level, a chunk per `next_chunk()` call (never two at once).

    `base` is the snapshot's name -> fingerprint map, which must not change until the scan is
    done; `known` counts the base names met as files (or unreadable ones: not deleted).

    The per-entry loop is kept to what a bare `scandir` + `stat` pass does plus a dict lookup
    and a hash. New names are matched against the globs in one go per chunk, and their
    fingerprints and version strings made here too: a first listing of a million files then
    leaves the event loop nothing to do per file (and doing it there, while this thread lists
    the next chunk, would make both wait on each other for the GIL).
    """

    def __init__(
        self,
        path: bytes,
        match: NameMatcher,
        base: Mapping[bytes, int],
        *,
        root: bytes | None = None,
        watched: tuple[int, int] | bool = False,
        quiet: bool = False,
        first: bool = False,
    ) -> None:
        self.path = path
        self.known = 0
        self.ident: tuple[int, int] | None = None  # by the first next_chunk (check_dir)
        self._match = match
        self._base = base
        self._root = root
        self._watched = watched  # DirEvents.watching(): list only once this is watched
        self._quiet = quiet  # a skip-baseline: new files need no `new_obs`
        self._first = first  # no baseline committed yet (an emptied directory is not first)
        self._it: os._ScandirIterator[bytes] | None = None
        self._helper: lister.Lister | None = None  # a big first listing: see `lister`
        self._dir_bytes = 0  # the directory's st_size
        self._closed = False

    def next_chunk(self) -> ScanChunk:
        """The next chunk. The first call checks the directory (`check_dir` with `root`, its
        errors raised) and, when events are on and another directory is watched, returns an
        empty chunk: the caller watches `ident` first, so nothing listed after goes unseen."""
        if self._closed:
            return ScanChunk(done=True)
        if self.ident is None:
            info = check_dir(self.path, self._root)
            self.ident, self._dir_bytes = (info.st_dev, info.st_ino), info.st_size
            if self._watched is not False and self._watched != self.ident:
                return ScanChunk()
        if self._it is None and self._helper is None:
            self._open()
        out = ScanChunk()
        done = self._from_helper(out) if self._helper is not None else None
        if done is None:
            if self._base:
                done = self._diff(out) < CHUNK
            elif self._quiet:
                done = self._list(out) < CHUNK  # a first listing, recorded as it is
            else:
                done = self._diff(out) < CHUNK  # a first listing, every file new
        if out.new_obs:
            mask = FINGERPRINT_MASK
            out.new_fps = [hash(o) & mask for o in out.new_obs]
            out.new_versions = [f"{a}:{b}:{c}" for a, b, c in out.new_obs]  # version_of
        kept = self._match.select(out.new_names)
        if kept is not None:
            out.new_names = [out.new_names[i] for i in kept]
            out.new_fps = [out.new_fps[i] for i in kept]
            out.new_versions = [out.new_versions[i] for i in kept]
            if out.new_obs:
                out.new_obs = [out.new_obs[i] for i in kept]
        if done:
            self.close()
            out.done = True
        return out

    def _open(self) -> None:
        """Start the listing: by a helper process when it is the first of a big directory.
        Either way, of the directory `next_chunk` checked (`ident`).

        Raises:
            DirChanged: another directory is at the path now.
        """
        if self._first and not self._base and self._dir_bytes >= lister.HELPER_MIN_BYTES:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                self._same_dir(os.fstat(fd))
                self._helper = lister.start(fd, self.path, CHUNK)
            finally:
                os.close(fd)
        if self._helper is None:
            self._scandir()

    def _scandir(self) -> None:
        """List on this thread. By path, `scandir` could open a directory moved there since
        the check: one stat more per pass narrows that window to the width of this call."""
        it = os.scandir(self.path)
        try:
            self._same_dir(os.stat(self.path))
        except OSError:
            it.close()
            raise
        self._it = it

    def _same_dir(self, info: os.stat_result) -> None:
        if (info.st_dev, info.st_ino) != self.ident:
            raise DirChanged(errno.ESTALE, "directory replaced", os.fsdecode(self.path))

    def _from_helper(self, out: ScanChunk) -> bool | None:
        """A chunk of a first listing made by the helper process; True when it was the last,
        None when the helper failed before its first chunk (this listing then goes on here).
        Only regular files come back: nothing to count in `known`, the base being empty.

        Raises:
            HelperFailed: it failed after some chunks (they are taken: this poll fails, and
                the next lists on a thread).
        """
        helper = self._helper
        assert helper is not None
        try:
            out.new_names, obs, last = helper.read()
        except lister.HelperFailed:
            if helper.chunks:
                raise
            self._helper = None
            self._scandir()
            return None
        if not self._quiet:
            out.new_obs = list(obs)
            return last
        # A skip-baseline keeps fingerprints and version strings only, as `_list`.
        add_fp, add_version, mask = out.new_fps.append, out.new_versions.append, FINGERPRINT_MASK
        for o in obs:
            add_fp(hash(o) & mask)
            add_version(f"{o[0]}:{o[1]}:{o[2]}")  # version_of
        return last

    def _list(self, out: ScanChunk) -> int:
        """A first listing: names, fingerprints and version strings, nothing else kept (what
        a chunk keeps alive costs more than the work: fresh memory, not a reused block)."""
        add_name, add_fp, add_version = (
            out.new_names.append,
            out.new_fps.append,
            out.new_versions.append,
        )
        mask = FINGERPRINT_MASK
        listed = 0
        assert self._it is not None
        for listed, entry in enumerate(islice(self._it, CHUNK), 1):  # noqa: B007 (read after)
            try:
                st = entry.stat()
            except OSError:
                continue
            if st.st_mode & _S_IFMT == _S_IFREG:
                a, b, c = obs = _OBS(st)
                add_name(entry.name)
                add_fp(hash(obs) & mask)
                add_version(f"{a}:{b}:{c}")  # version_of, inline
        return listed

    def _diff(self, out: ScanChunk) -> int:
        changed, gone, mask = out.changed, out.gone, FINGERPRINT_MASK
        add_name, add_obs = out.new_names.append, out.new_obs.append
        base, get = self._base, self._base.get
        other = listed = 0  # other: entries that are not known names still present
        assert self._it is not None
        for listed, entry in enumerate(islice(self._it, CHUNK), 1):  # noqa: B007 (read after)
            name = entry.name
            try:
                st = entry.stat()
            except OSError as exc:
                if name not in base:
                    other += 1
                elif exc.errno == errno.ENOENT:
                    other += 1
                    gone.append(name)  # removed between readdir and stat
                continue  # (a known name, unreadable, is not deleted)
            if hash(_OBS(st)) & mask == get(name):
                continue  # the hot path: a known file, unchanged
            obs: Obs = _OBS(st)
            old = get(name)
            if st.st_mode & _S_IFMT != _S_IFREG:
                other += 1
                if old is not None:
                    gone.append(name)  # e.g. replaced by a directory
            elif old is None:
                other += 1
                add_name(name)
                add_obs(obs)
            else:
                changed.append((name, obs))
        self.known += listed - other
        return listed

    def close(self) -> None:
        """Release the directory handle (call it when no `next_chunk` is running)."""
        self._closed = True
        if self._it is not None:
            self._it.close()
            self._it = None
        if self._helper is not None:
            self._helper.close()
            self._helper = None


def missing_names(path: bytes, names: Mapping[bytes, int]) -> list[bytes]:
    """The names of `names` not in `path` now (a names-only listing: no stat)."""
    with os.scandir(path) as it:
        listed = {entry.name for entry in it}
    return [name for name in names if name not in listed]


# ── stats of named entries (events, settle deadlines) ────────────────────────


@dataclass(slots=True)
class Stats:
    """`obs`: per name, its version; None = no eligible file there; False = stat failed.
    `linked`: names that are symlinks or hard links (made without an open() for writing).
    `outside`: name -> resolved target of symlinks leading outside the root (obs is None)."""

    obs: dict[bytes, Obs | None | Literal[False]] = field(default_factory=dict)
    linked: set[bytes] = field(default_factory=set)
    outside: dict[bytes, tuple[bytes, Obs]] = field(default_factory=dict)


def stat_names(
    path: bytes, names: list[bytes], root: bytes | None, ident: tuple[int, int] | None = None
) -> Stats:
    """Stat each name in `path`. With `root`, a symlink counts only while it resolves inside
    root's real path. With `ident`, first checks that the directory is still that one.

    Raises:
        DirChanged: another directory (or nothing) is at `path` now.
    """
    if ident is not None:
        try:
            info = os.stat(path)
        except OSError as exc:
            raise DirChanged(exc.errno, exc.strerror, os.fsdecode(path)) from exc
        if (info.st_dev, info.st_ino) != ident:
            raise DirChanged(errno.ESTALE, "directory replaced", os.fsdecode(path))
    out = Stats()
    top = real_root(root) if root is not None else None
    for name in names:
        full = os.path.join(path, name)
        try:
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out.linked.add(name)
                st = os.stat(full)
                if top is not None and stat.S_ISREG(st.st_mode):
                    target = os.path.realpath(full)
                    if not _inside(target, top):
                        out.outside[name] = (target, _OBS(st))
                        out.obs[name] = None
                        continue
        except (FileNotFoundError, NotADirectoryError):
            out.obs[name] = None  # gone, or a dangling symlink
            continue
        except OSError as exc:
            out.obs[name] = None if exc.errno == errno.ELOOP else False
            continue
        if not stat.S_ISREG(st.st_mode):
            out.obs[name] = None
            continue
        if st.st_nlink > 1:
            out.linked.add(name)
        out.obs[name] = _OBS(st)
    return out


def open_for_writing(path: bytes, names: list[bytes]) -> dict[bytes, bool | None]:
    """Whether some process has each file in `path` open for writing (None: cannot tell).

    The kernel refuses a read lease (`F_SETLEASE`, EAGAIN) on a file any process has open for
    writing. The lease is dropped at once; a writer opening the file in between waits for that,
    and the notice of its break comes as SIGURG, ignored by default (SIGIO, the default notice,
    would end the daemon). None: not the file's owner (without CAP_LEASE), a symlink, gone, or
    a file system without leases."""
    out: dict[bytes, bool | None] = {}
    for name in names:
        try:
            fd = os.open(
                os.path.join(path, name), os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
            )
        except OSError:
            out[name] = None
            continue
        try:
            fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        except OSError as exc:
            out[name] = True if exc.errno == errno.EAGAIN else None
        else:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
            out[name] = False
        finally:
            os.close(fd)
    return out
