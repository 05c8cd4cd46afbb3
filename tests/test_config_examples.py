"""The example configs in config/ really load: check-config passes on each TOML, and each v2
schedule YAML is accepted against the example's pipelines and datastores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from watcherd import config as config_mod
from watcherd.cli.main import main
from watcherd.config.yaml import schedule_body
from watcherd.core.models import DatastoreTrigger, RecurrenceTrigger, Source

CONFIG = Path(__file__).resolve().parents[1] / "config"
ENV = {"WATCHERD_TOKEN": "t", "HOOK_TOKEN": "h", "INBOX_DIR": str(CONFIG / "inbox")}


@pytest.mark.parametrize("name", ["example.toml", "sidecar.toml"])
def test_example_configs_pass_check_config(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("WATCHERD_STATE_DIR", "/nonexistent/state")
    assert main(["check-config", "--config", str(CONFIG / name)]) == 0, capsys.readouterr()


def test_example_v2_schedules_are_accepted() -> None:
    cfg = config_mod.load(CONFIG / "example.toml", dict(os.environ))
    kinds = {}
    for path in sorted((CONFIG / "schedules").glob("*.yml")):
        body = schedule_body(path.read_text(), config=cfg)
        s = config_mod.parse_schedule(body, config=cfg, key_prefix="body", source=Source.API)
        kinds[path.name] = type(s.trigger)
    assert kinds == {"nightly.yml": RecurrenceTrigger, "on-file.yml": DatastoreTrigger}
