"""The check-config report (SPEC §6)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from watcherd.cli.checkconfig import Report, build_report, format_json, format_text
from watcherd.config import load, parse_schedule, schedule_to_dict
from watcherd.core.errors import ConfigErrors
from watcherd.core.models import (
    Config,
    CronTrigger,
    RecurrenceTrigger,
    Schedule,
    Source,
    StoredSchedule,
)
from watcherd.core.slots import trigger_key
from watcherd.core.words import trigger_words

NOW = datetime(2026, 11, 25, 10, 15, 0, 250000, tzinfo=UTC)


def stored_row(
    s: Schedule,
    cfg: Config,
    anchor: datetime,
    *,
    status: str = "Active",
    source: str = "file",
    file_status: str | None = None,
    row_id: str | None = None,
) -> StoredSchedule:
    """A store row for `s` as the daemon writes it (its cursor: the anchor's instant)."""
    t = s.trigger
    tkey = trigger_key(t) if isinstance(t, RecurrenceTrigger | CronTrigger) else None
    return StoredSchedule(
        id=row_id or s.id,
        name=s.name,
        source=source,
        status=status,
        file_status=file_status if file_status is not None else s.status.value,
        spec=schedule_to_dict(s, cfg),
        trigger_key=tkey,
        anchor=anchor,
        cursor=anchor,
        created_at=anchor,
        updated_at=anchor,
    )


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    """A PATH directory holding an executable `tool`."""
    d = tmp_path / "bin"
    d.mkdir()
    tool = d / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    return d


def make_config(tmp_path: Path, extra: str = "", env: dict[str, str] | None = None) -> Config:
    (tmp_path / "inbox").mkdir(exist_ok=True)
    text = """\
[datastores.inbox]
kind = "local"
root = "inbox"

[pipelines.train]
kind = "command"
steps = [["tool", "{epochs}"]]
parameters = { epochs = "10" }

[[schedules]]
name = "Every15"
pipeline = "train"
experiment_name = "E"
recurrence = { frequency = "Minute", interval = 15, time_zone = "Pacific Standard Time" }

[[schedules]]
name = "Reactive"
pipeline = "train"
experiment_name = "E"
datastore = "inbox"
path_on_datastore = "incoming"
polling_interval = 5
"""
    path = tmp_path / "watcherd.toml"
    path.write_text(text + extra)
    return load(path, env or {})


def report_for(tmp_path: Path, bin_dir: Path, extra: str = "") -> tuple[Config, Report]:
    cfg = make_config(tmp_path, extra)
    return cfg, build_report(cfg, now=NOW, stored={}, search_path=str(bin_dir))


def test_new_schedule_fires_on_creation(tmp_path: Path, bin_dir: Path) -> None:
    cfg, report = report_for(tmp_path, bin_dir)
    assert report.exit_code == 0 and report.warnings == () and report.errors == ()
    rec, reactive = report.schedules
    created = NOW.replace(microsecond=0)
    assert rec.creation_fire == created
    assert rec.next_fire_times == (
        created,
        created + timedelta(minutes=15),
        created + timedelta(minutes=30),
    )
    assert rec.zone == "America/Los_Angeles"
    text = format_text(report)
    assert (
        "  next      2026-11-25T10:15:00Z (2026-11-25 02:15 PST)  on creation\n"
        "            2026-11-25T10:30:00Z (2026-11-25 02:30 PST)\n"
        "            2026-11-25T10:45:00Z (2026-11-25 02:45 PST)\n"
    ) in text
    assert "  trigger   every 15 minutes (Pacific Standard Time)\n" in text
    assert reactive.next_fire_times == () and reactive.creation_fire is None
    assert f"  watches   {tmp_path}/inbox/incoming, polled every 5 min\n" in text
    assert "  trigger   when a file changes in inbox/incoming, checked every 5 min\n" in text
    assert text.startswith(f"{tmp_path}/watcherd.toml: 2 schedules, 0 warnings, 0 errors\n")


def test_stored_schedule_keeps_its_anchor(tmp_path: Path, bin_dir: Path) -> None:
    cfg = make_config(tmp_path)
    rec = cfg.schedules[0]
    anchor = datetime(2026, 11, 24, 0, 5, tzinfo=UTC)
    stored = {rec.id: stored_row(rec, cfg, anchor)}
    report = build_report(cfg, now=NOW, stored=stored, search_path=str(bin_dir))
    row = report.schedules[0]
    assert row.creation_fire is None
    assert row.next_fire_times == (
        datetime(2026, 11, 25, 10, 20, tzinfo=UTC),
        datetime(2026, 11, 25, 10, 35, tzinfo=UTC),
        datetime(2026, 11, 25, 10, 50, tzinfo=UTC),
    )
    assert "on creation" not in format_text(report)
    # A stored trigger that differs from the file's is re-anchored: it fires again at load.
    assert isinstance(rec.trigger, RecurrenceTrigger)
    five = replace(rec.trigger.recurrence, interval=5)
    old = replace(rec, trigger=replace(rec.trigger, recurrence=five))
    stored = {rec.id: stored_row(old, cfg, anchor)}
    row = build_report(cfg, now=NOW, stored=stored, search_path=str(bin_dir)).schedules[0]
    assert row.creation_fire == NOW.replace(microsecond=0)


def test_start_time_cron_disabled_and_ended(tmp_path: Path, bin_dir: Path) -> None:
    extra = """
[[schedules]]
name = "Later"
pipeline = "train"
experiment_name = "E"
recurrence = { frequency = "Day", interval = 1, start_time = "2026-12-01T06:00" }

[[schedules]]
name = "Cron"
pipeline = "train"
experiment_name = "E"
cron = "0 9 * * *"
time_zone = "Europe/Paris"

[[schedules]]
name = "Off"
pipeline = "train"
experiment_name = "E"
status = "Disabled"
recurrence = { frequency = "Hour", interval = 1 }

[[schedules]]
name = "Over"
pipeline = "train"
experiment_name = "E"
recurrence = { frequency = "Hour", interval = 1 }
end_time = "2026-01-01T00:00"
"""
    _, report = report_for(tmp_path, bin_dir, extra)
    later, cron, off, over = report.schedules[2:]
    assert later.creation_fire is None
    assert later.next_fire_times[0] == datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
    assert cron.creation_fire is None
    assert cron.next_fire_times[0] == datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
    assert "2026-11-26T08:00:00Z (2026-11-26 09:00 CET)" in format_text(report)
    assert off.next_fire_times == () and off.note == "schedule Disabled: nothing fires"
    assert over.next_fire_times == () and over.creation_fire is None
    assert over.note == "no more fire times"


def test_warnings(tmp_path: Path, bin_dir: Path) -> None:
    extra = """
[datastores.gone]
kind = "local"
root = "/nonexistent/watcherd-test"

[pipelines.unused]
kind = "command"
steps = [["no-such-program-xyz"], ["./run.sh"], ["{tool}"], ["tool"]]

[pipelines.off]
kind = "http"
url = "http://127.0.0.1:1/"
status = "Disabled"

[[schedules]]
name = "OnOff"
pipeline = "off"
experiment_name = "E"
cron = "* * * * *"
"""
    _, report = report_for(tmp_path, bin_dir, extra)
    assert [str(w) for w in report.warnings] == [
        "datastores.gone.root: directory /nonexistent/watcherd-test does not exist",
        "pipelines.unused.steps[0][0]: 'no-such-program-xyz' not found on PATH",
        f"pipelines.unused.steps[1][0]: './run.sh' is not an executable file (from {tmp_path})",
        "pipelines.unused: used by no schedule",
        "schedules[2].pipeline: pipeline 'off' is Disabled: this schedule starts nothing",
    ]
    assert report.schedules[2].note == "pipeline Disabled: nothing fires"
    assert report.exit_code == 0
    assert "\nwarnings:\n  datastores.gone.root: directory" in format_text(report)


def test_program_relative_to_cwd_and_pipeline_path(tmp_path: Path, bin_dir: Path) -> None:
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    extra = f"""
[pipelines.p]
kind = "command"
steps = [["./run.sh"], ["tool"]]
env = {{ PATH = "{bin_dir}" }}
on_failure = "train"
"""
    cfg = make_config(tmp_path, extra)
    report = build_report(cfg, now=NOW, stored={}, search_path="/nonexistent")
    assert [str(w) for w in report.warnings] == [
        "pipelines.train.steps[0][0]: 'tool' not found on PATH",
        "pipelines.p: used by no schedule",
    ]


def test_api_schedules_and_compat_errors(tmp_path: Path, bin_dir: Path) -> None:
    cfg = make_config(tmp_path)
    body = {"name": "FromApi", "pipeline": "train", "experiment_name": "E", "cron": "*/10 * * * *"}
    made = parse_schedule(body, config=cfg, key_prefix="body", source=Source.API)
    anchor = datetime(2026, 1, 1, tzinfo=UTC)
    stored = {
        made.id: stored_row(made, cfg, anchor, source="api"),
        "x": stored_row(made, cfg, anchor, status="Disabled", source="removed", row_id="x"),
    }
    report = build_report(cfg, now=NOW, stored=stored, search_path=str(bin_dir))
    assert [r.name for r in report.schedules] == ["Every15", "Reactive", "FromApi"]
    api_row = report.schedules[2]
    assert api_row.source == "api"
    assert api_row.next_fire_times[0] == datetime(2026, 11, 25, 10, 20, tzinfo=UTC)
    assert report.errors == ()
    ghost = {**stored[made.id].spec, "pipeline": "deleted-pipeline"}
    stored[made.id] = replace(stored[made.id], spec=ghost)
    report = build_report(cfg, now=NOW, stored=stored, search_path=str(bin_dir))
    assert [str(e) for e in report.errors] == [
        "pipelines: pipeline id 'deleted-pipeline' is missing but API-created schedules use "
        "it: 'FromApi'"
    ]
    assert report.exit_code == 2


def test_errors_only_report(tmp_path: Path) -> None:
    path = tmp_path / "watcherd.toml"
    path.write_text('[daemon]\ntoken = "${T}"\nmax_pending = "${T}"\n')
    with pytest.raises(ConfigErrors) as exc:
        load(path, {"T": "SECRETVALUE"})
    report = build_report(exc.value, now=NOW, stored={}, path=path)
    assert report.exit_code == 2 and report.schedules == ()
    assert format_text(report) == (
        f"{path}: 0 schedules, 0 warnings, 1 error\n\nerrors:\n"
        "  daemon.max_pending: expected an integer, got '***'\n"
    )
    assert json.loads(format_json(report)) == {
        "schedules": [],
        "warnings": [],
        "errors": [{"key_path": "daemon.max_pending", "message": "expected an integer, got '***'"}],
    }


def test_json_shape(tmp_path: Path, bin_dir: Path) -> None:
    _, report = report_for(tmp_path, bin_dir)
    doc = json.loads(format_json(report))
    assert set(doc) == {"schedules", "warnings", "errors"}
    rec, reactive = doc["schedules"]
    assert set(rec) == {"id", "name", "source", "status", "pipeline", "trigger",
                        "next_fire_times", "creation_fire"}  # fmt: skip
    assert rec["next_fire_times"] == [
        "2026-11-25T10:15:00Z", "2026-11-25T10:30:00Z", "2026-11-25T10:45:00Z",
    ]  # fmt: skip
    assert rec["creation_fire"] == "2026-11-25T10:15:00Z"
    assert reactive["next_fire_times"] == [] and reactive["creation_fire"] is None
    assert reactive["trigger"] == "when a file changes in inbox/incoming, checked every 5 min"


def test_secrets_are_masked(tmp_path: Path, bin_dir: Path) -> None:
    extra = '[daemon]\ntoken = "SECRETDIR"\n[datastores.s]\nkind = "local"\nroot = "/SECRETDIR"\n'
    cfg = make_config(tmp_path, extra)
    report = build_report(cfg, now=NOW, stored={}, search_path=str(bin_dir))
    text = format_text(report) + format_json(report)
    assert "SECRETDIR" not in text
    assert "datastores.s.root: directory /*** does not exist" in text


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ('datastore = "inbox"\n', "when a file changes in inbox, checked every 5 min"),
        (
            'datastore = "inbox"\npath_on_datastore = "a/b"\npolling_interval = "30s"\n'
            'pattern = ["*.csv", "*.tsv"]\n',
            "when a file changes in inbox/a/b matching *.csv or *.tsv, checked every 30s",
        ),
        ('recurrence = { frequency = "Minute", interval = 15 }\n', "every 15 minutes"),
        (
            'recurrence = { frequency = "Hour", interval = 1 }\nend_time = "2027-01-01T00:00"\n',
            "every hour, until 2027-01-01 00:00",
        ),
    ],
)
def test_trigger_words(tmp_path: Path, extra: str, words: str) -> None:
    text = '[[schedules]]\nname = "W"\npipeline = "train"\nexperiment_name = "E"\n' + extra
    cfg = make_config(tmp_path, text)
    assert trigger_words(cfg.schedules[-1]) == words


