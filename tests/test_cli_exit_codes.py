"""Exit codes of the management commands (SPEC §6): 0 ok; 1 runtime failure or daemon
unreachable; 2 usage or config error. A value from the command line that the daemon refuses
(400 or 422) is a usage error: exit 2 with the daemon's message as one line on stderr.

The commands run as `python -m watcherd …` subprocesses against a real daemon subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.api.seed_daemon import start_daemon
from tests.harness import ROOT, DaemonProc
from watcherd.cli.manage import main

STATUSES = "Queued, Running, Completed, Failed, Submitted, Canceled, Skipped"
LIMIT = "limit must be an integer from 1 to 1000"
STATUS = f"status must be one of {STATUSES}"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    d = start_daemon(tmp_path_factory.mktemp("exit_codes"))
    yield d
    d.close()


def watcherd(daemon: DaemonProc, *args: str) -> tuple[int, str, str]:
    """`watcherd ARGS…` as a process, finding the daemon by $WATCHERD_URL/$WATCHERD_TOKEN."""
    env = {**os.environ, "WATCHERD_URL": daemon.url, "WATCHERD_TOKEN": daemon.token}
    done = subprocess.run(
        [sys.executable, "-m", "watcherd", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--status", "Bogus"], STATUS, id="status"),
        pytest.param(["--limit", "0"], LIMIT, id="limit-0"),
        pytest.param(["--limit", "1001"], LIMIT, id="limit-1001"),
        pytest.param(["--status", "Bogus", "--json"], STATUS, id="json"),
    ],
)
def test_values_the_daemon_refuses_are_usage_errors(
    daemon: DaemonProc, args: list[str], message: str
) -> None:
    code, out, err = watcherd(daemon, "runs", "list", *args)
    assert (code, out, err) == (2, "", f"watcherd: {message}\n")


@pytest.mark.parametrize(
    ("args", "code", "err_start"),
    [
        (["runs", "list", "--status", "Completed", "--limit", "1"], 0, ""),
        (["schedules", "show", "nope"], 1, "watcherd: schedule 'nope' not found"),  # 404
        (["runs", "show", "nope"], 1, "watcherd: run 'nope' not found"),  # 404
        (["runs", "list", "--schedule", "nope"], 1, "watcherd: schedule 'nope' not found"),
        (["pipelines", "disable", "train"], 1, "watcherd: pipeline train has Active"),  # 409
        (["schedules", "delete", "Nightly"], 1, "watcherd: schedule Nightly is declared"),
        (["schedules", "disable", "Nightly", "--token", "wrong"], 1, "watcherd: missing or"),
        (["runs", "list", "--url", "http://127.0.0.1:1"], 1, "watcherd: daemon not reachable"),
        (["schedules", "trigger", "Nightly", "--path", "a.csv"], 2, "watcherd: body.path: "),
        (["runs", "list", "--limit", "x"], 2, "usage: "),  # argparse
        (["runs", "frobnicate"], 2, "usage: "),
    ],
)
def test_other_exit_codes_are_kept(
    daemon: DaemonProc, args: list[str], code: int, err_start: str
) -> None:
    got, _, err = watcherd(daemon, *args)
    assert got == code, err
    assert err.startswith(err_start)
    if err_start.startswith("watcherd: "):
        assert err.count("\n") == 1


# ── every status the API answers with, from a stand-in server ─────────────────


class _Answer(BaseHTTPRequestHandler):
    status = 500

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = json.dumps({"error": {"code": "x", "message": f"refused with {self.status}"}})
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, 2), (413, 2), (422, 2), (401, 1), (404, 1), (409, 1), (421, 1), (500, 1), (503, 1)],
)
def test_status_to_exit_code(
    status: int, code: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    handler = type("Answer", (_Answer,), {"status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.delenv("WATCHERD_URL", raising=False)
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert main(["runs", "list", "--url", url, "--token", "t"]) == code
    finally:
        server.shutdown()
        server.server_close()
    err = capsys.readouterr().err
    assert err.startswith(f"watcherd: refused with {status}") and err.count("\n") == 1
