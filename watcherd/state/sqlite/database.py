"""One SQLite file: its lock, one writer thread with group commit, and reader threads.

Writes run on a single worker thread. Calls queued while it is busy share one
BEGIN IMMEDIATE … COMMIT (each call's own transaction nests as a SAVEPOINT, so a failure undoes
only that call), and every caller is answered after that COMMIT: each change is durable before
it is acknowledged, but N concurrent changes cost one fsync. Reads run on their own threads
and connections (WAL readers see the last commit), so a page refresh never waits behind a
long write and a long read never delays a timer's commit.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from watcherd.core.errors import AlreadyRunning, StateError
from watcherd.state.sqlite.schema import OPENED, check_file, migrate

__all__ = ["Database", "Tx"]

P = ParamSpec("P")
T = TypeVar("T")
Conn = sqlite3.Connection

READERS = 2


class Database:
    """The state file of one daemon; `write`/`read` run a function on a connection off-loop."""

    def __init__(self, state_dir: Path, *, read_only: bool = False, lock: bool = True) -> None:
        self.state_dir = state_dir
        self.path = state_dir / "state.db"
        self.read_only = read_only
        self._lock_fd: int | None = None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="watcherd-state")
        self._readers = ThreadPoolExecutor(READERS, thread_name_prefix="watcherd-read")
        self._local = threading.local()
        self._reader_conns: list[Conn] = []
        self._pending: collections.deque[Any] = collections.deque()
        self._drain_scheduled = False
        self._file: tuple[int, int] | None = None  # (device, inode) of the state.db opened
        try:
            if not read_only:
                _private_dir(state_dir)
                check_file(self.path)  # before the lock: its presence tells of a past run
                if lock:
                    self._take_lock()
            self._conn = self._writer.submit(self._open_writer).result()
            if not read_only:
                self._file = _file_id(self.path)
                if self._lock_fd is not None:  # a later start misses it if it is gone
                    os.write(self._lock_fd, OPENED)
        except sqlite3.Error as exc:
            self._shutdown()
            raise StateError(f"cannot open state database {self.path}: {exc}") from exc
        except BaseException:
            self._shutdown()
            raise

    # ── lifecycle ────────────────────────────────────────────────────────────

    def _take_lock(self) -> None:
        fd = os.open(self.state_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(
                f"another watcherd is running on state directory {self.state_dir}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _open_writer(self) -> Conn:
        if self.read_only:
            return self._open_reader()
        old = os.umask(0o077)  # the database, its WAL and shm: 0600 (SPEC §9, README)
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        finally:
            os.umask(old)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        migrate(conn)
        return conn

    def _open_reader(self) -> Conn:
        # A URI, so a state_dir with '#' or '?' in its name is a path, not a query.
        uri = self.path.resolve().as_uri() + ("?mode=ro" if self.read_only else "")
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA query_only=ON")
        return conn

    def close(self) -> None:
        """Close the connections, stop the threads and release the lock.

        The readers' pool is shut down (its reads in flight finished) before their
        connections close: SQLite's connection close under a query running on another thread
        crashes the process."""
        try:
            self._readers.shutdown()
            for c in self._reader_conns:
                with contextlib.suppress(sqlite3.Error):
                    c.close()
            self._writer.submit(self._conn.close).result()
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        self._writer.shutdown()
        self._readers.shutdown()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ── calls ────────────────────────────────────────────────────────────────

    async def write(
        self, fn: Callable[Concatenate[Conn, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run `fn(conn, …)` on the writer thread, in a group commit (see the module doc)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._pending.append((fn, args, kwargs, fut, loop))
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self._writer.submit(self._drain)
        return await fut

    async def read(
        self, fn: Callable[Concatenate[Conn, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run `fn(conn, …)` on a reader thread with its own connection."""
        loop = asyncio.get_running_loop()

        def call() -> T:
            try:
                return fn(self._reader(), *args, **kwargs)
            except sqlite3.Error as exc:
                raise StateError(f"state database: {exc}") from exc

        try:
            job = loop.run_in_executor(self._readers, call)
        except RuntimeError as exc:  # the pool is shut down: the store is closing
            raise StateError("state database: closed") from exc
        return await job

    def _reader(self) -> Conn:
        conn: Conn | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = self._open_reader()
            except sqlite3.Error as exc:
                raise StateError(f"state database {self.path}: {exc}") from exc
            self._local.conn = conn
            self._reader_conns.append(conn)
        return conn

    def sync(self, fn: Callable[Concatenate[Conn, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn(conn, …)` on the writer thread and block (check-config, state copy)."""
        return self._writer.submit(fn, self._conn, *args, **kwargs).result()

    def _drain(self) -> None:
        """On the writer thread: run every queued call in one transaction, then answer."""
        self._drain_scheduled = False  # before popping: a call queued from now on re-submits
        items = []
        while self._pending:
            items.append(self._pending.popleft())
        if not items:
            return
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        if (gone := self._replaced()) is not None:
            results = [(item[3], None, StateError(gone)) for item in items]
            self._answer(items, results)
            return
        group = len(items) > 1
        if group:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error:
                group = False  # each call then runs its own transaction
        for fn, args, kwargs, fut, _ in items:
            if group and not self._conn.in_transaction:
                # SQLite rolled the whole group back (disk full, I/O error): run nothing more
                # on its own, or it would commit and then be told the group's COMMIT failed.
                results.append((fut, None, StateError("state database: group rolled back")))
                continue
            try:
                results.append((fut, fn(self._conn, *args, **kwargs), None))
            except BaseException as exc:  # delivered to its caller
                results.append((fut, None, exc))
        if group:
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                err = StateError(f"state database: {exc}")
                results = [(f, None, err) for f, _, _ in results]
        self._answer(items, results)

    @staticmethod
    def _answer(items: list[Any], results: list[Any]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for (_, _, _, _, loop), result in zip(items, results, strict=True):
            by_loop.setdefault(loop, []).append(result)
        for loop, answers in by_loop.items():
            loop.call_soon_threadsafe(_deliver, answers)

    def _replaced(self) -> str | None:
        """Why no write may go on: state.db was deleted or replaced under the daemon (its
        writes would go to a file no start reads, and be lost). One stat per group commit."""
        if self._file is None:
            return None
        try:
            now = _file_id(self.path)
        except FileNotFoundError:
            what = "deleted"
        except OSError:  # cannot tell: SQLite says what is wrong, if anything
            return None
        else:
            if now == self._file:
                return None
            what = "replaced"
        return (
            f"state database {self.path} was {what} while watcherd ran: its writes are stopped "
            "(they would be lost); move that very file back (writes resume), or restore it "
            "from a backup and restart"
        )


def _file_id(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _private_dir(state_dir: Path) -> None:
    """Create state_dir 0700 (an existing one keeps its mode: systemd's StateDirectoryMode)."""
    try:
        state_dir.mkdir(parents=True, mode=0o700)
    except FileExistsError:
        if not state_dir.is_dir():
            raise StateError(f"state_dir {state_dir} is not a directory") from None


def _deliver(results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, value, exc in results:
        if fut.cancelled():
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)


class Tx:
    """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on error; maps sqlite errors to StateError.

    Inside a transaction already open (a group commit) it nests as a SAVEPOINT: an error
    undoes this call's changes only, and the group's COMMIT makes the rest durable."""

    def __init__(self, conn: Conn) -> None:
        self._conn = conn
        self._nested = False

    def __enter__(self) -> sqlite3.Cursor:
        try:
            if self._conn.in_transaction:
                self._nested = True
                self._conn.execute("SAVEPOINT tx")
            else:
                self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StateError(f"state database: {exc}") from exc
        return self._conn.cursor()

    def __exit__(self, et: object, exc: BaseException | None, tb: object) -> None:
        if self._nested:
            if exc is not None and self._conn.in_transaction:
                self._conn.execute("ROLLBACK TO tx")
            if self._conn.in_transaction:
                self._conn.execute("RELEASE tx")
            if isinstance(exc, sqlite3.Error):
                raise StateError(f"state database: {exc}") from exc
            return
        if exc is None:
            try:
                self._conn.execute("COMMIT")
                return
            except sqlite3.Error as e:
                self._rollback()
                raise StateError(f"state database: {e}") from e
        self._rollback()
        if isinstance(exc, sqlite3.Error):
            raise StateError(f"state database: {exc}") from exc

    def _rollback(self) -> None:
        # After an I/O error SQLite may have rolled back already; a second ROLLBACK would
        # raise "no transaction is active" and hide the real error.
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
