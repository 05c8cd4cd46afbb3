"""`watcherd schedules|pipelines|experiments|runs …` in-process against a real daemon."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.seed_daemon import FULL_CONFIG, PIPELINE_ID, start_daemon
from tests.harness import DaemonProc, wait_until
from watcherd import config as config_mod
from watcherd.cli.manage import main


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    d = start_daemon(tmp_path_factory.mktemp("cli"))
    yield d
    d.close()


@pytest.fixture
def cli(daemon: DaemonProc, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    """Run `watcherd ARGS…` against the daemon; returns (exit code, stdout, stderr)."""
    monkeypatch.setenv("WATCHERD_URL", daemon.url)
    monkeypatch.setenv("WATCHERD_TOKEN", daemon.token)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_lists_and_show(cli) -> None:  # type: ignore[no-untyped-def]
    code, out, err = cli("schedules", "list")
    assert code == 0 and err == ""
    header, row = out.splitlines()[:2]
    assert header.split()[:5] == ["NAME", "STATUS", "SOURCE", "PIPELINE", "TRIGGER"]
    assert row.startswith("Nightly") and "every day at 02:30" in row
    assert header.index("STATUS") == row.index("Active")  # aligned columns

    code, out, _ = cli("schedules", "list", "--json")
    assert code == 0 and [s["name"] for s in json.loads(out)] == ["Nightly"]
    code, out, _ = cli("schedules", "list", "--pipeline", "train", "--json")
    assert [s["name"] for s in json.loads(out)] == ["Nightly"]

    code, out, _ = cli("schedules", "show", "Nightly")
    assert code == 0 and "experiment_name" in out and "Retrain every night" in out
    sid = json.loads(cli("schedules", "show", "Nightly", "--json")[1])["id"]
    assert json.loads(cli("schedules", "show", sid, "--json")[1])["name"] == "Nightly"

    code, out, _ = cli("schedules", "next", "Nightly", "-n", "3")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 3
    assert lines[0].endswith(" PST)") or lines[0].endswith(" PDT)")
    assert lines[0].startswith("20") and "T10:30:00Z (" in lines[0]

    code, out, _ = cli("pipelines", "list")
    assert code == 0 and "train" in out and PIPELINE_ID in out
    code, out, _ = cli("pipelines", "show", "train", "--json")
    assert json.loads(out)["id"] == PIPELINE_ID
    code, out, _ = cli("experiments", "list")
    assert code == 0 and "Nightly" in out


def test_trigger_runs_logs_retry(cli) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = cli("schedules", "trigger", "Nightly", "--param", "input_data=cli.csv", "--json")
    assert code == 0
    run_id = json.loads(out)["id"]

    def finished() -> bool:
        status = json.loads(cli("runs", "show", run_id, "--json")[1])["status"]
        return status not in ("Queued", "Running")

    wait_until(finished)
    code, out, _ = cli("runs", "list", "--schedule", "Nightly")
    assert code == 0 and run_id in out and "manual (cli)" in out
    code, out, _ = cli("runs", "logs", run_id)
    assert code == 0 and "training on cli.csv" in out
    code, out, err = cli("runs", "cancel", run_id)
    assert code == 1 and err.startswith("watcherd: ") and err.count("\n") == 1
    code, out, _ = cli("runs", "retry", run_id)
    assert code == 0 and run_id in out
    code, out, _ = cli("runs", "list", "--status", "Completed", "--limit", "1", "--json")
    assert code == 0 and len(json.loads(out)) <= 1


def test_enable_disable_and_conflicts(cli) -> None:  # type: ignore[no-untyped-def]
    code, out, err = cli("pipelines", "disable", "train")
    assert code == 1 and "Nightly" in err and err.count("\n") == 1
    code, out, _ = cli("schedules", "disable", "Nightly")
    assert code == 0 and out.strip().endswith(": Disabled")
    code, out, _ = cli("schedules", "list")
    assert "no Active schedules" in out
    code, out, _ = cli("pipelines", "disable", "train")
    assert code == 0 and "Disabled" in out
    code, out, err = cli("schedules", "enable", "Nightly")
    assert code == 1 and "Disabled" in err  # its pipeline is Disabled: 409
    assert cli("pipelines", "enable", "train")[0] == 0
    assert cli("schedules", "enable", "Nightly")[0] == 0
    code, _, err = cli("schedules", "delete", "Nightly")
    assert code == 1 and err.startswith("watcherd: ")


def test_export_round_trips(
    cli,
    daemon: DaemonProc,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    code, out, _ = cli("schedules", "export")
    assert code == 0 and out.strip() == "# no API-created schedules"
    with daemon.client() as api:
        body = {
            "name": 'Exported "one"',
            "pipeline": "train",
            "experiment_name": "E",
            "description": "from the API",
            "pipeline_parameters": {"input_data": "x"},
            "recurrence": {
                "frequency": "Week",
                "interval": 1,
                "week_days": ["Monday"],
                "hours": [6],
                "minutes": [0],
                "time_zone": "UTC",
                "start_time": "2026-01-05T00:00:00",
            },
        }
        sid = api.post("/api/v1/schedules", json=body).json()["id"]
        api.post(
            "/api/v1/schedules",
            json={
                "name": "files",
                "pipeline": "train",
                "experiment_name": "E",
                "datastore": "workspaceblobstore",
                "polling_interval": "30s",
                "data_path_parameter_name": "input_data",
            },
        )
    code, out, _ = cli("schedules", "export")
    data = tomllib.loads(out)
    names = [s["name"] for s in data["schedules"]]
    assert names == ['Exported "one"', "files"]
    exported = data["schedules"][0]
    assert exported["id"] == sid and exported["recurrence"]["week_days"] == ["Monday"]
    assert "source" not in exported and "next_fire_times" not in exported
    # The export is a valid [[schedules]] section of the same config.
    path = tmp_path / "watcherd.toml"
    path.write_text(FULL_CONFIG + "\n" + out)
    (tmp_path / "inbox").mkdir()
    cfg = config_mod.load(path, {})
    assert {s.name for s in cfg.schedules} >= {'Exported "one"', "files", "Nightly"}
    with daemon.client() as api:
        for name in ('Exported "one"', "files"):
            api.post(f"/api/v1/schedules/{name}/disable")
    assert cli("schedules", "delete", "files")[0] == 0


def test_errors_are_one_line_with_exit_codes(
    cli,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    code, _, err = cli("schedules", "show", "nope")
    assert (code, err) == (1, "watcherd: schedule 'nope' not found\n")
    code, _, err = cli("schedules", "trigger", "Nightly", "--path", "a.csv")
    assert code == 2 and err.startswith("watcherd: body.path: ")
    code, _, err = cli("schedules", "disable", "Nightly", "--token", "wrong")
    assert code == 1 and err.startswith("watcherd: missing or wrong API token")
    code, _, err = cli("schedules", "list", "--url", "http://127.0.0.1:1")
    assert code == 1
    assert err.startswith("watcherd: daemon not reachable at http://127.0.0.1:1")
    assert err.count("\n") == 1
    assert cli("schedules", "frobnicate")[0] == 2
    assert cli("schedules", "trigger", "Nightly", "--param", "novalue")[0] == 2
    assert cli("runs", "list", "--help")[0] == 0


def test_unreachable_via_discovery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / ".watcherd").mkdir()
    (tmp_path / ".watcherd" / "config.json").write_text('{"url": "http://127.0.0.1:9"}')
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WATCHERD_URL", raising=False)
    assert main(["pipelines", "list"]) == 1
    assert capsys.readouterr().err.startswith(
        "watcherd: daemon not reachable at http://127.0.0.1:9"
    )


def test_replicas_list(cli) -> None:  # type: ignore[no-untyped-def]
    code, out, err = cli("replicas", "list")
    assert code == 0 and err == ""
    header, row = out.splitlines()[:2]
    assert header.split()[:3] == ["ID", "HOST", "STARTED"]
    assert header.index("SCHEDULES") >= 0
    code, out, _ = cli("replicas", "list", "--json")
    replicas = json.loads(out)
    assert len(replicas) == 1 and replicas[0]["id"] in row


DOCS_CRON_YAML = """\
$schema: https://azuremlschemas.azureedge.net/latest/schedule.schema.json
name: simple_cron_job_schedule
display_name: Simple cron job schedule
description: a simple hourly cron job schedule