def test_status_follows_the_store_unless_the_file_changed(tmp_path: Path, bin_dir: Path) -> None:
    cfg = make_config(tmp_path)
    rec = cfg.schedules[0]
    anchor = datetime(2026, 11, 24, tzinfo=UTC)
    disabled_at_run_time = stored_row(rec, cfg, anchor, status="Disabled", file_status="Active")
    row = build_report(cfg, now=NOW, stored={rec.id: disabled_at_run_time}).schedules[0]
    assert (row.status, row.next_fire_times) == ("Disabled", ())
    file_was_disabled = replace(disabled_at_run_time, file_status="Disabled")
    row = build_report(cfg, now=NOW, stored={rec.id: file_was_disabled}).schedules[0]
    assert row.status == "Active" and len(row.next_fire_times) == 3


def test_stored_api_schedule_takes_the_stored_id(tmp_path: Path, bin_dir: Path) -> None:
    cfg = make_config(tmp_path)
    body = {"name": "Api", "pipeline": "train", "experiment_name": "E",
            "recurrence": {"frequency": "Hour", "interval": 1}}  # fmt: skip
    reparsed = parse_schedule(body, config=cfg, key_prefix="stored", source=Source.API)
    anchor = datetime(2026, 11, 1, 0, 30, tzinfo=UTC)
    entry = stored_row(reparsed, cfg, anchor, source="api", row_id="api-1")
    report = build_report(cfg, now=NOW, stored={"api-1": entry}, search_path=str(bin_dir))
    row = report.schedules[2]
    assert (row.id, row.creation_fire) == ("api-1", None)
    assert row.next_fire_times[0] == datetime(2026, 11, 25, 10, 30, tzinfo=UTC)


