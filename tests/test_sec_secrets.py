"""SPEC §8 (secrets show as *** everywhere), the leaks a 12-01 audit of a running daemon found:
URLs whose credentials `urlsplit` does not see, a bad `${…}` quoting a secret's other end, a
header echoed back as JSON, a command printing another pipeline's or the daemon's secret, an
endpoint echoing a secret that is not its own, and the client quoting a daemon URL with
credentials. Real configs, the real engine, real processes and a real aiohttp server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.clocks import ManualClock
from tests.engine_helpers import eventually, load_config, running_engine
from watcherd.client import Client, DaemonUnreachable
from watcherd.core.errors import ConfigErrors
from watcherd.core.models import TERMINAL
from watcherd.core.redact import make_redactor, redact_url, url_secrets
from watcherd.sdk import Workspace

PASS = "Qx#7vR9kLw2"
SIG = "Jm4TqZ8pWc6y"
KEY = "Hs2Nv5Xb8Kd1=="
HOOK = "Rt6Yw3Pz9Fq"
QUOTED = "Gd8Lk2Vn5Bx"
DAEMON = "Tc4Mz7Hy1Ws"


def _clock() -> ManualClock:
    return ManualClock(datetime(2026, 11, 25, 10, 0, tzinfo=UTC))


def _parts(*secrets: str) -> list[str]:
    """Every 5-character piece of the secrets: none may show."""
    return [s[i : i + 5] for s in secrets for i in range(len(s) - 4)]


def _shows(text: str, *secrets: str) -> list[str]:
    return [p for p in _parts(*secrets) if p in text]


# ── URLs whose credentials a strict parser misses ────────────────────────────


@pytest.mark.parametrize(
    "url",
    [
        f"https://hookuser:{PASS}@hooks.example.com/x?sig={SIG}",  # '#' ends the netloc
        f"https://hookuser:Pa/ss{SIG}@hooks.example.com/x",  # '/' too
        f"https://hookuser:{SIG}@[hooks.example.com/x?sig={SIG}",  # urlsplit raises
    ],
)
def test_a_url_with_unencoded_credentials_is_refused_and_never_quoted(
    tmp_path: Path, url: str
) -> None:
    text = f"""
[daemon]
api = ""
[pipelines.hook]
kind = "http"
url = "{url}"
"""
    with pytest.raises(ConfigErrors) as exc:
        load_config(tmp_path, text)
    message = str(exc.value)
    assert "pipelines.hook.url: invalid URL" in message
    assert not _shows(message, PASS, SIG), message
    # and wherever such a URL is shown or searched for
    assert not _shows(redact_url(url), PASS, SIG)
    assert not _shows(make_redactor(url_secrets(url))(f"echo {url}"), PASS, SIG)


def test_percent_encoded_credentials_are_a_valid_url(tmp_path: Path) -> None:
    text = """
[daemon]
api = ""
[pipelines.hook]
kind = "http"
url = "https://hookuser:Pa%23ss@hooks.example.com/x"
"""
    assert load_config(tmp_path, text).pipelines["hook"].target.url.endswith("/x")


def test_an_at_sign_in_a_path_is_not_taken_for_credentials() -> None:
    for url in ("https://discord.com/api/users/@me/hooks", "https://h:8080/users/@me"):
        assert redact_url(url) == url and url_secrets(url) == []


# ── a bad ${…} in a secret ───────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("TokHead${TokTailA999", "unterminated variable reference"),
        ("Bearer HdrPart${bad name HdrTailB888}", "invalid variable reference"),
    ],
)
def test_a_bad_reference_in_a_secret_is_reported_without_it(
    tmp_path: Path, value: str, reason: str
) -> None:
    text = f"""
[daemon]
api = ""
token = "{value}"
[pipelines.hook]
kind = "http"
url = "https://hooks.example.com/x"
headers = {{ Authorization = "{value}" }}
"""
    with pytest.raises(ConfigErrors) as exc:
        load_config(tmp_path, text)
    lines = [str(e) for e in exc.value.errors]
    bare = f"{reason} (not shown: the value is a secret)"
    assert f"daemon.token: {bare}" in lines
    assert f"pipelines.hook.headers.Authorization: {bare}" in lines
    assert not _shows(str(exc.value), "TokTailA999", "HdrTailB888")


def test_a_bad_reference_elsewhere_is_still_quoted(tmp_path: Path) -> None:
    text = """
[daemon]
api = ""
[pipelines.p]
kind = "command"
steps = [["echo", "${UNCLOSED"]]
"""
    with pytest.raises(ConfigErrors) as exc:
        load_config(tmp_path, text)
    assert "unterminated variable reference '${UNCLOSED'" in str(exc.value)


# ── echoes ───────────────────────────────────────────────────────────────────


class Echo:
    """Answers 400 with the request's headers as JSON, or with a fixed text."""

    def __init__(self) -> None:
        self.text: str | None = None
        self.server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        if self.text is not None:
            return web.Response(status=400, text=self.text)
        return web.json_response(dict(request.headers), status=400)

    @property
    def port(self) -> int:
        assert self.server is not None and self.server.port is not None
        return self.server.port


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    rec = Echo()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    async with TestServer(app, host="127.0.0.1", port=0) as server:
        rec.server = server
        yield rec


