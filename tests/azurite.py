"""Azurite (the Azure Storage emulator) as a subprocess, for blob tests and the blob bench.

Import the fixtures into a test module::

    from tests.azurite import azurite, azurite_server  # noqa: F401

`azurite` is session-scoped and yields a connection string; `azurite_server` is a private
instance per test that the test may stop and start again (same port, same data directory).
Without `azurite-blob` on PATH the tests are skipped, unless CI is set: then they fail.
Install: `npm install -g azurite`.
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

__all__ = ["Azurite", "azurite", "azurite_server", "find_azurite"]

# The well-known development account key, public by design (Azurite's documentation).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
START_TIMEOUT = 30.0


def find_azurite() -> str | None:
    """The azurite-blob executable, or None."""
    return shutil.which("azurite-blob")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Azurite:
    """One azurite-blob process on 127.0.0.1; stop() and start() keep the port and the data."""

    def __init__(self, executable: str, location: Path, port: int | None = None) -> None:
        self.executable = executable
        self.location = location
        self.port = port or _free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.endpoint};"
        )

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the process and return once it accepts connections (or raise)."""
        if self.running:
            return
        self.location.mkdir(parents=True, exist_ok=True)
        argv = [
            self.executable,
            "--blobHost", "127.0.0.1",
            "--blobPort", str(self.port),
            "--location", str(self.location),
            "--skipApiVersionCheck", "--silent", "--loose", "--disableTelemetry",
        ]  # fmt: skip
        log = self.location / "azurite.log"  # a file, not a pipe: a full pipe would block it
        with log.open("ab") as out:
            self._proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = log.read_text(errors="replace")
                self._proc = None
                raise RuntimeError(f"azurite-blob exited at start: {err.strip()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"azurite-blob did not listen on port {self.port} within 30 s")

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 10 s) and wait for it."""
        proc, self._proc = self._proc, None
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


def _require_azurite() -> str:
    exe = find_azurite()
    if exe is None:
        reason = "azurite-blob not on PATH (install: npm install -g azurite)"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false"):
            pytest.fail(reason + "; CI is set, so the blob tests must run", pytrace=False)
        pytest.skip(reason)
    return exe


@pytest.fixture(scope="session")
def azurite() -> Iterator[str]:
    """A connection string to an Azurite started once for the test session."""
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
    """A private, running Azurite the test may stop() and start() again."""
    exe = _require_azurite()
    server = Azurite(exe, tmp_path / "azurite")
    server.start()
    try:
        yield server
    finally:
        server.stop()
