"""Run a real `watcherd run` subprocess for end-to-end tests, and read its state DB."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]


def wait_until(pred: Callable[[], Any], timeout: float = 20.0, step: float = 0.05) -> Any:
    """Poll `pred` until it returns a truthy value, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {pred}")
        time.sleep(step)


class DaemonProc:
    """A watcherd daemon in a subprocess, on a config file in `workdir`."""

    def __init__(
        self,
        workdir: Path,
        config_text: str,
        env: dict[str, str] | None = None,
        name: str = "watcherd.toml",
    ) -> None:
        self.workdir = workdir
        self.config = workdir / name
        self.config.write_text(config_text)
        self.env = {**os.environ, **(env or {})}
        self.env.pop("NOTIFY_SOCKET", None)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "daemon.log"
        self.state_dir = workdir / ".watcherd"

    # ── process ──────────────────────────────────────────────────────────────

    def start(self, wait_ready: bool = True, timeout: float = 30.0) -> DaemonProc:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "watcherd", "run", "--config", str(self.config)],
            cwd=self.workdir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        if wait_ready:
            wait_until(lambda: self._ready_or_dead(), timeout)
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.logs()}")
        return self

    def _ready_or_dead(self) -> bool:
        assert self.proc is not None
        return self.proc.poll() is not None or '"daemon_ready"' in self.logs(since_start=True)

    def logs(self, since_start: bool = False) -> str:
        if not self.log_path.exists():
            return ""
        data = self.log_path.read_bytes()
        if since_start:
            data = data[getattr(self, "_log_offset", 0) :]
        return data.decode("utf-8", "replace")

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.logs().splitlines():
            if line.startswith("{"):
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if name is None or ev.get("event") == name:
                    out.append(ev)
        return out

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    # ── API ──────────────────────────────────────────────────────────────────

    @property
    def url(self) -> str:
        return str(json.loads((self.state_dir / "config.json").read_text())["url"])

    @property
    def token(self) -> str:
        return (self.state_dir / "token").read_text().strip()

    def client(self, auth: bool = True) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"} if auth else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    # ── state ────────────────────────────────────────────────────────────────

    def db(self) -> sqlite3.Connection:
        uri = (self.state_dir / "state.db").resolve().as_uri() + "?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=10)
        conn.row_factory = sqlite3.Row
        return conn

    def runs(self, **where: str) -> list[dict[str, Any]]:
        if not (self.state_dir / "state.db").exists():
            return []
        sql = "SELECT * FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(f"{k}=?" for k in where)
        with self.db() as conn:
            rows = conn.execute(sql + " ORDER BY seq", tuple(where.values())).fetchall()
        conn.close()
        return [dict(r) for r in rows]
