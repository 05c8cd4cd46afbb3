"""Issue #11, the config and time parts: bounds, escapes, NUL bytes, nesting, size limits.

Each test is named `test_sec_<item>_…` after the issue's item it reproduces.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from watcherd.cli.checkconfig import build_report
from watcherd.cli.main import main
from watcherd.config import export_toml, load, parse, parse_schedule, schedule_to_dict
from watcherd.core import recurrence, slots
from watcherd.core.errors import ConfigErrors, ValidationError
from watcherd.core.models import Config, CronTrigger, RecurrenceTrigger, Source

BASE = """\
[datastores.inbox]
kind = "local"
root = "inbox"

[pipelines.train]
kind = "command"
steps = [["python", "train.py", "--epochs", "{epochs}"]]
parameters = { epochs = "10" }
"""

NOW = datetime(2026, 11, 25, 10, 15, tzinfo=UTC)
BODY = {"name": "S", "pipeline": "train", "experiment_name": "E"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "watcherd.toml"
    path.write_text(text, encoding="utf-8")
    return path


def problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigErrors) as exc:
        load(write(tmp_path, text), env or {})
    return [str(e) for e in exc.value.errors]


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return load(write(tmp_path, BASE), {})


def api_errors(cfg: Config, body: dict[str, object]) -> list[str]:
    with pytest.raises(ConfigErrors) as exc:
        parse_schedule(body, config=cfg, key_prefix="body", source=Source.API)
    return [str(e) for e in exc.value.errors]


# ── item 1: bounded intervals and times ──────────────────────────────────────

MAX_INTERVAL = {"Minute": 52_594_560, "Hour": 876_576, "Day": 36_524, "Week": 5_217, "Month": 1_200}


@pytest.mark.parametrize(("frequency", "top"), MAX_INTERVAL.items())
def test_sec_1_interval_at_most_100_years(frequency: str, top: int) -> None:
    assert recurrence.make_recurrence(frequency, top).interval == top
    with pytest.raises(ValidationError) as exc:
        recurrence.make_recurrence(frequency, top + 1)
    assert exc.value.message == f"Interval must be at most {top} for frequency {frequency}."
    assert exc.value.key == "interval"


def test_sec_1_rule_2b_comes_before_rule_3() -> None:
    with pytest.raises(ValidationError) as exc:
        recurrence.make_recurrence("Month", 40000, hours=[99])
    assert exc.value.message == "Interval must be at most 1200 for frequency Month."
    with pytest.raises(ValidationError) as exc:
        recurrence.make_recurrence("Bogus", 10**20)
    assert exc.value.message.startswith("Invalid value for frequency")
    with pytest.raises(ValidationError) as exc:
        recurrence.make_recurrence("Day", 10**20)
    assert exc.value.message == "Interval must be at most 36524 for frequency Day."


def test_sec_1_huge_interval_in_the_file_and_the_api(tmp_path: Path, cfg: Config) -> None:
    text = (
        BASE
        + """
