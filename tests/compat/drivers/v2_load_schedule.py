"""Driver run inside the Azure virtualenv: azure-ai-ml's `load_schedule` on YAML texts.

stdin: a JSON list of YAML texts. Each is written in turn to `schedule.yml` in an empty
temporary directory (so a relative `create_job` file reference finds nothing) and loaded with
`load_schedule(path)`; azure-ai-ml 1.35 exports it only from
`azure.ai.ml.entities._load_functions`, older releases also from `azure.ai.ml`.

stdout: one JSON object `{"results": [...], "import_seconds", "run_seconds", "versions"}` where
each result is

    {"accepted": bool, "message": str | None, "error_type": str | None,
     "errors": [[key_path, message], ...], "normalized": {...} | None}

Messages have the temporary path replaced by `<file>`. A schema rejection's message is a JSON
report wrapped twice in prose; `errors` holds its leaves as (dotted key path, message) pairs,
and `message` joins them ("trigger.interval: Not a valid integer."). For the trigger, a union
of the cron and recurrence schemas, only the alternative whose `type` matched is kept (both
when neither matched). Other errors (YAML syntax, a missing `trigger`/`create_job`, which
azure-ai-ml reports as a TypeError from JobSchedule's constructor) keep their own text.
`normalized` (accepted only) holds the loaded JobSchedule's fields: name, display_name,
description, tags, is_enabled, the trigger (`type` "recurrence" | "cron", frequency, interval,
pattern hours/minutes/week_days/month_days, start_time, end_time, time_zone, expression) and
create_job (a string, or the job's type, id and the remote-job updates for a dict).
Datetimes are `{"$datetime": isoformat}`, enum members `{"$enum": "Type.NAME", "value": ...}`.

Never imported by watcherd or by the tests: the tests run it with the Azure venv's python.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
import warnings
from datetime import date, datetime
from enum import Enum
from pathlib import Path
from typing import Any

_T0 = time.perf_counter()
try:
    from azure.ai.ml import load_schedule  # type: ignore[attr-defined]
except ImportError:  # azure-ai-ml 1.35 no longer exports it
    from azure.ai.ml.entities._load_functions import load_schedule
from azure.ai.ml.entities import CronTrigger, RecurrenceTrigger  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - _T0

warnings.simplefilter("ignore")
logging.disable(logging.CRITICAL)


def encode(value: Any) -> Any:
    if isinstance(value, Enum):
        return {"$enum": f"{type(value).__name__}.{value.name}", "value": value.value}
    if isinstance(value, datetime | date):
        return {"$datetime": value.isoformat()}
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return {"$repr": repr(value)}


def _trigger(trigger: Any) -> dict[str, Any] | None:
    if trigger is None:
        return None
    out: dict[str, Any] = {
        "class": type(trigger).__name__,
        "start_time": encode(trigger.start_time),
        "end_time": encode(trigger.end_time),
        "time_zone": encode(trigger.time_zone),
    }
    if isinstance(trigger, CronTrigger):
        out.update(type="cron", expression=encode(trigger.expression))
    elif isinstance(trigger, RecurrenceTrigger):
        pattern = trigger.schedule
        out.update(
            type="recurrence",
            frequency=encode(trigger.frequency),
            interval=encode(trigger.interval),
            schedule=None
            if pattern is None
            else {
                key: encode(getattr(pattern, key, None))
                for key in ("hours", "minutes", "week_days", "month_days")
            },
        )
    else:
        out["type"] = encode(getattr(trigger, "type", None))
    return out


def _create_job(job: Any) -> Any:
    if job is None or isinstance(job, str):
        return job
    updates = {}
    for key in ("inputs", "outputs", "settings", "compute", "experiment_name"):
        value = getattr(job, key, None)
        if value:
            updates[key] = {"$repr": repr(value)} if not isinstance(value, str) else value
    return {
        "class": type(job).__name__,
        "type": encode(getattr(job, "type", None)),
        "id": encode(getattr(job, "id", None)),
        "updates": updates,
    }


def normalize(schedule: Any) -> dict[str, Any]:
    return {
        "class": type(schedule).__name__,
        "name": encode(schedule.name),
        "display_name": encode(getattr(schedule, "display_name", None)),
        "description": encode(schedule.description),
        "tags": encode(schedule.tags),
        "is_enabled": encode(schedule.is_enabled),
        "trigger": _trigger(schedule.trigger),
        "create_job": _create_job(getattr(schedule, "create_job", None)),
    }


_DECODER = json.JSONDecoder()
_FAILED = "failed:"


def _embedded_json(text: str) -> Any:
    """The JSON object after the first "failed:" in an azure-ai-ml validation message."""
    at = text.find(_FAILED)
    start = text.find("{", at) if at >= 0 else -1
    if start < 0:
        return None
    try:
        return _DECODER.raw_decode(text, start)[0]
    except ValueError:
        return None


def _type_mismatch(errors: Any) -> bool:
    return isinstance(errors, dict) and any(
        "passed is not in set" in str(m) for m in errors.get("type", [])
    )


def _leaves(errors: Any, path: str) -> list[list[str]]:
    """(key path, message) pairs of a marshmallow error tree."""
    if isinstance(errors, dict):
        out = []
        for key, sub in errors.items():
            sub_path = path if key == "_schema" else (f"{path}.{key}" if path else str(key))
            out += _leaves(sub, sub_path)
        return out
    if isinstance(errors, list):
        if errors and all(isinstance(e, dict) for e in errors):  # union alternatives
            matched = [e for e in errors if not _type_mismatch(e)]
            out = []
            for alternative in matched or errors:
                out += [leaf for leaf in _leaves(alternative, path) if leaf not in out]
            return out
        out = []
        for item in errors:
            out += _leaves(item, path)
        return out
    return [[path, str(errors)]]


def _schema_errors(text: str) -> list[list[str]]:
    outer = _embedded_json(text)
    if not isinstance(outer, dict):
        return []
    pairs: list[list[str]] = []
    for entry in outer.get("errors", []):
        inner = _embedded_json(str(entry.get("message", "")))
        if inner is None:
            pairs.append([str(entry.get("path", "")), str(entry.get("message", ""))])
        else:
            pairs += _leaves(inner, "")
    return pairs


def check(text: str, workdir: Path) -> dict[str, Any]:
    path = workdir / "schedule.yml"
    path.write_text(text, encoding="utf-8")
    try:
        schedule = load_schedule(str(path))
        normalized = normalize(schedule)
    except Exception as exc:  # noqa: BLE001 - every outcome is data here
        message = str(exc).replace(str(path), "<file>").replace(str(workdir), "<dir>")
        errors = _schema_errors(message)
        if errors:
            message = "; ".join(f"{key}: {text}" for key, text in errors)
        return {
            "accepted": False,
            "message": message.strip(),
            "error_type": type(exc).__name__,
            "errors": errors,
            "normalized": None,
        }
    return {
        "accepted": True,
        "message": None,
        "error_type": None,
        "errors": [],
        "normalized": normalized,
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("azure-ai-ml", "marshmallow", "PyYAML")}


def main() -> int:
    inputs = json.load(sys.stdin)
    t0 = time.perf_counter()
    cwd = os.getcwd()
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="v2sched-", dir=base) as tmp:
        os.chdir(tmp)  # nothing relative resolves against the caller's tree
        try:
            results = [check(text, Path(tmp)) for text in inputs]
        finally:
            os.chdir(cwd)
    out = {
        "results": results,
        "import_seconds": round(IMPORT_SECONDS, 3),
        "run_seconds": round(time.perf_counter() - t0, 3),
        "versions": _versions(),
    }
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
