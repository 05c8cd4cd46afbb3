"""Issue #11, state and start-up items: file modes (7), blob names that read as options (10),
start-up failures in one line (12), an unwritable state logged once (13), check-config on an
odd state_dir (16), token/config.json writes (17), an emptied or corrupted state.db (20).

Each runs a real daemon or the real CLI on real files."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.faults.test_faults import immutable_ok  # noqa: F401  (a fixture)
from tests.harness import DaemonProc, wait_until

HOUR = """
[daemon]
api = "127.0.0.1:0"
log_format = "json"
state_dir = "{state_dir}"

[pipelines.p]
kind = "command"
steps = [["true"]]

[[schedules]]
name = "hourly"
pipeline = "p"
experiment_name = "E"
recurrence = {{ frequency = "Hour", interval = 1 }}
"""


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _run_cli(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "watcherd", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"},
    )


def test_sec_7_state_dir_and_files_are_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    d = DaemonProc(tmp_path, HOUR.format(state_dir=state))
    d.state_dir = state
    old = os.umask(0o022)  # a permissive umask, as under many shells
    try:
        d.start()
        assert _mode(state) == 0o700
        for name in ("state.db", "state.db-wal", "token", "config.json", "lock"):
            assert _mode(state / name) == 0o600, name
        assert d.stop() == 0
    finally:
        os.umask(old)
        d.close()


def test_sec_7_an_existing_state_dir_keeps_its_mode(tmp_path: Path) -> None:
    """systemd's StateDirectoryMode (or an operator) decides an existing directory's mode."""
    state = tmp_path / "state"
    state.mkdir(mode=0o750)
    state.chmod(0o750)
    d = DaemonProc(tmp_path, HOUR.format(state_dir=state))
    d.state_dir = state
    try:
        d.start()
        assert _mode(state) == 0o750
        assert _mode(state / "state.db") == 0o600
        assert d.stop() == 0
    finally:
        d.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("api", ["in_use", "nonexistent.invalid:8765"])
def test_sec_12_api_bind_failures_are_one_line_exit_1(tmp_path: Path, api: str) -> None:
    held = socket.socket()
    try:
        if api == "in_use":
            held.bind(("127.0.0.1", 0))
            held.listen()
            api = f"127.0.0.1:{held.getsockname()[1]}"
        cfg = tmp_path / "watcherd.toml"
        cfg.write_text(HOUR.format(state_dir=tmp_path / "state").replace("127.0.0.1:0", api))
        res = _run_cli("run", "--config", str(cfg), cwd=tmp_path)
    finally:
        held.close()
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "Traceback" not in out
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    failed = [e for e in events if e["event"] == "api_bind_failed"]
    assert len(failed) == 1 and failed[0]["api"] == api, out


def test_sec_16_check_config_reads_a_state_dir_named_with_hash_and_query(tmp_path: Path) -> None:
    state = tmp_path / "st#a?b"
    d = DaemonProc(tmp_path, HOUR.format(state_dir=state).replace("Hour", "Minute"))
    d.state_dir = state
    try:
        d.start()
        wait_until(lambda: len(d.runs()) >= 1)  # the creation fire happened and is stored
        assert d.stop() == 0
    finally:
        d.close()
    before = sorted(p.name for p in tmp_path.iterdir())
    res = _run_cli("check-config", "--json", "--config", str(d.config), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    # Stored: the creation fire is in the past, not shown again as "on creation".
    assert doc["schedules"][0]["creation_fire"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no stray "st" file


def test_sec_17_token_and_config_json_never_written_through_a_symlink(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    target = tmp_path / "victim.txt"
    target.write_text("do not touch\n")
    (state / "token").symlink_to(target)
    (state / "config.json").symlink_to(target)
    d = DaemonProc(tmp_path, HOUR.format(state_dir=state))
    d.state_dir = state
    try:
        d.start()
        assert target.read_text() == "do not touch\n"
        for name in ("token", "config.json"):
            assert not (state / name).is_symlink(), name
            assert _mode(state / name) == 0o600, name
        assert len(d.token) > 20
        assert d.stop() == 0
    finally:
        d.close()


def test_sec_17_an_existing_token_file_gets_mode_0600(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    cfg = HOUR.format(state_dir=state).replace(
        'log_format = "json"', 'log_format = "json"\ntoken = "configured-tok"'
    )
    (state / "token").write_text("old\n")
    (state / "token").chmod(0o644)
    d = DaemonProc(tmp_path, cfg)
    d.state_dir = state
    try:
        d.start()
        assert _mode(state / "token") == 0o600
        assert d.token == "configured-tok"
        assert d.stop() == 0
    finally:
        d.close()


@pytest.mark.parametrize("how", ["emptied", "missing"])
def test_sec_20_an_emptied_or_missing_state_db_is_refused(tmp_path: Path, how: str) -> None:
    """e.g. a botched copy, a full disk, a `rm` in the wrong directory: the next start stops
    with a message instead of starting afresh."""
    state = tmp_path / "state"
    d = DaemonProc(tmp_path, HOUR.format(state_dir=state))
    d.state_dir = state
    try:
        d.start()
        assert d.stop() == 0
        if how == "emptied":
            (state / "state.db").write_bytes(b"")
        else:
            for name in ("state.db", "state.db-wal", "state.db-shm"):
                (state / name).unlink(missing_ok=True)
        d.start(wait_ready=False)
        assert d.proc is not None
        assert d.proc.wait(30) == 1
        errors = d.events("state_unavailable")
        assert (
            errors
            and f"is {'empty' if how == 'emptied' else how} but watcherd has run here"
            in errors[-1]["error"]
        ), d.logs()
        assert "restore" in errors[-1]["error"]
        db = state / "state.db"  # nothing was started afresh
        assert (db.stat().st_size == 0) if how == "emptied" else not db.exists()
    finally:
        d.close()


def test_sec_20_a_corrupted_state_db_is_refused_at_start(tmp_path: Path) -> None:
    state = tmp_path / "state"
    d = DaemonProc(tmp_path, HOUR.format(state_dir=state))
    d.state_dir = state
    try:
        d.start()
        assert d.stop() == 0
        db = state / "state.db"
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name='schedules'").fetchone()
        conn.close()
        data = bytearray(db.read_bytes())
        offset = (root[0] - 1) * page
        data[offset + 8 : offset + 200] = b"\xff" * 192  # garble the table's b-tree page
        db.write_bytes(bytes(data))
        d.start(wait_ready=False)
        assert d.proc is not None
        assert d.proc.wait(30) == 1
        errors = d.events("state_unavailable")
        assert errors and "integrity" in errors[-1]["error"], d.logs()
    finally:
        d.close()


OUTAGE = """
[daemon]
api = "127.0.0.1:0"
log_format = "json"
state_dir = "{state_dir}"

