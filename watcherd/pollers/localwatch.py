"""The inotify edge of the local poller: one watch on one directory, reporting to the loop.

Events come from watchdog's inotify layer (`InotifyFD`: one reader thread shared by every
watch in the process) through a `WatchCallback` on exactly one directory, non-recursive. We
register on that layer rather than through an `Observer`: it is where an inotify queue
overflow is reported (`on_queue_overflow`; an observer only logs it for non-recursive
watches), and it adds no 0.5 s move-pairing delay in front of later events.

What an event means for write completion (SPEC §4): IN_CLOSE_WRITE and IN_MOVED_TO complete a
file ("closed"); IN_MODIFY means a writer has it open ("writing": it waits for its close, however
long the writer pauses); IN_CREATE is "created" (the poller decides: a file created by open()
is written and closed next, one made by link() or symlink() never is); the rest only ask for a
look ("attrib", "check").
"""

from __future__ import annotations

import asyncio
import errno
import os
import sys
from collections.abc import Callable
from typing import Any, Literal

import structlog

from watcherd.pollers.fspool import off_loop

__all__ = ["DirEvents", "DirWatch", "EventKind", "start_dir_watch"]

log = structlog.get_logger("watcherd.pollers.local")

EventKind = Literal["closed", "writing", "created", "attrib", "check", "rescan", "overflow"]

# ── inotify ───────────────────────────────────────────────────────────────────

# inotify(7) bits (kernel ABI).
_IN_MODIFY, _IN_ATTRIB, _IN_CLOSE_WRITE = 0x2, 0x4, 0x8
_IN_MOVED_FROM, _IN_MOVED_TO, _IN_CREATE, _IN_DELETE = 0x40, 0x80, 0x100, 0x200
_IN_DELETE_SELF, _IN_MOVE_SELF, _IN_UNMOUNT = 0x400, 0x800, 0x2000
_IN_ONLYDIR, _IN_EXCL_UNLINK, _IN_ISDIR = 0x01000000, 0x04000000, 0x40000000
_SELF = _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_UNMOUNT
_MASK = (
    _IN_MODIFY
    | _IN_ATTRIB
    | _IN_CLOSE_WRITE
    | _IN_MOVED_FROM
    | _IN_MOVED_TO
    | _IN_CREATE
    | _IN_DELETE
    | _IN_DELETE_SELF
    | _IN_MOVE_SELF
    | _IN_ONLYDIR
    | _IN_EXCL_UNLINK
)  # no IN_OPEN / IN_CLOSE_NOWRITE / IN_ACCESS: readers of the files are not changes

# Where the kernel sees only this machine's writes, inotify would miss the others.
_REMOTE_FS = frozenset(
    b"nfs nfs4 cifs smb3 smbfs 9p afs ceph glusterfs lustre gpfs davfs vboxsf vmhgfs "
    b"fuse.sshfs fuse.s3fs fuse.rclone fuse.gcsfuse fuse.glusterfs fuse.juicefs "
    b"fuse.davfs2 fuse.vmhgfs-fuse".split()
)

Post = Callable[[EventKind, bytes], None]


class DirWatch:
    """One inotify watch on one directory, reporting to an asyncio loop.

    Implements watchdog's `WatchCallback`; its `on_*` methods run on watchdog's reader
    thread and only hand `(kind, name)` to `post` on the loop.
    """

    def __init__(
        self, path: bytes, ident: tuple[int, int], loop: asyncio.AbstractEventLoop, post: Post
    ) -> None:
        self.path = path
        self.ident = ident  # (st_dev, st_ino) of the watched directory
        self.alive = True
        self._loop, self._post = loop, post
        self._fd: Any = None
        self._wd: int = -1

    def on_event(self, event: Any) -> None:
        mask, name = event.mask, event.name
        if mask & _SELF:
            self._send("rescan", b"")
        elif mask & _IN_ISDIR:
            return  # subdirectories never count
        elif mask & (_IN_CLOSE_WRITE | _IN_MOVED_TO):
            self._send("closed", name)
        elif mask & _IN_MODIFY:
            self._send("writing", name)
        elif mask & _IN_CREATE:
            self._send("created", name)
        elif mask & _IN_ATTRIB:
            self._send("attrib", name)
        elif mask & (_IN_DELETE | _IN_MOVED_FROM):
            self._send("check", name)

    def on_watch_deleted(self, wd: int) -> None:
        self.alive = False
        self._send("rescan", b"")

    def on_queue_overflow(self) -> None:
        self._send("overflow", b"")

    def _send(self, kind: EventKind, name: bytes) -> None:
        try:
            self._loop.call_soon_threadsafe(self._post, kind, name)
        except RuntimeError:
            pass  # the loop is closed: the poller is gone

    def stop(self) -> None:
        """Remove the watch (idempotent)."""
        if self._fd is not None and self.alive:
            self.alive = False
            try:
                self._fd.remove_callbacks([(self._wd, id(self))])
            except (OSError, RuntimeWarning):  # already gone with its directory
                pass


