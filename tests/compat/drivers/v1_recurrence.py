"""Driver run inside the Azure virtualenv: azureml-pipeline-core's ScheduleRecurrence.

stdin: a JSON list of keyword dicts for `ScheduleRecurrence(**kwargs)`. Values that JSON cannot
hold are tagged objects: `{"$datetime": "<isoformat>"}` (naive or with an offset),
`{"$timezone": "<TimeZone member name>"}`, `{"$tuple": [...]}`.

stdout: one JSON object `{"results": [...], "import_seconds", "run_seconds", "versions"}` where
each result is

    {"accepted": bool, "message": str | None, "error_type": str | None,
     "stage": "init" | "validate", "normalized": {...} | None}

`stage` is where the outcome was decided: "init" when the constructor raised, else "validate"
(both for a rejection by `validate()` and for an input that passed it). `validate()` is called
twice, as `Schedule.create` calls it again on a recurrence the user already validated; a second
call that disagrees with the first is reported as a rejection with error_type
"SecondValidateDiffers". `normalized` (accepted only) holds the attributes after construction:
how `time_of_day`, a datetime `start_time` and the default zone were stored.

Never imported by watcherd or by the tests: the tests run it with the Azure venv's python.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from enum import Enum
from typing import Any

_T0 = time.perf_counter()
from azureml.pipeline.core import ScheduleRecurrence, TimeZone  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - _T0


def decode(value: Any) -> Any:
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, dict):
        if len(value) == 1:
            ((key, inner),) = value.items()
            if key == "$datetime":
                return datetime.fromisoformat(inner)
            if key == "$timezone":
                return TimeZone[inner]
            if key == "$tuple":
                return tuple(decode(v) for v in inner)
        return {k: decode(v) for k, v in value.items()}
    return value


def encode(value: Any) -> Any:
    if isinstance(value, Enum):
        return {"$enum": f"{type(value).__name__}.{value.name}", "value": value.value}
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return {"$repr": repr(value)}


def _error(exc: BaseException, stage: str) -> dict[str, Any]:
    return {
        "accepted": False,
        "message": str(exc),
        "error_type": type(exc).__name__,
        "stage": stage,
        "normalized": None,
    }


def _validate_once(rec: Any) -> tuple[str, str] | None:
    try:
        rec.validate()
    except Exception as exc:  # noqa: BLE001 - every outcome is data here
        return type(exc).__name__, str(exc)
    return None


def check(kwargs: dict[str, Any]) -> dict[str, Any]:
    try:
        rec = ScheduleRecurrence(**decode(kwargs))
    except Exception as exc:  # noqa: BLE001
        return _error(exc, "init")
    first = _validate_once(rec)
    second = _validate_once(rec)
    if first != second:
        return {
            "accepted": False,
            "message": f"first validate(): {first}; second validate(): {second}",
            "error_type": "SecondValidateDiffers",
            "stage": "validate",
            "normalized": None,
        }
    if first is not None:
        return {
            "accepted": False,
            "message": first[1],
            "error_type": first[0],
            "stage": "validate",
            "normalized": None,
        }
    keys = ("frequency", "interval", "start_time", "time_zone", "hours", "minutes", "week_days")
    return {
        "accepted": True,
        "message": None,
        "error_type": None,
        "stage": "validate",
        "normalized": {k: encode(getattr(rec, k)) for k in keys},
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("azureml-pipeline-core", "azureml-core")}


def main() -> int:
    inputs = json.load(sys.stdin)
    t0 = time.perf_counter()
    results = [check(item) for item in inputs]
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