trigger:
  type: cron
  expression: "0 * * * *"
  start_time: "2022-07-10T10:00:00" # optional - default will be schedule creation time
  time_zone: "Pacific Standard Time" # optional - default will be UTC

create_job: azureml:train
"""


def test_schedules_create_from_file_usage_errors(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, _, err = cli("schedules", "create", "--file", str(tmp_path / "missing.yml"))
    assert code == 2 and err.startswith("watcherd: ") and "missing.yml" in err
    big = tmp_path / "big.yml"
    big.write_bytes(b"name: x\n" + b"#" * (1 << 20))
    code, _, err = cli("schedules", "create", "--file", str(big))
    assert code == 2 and "1 MiB" in err and err.count("\n") == 1
    assert cli("schedules", "create")[0] == 2  # --file is required


def test_schedules_create_from_yaml_and_the_same_through_sdk_v2(  # type: ignore[no-untyped-def]
    cli, daemon: DaemonProc, tmp_path: Path
) -> None:
    """Azure ML's documented cron YAML through `schedules create --file`, and the same schedule
    through watcherd.sdk.v2: the same fire times (needs the config layer's YAML parser and v2
    trigger parsing)."""
    from watcherd.sdk.v2 import CronTrigger, JobSchedule, MLClient, TimeZone

    path = tmp_path / "schedule.yml"
    path.write_text(DOCS_CRON_YAML)
    code, out, err = cli("schedules", "create", "--file", str(path), "--json")
    assert code == 0, err
    from_yaml = json.loads(out)
    assert (
        from_yaml["name"] == "simple_cron_job_schedule" and from_yaml["trigger"]["type"] == "cron"
    )
    with MLClient(url=daemon.url, token=daemon.token) as ml:
        from_sdk = ml.schedules.begin_create_or_update(
            JobSchedule(
                name="simple_cron_job_schedule_sdk",
                trigger=CronTrigger(
                    expression="0 * * * *",
                    start_time="2022-07-10T10:00:00",
                    time_zone=TimeZone.PACIFIC_STANDARD_TIME,
                ),
                create_job="azureml:train",
                description="a simple hourly cron job schedule",
            )
        ).result()
    code, a, _ = cli("schedules", "next", from_yaml["id"], "-n", "5", "--json")
    code, b, _ = cli("schedules", "next", from_sdk.id or "", "-n", "5", "--json")
    assert json.loads(a) == json.loads(b) and len(json.loads(a)) == 5
    # The human line: the same file again is a 409 on the name, one line.
    code, _, err = cli("schedules", "create", "--file", str(path))
    assert code == 1 and err.count("\n") == 1
    for sid in (from_yaml["id"], from_sdk.id or ""):
        assert cli("schedules", "disable", sid)[0] == 0


def test_export_yaml(cli, daemon: DaemonProc) -> None:  # type: ignore[no-untyped-def]
    """`schedules export --format yaml` writes the v2 shape (needs watcherd.config.export_yaml)."""
    with daemon.client() as api:
        api.post(
            "/api/v1/schedules",
            json={
                "name": "for-yaml",
                "pipeline": "train",
                "experiment_name": "E",
                "recurrence": {"frequency": "Hour", "interval": 3},
                "status": "Disabled",
            },
        )
    code, out, err = cli("schedules", "export", "--format", "yaml")
    assert code == 0, err
    assert "for-yaml" in out and "\x1b" not in out
    assert cli("schedules", "export", "--format", "xml")[0] == 2


def test_state_copy_dispatch(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`watcherd state copy …` hands the arguments after `state copy` to cli.state_copy."""
    from watcherd.cli import state_copy
    from watcherd.cli.main import main as watcherd_main

    seen: list[list[str]] = []
    monkeypatch.setattr(state_copy, "main", lambda argv: seen.append(list(argv)) or 0)
    argv = ["state", "copy", "--to", "postgresql://w@db/w", "--from", "/srv/state"]
    assert watcherd_main(argv) == 0
    assert seen == [["--to", "postgresql://w@db/w", "--from", "/srv/state"]]
    assert watcherd_main(["state"]) == 2
    assert watcherd_main(["state", "move"]) == 2
    capsys.readouterr()
    assert watcherd_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "replicas" in out and "state" in out