[datastores.inbox]
kind = "local"
root = "{inbox}"

[pipelines.p]
kind = "command"
steps = [["true"]]

[[schedules]]
name = "minutely"
pipeline = "p"
experiment_name = "E"
recurrence = {{ frequency = "Minute", interval = 1 }}

[[schedules]]
name = "files"
pipeline = "p"
experiment_name = "E"
datastore = "inbox"
polling_interval = "1s"
"""


def test_sec_13_an_unwritable_state_is_logged_once_then_summarized(
    tmp_path: Path,
    immutable_ok: None,  # noqa: F811
) -> None:
    """The state refuses writes (as a full disk does) while slots fall due and files arrive:
    one error line, no traceback, not one line per retry; nothing lost once it recovers."""
    from tests.faults.test_faults import _chattr

    state, inbox = tmp_path / "state", tmp_path / "inbox"
    inbox.mkdir()
    d = DaemonProc(tmp_path, OUTAGE.format(state_dir=state, inbox=inbox))
    d.state_dir = state
    files = [state / "state.db", state / "state.db-wal", state]
    locked = False
    try:
        d.start()
        wait_until(lambda: d.events("baseline_taken") and d.runs())
        _chattr("+i", *files)
        locked = True
        for i in range(20):  # files keep arriving, slots keep falling due
            (inbox / f"f{i}.csv").write_text(str(i))
            time.sleep(0.15)
        _chattr("-i", *files)
        locked = False
        wait_until(lambda: d.events("state_write_recovered"), timeout=40)
        wait_until(lambda: len([r for r in d.runs() if "path" in r["trigger"]]) >= 20, timeout=30)
        errors = [e for e in d.events() if e.get("level") == "error"]
        assert len(d.events("state_write_failed")) == 1, [e["event"] for e in errors]
        assert len(errors) <= 3, [e["event"] for e in errors]  # failed, a summary or two
        assert not d.events("commit_failed")
        assert not any("exception" in e or "Traceback" in json.dumps(e) for e in d.events())
        assert d.stop() == 0
    finally:
        if locked:
            _chattr("-i", *files)
        d.close()


BLOB_DASH = """
[daemon]
api = "127.0.0.1:0"
log_format = "json"

[datastores.blobs]
kind = "azure_blob"
connection_string = "{conn}"
container = "{container}"

