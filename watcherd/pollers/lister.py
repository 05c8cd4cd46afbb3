"""The first listing of a big directory, made by a helper process beside the daemon.

A listing made on a thread stats under the daemon's GIL, which the event loop and the store's
writer share; at a million files the two then wait on each other, and the first poll took
2.4x a bare `scandir` + `stat` pass (issue #14). So when a directory with no snapshot yet is
big (`HELPER_MIN_BYTES`), a child interpreter lists it: it does nothing but the listing and
the stats, and writes what it saw to a pipe a chunk at a time, while the daemon turns the
previous chunk into names and versions (a few C-level passes) on its own core.

Run as a script (`python -I -S lister.py FD CHUNK`), this file is the child: the standard
library only, no `watcherd` import, no `site`. It lists the directory the daemon opened and
checked (`FD`, inherited), so it cannot list another one moved to the same path meanwhile; no
path reaches its argv (nor `ps`), nor any shell.

At most `MAX_LIVE` helpers run at once (each takes a core); a first listing that finds them
all busy goes on a thread. Each helper's pid is in `core.children.WAITED` until it is waited
for: the daemon's orphan reaper (as PID 1) must not reap it behind `Popen`'s back.

The wire, per chunk: a header of five native u32, (kind, count, names_len, odd_count,
odd_len); the `count` names joined by NUL (names_len bytes: a file name holds no NUL); then
count x 3 native int64 (size, mtime_ns, inode); then `odd_count` entries whose numbers do not
fit an int64 (a date after 2262, a 64-bit inode), as name NUL "size:mtime_ns:inode" NUL ...
(odd_len bytes). `kind` is CHUNK, or LAST for the last chunk (so the last data says it is
done), or FAILED, with the errno in `count`, when reading the directory raised an OSError,
which the daemon raises in turn.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import threading
import time
from array import array
from collections.abc import Iterator
from itertools import chain, islice
from typing import Any, cast

__all__ = [
    "HELPER_MIN_BYTES",
    "MAX_LIVE",
    "RETRY_AFTER",
    "HelperFailed",
    "Lister",
    "disable",
    "start",
    "usable",
]

# A directory at least this big (its st_size: ~20-40 bytes an entry on ext4 and tmpfs) is
# listed by the helper: some 30,000+ entries, where spawning an interpreter (~20-30 ms) is
# paid back by the core it adds.
HELPER_MIN_BYTES = 1 << 20

_HEADER = struct.Struct("=5I")
_CHUNK, _LAST, _FAILED = 0, 1, 2
# Bytes in one file name, bounding what a header may ask: Linux's NAME_MAX is 255, but
# exFAT, NTFS3 and CIFS give up to 255 UTF-16 units, 765 bytes in UTF-8.
_NAME_MAX = 1024
_S_IFMT, _S_IFREG = 0o170000, 0o100000
_PIPE_SIZE = 1 << 20  # F_SETPIPE_SZ: fewer context switches than the default 64 KiB
_F_SETPIPE_SZ = 1031

Obs = tuple[int, int, int]


class HelperFailed(OSError):
    """The helper died or spoke out of turn (not an error of the directory itself)."""


RETRY_AFTER = 600.0  # seconds of listings on threads after a helper failed

_off_until = 0.0  # time.monotonic() before which first listings go on threads

# Helpers at once: each uses a core, and the daemon one more for the chunks it reads.
MAX_LIVE = max(1, (os.cpu_count() or 2) // 2)
_live = 0  # helpers started and not yet waited for
_live_lock = threading.Lock()  # scans start helpers from pool threads


def disable() -> None:
    """List on threads for `RETRY_AFTER` seconds (a helper failed, or could not start): a
    lasting cause costs one attempt every 10 minutes, a passing one (EAGAIN, the OOM
    killer) not the rest of the daemon's life."""
    global _off_until
    _off_until = time.monotonic() + RETRY_AFTER


def usable() -> bool:
    """Whether a first listing may start a helper now."""
    return time.monotonic() >= _off_until


