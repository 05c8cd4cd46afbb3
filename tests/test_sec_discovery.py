"""Issue #11 item 8: which discovered config.json files the CLI and the SDK trust (SPEC §7).

A config.json that names a token_file is trusted only when that file is the `token` beside it
and both, and their directory, belong to the current user (or root) and are not group- or
world-writable; a URL-only file is used when it is not group- or world-writable, and never with
a token found elsewhere; an untrusted file is skipped and logged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from watcherd import client as client_mod

OTHER_UID = 65534  # nobody


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("WATCHERD_URL", "WATCHERD_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(client_mod, "RUNTIME_CONFIG", tmp_path / "run" / "config.json")


def _state(
    folder: Path, url: str, *, token: str | None = "good-token", token_file: str | None = None
) -> Path:
    """A daemon-written `.watcherd` in `folder`: config.json (+ token), modes as the daemon sets."""
    state = folder / ".watcherd"
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)
    data: dict[str, str] = {"url": url}
    if token is not None:
        (state / "token").write_text(token + "\n")
        (state / "token").chmod(0o600)
        data["token_file"] = token_file or str(state / "token")
    (state / "config.json").write_text(json.dumps(data))
    (state / "config.json").chmod(0o600)
    return state


def test_sec_8_daemon_written_config_is_trusted(tmp_path: Path) -> None:
    deep = tmp_path / "project" / "a" / "b"
    deep.mkdir(parents=True)
    _state(tmp_path / "project", "http://127.0.0.1:9001")
    assert client_mod.discover(cwd=deep) == ("http://127.0.0.1:9001", "good-token")
    # A relative token_file naming the token beside it is the same file.
    _state(tmp_path / "project", "http://127.0.0.1:9001", token_file="token")
    assert client_mod.discover(cwd=deep) == ("http://127.0.0.1:9001", "good-token")


@pytest.mark.parametrize(
    "tamper",
    [
        "config_world_writable",
        "config_group_writable",
        "token_world_writable",
        "dir_world_writable",
        "token_elsewhere",
        "token_symlink",
        "config_symlink",
        "other_owner_config",
        "other_owner_token",
        "other_owner_dir",
    ],
)
def test_sec_8_untrusted_token_config_is_skipped_and_logged(tmp_path: Path, tamper: str) -> None:
    if tamper.startswith("other_owner") and os.geteuid() != 0:
        pytest.skip("changing a file's owner needs root")
    work = tmp_path / "shared" / "work"
    work.mkdir(parents=True)
    # The user's own daemon state, further up: what discovery must fall back to.
    _state(tmp_path, "http://127.0.0.1:9002", token="mine")
    secret = tmp_path / "secret.txt"
    secret.write_text("ssh-private-key")
    planted = _state(tmp_path / "shared", "http://attacker.example:80", token="planted")
    config, token = planted / "config.json", planted / "token"
    if tamper == "config_world_writable":
        config.chmod(0o666)
    elif tamper == "config_group_writable":
        config.chmod(0o620)
    elif tamper == "token_world_writable":
        token.chmod(0o602)
    elif tamper == "dir_world_writable":
        planted.chmod(0o777)
    elif tamper == "token_elsewhere":
        config.write_text(
            json.dumps({"url": "http://attacker.example:80", "token_file": str(secret)})
        )
    elif tamper == "token_symlink":
        token.unlink()
        token.symlink_to(secret)
    elif tamper == "config_symlink":
        real = tmp_path / "real-config.json"
        real.write_text(config.read_text())
        real.chmod(0o600)
        config.unlink()
        config.symlink_to(real)
    elif tamper == "other_owner_config":
        os.chown(config, OTHER_UID, -1)
    elif tamper == "other_owner_token":
        os.chown(token, OTHER_UID, -1)
    elif tamper == "other_owner_dir":
        os.chown(planted, OTHER_UID, -1)
    with capture_logs() as logs:
        found = client_mod.discover(cwd=work)
    assert found == ("http://127.0.0.1:9002", "mine")
    skipped = [e for e in logs if e["event"] == "discovery_config_untrusted"]
    assert [Path(e["path"]) for e in skipped] == [config]
    assert skipped[0]["reason"]


def test_sec_8_url_only_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "w"
    work.mkdir()
    state = _state(tmp_path, "http://127.0.0.1:9003", token=None)
    assert client_mod.discover(cwd=work) == ("http://127.0.0.1:9003", None)
    # Never combined with a token found elsewhere: not $WATCHERD_TOKEN, not an explicit one.
    monkeypatch.setenv("WATCHERD_TOKEN", "env-token")
    assert client_mod.discover(cwd=work) == ("http://127.0.0.1:9003", None)
    assert client_mod.discover(token="typed", cwd=work) == ("http://127.0.0.1:9003", None)
    # A world- or group-writable URL-only file is skipped.
    for mode in (0o666, 0o660):
        (state / "config.json").chmod(mode)
        with capture_logs() as logs:
            url, token = client_mod.discover(cwd=work)
        assert url == client_mod.DEFAULT_URL and token == "env-token"
        assert [e["event"] for e in logs] == ["discovery_config_untrusted"]


def test_sec_8_runtime_config_of_another_user_is_url_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/run/watcherd/config.json under DynamicUser= belongs to a dynamic uid: URL only."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"url": "http://127.0.0.1:9004"}))
    (run / "config.json").chmod(0o644)
    if os.geteuid() == 0:
        os.chown(run / "config.json", 61234, 61234)
        os.chown(run, 61234, 61234)
    monkeypatch.setenv("WATCHERD_TOKEN", "env-token")
    assert client_mod.discover(cwd=tmp_path / "run") == ("http://127.0.0.1:9004", None)
    # $WATCHERD_URL + $WATCHERD_TOKEN still win over any file.
    monkeypatch.setenv("WATCHERD_URL", "http://127.0.0.1:9005")
    assert client_mod.discover(cwd=tmp_path) == ("http://127.0.0.1:9005", "env-token")