[[schedules]]
name = "S"
pipeline = "train"
experiment_name = "E"
recurrence = { frequency = "Month", interval = 40000 }
"""
    )
    assert problems(tmp_path, text) == [
        "schedules[0].recurrence.interval: Interval must be at most 1200 for frequency Month."
    ]
    body = {**BODY, "recurrence": {"frequency": "Week", "interval": 143000}}
    assert api_errors(cfg, body) == [
        "body.recurrence.interval: Interval must be at most 5217 for frequency Week."
    ]


def test_sec_1_check_config_exits_2_on_a_huge_interval(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, BASE + '[daemon]\nstate_dir = "st"\n[[schedules]]\nname = "S"\n'
                 'pipeline = "train"\nexperiment_name = "E"\n'
                 'recurrence = { frequency = "Day", interval = 1000000 }\n')  # fmt: skip
    assert main(["check-config", "--config", str(path)]) == 2
    out = capsys.readouterr().out
    assert "Interval must be at most 36524 for frequency Day." in out


@pytest.mark.parametrize(
    ("key", "table"),
    [
        ("start_time", '{ frequency = "Day", interval = 1, start_time = "0001-01-01T00:00:00" }'),
        ("start_time", '{ frequency = "Month", interval = 1, start_time = 0001-01-31T00:00:00 }'),
        ("start_time", '{ frequency = "Month", interval = 1200, start_time = "9999-12-31T23:59" }'),
        ("start_time", '{ frequency = "Minute", interval = 1, start_time = "1899-12-31T23:59" }'),
    ],
)
def test_sec_1_start_time_years_are_bounded(tmp_path: Path, key: str, table: str) -> None:
    text = BASE + f'[[schedules]]\nname = "S"\npipeline = "train"\nexperiment_name = "E"\n' \
                  f"recurrence = {table}\n"  # fmt: skip
    (line,) = problems(tmp_path, text)
    assert line.startswith(f"schedules[0].recurrence.{key}: {key} year must be between 1900 and")


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ('cron = "* * * * *"\nstart_time = "0001-01-01T00:00"\n', "start_time"),
        ('cron = "* * * * *"\nend_time = "9999-12-31T23:59:59"\n', "end_time"),
        ('recurrence = { frequency = "Hour", interval = 1 }\nend_time = 0001-01-01T00:00:00\n',
         "end_time"),
    ],
)  # fmt: skip
def test_sec_1_cron_and_end_times_are_bounded(tmp_path: Path, extra: str, where: str) -> None:
    text = BASE + '[[schedules]]\nname = "S"\npipeline = "train"\nexperiment_name = "E"\n' + extra
    (line,) = problems(tmp_path, text)
    assert line.startswith(f"schedules[0].{where}: {where} year must be between 1900 and 9899")


@pytest.mark.parametrize("frequency", list(MAX_INTERVAL))
def test_sec_1_no_slot_computation_overflows_at_the_bounds(frequency: str) -> None:
    """The largest interval from the latest and earliest allowed start: every slot function
    answers (None or a time), none raises."""
    top = MAX_INTERVAL[frequency]
    for start in ("9899-12-31T23:59:59", "1900-01-01T00:00:00"):
        for zone in ("UTC", "Pacific Standard Time", "Pacific/Kiritimati", "Etc/GMT+12"):
            for interval in (1, top):
                rec = recurrence.make_recurrence(frequency, interval, start, zone)
                end = datetime(9899, 12, 31, 23, 59, 59)
                trigger = RecurrenceTrigger(recurrence=rec, end_time=end)
                anchor = slots.anchor_for(trigger, NOW)
                for after in (anchor - timedelta(days=1), anchor, NOW,
                              datetime(9999, 12, 30, tzinfo=UTC)):  # fmt: skip
                    slots.next_slot(trigger, anchor, after)
                    slots.upcoming(trigger, anchor, after, 3)
                slots.slots_between(trigger, anchor, anchor, datetime(9999, 12, 30, tzinfo=UTC), 5)
                slots.catch_up(trigger, anchor, anchor, datetime(9999, 12, 30, tzinfo=UTC))


def test_sec_1_cron_at_the_bounds(cfg: Config) -> None:
    for start, end in (("9899-12-31T23:59:00", None), ("1900-01-01T00:00", "9899-12-31T23:59")):
        for zone in ("UTC", "Pacific/Kiritimati", "Etc/GMT+12"):
            s = parse_schedule(
                {**BODY, "cron": "0 0 29 2 1", "start_time": start, "end_time": end,
                 "time_zone": zone},
                config=cfg, key_prefix="body", source=Source.API,
            )  # fmt: skip
            assert isinstance(s.trigger, CronTrigger)
            anchor = slots.anchor_for(s.trigger, NOW)
            slots.upcoming(s.trigger, anchor, anchor, 3)
            slots.catch_up(s.trigger, anchor, anchor, datetime(9999, 12, 30, tzinfo=UTC))


def test_sec_1_durations_are_bounded(tmp_path: Path) -> None:
    text = BASE.replace('parameters = { epochs = "10" }',
                        'parameters = { epochs = "10" }\ntimeout = "999999999d"') + (
        '[daemon]\nretention = "100000d"\n'
        '[[schedules]]\nname = "S"\npipeline = "train"\nexperiment_name = "E"\n'
        'datastore = "inbox"\npolling_interval = 100000000\n'
    )  # fmt: skip
    assert problems(tmp_path, text) == [
        "daemon.retention: duration '100000d' is longer than the maximum 36524d (100 years)",
        "pipelines.train.timeout: duration '999999999d' is longer than the maximum 36524d "
        "(100 years)",
        "schedules[0].polling_interval: polling interval 100000000 is longer than the maximum "
        "36524d (100 years)",
    ]


# ── item 6: export escapes ${ ─────────────────────────────────────────────────


def test_sec_6_export_writes_dollar_brace_escaped(tmp_path: Path, cfg: Config) -> None:
    made = parse_schedule(
        {**BODY, "description": "costs ${PRICE} and $${x} and $$ and $", "cron": "0 4 * * *",
         "pipeline_parameters": {"epochs": "${HOME}", "who": "${SECRET:-fallback}"}},
        config=cfg, key_prefix="body", source=Source.API,
    )  # fmt: skip
    text = export_toml([made], cfg)
    assert "${HOME}" not in text.replace("$${HOME}", "")
    assert '"$${HOME}"' in text and '"$${SECRET:-fallback}"' in text
    env = {"HOME": "/root", "SECRET": "s3cret", "PRICE": "1"}
    loaded = load(write(tmp_path, BASE + text), env)
    (back,) = loaded.schedules
    assert back.pipeline_parameters == {"epochs": "${HOME}", "who": "${SECRET:-fallback}"}
    assert back.description == "costs ${PRICE} and $${x} and $$ and $"
    assert schedule_to_dict(back, loaded) == {**schedule_to_dict(made, cfg), "source": "file"}


# ── item 11: year 1, NUL bytes ───────────────────────────────────────────────


@pytest.mark.parametrize("frequency", ["Day", "Month", "Week", "Minute"])
def test_sec_11_start_time_year_1_is_a_clean_error(cfg: Config, frequency: str) -> None:
    body = {**BODY, "recurrence": {"frequency": frequency, "interval": 1,
                                   "start_time": "0001-01-01T00:00:00"}}  # fmt: skip
    (line,) = api_errors(cfg, body)
    assert line.startswith("body.recurrence.start_time: start_time year must be between 1900")


def test_sec_11_nul_bytes_are_key_path_errors(tmp_path: Path, cfg: Config) -> None:
    text = """\