def start_dir_watch(
    path: bytes,
    ident: tuple[int, int],
    loop: asyncio.AbstractEventLoop,
    post: Post,
    *,
    require: bool = False,
) -> DirWatch:
    """Watch `path` (not recursively) and post its events to `loop`.

    Without `require`, refuses (OSError) where events would be incomplete: not Linux, or a
    network file system. Raises FileNotFoundError / NotADirectoryError when `path` is gone,
    and any other exception when inotify cannot be used.
    """
    if not require:
        if not sys.platform.startswith("linux"):
            raise OSError(errno.ENOSYS, f"no inotify on {sys.platform}")
        fstype = _remote_fs_type(path)
        if fstype is not None:
            raise OSError(errno.EREMOTE, f"{fstype} file system: events miss remote writes")
    from watchdog.observers.inotify_c import CallbackId, InotifyFD, Mask

    fd = InotifyFD.get_instance()
    watch = DirWatch(path, ident, loop, post)
    wd = fd.add_callback(path, Mask(_MASK), watch, CallbackId(id(watch)))
    watch._fd, watch._wd = fd, wd
    if wd < 0:  # watchdog swallows EACCES and hands back -1
        watch.stop()
        raise PermissionError(errno.EACCES, "inotify_add_watch refused", os.fsdecode(path))
    return watch


class DirEvents:
    """The inotify watch of one directory, kept on whatever directory is at its path now.

    `events`: True (required), None (Linux and not a network file system), False (off). When
    a watch cannot start for any reason but the directory being gone, events stay off for
    good: logged once as `events_unavailable`, and polling alone carries on.
    """

    def __init__(self, path: bytes, post: Post, events: bool | None) -> None:
        self.path = path
        self.watch: DirWatch | None = None
        self._post = post
        self._mode = events

    def watching(self) -> tuple[int, int] | bool:
        """The (st_dev, st_ino) watched now; False when events are off; True when they are
        on but nothing is watched yet."""
        if self._mode is False:
            return False
        w = self.watch
        return w.ident if w is not None and w.alive else True

    async def ensure(self, ident: tuple[int, int]) -> bool:
        """Watch the directory whose (st_dev, st_ino) is `ident`; True when a new watch
        started (changes made while nothing watched may have been missed).

        The watch starts on the shared pool: the kernel's inotify_add_watch flags every
        cached entry of the directory, 0.13-0.17 s at a million files, which on the loop
        would hold every timer and run that long (issue #14, `big_dir`).

        Raises:
            FileNotFoundError, NotADirectoryError: the directory is gone.
            PermissionError: it cannot be read now (its listing fails too, and is retried:
                events are tried again with it, not given up for good).
        """
        if self._mode is False:
            return False
        w = self.watch
        if w is not None and w.alive and w.ident == ident:
            return False
        self.stop()
        loop = asyncio.get_running_loop()
        job = off_loop(
            start_dir_watch, self.path, ident, loop, self._post, require=self._mode is True
        )
        try:
            self.watch = await asyncio.shield(job)
        except asyncio.CancelledError:
            job.add_done_callback(_stop_started)  # cancelled while it started: undo it
            raise
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            raise
        except Exception as exc:
            self._mode = False
            shown = self.path.decode("utf-8", "backslashreplace")
            log.warning("events_unavailable", error=str(exc), path=shown)
            return False
        self._mode = True
        return True

    def stop(self) -> None:
        if self.watch is not None:
            self.watch.stop()
            self.watch = None


def _stop_started(job: asyncio.Future[DirWatch]) -> None:
    if not job.cancelled() and job.exception() is None:
        job.result().stop()


def _remote_fs_type(path: bytes) -> str | None:
    """The file system type of `path` when it is a network one, from /proc/self/mounts."""
    try:
        real = os.path.realpath(path)
        with open("/proc/self/mounts", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    best, best_type = b"", b""
    for line in lines:
        fields = line.split(b" ")
        if len(fields) < 3:
            continue
        mnt = fields[1].replace(b"\\040", b" ").replace(b"\\011", b"\t").replace(b"\\134", b"\\")
        inside = real == mnt or real.startswith(mnt.rstrip(b"/") + b"/")
        if inside and len(mnt) >= len(best):
            best, best_type = mnt, fields[2]
    return best_type.decode("ascii", "replace") if best_type in _REMOTE_FS else None
