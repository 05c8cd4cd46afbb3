"""Shared by the ops and fault tests: external tools, an sd_notify listener, the scaled clock."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.harness import DaemonProc

__all__ = [
    "Notification",
    "NotifyListener",
    "ScaledTime",
    "notifying_daemon",
    "require_tool",
]


def require_tool(name: str, hint: str) -> str:
    """The path of an external tool: on PATH or next to this Python (the venv's bin/).

    Missing: skipped on a developer machine, a failure under CI (CI=true), where `hint` says
    how to install it.
    """
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found:
        return found
    message = f"{name} is not installed ({hint})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@dataclass(frozen=True, slots=True)
class Notification:
    """One sd_notify datagram: when it arrived (time.monotonic()) and its fields."""

    at: float
    fields: dict[str, str]
    raw: str


@dataclass
class NotifyListener:
    """A unix datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    path: str
    messages: list[Notification] = field(default_factory=list)
    _sock: socket.socket | None = None
    _thread: threading.Thread | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _closed: bool = False

    def start(self) -> NotifyListener:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self._sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._sock is not None
        while not self._closed:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            text = data.decode("utf-8", "replace")
            fields = dict(line.split("=", 1) for line in text.split("\n") if "=" in line)
            with self._cond:
                self.messages.append(Notification(time.monotonic(), fields, text))
                self._cond.notify_all()

    def close(self) -> None:
        self._closed = True
        if self._thread is not None:
            self._thread.join(2)
        if self._sock is not None:
            self._sock.close()

    def with_field(self, key: str, value: str | None = None, after: int = 0) -> list[int]:
        """Indices (from `after`) of the messages that carry KEY (=value)."""
        with self._cond:
            return [
                i
                for i, m in enumerate(self.messages)
                if i >= after and key in m.fields and (value is None or m.fields[key] == value)
            ]

    def wait_for(
        self, key: str, value: str | None = None, *, after: int = 0, timeout: float = 20.0
    ) -> int:
        """The index of the first message from `after` that carries KEY (=value)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                hits = self.with_field(key, value, after)
                if hits:
                    return hits[0]
                left = deadline - time.monotonic()
                if left <= 0:
                    raw = [m.raw for m in self.messages[after:]][-10:]
                    raise AssertionError(f"no {key}={value or '*'} within {timeout}s; got {raw}")
                self._cond.wait(left)

    def __len__(self) -> int:
        with self._cond:
            return len(self.messages)


@contextmanager
def notifying_daemon(
    workdir: Path, config_text: str, env: dict[str, str] | None = None
) -> Iterator[tuple[DaemonProc, NotifyListener]]:
    """A DaemonProc whose $NOTIFY_SOCKET is a listener of ours (DaemonProc drops the caller's
    NOTIFY_SOCKET, so it is set on the instance); the socket lives under a short /tmp path
    (AF_UNIX paths are limited to 107 bytes)."""
    sockdir = tempfile.mkdtemp(prefix="wd-notify-", dir="/tmp")
    listener = NotifyListener(os.path.join(sockdir, "notify.sock")).start()
    d = DaemonProc(workdir, config_text, env)
    d.env["NOTIFY_SOCKET"] = listener.path
    try:
        yield d, listener
    finally:
        d.close()
        listener.close()
        shutil.rmtree(sockdir, ignore_errors=True)


@dataclass(frozen=True)
class ScaledTime:
    """The timeline of `$WATCHERD_TEST_CLOCK`: fake = origin + (real − origin_real) × speed."""

    speed: float
    origin: datetime = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    origin_real: float = field(default_factory=time.time)

    @property
    def env(self) -> dict[str, str]:
        return {"WATCHERD_TEST_CLOCK": f"{self.origin_real}|{self.origin.isoformat()}|{self.speed}"}

    def at(self, real: float) -> datetime:
        return self.origin + timedelta(seconds=(real - self.origin_real) * self.speed)

    def now(self) -> datetime:
        return self.at(time.time())

    def at_log(self, timestamp: str) -> datetime:
        """The fake instant of a log line's real ISO timestamp."""
        real = datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
        return self.at(real)


def wait_for(pred: Callable[[], object], timeout: float = 20.0, step: float = 0.02) -> object:
    """Like tests.harness.wait_until, with a finer step for short scaled-clock windows."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {pred}")
        time.sleep(step)
