"""Configs and a starter for the real daemons the API, SDK, CLI and page tests run against."""

from __future__ import annotations

from pathlib import Path

from tests.harness import DaemonProc

PIPELINE_ID = "aaaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"

# Values that must never appear in an API answer or the page (they sit in the config file).
SECRETS = ("hunter2", "topsecret-sig", "hook-secret-value", "env-secret-value")

# The seed article's world: one published pipeline with that id, the `workspaceblobstore`
# datastore (a local directory here), nothing scheduled yet.
SEED_CONFIG = f"""
[daemon]
api = "127.0.0.1:0"
shutdown_timeout = "2s"

[datastores.workspaceblobstore]
kind = "local"
root = "inbox"

[pipelines.train]
id = "{PIPELINE_ID}"
kind = "command"
description = "Train the model on the newest data"
steps = [["sh", "-c", "echo training on {{input_data}}"]]
parameters = {{ input_data = "data/latest.csv" }}
"""

# A richer world for the API and the page: secrets in the config, a declared schedule.
FULL_CONFIG = (
    SEED_CONFIG
    + """
env = { API_KEY = "env-secret-value" }

[pipelines.notify]
kind = "http"
description = "Tell the team"
url = "http://user:hunter2@127.0.0.1:9/hook?sig=topsecret-sig"
headers = { Authorization = "Bearer hook-secret-value" }

[[schedules]]
name = "Nightly"
pipeline = "train"
experiment_name = "Nightly"
description = "Retrain every night"

[schedules.recurrence]
frequency = "Day"
interval = 1
hours = [2]
minutes = [30]
time_zone = "Pacific Standard Time"
start_time = "2026-01-01T00:00:00"
"""
)


def start_daemon(workdir: Path, config: str = FULL_CONFIG) -> DaemonProc:
    """A started daemon in `workdir` (with its `inbox` directory)."""
    (workdir / "inbox").mkdir(exist_ok=True)
    d = DaemonProc(workdir, config)
    try:
        d.start()
    except BaseException:
        d.close()
        raise
    return d
