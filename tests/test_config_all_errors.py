"""check-config lists every error of a schedule (SPEC §6 "Errors: all"), its trigger's too.

A schedule with another error (an unknown pipeline, two triggers, a missing key) still has
its trigger checked: a bad cron expression, zone or time, and a datastore's kind-dependent
keys, are reported beside the first error. What follows only from an error already reported
(a key that failed to convert, a reference to a broken datastore) adds nothing.
Real config files, read by `python -m watcherd check-config` and `watcherd.config.load`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from watcherd.config import load, parse_schedule
from watcherd.config import schedules as schedules_mod
from watcherd.core.errors import ConfigErrors
from watcherd.core.models import Source

BASE = """\
[datastores.inbox]
kind = "local"
root = "inbox"

[pipelines.train]
kind = "command"
steps = [["true"]]

[pipelines.batch]
kind = "batch_endpoint"
endpoint = "https://ep.westeurope.inference.ml.azure.com/jobs"
"""

BAD_CRON = "Invalid cron expression '* * * *': expected 5 fields (MIN HOUR DOM MON DOW), got 4"
UNKNOWN = "unknown pipeline 'nope'"
LOCAL_ONLY = "only for azure_blob datastores ('inbox' is local)"


def write(tmp_path: Path, schedules: str, base: str = BASE) -> Path:
    (tmp_path / "inbox").mkdir(exist_ok=True)
    path = tmp_path / "watcherd.toml"
    path.write_text(base + schedules, encoding="utf-8")
    return path


def check_config(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "watcherd", "check-config", "--config", str(path), *args],
        cwd=path.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def errors_of(tmp_path: Path, schedules: str, base: str = BASE) -> list[tuple[str, str]]:
    """(key path, message) of every error `watcherd.config.load` reports, in order."""
    with pytest.raises(ConfigErrors) as exc:
        load(write(tmp_path, schedules, base), {})
    return [(e.key_path, e.reason) for e in exc.value.errors]


# ── the audit's cases, through the command line ───────────────────────────────


def test_unknown_pipeline_and_bad_cron_are_both_listed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[[schedules]]
name = "S"
pipeline = "nope"
experiment_name = "E"
cron = "* * * *"
""",
    )
    done = check_config(path, "--json")
    assert done.returncode == 2, done.stderr
    errors = [(e["key_path"], e["message"]) for e in json.loads(done.stdout)["errors"]]
    assert errors == [("schedules[0].pipeline", UNKNOWN), ("schedules[0].cron", BAD_CRON)]

    done = check_config(path)
    assert done.returncode == 2
    assert f"schedules[0].pipeline: {UNKNOWN}\n" in done.stdout
    assert f"schedules[0].cron: {BAD_CRON}\n" in done.stdout
    assert "0 schedules, 0 warnings, 2 errors" in done.stdout


def test_bad_cron_beside_a_recurrence_is_listed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[[schedules]]
name = "S"
pipeline = "train"
experiment_name = "E"
cron = "* * * *"
recurrence = { frequency = "Day", interval = 1 }
""",
    )
    done = check_config(path, "--json")
    assert done.returncode == 2, done.stderr
    errors = [(e["key_path"], e["message"]) for e in json.loads(done.stdout)["errors"]]
    assert errors == [
        ("schedules[0]", "Can not specify both a Recurrence and a cron expression"),
        ("schedules[0].cron", BAD_CRON),
    ]


# ── more of the trigger's own problems ────────────────────────────────────────


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        pytest.param(
            'pipeline = "nope"\nexperiment_name = "E"\ncron = "0 0 * * *"\n'
            'time_zone = "Mars/Olympus"\n',
            [
                ("schedules[0].pipeline", UNKNOWN),
                ("schedules[0].time_zone", "Time zone is not a valid TimeZone enum."),
            ],
            id="cron-zone-with-unknown-pipeline",
        ),
        pytest.param(
            'pipeline = "train"\ncron = "* * * *"\n',
            [("schedules[0].experiment_name", "required"), ("schedules[0].cron", BAD_CRON)],
            id="cron-with-missing-key",
        ),
        pytest.param(
            'pipeline = "train"\nexperiment_name = "E"\ndatastore = "inbox"\n'
            'list_page_size = 10\ncron = "* * * *"\n',
            [
                ("schedules[0]", "Can not specify both a Recurrence and a Datastore"),
                ("schedules[0].cron", BAD_CRON),
                ("schedules[0].list_page_size", LOCAL_ONLY),
            ],
            id="datastore-and-cron",
        ),
        pytest.param(
            'pipeline = "batch"\ndatastore = "inbox"\n',
            [
                ("schedules[0].experiment_name", "required"),
                (
                    "schedules[0].pipeline",
                    "pipeline 'batch' is a batch_endpoint, which reads its input from Azure "
                    "storage: local datastore 'inbox' cannot feed it (use an azure_blob "
                    "datastore)",
                ),
            ],
            id="batch-endpoint-local-datastore-with-missing-key",
        ),
    ],
)
def test_trigger_problems_beside_other_errors(
    tmp_path: Path, schedule: str, expected: list[tuple[str, str]]
) -> None:
    assert errors_of(tmp_path, '\n[[schedules]]\nname = "S"\n' + schedule) == expected


def test_broken_pipeline_reference_still_checks_the_cron(tmp_path: Path) -> None:
    """The broken pipeline is reported once, in its own table; the schedule's cron too."""
    base = BASE + '\n[pipelines.broken]\nkind = "command"\n'
    errors = errors_of(
        tmp_path,
        '\n[[schedules]]\nname = "S"\npipeline = "broken"\nexperiment_name = "E"\n'
        'cron = "* * * *"\n',
        base,
    )
    assert errors == [("pipelines.broken.steps", "required"), ("schedules[0].cron", BAD_CRON)]