def _config(port: int) -> str:
    return f"""
[daemon]
api = ""
token = "{DAEMON}"
[datastores.lake]
kind = "azure_blob"
account_url = "https://acct.blob.core.windows.net"
account_key = "{KEY}"
container = "inbox"
[pipelines.hook]
kind = "http"
url = "http://127.0.0.1:{port}/hook"
headers = {{ Authorization = "Bearer {HOOK}", X-Quote = 'k="{QUOTED}"', X-Back = 'a\\b\\{QUOTED}' }}
[pipelines.leaky]
kind = "command"
steps = [["sh", "-c", "echo $DAEMON_TOKEN; echo key=$KEY >&2; exit 1"], ["echo", "{HOOK}"]]
continue_on_step_failure = true
env = {{ DAEMON_TOKEN = "{DAEMON}" }}
inherit_env = ["KEY"]
[[schedules]]
name = "hook"
pipeline = "hook"
experiment_name = "E"
status = "Disabled"
cron = "0 0 1 1 *"
[[schedules]]
name = "leaky"
pipeline = "leaky"
experiment_name = "E"
status = "Disabled"
cron = "0 0 1 1 *"
"""


async def _finished(h: object, schedule: str) -> tuple[object, bytes, str]:
    await h.manager.trigger_schedule(schedule)  # type: ignore[attr-defined]
    await eventually(lambda: [r for r in h.runs() if r.status in TERMINAL])  # type: ignore[attr-defined]
    run = next(r for r in h.runs() if r.status in TERMINAL)  # type: ignore[attr-defined]
    log = await h.manager.get_run_log(run.id)  # type: ignore[attr-defined]
    shown = json.dumps(await h.manager.get_run(run.id))  # type: ignore[attr-defined]
    return run, log, shown


async def test_headers_echoed_back_as_json_are_masked(tmp_path: Path, echo: Echo) -> None:
    async with running_engine(tmp_path, _config(echo.port), _clock()) as h:
        run, _, shown = await _finished(h, "hook")
    assert run.error is not None and run.error.startswith("HTTP 400")  # type: ignore[attr-defined]
    assert "X-Quote" in shown and not _shows(shown, HOOK, QUOTED)


async def test_an_endpoint_echoing_a_secret_not_its_own_is_masked(
    tmp_path: Path, echo: Echo
) -> None:
    echo.text = f"bad request: key {KEY}, daemon {DAEMON}"
    async with running_engine(tmp_path, _config(echo.port), _clock()) as h:
        run, _, shown = await _finished(h, "hook")
    assert run.error == "HTTP 400: bad request: key ***, daemon ***"  # type: ignore[attr-defined]
    assert not _shows(shown, KEY, DAEMON)


async def test_a_command_printing_any_config_secret_shows_it_masked(
    tmp_path: Path, echo: Echo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEY", KEY)  # inherited: the config's account key, by another name
    async with running_engine(tmp_path, _config(echo.port), _clock()) as h:
        run, log, shown = await _finished(h, "leaky")
    assert run.exit_code == 1  # type: ignore[attr-defined]
    assert b"key=***\n" in log and b"$ echo ***\n" in log  # the argv line masked too
    assert not _shows(log.decode(), KEY, DAEMON, HOOK), log
    assert not _shows(shown, KEY, DAEMON, HOOK)


# ── the client ───────────────────────────────────────────────────────────────


def test_the_client_never_quotes_a_daemon_urls_credentials() -> None:
    url = f"http://cliuser:{PASS.replace('#', '')}@127.0.0.1:1/?k={SIG}"
    with pytest.raises(DaemonUnreachable) as exc, Client(url, "t") as client:
        client.request("GET", "/healthz")
    assert "daemon not reachable at http://***@127.0.0.1:1/?***" in str(exc.value)
    assert not _shows(str(exc.value), PASS.replace("#", ""), SIG)
    ws = Workspace(url, "t")
    try:
        assert not _shows(repr(ws) + ws.name, PASS.replace("#", ""), SIG)
    finally:
        ws.close()


def test_a_sas_token_of_one_value_has_that_value_masked_alone(tmp_path: Path) -> None:
    text = """
[daemon]
api = ""
[datastores.lake]
kind = "azure_blob"
account_url = "https://acct.blob.core.windows.net"
sas_token = "sig=Wv3Kp8Nz2Qd5"
container = "inbox"
"""
    secrets = load_config(tmp_path, text).secrets
    assert make_redactor(secrets)("signature Wv3Kp8Nz2Qd5 refused") == "signature *** refused"


@pytest.mark.parametrize(
    "url",
    [
        "https://u:p@h/x?email=a@b.com",  # an @ in the query
        "https://u:p@h/@scope/x",  # an @ in the path, after credentials
        "https://[::1]:8080/a@b",  # an IPv6 host, an @ in the path
    ],
)
def test_urls_with_an_at_sign_after_their_host_stay_valid(tmp_path: Path, url: str) -> None:
    text = f'[daemon]\napi = ""\n[pipelines.hook]\nkind = "http"\nurl = "{url}"\n'
    assert load_config(tmp_path, text).pipelines["hook"].target.url == url


def test_a_hash_in_a_password_is_found_whatever_follows() -> None:
    url = f"https://u:{PASS}@h/x?e=a@b"  # an @ in the query too
    assert not _shows(redact_url(url), PASS)
    assert PASS in url_secrets(url)
