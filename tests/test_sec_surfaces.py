"""Issue #11 on the surfaces, against a real daemon: item 15 (control characters reach the
terminal through CLI tables and errors) and item 11's API parts (500s on a bad `cursor` or a
trigger path that is not UTF-8; non-UTF-8 files can be triggered by hand through `path_b64`)."""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.seed_daemon import start_daemon
from tests.harness import DaemonProc, wait_until
from watcherd.cli.manage import main as manage_main

API = "/api/v1"
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # every C0/C1 control but \t \n
EVIL_NAME = "evil\x1b]0;pwned\x07\x1b[2J\x9b31m.csv"
RAW_NAME = b"caf\xe9-\xff.csv"  # Latin-1 bytes: not UTF-8


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    d = start_daemon(tmp_path_factory.mktemp("sec"))
    with d.client() as api:
        r = api.post(
            f"{API}/schedules",
            json={
                "name": "files",
                "pipeline": "train",
                "experiment_name": "Sec",
                "datastore": "workspaceblobstore",
                "polling_interval": "1h",
                "data_path_parameter_name": "input_data",
            },
        )
        assert r.status_code == 201, r.text
        # Its first poll takes the directory's baseline: a file written before that is part
        # of it and starts nothing (item 15 needs the file's own run).
        wait_until(lambda: "files" not in api.get("/readyz").json()["waiting"], timeout=20)
    yield d
    d.close()


@pytest.fixture
def api(daemon: DaemonProc) -> Iterator[httpx.Client]:
    with daemon.client() as c:
        yield c


@pytest.fixture
def cli(
    daemon: DaemonProc, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str, str]]:
    monkeypatch.setenv("WATCHERD_URL", daemon.url)
    monkeypatch.setenv("WATCHERD_TOKEN", daemon.token)

    def run(*args: str) -> tuple[int, str, str]:
        code = manage_main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _wait_terminal(api: httpx.Client, run_id: str) -> dict:
    def done() -> dict | None:
        run = api.get(f"{API}/runs/{run_id}").json()
        return run if run["status"] not in ("Queued", "Running") else None

    return wait_until(done, timeout=20)


# ── item 15 ───────────────────────────────────────────────────────────────────


def test_sec_15_cli_tables_and_errors_escape_control_characters(
    daemon: DaemonProc, api: httpx.Client, cli: Callable[..., tuple[int, str, str]]
) -> None:
    (daemon.workdir / "inbox" / EVIL_NAME).write_text("x")
    r = api.post(f"{API}/schedules/files/trigger", json={"path": EVIL_NAME})
    assert r.status_code == 202, r.text
    run = _wait_terminal(api, r.json()["id"])
    assert run["trigger"]["path"] == EVIL_NAME  # the API keeps the name; the terminal must not
    # The file's own run (the watch saw it arrive) is the one `runs list` names it by: it may
    # still be on its way when the manual run has ended.
    wait_until(
        lambda: any(
            r["trigger"].get("kind") == "file" and r["trigger"].get("path") == EVIL_NAME
            for r in api.get(f"{API}/runs", params={"limit": 50}).json()["items"]
        ),
        timeout=20,
    )

    for args in (("runs", "list"), ("runs", "show", run["id"]), ("schedules", "list", "--all")):
        code, out, err = cli(*args)
        assert code == 0, err
        assert not CONTROL.search(out), (args, out)
        assert not CONTROL.search(err)
    code, out, _ = cli("runs", "list")
    assert "evil\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m.csv" in out  # shown escaped, not dropped
    code, out, _ = cli("runs", "list", "--json")
    assert code == 0 and not CONTROL.search(out)
    assert json.loads(out)[0]["trigger"]["path"] == EVIL_NAME  # JSON escapes, values intact

    # One-line errors: a message carrying ESC/BEL/newlines from the user's input.
    code, _, err = cli("runs", "list", "--url", "http://127.0.0.1:1/\x1b]0;t\x07\nX")
    assert code == 2 and err.count("\n") == 1 and err.endswith("\n")  # not a usable URL
    assert not CONTROL.search(err) and "\\x1b]0;t\\x07\\x0aX" in err
    code, _, err = cli("runs", "list", "--url", "http://127.0.0.1:1/\x9b2J\u202e")
    assert code == 1 and err.startswith("watcherd: daemon not reachable at http://127.0.0.1:1/")
    assert err.count("\n") == 1 and not CONTROL.search(err) and "\\x9b2J\\u202e" in err
    code, _, err = cli("schedules", "trigger", "files", "--path", "no\x1b[5mne.csv")
    assert code == 2 and err.count("\n") == 1 and not CONTROL.search(err)


# ── item 11 (API parts) ───────────────────────────────────────────────────────


