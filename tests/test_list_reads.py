"""The lists the page polls (issue #14): a long list is built on a worker thread, each item
with its own newest run and next fire times; a pipeline shows its newest run, submitted or
scheduled."""

from __future__ import annotations

import contextlib
import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.clocks import ManualClock
from tests.engine_helpers import running_engine
from watcherd.api.app import make_app, serve
from watcherd.services import OFF_LOOP_ITEMS
from watcherd.services.views import Views

NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
HEAD = """
[daemon]
api = ""

[pipelines.p]
kind = "command"
steps = [["true"]]

[pipelines.q]
kind = "command"
steps = [["true"]]
"""


def _config(n: int) -> str:
    return HEAD + "".join(
        f"""
[[schedules]]
name = "s{i:04d}"
pipeline = "{"p" if i % 2 else "q"}"
experiment_name = "E"
recurrence = {{ frequency = "Day", interval = 1, hours = [{i % 24}], minutes = [{i % 60}] }}
{'status = "Disabled"' if i == 0 else ""}
"""
        for i in range(n)
    )


@pytest.mark.parametrize("n", [3, OFF_LOOP_ITEMS + 50])
async def test_a_long_schedule_list_is_built_off_the_event_loop(
    tmp_path: Path, n: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: set[str] = set()
    real = Views.schedule

    def spy(self: Views, *args: Any, **kwargs: Any) -> Any:
        threads.add(threading.current_thread().name)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Views, "schedule", spy)
    async with running_engine(tmp_path, _config(n), ManualClock(NOW)) as h:
        await h.manager.trigger_schedule("s0001")
        await h.manager.trigger_schedule("s0002")
        triggered = await h.manager.trigger_schedule("s0002")
        await h.settle()
        items = (await h.manager.list_schedules())[0]
        built_on = set(threads)
        by_name = {s["name"]: s for s in items}
        assert len(items) == n
        assert by_name["s0002"]["last_run"]["id"] == triggered["id"]
        assert by_name["s0001"]["last_run"]["schedule_name"] == "s0001"
        assert by_name["s0000"]["last_run"] is None  # Disabled: never ran
        assert by_name["s0000"]["next_fire_times"] == []
        for item in items:
            assert item["last_run"] is None or item["last_run"]["schedule_id"] == item["id"]
        want = h.engine.next_fire_times(by_name["s0001"]["id"], 3)
        assert len(want) == 3
        assert by_name["s0001"]["next_fire_times"] == [
            t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in want
        ]
        only_q = (await h.manager.list_schedules(pipeline_id="q"))[0]
        assert {s["name"] for s in only_q} == {f"s{i:04d}" for i in range(0, n, 2)}
    main = threading.main_thread().name
    assert (main in built_on) == (n <= OFF_LOOP_ITEMS), built_on


async def test_a_pipeline_shows_its_newest_run_submitted_or_scheduled(tmp_path: Path) -> None:
    async with running_engine(tmp_path, _config(3), ManualClock(NOW)) as h:
        scheduled = await h.manager.trigger_schedule("s0001")  # pipeline p
        await h.manager.trigger_schedule("s0000")  # pipeline q
        submitted = await h.manager.submit_pipeline("q", experiment_name="E2")
        await h.settle()
        pipelines = {p["name"]: p for p in await h.manager.list_pipelines()}
        assert pipelines["p"]["last_run"]["id"] == scheduled["id"]
        assert pipelines["q"]["last_run"]["id"] == submitted["id"]
        assert pipelines["q"]["last_run"]["schedule_name"] is None
        one = await h.manager.get_pipeline("p")
        assert one["last_run"]["schedule_name"] == "s0001"
        assert sorted(one["schedules"]) == sorted(
            s.id for s in h.engine.schedules.values() if s.pipeline == one["id"]
        )