# ── no noise, no duplicates ───────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        pytest.param(
            'pipeline = "nope"\nexperiment_name = "E"\ncron = "0 0 * * *"\n',
            [("schedules[0].pipeline", UNKNOWN)],
            id="valid-cron",
        ),
        pytest.param(
            'pipeline = "nope"\nexperiment_name = "E"\ncron = 5\n',
            [
                ("schedules[0].pipeline", UNKNOWN),
                ("schedules[0].cron", "expected a string, got integer 5"),
            ],
            id="cron-not-a-string",
        ),
        pytest.param(
            'pipeline = "nope"\nexperiment_name = "E"\ndatastore = "nostore"\nevents = "maybe"\n',
            [
                ("schedules[0].pipeline", UNKNOWN),
                ("schedules[0].datastore", "unknown datastore 'nostore'"),
            ],
            id="unknown-datastore",
        ),
        pytest.param(
            'pipeline = "nope"\nexperiment_name = "E"\n'
            'recurrence = { frequency = "Dayz", interval = 1 }\n',
            [
                ("schedules[0].pipeline", UNKNOWN),
                (
                    "schedules[0].recurrence.frequency",
                    "Invalid value for frequency, only one of Minute, Hour, Day, Week, or "
                    "Month accepted",
                ),
            ],
            id="bad-recurrence",
        ),
    ],
)
def test_only_the_schedules_own_problems(
    tmp_path: Path, schedule: str, expected: list[tuple[str, str]]
) -> None:
    assert errors_of(tmp_path, '\n[[schedules]]\nname = "S"\n' + schedule) == expected


def test_api_body_lists_the_cron_error_too(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, ""), {})
    body = {"name": "S", "pipeline": "nope", "experiment_name": "E", "cron": "* * * *"}
    with pytest.raises(ConfigErrors) as exc:
        parse_schedule(body, config=cfg, key_prefix="body", source=Source.API)
    errors = [(e.key_path, e.reason) for e in exc.value.errors]
    assert errors == [("body.pipeline", UNKNOWN), ("body.cron", BAD_CRON)]


def test_valid_schedules_skip_the_error_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The extra checks run for refused schedules only: a valid file never reaches them."""

    def refuse(*args: object) -> None:
        raise AssertionError("the error path ran for a valid schedule")

    monkeypatch.setattr(schedules_mod, "_trigger_problems", refuse)
    tables = "".join(
        f'\n[[schedules]]\nname = "S{i}"\npipeline = "train"\nexperiment_name = "E"\n'
        f'cron = "{i % 60} * * * *"\n'
        for i in range(200)
    )
    cfg = load(write(tmp_path, tables), {})
    assert len(cfg.schedules) == 200


def test_an_env_name_a_process_cannot_take_is_a_config_error(tmp_path: Path) -> None:
    """`env = { "A=B" = "1" }` passed check-config, then every run failed at its start."""
    base = '[pipelines.p]\nkind = "command"\nsteps = [["true"]]\nenv = { "A=B" = "1", OK = "2" }\n'
    assert errors_of(tmp_path, "", base) == [
        ('pipelines.p.env."A=B"', "invalid environment variable name 'A=B'")
    ]


def test_an_unset_variable_is_one_error_not_one_per_schedule(tmp_path: Path) -> None:
    """`${X}` unset is reported at its value; its text left as written (read as the placeholder
    `{X}`) is not reported again for each schedule of the pipeline."""
    base = (
        '[pipelines.p]\nkind = "command"\nsteps = [["echo", "--token=${WATCHERD_TEST_UNSET_X}"]]\n'
    )
    schedules = "".join(
        f'[[schedules]]\nname = "s{i}"\npipeline = "p"\nexperiment_name = "E"\n'
        f'cron = "0 {i} * * *"\n'
        for i in range(3)
    )
    assert errors_of(tmp_path, schedules, base) == [
        ("pipelines.p.steps[0][1]", "environment variable WATCHERD_TEST_UNSET_X is not set")
    ]