def start(fd: int, path: bytes, chunk: int) -> Lister | None:
    """A helper listing the directory open as `fd` (at `path`, for errors), or None when
    helpers are off, `MAX_LIVE` already run, or it could not be started. The caller closes
    `fd` after (the helper has its own copy)."""
    global _live
    if not usable() or getattr(sys, "frozen", False) or not os.path.isfile(__file__):
        return None  # (a frozen build's executable is not a Python that runs scripts)
    with _live_lock:
        if _live >= MAX_LIVE:
            return None
        _live += 1
    low = fd < 3  # Popen gives the child new fds 0-2: a directory there would be lost
    try:
        if low:
            import fcntl

            fd = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
        try:
            return Lister(fd, path, chunk)
        finally:
            if low:
                os.close(fd)
    except OSError:
        _release()
        disable()
        return None


def _release() -> None:
    global _live
    with _live_lock:
        _live -= 1


def _waited_for() -> set[int]:
    """`core.children.WAITED`, imported here: the child runs this file without `watcherd`."""
    from watcherd.core.children import WAITED

    return WAITED


class Lister:
    """The daemon's side of one helper: `read()` a chunk at a time, then `close()`."""

    def __init__(self, fd: int, path: bytes, chunk: int) -> None:
        """Counted in `_live` by `start()`: released here once the helper is waited for."""
        import subprocess

        self.path = path
        self.chunks = 0  # chunks read so far
        self._chunk = chunk
        self._buf = bytearray()
        self._proc = subprocess.Popen(
            [sys.executable, "-I", "-S", __file__, str(fd), str(chunk)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            bufsize=0,
            pass_fds=(fd,),
        )
        _waited_for().add(self._proc.pid)
        self._waited = False
        out = self._proc.stdout
        assert out is not None
        self._out = cast(io.RawIOBase, out)  # bufsize=0: a FileIO
        try:
            import fcntl

            fcntl.fcntl(out.fileno(), _F_SETPIPE_SZ, _PIPE_SIZE)
        except OSError:
            pass  # the default size works, a little slower

    def read(self) -> tuple[list[bytes], Iterator[Obs], bool]:
        """The next chunk's regular files, with their (size, mtime_ns, inode) in the same
        order, and whether it is the last. The versions come as an iterator, each tuple made
        as it is taken: a chunk of them alive at once, then freed, left holes in the memory
        the names and fingerprints kept (+13 B a file at 100,000 files).

        Raises:
            OSError: listing the directory failed (PermissionError ...), as os.scandir raises.
            HelperFailed: the helper died or its output is not the wire format.
        """
        kind, count, size, odd_count, odd_size = _HEADER.unpack(self._exact(_HEADER.size))
        if kind == _FAILED:
            self._reap()
            raise OSError(count, os.strerror(count), self.path)
        if (
            kind not in (_CHUNK, _LAST)
            or count + odd_count > self._chunk
            or size > count * (_NAME_MAX + 1)
            or odd_size > odd_count * (_NAME_MAX + 80)
        ):
            raise self._failed("a malformed header")
        body = self._exact(size + 24 * count + odd_size)
        names = bytes(body[:size]).split(b"\0") if count else []
        nums = array("q")
        nums.frombytes(body[size : size + 24 * count])
        if len(names) != count or len(nums) != 3 * count:
            raise self._failed("a malformed chunk")
        odd: list[Obs] = []
        if odd_count:
            fields = bytes(body[size + 24 * count :]).split(b"\0")
            try:
                for name, version in zip(fields[0::2], fields[1::2], strict=True):
                    a, b, c = (int(x) for x in version.split(b":"))
                    names.append(name)
                    odd.append((a, b, c))
            except ValueError:
                raise self._failed("a malformed chunk") from None
        self.chunks += 1
        if kind == _LAST:
            self._reap()
        numbers = zip(nums[0::3], nums[1::3], nums[2::3], strict=True)  # lengths checked above
        return names, chain(numbers, odd), kind == _LAST

    def _exact(self, n: int) -> memoryview:
        """The next `n` bytes, in a buffer reused from chunk to chunk (valid until the next
        call): a chunk's ~170 KB allocated anew each time left the heap fragmented."""
        if len(self._buf) < n:
            self._buf = bytearray(n)
        view = memoryview(self._buf)[:n]
        got = 0
        while got < n:
            more = self._out.readinto(view[got:])
            if not more:
                raise self._failed("its output ended early")
            got += more
        return view

    def _failed(self, what: str) -> HelperFailed:
        self.close()
        disable()
        return HelperFailed(
            5,  # EIO
            f"listing helper failed ({what}); listing on threads for {RETRY_AFTER:.0f} s",
            self.path,
        )

    def _reap(self) -> None:
        self._out.close()
        self._proc.wait()  # it has written its last chunk: exiting
        self._done()

    def _done(self) -> None:
        """The helper has been waited for: its pid is the kernel's again, its slot free."""
        if not self._waited:
            self._waited = True
            _waited_for().discard(self._proc.pid)
            _release()

    def _wait(self) -> None:
        self._proc.wait()
        self._done()

    def close(self) -> None:
        """Stop the helper (if it still runs). Never waits: a helper stuck in a stat of a
        dead mount does not die at once, so it is reaped by a thread of its own."""
        self._out.close()
        if self._proc.poll() is not None:
            self._done()
            return
        try:
            self._proc.kill()
        except ProcessLookupError:
            pass
        if self._proc.poll() is None:
            threading.Thread(target=self._wait, name="watcherd-lister", daemon=True).start()
        else:
            self._done()


# ── the child ─────────────────────────────────────────────────────────────────


def _child(fd: int, chunk: int, out: Any) -> None:
    """List the directory open as `fd` to `out`. Through a descriptor, each stat is an
    fstatat() of a name in it, not a walk of the whole path again (~12 % of a stat's system
    time at three levels deep); names then come as str, encoded back in bulk."""
    write, flush = out.write, out.flush
    encoding, errors = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
    try:
        it = os.scandir(fd)
    except OSError as exc:
        write(_HEADER.pack(_FAILED, exc.errno or 5, 0, 0, 0))
        return
    with it:
        while True:
            names: list[str] = []
            odd: list[bytes] = []
            nums = array("q")
            add, extend = names.append, nums.extend
            listed = 0
            try:
                for listed, entry in enumerate(islice(it, chunk), 1):  # noqa: B007
                    try:
                        st = entry.stat()
                    except OSError:
                        continue  # gone since readdir, or unreadable: not listed
                    if st.st_mode & _S_IFMT == _S_IFREG:
                        add(entry.name)
                        try:
                            extend((st.st_size, st.st_mtime_ns, st.st_ino))
                        except OverflowError:  # not an int64: sent as text
                            del nums[3 * (len(names) - 1) :]
                            odd += (os.fsencode(names.pop()), b"%d:%d:%d" % _obs(st))
            except OSError as exc:  # reading the directory itself failed
                write(_HEADER.pack(_FAILED, exc.errno or 5, 0, 0, 0))
                return
            kind = _LAST if listed < chunk else _CHUNK
            blob = "\0".join(names).encode(encoding, errors)  # os.fsencode, once a chunk
            odd_blob = b"\0".join(odd)
            write(_HEADER.pack(kind, len(names), len(blob), len(odd) // 2, len(odd_blob)))
            write(blob + nums.tobytes() + odd_blob)
            flush()  # each chunk as soon as it is listed
            if kind == _LAST:
                return


def _obs(st: os.stat_result) -> Obs:
    return st.st_size, st.st_mtime_ns, st.st_ino


def _main(argv: list[str]) -> int:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C: the daemon decides
    out = sys.stdout.buffer
    try:
        _child(int(argv[1]), int(argv[2]), out)
        out.flush()
    except BrokenPipeError:  # the daemon closed the pipe: the listing is not wanted
        os._exit(1)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
