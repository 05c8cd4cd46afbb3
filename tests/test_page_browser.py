"""The web page in headless Chromium against a real daemon: lists, live updates, buttons.

Screenshots go to tmp_path, and to $WATCHERD_SCREENSHOT_DIR when it is set.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.seed_daemon import PIPELINE_ID, SECRETS, start_daemon
from tests.harness import DaemonProc, wait_until

pytestmark = pytest.mark.browser

playwright_sync = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("WATCHERD_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProc]:
    d = start_daemon(tmp_path)
    yield d
    d.close()


def _shot(page: Any, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    out = os.environ.get("WATCHERD_SCREENSHOT_DIR")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(out) / name)


def test_page_lists_updates_and_acts(browser: Any, daemon: DaemonProc, tmp_path: Path) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    prompts: list[str] = []

    def answer(dialog: Any) -> None:
        prompts.append(dialog.message)
        dialog.accept(daemon.token)

    page.on("dialog", answer)
    page.goto(daemon.url + "/")

    # Pipelines: name, id, status, description; schedules: trigger in words, next fire.
    train = page.locator(f'[id="pipeline-{PIPELINE_ID}"]')
    train.wait_for()
    assert "train" in train.inner_text() and PIPELINE_ID in train.inner_text()
    assert "Active" in train.inner_text() and "Train the model" in train.inner_text()
    with daemon.client() as api:
        nightly = api.get("/api/v1/schedules/Nightly").json()
    row = page.locator(f'[id="schedule-{nightly["id"]}"]')
    row.wait_for()
    text = row.inner_text()
    assert "Nightly" in text and "every day at 02:30" in text and "Active" in text
    assert "in " in text  # the next fire time, relative

    # A schedule created elsewhere fires (creation fire): its run shows up without a reload.
    with daemon.client() as api:
        created = api.post(
            "/api/v1/schedules",
            json={
                "name": "EveryQuarterHour",
                "pipeline": "train",
                "experiment_name": "Live",
                "recurrence": {"frequency": "Minute", "interval": 15},
            },
        ).json()
        # The creation fire is queued by the schedule's timer, just after the 201.
        runs = wait_until(
            lambda: api.get("/api/v1/runs", params={"schedule_id": created["id"]}).json()["items"],
            timeout=10,
        )
    run_row = page.locator(f'[id="run-{runs[0]["id"]}"]')
    run_row.wait_for()
    page.wait_for_function(
        "id => (document.getElementById(id) || {}).dataset?.status === 'Completed'",
        arg=f"run-{runs[0]['id']}",
    )
    assert "EveryQuarterHour" in run_row.inner_text()
    assert page.locator(f'[id="schedule-{created["id"]}"]').count() == 1

    _shot(page, tmp_path, "page-1280.png")

    # Disable through the button: the token is asked once, then kept for the tab.
    row.get_by_role("button", name="Disable").click()
    page.wait_for_function(
        "id => document.getElementById(id)?.dataset.status === 'Disabled'",
        arg=f"schedule-{nightly['id']}",
    )
    assert len(prompts) == 1
    with daemon.client() as api:
        assert api.get("/api/v1/schedules/Nightly").json()["status"] == "Disabled"
    assert page.evaluate("sessionStorage.getItem('watcherd-token')") == daemon.token
    row.get_by_role("button", name="Enable").click()
    page.wait_for_function(
        "id => document.getElementById(id)?.dataset.status === 'Active'",
        arg=f"schedule-{nightly['id']}",
    )
    assert len(prompts) == 1

    # Trigger, then Retry the finished run: new rows / attempts appear by themselves.
    before = page.locator("#runs tbody tr").count()
    row.get_by_role("button", name="Trigger").click()
    page.wait_for_function(f"() => document.querySelectorAll('#runs tbody tr').length > {before}")
    first = page.locator("#runs tbody tr").first
    page.wait_for_function(
        "() => document.querySelector('#runs tbody tr')?.dataset.status === 'Completed'"
    )
    first.get_by_role("button", name="Retry").click()
    page.locator("#toast").get_by_text("Run queued again").wait_for()

    # A pipeline submitted by hand (no schedule) shows up by itself, named by its pipeline.
    with daemon.client() as api:
        submitted = api.post(
            f"/api/v1/pipelines/{PIPELINE_ID}/submit", json={"experiment_name": "ByHand"}
        ).json()
    page.locator(f'[id="run-{submitted["id"]}"]').get_by_text("train (submitted)").wait_for()

    # The replicas section: this daemon, with the schedules it owns.
    with daemon.client() as api:
        replica = api.get("/api/v1/replicas").json()["items"][0]
    replica_row = page.locator(f'[id="replica-{replica["id"]}"]')
    replica_row.wait_for()
    assert str(len(replica["schedules"])) in replica_row.inner_text()

    # The log opens in a dialog.
    first.get_by_role("button", name="Log").click()
    page.locator("#log-text").get_by_text("training on").wait_for()
    page.get_by_role("button", name="Close").click()

    # No secret anywhere in the page: not the DOM, not the shell the server sent.
    html = page.content()
    shell = httpx.get(daemon.url + "/").text
    for secret in (*SECRETS, daemon.token):
        assert secret not in html
        assert secret not in shell

    # Phone width: tables become cards, nothing overflows sideways.
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(300)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert page.locator("#schedules thead").is_hidden()
    assert page.locator("#replicas thead").is_hidden()
    _shot(page, tmp_path, "page-390.png")
    context.close()


def test_non_loopback_page_asks_for_the_token_first(browser: Any, tmp_path: Path) -> None:
    from tests.api.seed_daemon import FULL_CONFIG

    d = start_daemon(tmp_path, FULL_CONFIG.replace('api = "127.0.0.1:0"', 'api = "0.0.0.0:0"'))
    try:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        api_calls_before_prompt: list[str] = []
        prompted: list[bool] = []

        def on_request(request: Any) -> None:
            if "/api/v1/" in request.url and not prompted:
                api_calls_before_prompt.append(request.url)

        def answer(dialog: Any) -> None:
            prompted.append(True)
            dialog.accept(d.token)

        page.on("request", on_request)
        page.on("dialog", answer)
        page.goto(d.url + "/")
        page.locator(f'[id="pipeline-{PIPELINE_ID}"]').wait_for()
        assert prompted == [True]
        assert api_calls_before_prompt == []
        assert page.locator("#gate").is_hidden()
        context.close()
    finally:
        d.close()


def test_many_schedules_load_a_page_at_a_time(browser: Any, tmp_path: Path) -> None:
    """At more schedules than one page, the page asks for the first page by name (not every
    schedule each poll), says how many there are, and "Show more" loads the next page."""
    from tests.api.seed_daemon import SEED_CONFIG

    n = 130
    many = SEED_CONFIG + "".join(
        f'\n[[schedules]]\nname = "s{i:03d}"\npipeline = "train"\nexperiment_name = "E"\n'
        f'cron = "{i % 60} 3 * * *"\n'
        for i in reversed(range(n))
    )
    d = start_daemon(tmp_path, many)
    try:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        schedule_queries: list[str] = []

        def on_request(request: Any) -> None:
            if "/api/v1/schedules" in request.url:
                schedule_queries.append(request.url.split("?", 1)[-1])

        page.on("request", on_request)
        page.goto(d.url + "/")
        rows = page.locator("#schedules tbody tr")
        wait_until(lambda: rows.count() == 100, 15)
        names = [rows.nth(i).locator("strong").inner_text() for i in (0, 1, 99)]
        assert names == ["s000", "s001", "s099"]
        assert page.locator("#schedules-count").inner_text() == f"first 100 of {n} by name"
        assert schedule_queries and all(q == "limit=100" for q in schedule_queries)
        page.get_by_role("button", name="Show 100 more").click()
        wait_until(lambda: rows.count() == n, 15)
        assert rows.nth(n - 1).locator("strong").inner_text() == f"s{n - 1:03d}"
        assert page.locator("#schedules-count").inner_text() == f"{n} active of {n}"
        assert page.get_by_role("button", name="Show 100 more").count() == 0
        assert "limit=200" in schedule_queries
        context.close()
    finally:
        d.close()


def test_long_names_wrap_and_hide_no_column(browser: Any, daemon: DaemonProc) -> None:
    """A 120-character schedule name and a 200-character file name wrap in their cells: every
    row's buttons stay on screen, at desktop and phone widths, and the names show whole."""
    long_name = "Nightly-retrain-" + "x" * 104
    file_name = "f" * 196 + ".csv"
    with daemon.client() as api:
        made = api.post(
            "/api/v1/schedules",
            json={
                "name": long_name,
                "pipeline": "train",
                "experiment_name": "Long",
                "datastore": "workspaceblobstore",
                "polling_interval": "1h",
                "data_path_parameter_name": "input_data",
            },
        )
        assert made.status_code == 201, made.text
        (daemon.workdir / "inbox" / file_name).write_bytes(b"x")
        r = api.post(f"/api/v1/schedules/{made.json()['id']}/trigger", json={"path": file_name})
        assert r.status_code in (200, 201, 202), r.text
    offscreen = """() => [...document.querySelectorAll('#schedules button, #runs button')]
        .filter(b => b.offsetParent !== null)
        .filter(b => b.getBoundingClientRect().right > window.innerWidth + 1).length"""
    clipped = """() => [...document.querySelectorAll('.name strong, #runs .mono')]
        .filter(e => e.scrollWidth > e.clientWidth + 1).length"""
    for width in (1280, 375):
        context = browser.new_context(viewport={"width": width, "height": 900})
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(daemon.url + "/")
        for text in (long_name, file_name):  # the schedule, and its run's file
            page.wait_for_function("t => document.body.innerText.includes(t)", arg=text)
        assert page.evaluate(offscreen) == 0, width
        assert page.evaluate(clipped) == 0, width
        assert page.evaluate("document.documentElement.scrollWidth") <= width, width
        context.close()