[pipelines.p]
kind = "command"
steps = [["echo", "a\\u0000b"]]
env = { X = "1\\u0000" }
parameters = { "k\\u0000" = "v", v = "\\u0000" }
"""
    assert sorted(problems(tmp_path, text)) == [
        "pipelines.p.env.X: must not contain a NUL character",
        'pipelines.p.parameters."k\\u0000": must not contain a NUL character',
        "pipelines.p.parameters.v: must not contain a NUL character",
        "pipelines.p.steps[0][1]: must not contain a NUL character",
    ]
    body = {**BODY, "cron": "0 4 * * *", "pipeline_parameters": {"epochs": "x\x00"}}
    assert api_errors(cfg, body) == [
        "body.pipeline_parameters.epochs: must not contain a NUL character"
    ]
    assert api_errors(cfg, {**BODY, "name": "a\x00", "cron": "0 4 * * *"}) == [
        "body.name: must not contain a NUL character"
    ]


# ── item 12: deep nesting ────────────────────────────────────────────────────


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_sec_12_deep_toml_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    path = write(tmp_path, "x = " + "[" * 500 + "]" * 500 + "\n")
    assert main([command, "--config", str(path)]) == 2
    captured = capsys.readouterr()
    text = (captured.out + captured.err).strip()
    assert "nested too deeply" in text
    assert "Traceback" not in text and "RecursionError" not in text
    assert len([line for line in text.splitlines() if "nested" in line]) == 1


def test_sec_12_moderately_deep_values_are_refused_by_key_path(tmp_path: Path) -> None:
    deep = "[" * 40 + "1" + "]" * 40
    assert problems(
        tmp_path, f'[pipelines.p]\nkind = "http"\nurl = "http://h"\nparameters = {{ a = {deep} }}\n'
    ) == [  # fmt: skip
        "pipelines.p.parameters.a: nested too deeply (more than 32 levels)"
    ]
    with pytest.raises(ConfigErrors) as exc:
        body: object = "x"
        for _ in range(5000):
            body = [body]
        parse({"schedules": body}, path=None, base_dir=tmp_path, env={})  # type: ignore[dict-item]
    assert [str(e) for e in exc.value.errors] == [
        "schedules: nested too deeply (more than 32 levels)"
    ]


# ── item 19: size limits ─────────────────────────────────────────────────────


def test_sec_19_schedule_limits(cfg: Config) -> None:
    cases: list[tuple[dict[str, object], str]] = [
        ({"name": "n" * 257}, "body.name: longer than 256 characters (257)"),
        ({"experiment_name": "e" * 300}, "body.experiment_name: longer than 256 characters (300)"),
        ({"description": "d" * 4097}, "body.description: longer than 4096 characters (4097)"),
        ({"pipeline_parameters": {"epochs": "v" * 65537}},
         "body.pipeline_parameters.epochs: longer than 65536 bytes (65537)"),
        ({"pipeline_parameters": {"p" * 257: "v"}},
         f"body.pipeline_parameters.{'p' * 257}: name longer than 256 characters (257)"),
        ({"pipeline_parameters": {f"p{i}": "v" for i in range(1001)}},
         "body.pipeline_parameters: more than 1000 entries (1001)"),
        ({"pipeline": "x" * 300}, "body.pipeline: longer than 256 characters (300)"),
        ({"cron": "0 4 * * *" + " " * 300}, "body.cron: longer than 256 characters (309)"),
    ]  # fmt: skip
    for change, line in cases:
        body = {**BODY, "cron": "0 4 * * *", **change}
        assert api_errors(cfg, body) == [line], change
    ok = {**BODY, "name": "n" * 256, "description": "d" * 4096, "cron": "0 4 * * *",
          "pipeline_parameters": {f"p{i}": "é" * 100 for i in range(999)}}  # fmt: skip
    parse_schedule(ok, config=cfg, key_prefix="body", source=Source.API)
    many = {**BODY, "datastore": "inbox", "pattern": ["*"] * 101}
    assert api_errors(cfg, many) == ["body.pattern: more than 100 entries (101)"]
    deep_path = {**BODY, "datastore": "inbox", "path_on_datastore": "a/" * 3000}
    assert api_errors(cfg, deep_path) == [
        "body.path_on_datastore: longer than 4096 characters (6000)"
    ]


def test_sec_19_config_limits(tmp_path: Path) -> None:
    long_name = "p" * 300
    text = f"""\