async def test_list_items_are_cached_until_what_they_show_changes(tmp_path: Path) -> None:
    async with running_engine(tmp_path, _config(4), ManualClock(NOW)) as h:
        await h.settle()
        first = {s["name"]: s for s in (await h.manager.list_schedules())[0]}
        again = {s["name"]: s for s in (await h.manager.list_schedules())[0]}
        assert all(again[n] is first[n] for n in first)  # nothing changed: the same items
        run = await h.manager.trigger_schedule("s0002")
        await h.settle()
        after = {s["name"]: s for s in (await h.manager.list_schedules())[0]}
        assert after["s0002"] is not first["s0002"]
        assert after["s0002"]["last_run"]["id"] == run["id"]
        assert after["s0002"]["last_run"]["status"] == "Completed"
        assert after["s0003"] is first["s0003"]
        await h.manager.set_schedule_status("s0003", "Disabled")
        disabled = {s["name"]: s for s in (await h.manager.list_schedules())[0]}
        assert disabled["s0003"]["status"] == "Disabled"
        assert disabled["s0003"]["next_fire_times"] == []


async def test_pipeline_items_are_cached_until_what_they_show_changes(tmp_path: Path) -> None:
    async with running_engine(tmp_path, _config(4), ManualClock(NOW)) as h:
        await h.settle()
        first = {p["name"]: p for p in await h.manager.list_pipelines()}
        again = {p["name"]: p for p in await h.manager.list_pipelines()}
        assert all(again[n] is first[n] for n in first)  # nothing changed: the same items
        run = await h.manager.trigger_schedule("s0001")  # pipeline p
        await h.settle()
        after = {p["name"]: p for p in await h.manager.list_pipelines()}
        assert after["p"] is not first["p"] and after["p"]["last_run"]["id"] == run["id"]
        assert after["q"] is first["q"]
        await h.manager.create_schedule(
            {"name": "new", "pipeline": "q", "experiment_name": "E", "cron": "0 4 * * *"}
        )
        added = {p["name"]: p for p in await h.manager.list_pipelines()}
        assert len(added["q"]["schedules"]) == len(first["q"]["schedules"]) + 1


def test_a_long_page_encodes_as_one_document() -> None:
    from watcherd.api.routes import _dumps, _encode_page
    from watcherd.services import EncodedJSON

    items: list[Any] = [{"a": "é", "n": i, "t": NOW} for i in range(3)]
    items.append(EncodedJSON({"b": [1, None], "s": "x\u2028y"}))
    text = _encode_page(items, "c1")
    assert text == _dumps({"items": items, "next_cursor": "c1"}).encode()


async def test_a_long_list_over_http_is_one_json_document(tmp_path: Path) -> None:
    """The streamed answer (more than OFF_LOOP_ITEMS items) is a whole, valid document, and
    the same as a short one item for item."""
    n = OFF_LOOP_ITEMS + 30
    async with (
        running_engine(tmp_path, _config(n), ManualClock(NOW)) as h,
        contextlib.AsyncExitStack() as stack,
    ):
        await h.settle()  # the creation runs have ended: nothing changes between the reads
        base = await serve(
            make_app(h.manager, token="t" * 24, bind="127.0.0.1:0"), "127.0.0.1:0", stack
        )
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/api/v1/schedules") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("application/json")
                raw = await resp.read()
                assert int(resp.headers["Content-Length"]) == len(raw)
            doc = json.loads(raw)
            async with http.get(f"{base}/api/v1/schedules", params={"pipeline_id": "q"}) as r2:
                short = await r2.json()
        assert doc["next_cursor"] is None and len(doc["items"]) == n
        assert len(short["items"]) == n // 2 < OFF_LOOP_ITEMS
        by_id = {s["id"]: s for s in doc["items"]}
        assert all(by_id[s["id"]] == s for s in short["items"])


