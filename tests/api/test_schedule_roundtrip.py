"""SPEC §8: a schedule's JSON from a GET, less its read-only keys, can be POSTed back (and
PATCHed back), on a real daemon: what the API shows beside the keys (trigger words, last run,
error) is ignored in a body."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.api.seed_daemon import start_daemon
from tests.harness import DaemonProc

API = "/api/v1"
READ_ONLY = ("id", "source", "created_at", "updated_at", "next_fire_times")
SHOWN = ("trigger_words", "last_run", "error")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    d = start_daemon(tmp_path_factory.mktemp("roundtrip"))
    with d.client() as api:
        r = api.post(
            f"{API}/schedules",
            json={
                "name": "files",
                "pipeline": "train",
                "experiment_name": "E",
                "datastore": "workspaceblobstore",
                "polling_interval": "1h",
                "data_path_parameter_name": "input_data",
            },
        )
        assert r.status_code == 201, r.text
    try:
        yield d
    finally:
        d.close()


def _keys(s: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in s.items() if k not in (*READ_ONLY, *SHOWN, "name")}


@pytest.mark.parametrize("name", ["Nightly", "files"])
def test_a_get_less_its_read_only_keys_posts_back(daemon: DaemonProc, name: str) -> None:
    with daemon.client() as api:
        shown = next(s for s in api.get(f"{API}/schedules").json()["items"] if s["name"] == name)
        assert all(k in shown for k in SHOWN)  # what the page reads
        body = {k: v for k, v in shown.items() if k not in READ_ONLY}
        body["name"] = f"{name}-copy"
        r = api.post(f"{API}/schedules", json=body)
        assert r.status_code == 201, r.text
        assert _keys(r.json()) == _keys(shown)
        again = api.patch(f"{API}/schedules/{r.json()['id']}", json=body)
        assert again.status_code == 200, again.text
        assert _keys(again.json()) == _keys(shown)