[pipelines.{long_name}]
kind = "http"
url = "http://h/{"x" * 9000}"
description = "{"d" * 5000}"

[datastores.d]
kind = "local"
root = "{"r" * 5000}"
"""
    assert problems(tmp_path, text) == [
        f"pipelines.{long_name}: name longer than 256 characters (300)",
        "datastores.d.root: longer than 4096 characters (5000)",
        f"pipelines.{long_name}.url: longer than 8192 characters (9009)",
        f"pipelines.{long_name}.description: longer than 4096 characters (5000)",
    ]


def test_sec_19_limits_leave_check_config_usable(tmp_path: Path) -> None:
    """A long but valid config still makes a report."""
    text = BASE + '[[schedules]]\nname = "' + "n" * 256 + '"\npipeline = "train"\n' \
                  'experiment_name = "E"\ncron = "0 4 * * *"\n'  # fmt: skip
    cfg = load(write(tmp_path, text), {})
    report = build_report(cfg, now=NOW, stored={})
    assert report.errors == () and report.schedules[0].name == "n" * 256


def test_sec_1_a_stored_huge_interval_does_not_overflow_catch_up() -> None:
    """A recurrence built before rule 2b existed (a stored row read by old code paths): the
    catch-up window is capped, so slot math answers instead of raising OverflowError."""
    for frequency, interval in (("Month", 40000), ("Week", 143000), ("Day", 1_000_000)):
        rec = recurrence.Recurrence(frequency=frequency, interval=interval)
        trigger = RecurrenceTrigger(recurrence=rec)
        anchor, cursor = slots.new_timer(trigger, NOW, active=True)
        result = slots.catch_up(trigger, anchor, cursor, NOW + timedelta(days=400))
        assert result.run == [] and result.not_run == [NOW]  # the creation fire only


def test_sec_11_text_that_is_not_unicode_is_a_key_path_error(tmp_path: Path, cfg: Config) -> None:
    """JSON's "\\ud800" or an environment variable holding non-UTF-8 bytes cannot be stored,
    logged or hashed into an id: refused with the key path, never a 500."""
    body = {**BODY, "name": "a\ud800", "cron": "0 4 * * *",
            "pipeline_parameters": {"k\udc80": "v"}}  # fmt: skip
    assert api_errors(cfg, body) == [
        "body.name: not valid Unicode (holds a lone surrogate, e.g. bytes that are not UTF-8)",
        'body.pipeline_parameters."k\\udc80": not valid Unicode (holds a lone surrogate, e.g. '
        "bytes that are not UTF-8)",
    ]
    env = {"WHO": b"caf\xe9".decode("utf-8", "surrogateescape")}
    text = BASE.replace('epochs = "10"', 'epochs = "${WHO}"')
    assert problems(tmp_path, text, env) == [
        "pipelines.train.parameters.epochs: not valid Unicode (holds a lone surrogate, e.g. "
        "bytes that are not UTF-8)"
    ]


def test_default_ids_are_uuid5() -> None:
    """The ids computed without uuid.UUID objects (issue #14) are uuid5's."""
    import uuid

    from watcherd.core.models import NAMESPACE, default_pipeline_id, default_schedule_id

    for name in ("S", "é ü", "x" * 300, "", "a/b"):
        assert default_schedule_id(name) == str(uuid.uuid5(NAMESPACE, "schedule/" + name))
        assert default_pipeline_id(name) == str(uuid.uuid5(NAMESPACE, "pipeline/" + name))