async def test_schedules_page_by_name_and_the_cursors_visit_each_once(tmp_path: Path) -> None:
    """`limit` pages the schedules by name; following next_cursor visits every schedule once,
    the items equal the unpaged list's, filters apply within pages, bad paging is a 400."""
    n = 25
    reversed_config = HEAD + "".join(  # declared in reverse: a page must sort, not slice
        f'\n[[schedules]]\nname = "s{i:04d}"\npipeline = "{"p" if i % 2 else "q"}"\n'
        f'experiment_name = "E"\ncron = "{i} 3 * * *"\n'
        + ('status = "Disabled"\n' if i % 5 == 0 else "")
        for i in reversed(range(n))
    )
    async with (
        running_engine(tmp_path, reversed_config, ManualClock(NOW)) as h,
        contextlib.AsyncExitStack() as stack,
    ):
        await h.settle()
        base = await serve(
            make_app(h.manager, token="t" * 24, bind="127.0.0.1:0"), "127.0.0.1:0", stack
        )
        async with aiohttp.ClientSession() as http:

            async def pages(**query: str) -> list[list[dict[str, Any]]]:
                out, cursor = [], None
                while True:
                    params = dict(query, **({"cursor": cursor} if cursor else {}))
                    async with http.get(f"{base}/api/v1/schedules", params=params) as resp:
                        assert resp.status == 200, await resp.text()
                        doc = await resp.json()
                    out.append(doc["items"])
                    cursor = doc["next_cursor"]
                    if cursor is None:
                        return out

            async with http.get(f"{base}/api/v1/schedules") as resp:
                everything = {s["id"]: s for s in (await resp.json())["items"]}
            got = await pages(limit="10")
            assert [len(p) for p in got] == [10, 10, 5]
            names = [s["name"] for p in got for s in p]
            assert names == [f"s{i:04d}" for i in range(n)]
            assert all(everything[s["id"]] == s for p in got for s in p)
            active = [s["name"] for p in await pages(limit="4", active_only="true") for s in p]
            assert active == [f"s{i:04d}" for i in range(n) if i % 5]
            of_q = [s["name"] for p in await pages(limit="3", pipeline_id="q") for s in p]
            assert of_q == [f"s{i:04d}" for i in range(0, n, 2)]
            exact = await pages(limit=str(n))  # a full last page has no next page
            assert len(exact) == 1 and len(exact[0]) == n
            for query, key in [
                ({"limit": "0"}, "query.limit"),
                ({"limit": "x"}, "query.limit"),
                ({"cursor": "%%%"}, "query.cursor"),
                ({"cursor": "_w=="}, "query.cursor"),  # base64 of a byte that is not UTF-8
            ]:
                async with http.get(f"{base}/api/v1/schedules", params=query) as resp:
                    assert resp.status == 400, query
                    assert (await resp.json())["error"]["key_path"] == key


async def test_the_paged_order_follows_schedules_created_disabled_and_deleted(
    tmp_path: Path,
) -> None:
    """The name index behind pages is cached, and rebuilt on each change: a schedule created
    through the API shows in the next page where its name sorts, a disabled one leaves
    `active_only` pages, a deleted one leaves every page, and a pipeline lists its new one."""
    async with running_engine(tmp_path, _config(6), ManualClock(NOW)) as h:
        m = h.manager

        async def names(**query: Any) -> list[str]:
            items, _ = await m.list_schedules(limit=100, **query)
            return [s["name"] for s in items]

        assert await names() == [f"s{i:04d}" for i in range(6)]
        before = (await m.get_pipeline("p"))["schedules"]
        made = await m.create_schedule(
            {"name": "s0002a", "pipeline": "p", "experiment_name": "E", "cron": "0 4 * * *"}
        )
        assert (await names())[2:4] == ["s0002", "s0002a"]
        assert (await m.get_pipeline("p"))["schedules"] == [*before, made["id"]]
        await m.set_schedule_status("s0002a", "Disabled")
        assert "s0002a" not in await names(active_only=True)
        assert "s0002a" in await names()
        await m.delete_schedule("s0002a")
        assert await names() == [f"s{i:04d}" for i in range(6)]
        assert (await m.get_pipeline("p"))["schedules"] == before


async def test_the_list_caches_forget_a_deleted_schedule(tmp_path: Path) -> None:
    """Per-schedule items, words, bodies and next fire times are cached by id: a schedule
    created and deleted through the API leaves nothing behind once the lists are read."""
    async with running_engine(tmp_path, _config(2), ManualClock(NOW)) as h:
        m, views = h.manager, h.manager.views
        made = await m.create_schedule(
            {"name": "brief", "pipeline": "p", "experiment_name": "E", "cron": "0 4 * * *"}
        )
        await m.list_schedules()
        await m.list_pipelines()
        caches = (views._words, views._bodies, views._fires, views._items)
        assert all(made["id"] in cache for cache in caches)
        await m.set_schedule_status("brief", "Disabled")
        await m.delete_schedule("brief")
        items, _ = await m.list_schedules()
        assert [s["name"] for s in items] == ["s0000", "s0001"]
        assert not any(made["id"] in cache for cache in caches)
        assert all(set(cache) <= set(h.engine.schedules) for cache in caches)
        assert len(views._items) == 2
