"""Azurite (the Azure Storage emulator) as subprocesses, for blob and queue tests and the bench.

The fixtures are registered for every test module by `tests/conftest.py` (`pytest_plugins`),
so the session-scoped ones start once per session; a test just names them as parameters.

`azurite` is session-scoped and yields a blob-only connection string; `azurite_server` is a
private blob-only instance per test that the test may stop and start again (same port, same
data directory). `azurite_queue` and `azurite_queue_server` are the same with Azurite's queue
service started beside the blob service: their connection string has both `BlobEndpoint=` and
`QueueEndpoint=` (`Azurite.queue_connection_string` has the queue alone).
Without `azurite-blob` (and, for the queue fixtures, `azurite-queue`) on PATH the tests are
skipped, unless CI is set: then they fail. Both come with one npm package:
`npm install -g azurite@3`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = [
    "ACCOUNT",
    "ACCOUNT_KEY",
    "Azurite",
    "azurite",
    "azurite_queue",
    "azurite_queue_server",
    "azurite_server",
    "find_azurite",
    "find_azurite_queue",
]

# The well-known development account key, public by design (Azurite's documentation).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
START_TIMEOUT = 30.0
INSTALL_HINT = "npm install -g azurite@3"


def find_azurite() -> str | None:
    """The azurite-blob executable, or None."""
    return shutil.which("azurite-blob")


def find_azurite_queue() -> str | None:
    """The azurite-queue executable, or None."""
    return shutil.which("azurite-queue")


def _free_port(taken: tuple[int, ...] = ()) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            return port


class _Service:
    """One Azurite service process (azurite-blob or azurite-queue) on 127.0.0.1."""

    def __init__(
        self, kind: str, executable: str, location: Path, port: int, in_memory: bool = False
    ) -> None:
        self.kind = kind  # "blob" or "queue": names the --<kind>Host/--<kind>Port flags
        self.executable = executable
        self.location = location
        self.port = port
        self.in_memory = in_memory
        self.log = location / ("azurite.log" if kind == "blob" else f"azurite-{kind}.log")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        self.location.mkdir(parents=True, exist_ok=True)
        argv = [
            self.executable,
            f"--{self.kind}Host", "127.0.0.1",
            f"--{self.kind}Port", str(self.port),
            "--skipApiVersionCheck", "--silent", "--loose", "--disableTelemetry",
        ]  # fmt: skip
        # In memory: no database file rewritten as it grows (benches with many blobs);
        # the data is then lost on stop().
        argv += ["--inMemoryPersistence"] if self.in_memory else ["--location", str(self.location)]
        name = Path(self.executable).name
        with self.log.open("ab") as out:  # a file, not a pipe: a full pipe would block it
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.log.read_text(errors="replace")
                self.proc = None
                raise RuntimeError(f"{name} exited at start: {err.strip()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{name} did not listen on port {self.port} within 30 s")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # The port must be free again before a restart on the same port.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    time.sleep(0.05)
            except OSError:
                return


class Azurite:
    """Azurite's blob service, and optionally its queue service, on 127.0.0.1.

    stop() and start() keep the ports and the data (both services share `location`).

    Args:
        executable: the azurite-blob executable.
        location: the data directory (created on start).
        port: the blob port (default: a free one).
        queue_executable: the azurite-queue executable; None runs the blob service alone.
        queue_port: the queue port (default: a free one).
        in_memory: keep the data in memory only (faster with many blobs; lost on stop()).
    """

    def __init__(
        self,
        executable: str,
        location: Path,
        port: int | None = None,
        *,
        queue_executable: str | None = None,
        queue_port: int | None = None,
        in_memory: bool = False,
    ) -> None:
        self.executable = executable
        self.location = location
        self.port = port or _free_port()
        self._blob = _Service("blob", executable, location, self.port, in_memory)
        self._queue: _Service | None = None
        if queue_executable is not None:
            qport = queue_port or _free_port((self.port,))
            self._queue = _Service("queue", queue_executable, location, qport, in_memory)

    @property
    def endpoint(self) -> str:
        """The blob service endpoint (path-style: the account is the first path segment)."""
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def has_queue(self) -> bool:
        return self._queue is not None

    @property
    def queue_port(self) -> int | None:
        return None if self._queue is None else self._queue.port

    @property
    def queue_endpoint(self) -> str:
        """The queue service endpoint; a RuntimeError if this instance has no queue service."""
        if self._queue is None:
            raise RuntimeError("this Azurite was made without queue_executable")
        return f"http://127.0.0.1:{self._queue.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        """Blob endpoint, plus the queue endpoint when the queue service is on."""
        text = (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.endpoint};"
        )
        if self._queue is not None:
            text += f"QueueEndpoint={self.queue_endpoint};"
        return text

    @property
    def queue_connection_string(self) -> str:
        """A connection string with the queue endpoint alone."""
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"QueueEndpoint={self.queue_endpoint};"
        )

    @property
    def running(self) -> bool:
        """True while every service of this instance runs."""
        return self._blob.running and (self._queue is None or self._queue.running)

    def start(self) -> None:
        """Start the services and return once each accepts connections (or raise)."""
        self._blob.start()
        if self._queue is not None:
            try:
                self._queue.start()
            except BaseException:
                self._blob.stop()
                raise

    def stop(self) -> None:
        """Stop the services (SIGTERM, then SIGKILL after 10 s) and wait for them."""
        try:
            if self._queue is not None:
                self._queue.stop()
        finally:
            self._blob.stop()


def _require(*, queue: bool = False) -> tuple[str, str | None]:
    """(azurite-blob, azurite-queue or None); skips, or fails under CI, when one is missing."""
    blob = find_azurite()
    queue_exe = find_azurite_queue() if queue else None
    missing = [] if blob else ["azurite-blob"]
    if queue and not queue_exe:
        missing.append("azurite-queue")
    if missing:
        reason = f"{' and '.join(missing)} not on PATH (install: {INSTALL_HINT})"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false"):
            pytest.fail(reason + "; CI is set, so the Azurite tests must run", pytrace=False)
        pytest.skip(reason)
    assert blob is not None
    return blob, queue_exe


def _require_azurite() -> str:
    return _require()[0]


@pytest.fixture(scope="session")
def azurite() -> Iterator[str]:
    """A connection string to an Azurite (blob) started once for the test session."""
    exe = _require_azurite()
    with tempfile.TemporaryDirectory(prefix="watcherd-azurite-") as tmp:
        server = Azurite(exe, Path(tmp))
        server.start()
        try:
            yield server.connection_string
        finally:
            server.stop()


@pytest.fixture
def azurite_server(tmp_path: Path) -> Iterator[Azurite]:
    """A private, running Azurite (blob) the test may stop() and start() again."""
    exe = _require_azurite()
    server = Azurite(exe, tmp_path / "azurite")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def azurite_queue() -> Iterator[str]:
    """A connection string (BlobEndpoint and QueueEndpoint) to an Azurite with blob and queue
    services, started once for the test session."""
    blob, queue = _require(queue=True)
    with tempfile.TemporaryDirectory(prefix="watcherd-azurite-queue-") as tmp:
        server = Azurite(blob, Path(tmp), queue_executable=queue)
        server.start()
        try:
            yield server.connection_string
        finally:
            server.stop()


@pytest.fixture
def azurite_queue_server(tmp_path: Path) -> Iterator[Azurite]:
    """A private, running Azurite with blob and queue services; stop() and start() keep both
    ports and the data."""
    blob, queue = _require(queue=True)
    server = Azurite(blob, tmp_path / "azurite", queue_executable=queue)
    server.start()
    try:
        yield server
    finally:
        server.stop()