[pipelines.echo]
kind = "command"
steps = [["sh", "-c", "echo \\"$1\\" >> seen.txt", "sh", "{{f}}"]]
parameters = {{ f = "" }}

[[schedules]]
name = "root"
pipeline = "echo"
experiment_name = "E"
datastore = "blobs"
path_on_datastore = ""
polling_interval = "1s"
data_path_parameter_name = "f"
initial = "fire"
"""


@pytest.mark.azurite
def test_sec_10_a_blob_named_like_an_option_starts_no_command(
    tmp_path: Path,
    azurite: str,  # noqa: F811
) -> None:
    from azure.storage.blob import BlobServiceClient

    container = f"c{uuid.uuid4().hex[:12]}"
    svc = BlobServiceClient.from_connection_string(azurite)
    client = svc.create_container(container)
    for name in ("--help", "-rf", "ok.csv"):
        client.upload_blob(name, b"x")
    d = DaemonProc(tmp_path, BLOB_DASH.format(conn=azurite, container=container))
    try:
        d.start()
        done = ("Completed", "Skipped", "Failed")
        wait_until(lambda: len(d.runs()) >= 3 and all(r["status"] in done for r in d.runs()))
        by_path = {json.loads(r["trigger"])["path"]: r for r in d.runs()}
        assert by_path["ok.csv"]["status"] == "Completed"
        for name in ("--help", "-rf"):
            assert by_path[name]["status"] == "Skipped"
            assert "option" in by_path[name]["error"]
        assert (tmp_path / "seen.txt").read_text().split() == ["ok.csv"]
        with d.client() as c:  # nor by hand
            sid = c.get("/api/v1/schedules/root").json()["id"]
            res = c.post(f"/api/v1/schedules/{sid}/trigger", json={"path": "--help"})
            assert res.status_code == 422, res.text
        skipped = d.events("file_skipped")
        assert sorted(e["path"] for e in skipped) == ["--help", "-rf"]
        assert d.stop() == 0
    finally:
        d.close()


def test_a_configured_token_kept_unchanged_needs_no_write(tmp_path: Path) -> None:
    """A start on a full disk must not fail on the token file: a configured token already
    kept is not written again (its mode is still made 0600); one that cannot be written is a
    warning (the daemon has it from the config). A token to generate that cannot be kept is
    an OSError (the daemon reports state_unavailable, exit 1)."""
    import structlog

    from watcherd import statefiles
    from watcherd.config import load

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "token").write_text("configured-tok\n")
    (state / "token").chmod(0o644)
    (state / f".token.{os.getpid()}.tmp").mkdir()  # any write of the token file now fails
    path = tmp_path / "w.toml"
    path.write_text(f'[daemon]\nstate_dir = "{state}"\ntoken = "configured-tok"\n')
    with structlog.testing.capture_logs() as logs:
        assert statefiles.token(load(path, {}))[0] == "configured-tok"
    assert _mode(state / "token") == 0o600 and not logs
    path.write_text(f'[daemon]\nstate_dir = "{state}"\ntoken = "another-tok"\n')
    with structlog.testing.capture_logs() as logs:
        assert statefiles.token(load(path, {}))[0] == "another-tok"
    assert [e["event"] for e in logs] == ["token_file_not_written"]
    (state / "token").unlink()
    path.write_text(f'[daemon]\nstate_dir = "{state}"\n')
    with pytest.raises(OSError):
        statefiles.token(load(path, {}))


@pytest.mark.parametrize("how", ["deleted", "replaced"])
async def test_writes_stop_when_state_db_is_deleted_or_replaced_under_the_daemon(
    tmp_path: Path, how: str
) -> None:
    """Writes into a state.db no longer at its path would be lost at the next start: they
    fail (retried with backoff, /readyz 503 by the engine's rule) until it is back."""
    from datetime import UTC, datetime

    from watcherd.core.errors import StateError
    from watcherd.state.sqlite.store import SqliteStore

    store = SqliteStore(tmp_path / "state")
    db = tmp_path / "state" / "state.db"
    when = datetime(2026, 11, 25, tzinfo=UTC)
    try:
        await store.prune(when)  # a write: fine
        aside = tmp_path / "aside.db"
        if how == "deleted":
            os.rename(db, aside)
        else:
            aside.write_bytes(db.read_bytes())
            os.replace(aside, db)
        with pytest.raises(StateError, match=f"was {how} while watcherd ran"):
            await store.prune(when)
        if how == "deleted":
            os.rename(aside, db)  # put back: writes go on
            await store.prune(when)
    finally:
        await store.close()