@pytest.mark.parametrize("junk", [b"not a database " * 20, b""])
def test_an_unreadable_state_db_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], junk: bytes
) -> None:
    """check-config on a state.db that cannot be read says so (exit 0: the config itself is
    fine), instead of showing fire times computed as if nothing were stored."""
    from watcherd.cli.main import main

    cfg = make_config(tmp_path)
    state = cfg.daemon.state_dir
    state.mkdir(parents=True, exist_ok=True)
    (state / "state.db").write_bytes(junk)
    (state / "lock").write_bytes(b"1\nstate.db opened\n")  # a start has run here
    assert cfg.path is not None
    assert main(["check-config", "--config", str(cfg.path), "--json"]) == 0
    warnings = json.loads(capsys.readouterr().out)["warnings"]
    if not junk:  # emptied after a run here (the lock says so): `run` refuses it, so is this
        (w,) = [w for w in warnings if w["key_path"] == "daemon.state_dir"]
        assert "is empty but watcherd has run here before" in w["message"]
        (state / "lock").unlink()  # never ran here: an empty file is an empty database
        assert main(["check-config", "--config", str(cfg.path), "--json"]) == 0
        warnings = json.loads(capsys.readouterr().out)["warnings"]
        assert all(w["key_path"] != "daemon.state_dir" for w in warnings)
        return
    (w,) = [w for w in warnings if w["key_path"] == "daemon.state_dir"]
    assert "the state database cannot be read" in w["message"]
    assert "file is not a database" in w["message"]