@pytest.mark.parametrize(
    "cursor",
    ["9" * 8000, "１２", "٣", "1e3", "-1", "12345678901234567890", "%ff", "\u00b2", " 1", "1\x00"],
)
def test_sec_11_bad_cursor_is_400_not_500(api: httpx.Client, cursor: str) -> None:
    r = api.get(f"{API}/runs", params={"cursor": cursor})
    assert r.status_code in (400, 422), r.text
    assert r.json()["error"]["key_path"] == "query.cursor"


def test_sec_11_non_utf8_trigger_path(daemon: DaemonProc, api: httpx.Client) -> None:
    inbox = os.fsencode(daemon.workdir / "inbox")
    with open(os.path.join(inbox, RAW_NAME), "wb") as f:
        f.write(b"1,2\n")
    # JSON cannot carry these bytes: a lone surrogate is refused with a hint, not a 500.
    raw = b'{"path": "caf\\udce9-\\udcff.csv"}'
    r = api.post(
        f"{API}/schedules/files/trigger",
        content=raw,
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["key_path"] == "body.path" and "path_b64" in err["message"]
    r = api.post(
        f"{API}/schedules/files/trigger",
        content=b'{"path": "\\ud800.csv"}',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 422, r.text

    # The bytes-safe form: base64 of the raw name.
    b64 = base64.b64encode(RAW_NAME).decode()
    r = api.post(f"{API}/schedules/files/trigger", json={"path_b64": b64})
    assert r.status_code == 202, r.text
    run = _wait_terminal(api, r.json()["id"])
    assert run["status"] == "Completed", run
    assert run["trigger"]["path"] == "caf\\xe9-\\xff.csv"
    for body, key in [
        ({"path_b64": "not base64!"}, "body.path_b64"),
        ({"path_b64": 3}, "body.path_b64"),
        ({"path_b64": b64, "path": "a.csv"}, "body.path_b64"),
    ]:
        r = api.post(f"{API}/schedules/files/trigger", json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"]["key_path"] == key


def test_sec_11_cli_triggers_non_utf8_names(
    daemon: DaemonProc, api: httpx.Client, cli: Callable[..., tuple[int, str, str]]
) -> None:
    inbox = os.fsencode(daemon.workdir / "inbox")
    with open(os.path.join(inbox, b"cli-\xff.csv"), "wb") as f:
        f.write(b"1\n")
    # argv holds undecodable bytes as surrogates (PEP 383): sent as path_b64.
    code, out, err = cli(
        "schedules", "trigger", "files", "--path", os.fsdecode(b"cli-\xff.csv"), "--json"
    )
    assert code == 0, err
    assert _wait_terminal(api, json.loads(out)["id"])["trigger"]["path"] == "cli-\\xff.csv"
    b64 = base64.b64encode(b"cli-\xff.csv").decode()
    code, out, err = cli("schedules", "trigger", "files", "--path-b64", b64, "--json")
    assert code == 0, err
    assert _wait_terminal(api, json.loads(out)["id"])["trigger"]["path"] == "cli-\\xff.csv"
    code, _, err = cli("schedules", "trigger", "files", "--path-b64", "%%%")
    assert code == 2 and err.count("\n") == 1


def test_sec_8_cli_withholds_the_token_from_a_url_only_config(
    daemon: DaemonProc,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A URL-only config.json is used for reads, never with $WATCHERD_TOKEN; a 401 says why.
    An untrusted one is skipped with a one-line warning."""
    monkeypatch.delenv("WATCHERD_URL", raising=False)
    monkeypatch.setenv("WATCHERD_TOKEN", daemon.token)
    here = tmp_path / "project"
    (here / ".watcherd").mkdir(parents=True)
    (here / ".watcherd" / "config.json").write_text(json.dumps({"url": daemon.url}))
    monkeypatch.chdir(here)
    assert manage_main(["pipelines", "list"]) == 0
    assert "train" in capsys.readouterr().out
    assert manage_main(["schedules", "disable", "files"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("watcherd: missing or wrong API token") and err.count("\n") == 1
    assert "names no token file" in err and "--url with --token" in err
    # Explicit --url with --token is the way.
    assert manage_main(["schedules", "enable", "files", "--url", daemon.url]) == 0
    capsys.readouterr()
    # A planted, group-writable config.json nearer the working directory is skipped.
    sub = here / "sub"
    (sub / ".watcherd").mkdir(parents=True)
    planted = sub / ".watcherd" / "config.json"
    planted.write_text(json.dumps({"url": "http://127.0.0.1:1"}))
    planted.chmod(0o664)
    monkeypatch.chdir(sub)
    assert manage_main(["pipelines", "list"]) == 0
    captured = capsys.readouterr()
    assert captured.err == (
        f"watcherd: warning: ignoring {planted}: the file is group- or world-writable (mode 0664)\n"
    )
