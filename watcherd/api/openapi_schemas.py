"""The component schemas of the OpenAPI document (`openapi.py` builds the paths from them).

They describe what routes.py accepts and what the services answer: a schedule holds the §2
keys (one trigger of recurrence, cron, v2 `trigger` or datastore), a run may have no schedule
(a submitted pipeline), and every error has the one shape of SPEC §8.
"""

from __future__ import annotations

from typing import Any

__all__ = ["OPT_STR", "RUN_STATUS", "SCHEMAS", "STR", "list_of", "nullable_ref", "ref"]

JSON = dict[str, Any]

STR: JSON = {"type": "string"}
OPT_STR: JSON = {"type": ["string", "null"]}
_OPT_BOOL: JSON = {"type": ["boolean", "null"]}
_OPT_INT: JSON = {"type": ["integer", "null"]}
_STATUS: JSON = {"type": "string", "enum": ["Active", "Disabled"]}
RUN_STATUS = ["Queued", "Running", "Completed", "Failed", "Submitted", "Canceled", "Skipped"]
_STR_MAP: JSON = {"type": "object", "additionalProperties": {"type": "string"}}
_OPT_STR_MAP: JSON = {"type": ["object", "null"], "additionalProperties": {"type": "string"}}
_TIMES: JSON = {"type": "array", "items": {"type": "string"}}


def ref(name: str) -> JSON:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable_ref(name: str) -> JSON:
    return {"anyOf": [ref(name), {"type": "null"}]}


def list_of(name: str | JSON) -> JSON:
    items = ref(name) if isinstance(name, str) else name
    return {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {"items": {"type": "array", "items": items}, "next_cursor": OPT_STR},
    }


_RECURRENCE: JSON = {
    "type": "object",
    "required": ["frequency", "interval"],
    "properties": {
        "frequency": {"type": "string", "enum": ["Minute", "Hour", "Day", "Week", "Month"]},
        "interval": {"type": "integer", "minimum": 1},
        "start_time": {**OPT_STR, "description": "YYYY-MM-DDThh:mm[:ss], wall time"},
        "time_zone": {**OPT_STR, "description": "a Windows (Azure ML) or IANA zone name"},
        "hours": {"type": ["array", "null"], "items": {"type": "integer"}},
        "minutes": {"type": ["array", "null"], "items": {"type": "integer"}},
        "week_days": {"type": ["array", "null"], "items": {"type": "string"}},
        "time_of_day": OPT_STR,
    },
}

_INT_OR_INTS: JSON = {"type": ["integer", "array"], "items": {"type": "integer"}}
# SPEC §13: Azure ML v2's trigger. The daemon checks the keys per type and frequency (422).
_V2_TRIGGER: JSON = {
    "type": "object",
    "required": ["type"],
    "description": "Azure ML v2 trigger: recurrence (frequency, interval, schedule) or cron "
    "(expression), with start_time, end_time, time_zone",
    "properties": {
        "type": {"type": "string", "description": "recurrence or cron, any case"},
        "frequency": {"type": "string", "description": "minute, hour, day, week, month"},
        "interval": {"type": "integer"},
        "schedule": {
            "type": ["object", "null"],
            "properties": {
                "hours": _INT_OR_INTS,
                "minutes": _INT_OR_INTS,
                "week_days": {"type": ["string", "array", "null"], "items": {"type": "string"}},
                "month_days": {**_INT_OR_INTS, "type": ["integer", "array", "null"]},
            },
        },
        "expression": {"type": "string", "description": "five cron fields"},
        "start_time": OPT_STR,
        "end_time": OPT_STR,
        "time_zone": OPT_STR,
    },
}

# The §2 schedule keys a client may send; every trigger key is optional here and the daemon
# checks the combination (exactly one of recurrence, cron, trigger, datastore), answering 422.
_SCHEDULE_KEYS: JSON = {
    "name": {"type": "string", "minLength": 1},
    "pipeline": {"type": "string", "description": "pipeline id or name"},
    "experiment_name": {"type": "string", "minLength": 1},
    "description": OPT_STR,
    "status": _STATUS,
    "pipeline_parameters": _OPT_STR_MAP,
    "continue_on_step_failure": _OPT_BOOL,
    "recurrence": {"anyOf": [ref("Recurrence"), {"type": "null"}]},
    "trigger": {"anyOf": [ref("Trigger"), {"type": "null"}]},
    "cron": {**OPT_STR, "description": "five fields: MIN HOUR DOM MON DOW"},
    "time_zone": OPT_STR,
    "start_time": OPT_STR,
    "end_time": OPT_STR,
    "catch_up": {"type": ["string", "null"], "enum": ["none", "last", "all", None]},
    "max_catch_up": _OPT_INT,
    "concurrency": {"type": ["string", "null"], "enum": ["allow", "forbid", "queue", None]},
    "max_queued": _OPT_INT,
    "datastore": {**OPT_STR, "description": "a configured datastore's name"},
    "path_on_datastore": OPT_STR,
    "polling_interval": {
        "type": ["number", "string", "null"],
        "description": 'minutes, or a duration string such as "30s"',
    },
    "data_path_parameter_name": OPT_STR,
    "pattern": {"type": ["string", "array", "null"], "items": {"type": "string"}},
    "ignore": {"type": ["array", "null"], "items": {"type": "string"}},
    "ignore_defaults": _OPT_BOOL,
    "settle": OPT_STR,
    "initial": {"type": ["string", "null"], "enum": ["skip", "fire", None]},
    "events": _OPT_BOOL,
}

# What a GET shows beside a schedule's keys; a body may carry them back: they are ignored.
_SHOWN: JSON = {"trigger_words": {}, "last_run": {}, "error": {}}

_RUN: JSON = {
    "type": "object",
    "required": ["id", "schedule_id", "status"],
    "properties": {
        "id": STR,
        "schedule_id": {**OPT_STR, "description": "null for a submitted pipeline run"},
        "schedule_name": OPT_STR,
        "pipeline_id": OPT_STR,
        "experiment_name": OPT_STR,
        "status": {"type": "string", "enum": RUN_STATUS},
        "trigger": {
            "type": "object",
            "description": '{"kind": "time", "slot"} | {"kind": "file", "datastore", "path", '
            '"version"} | {"kind": "manual", "by"}',
            "properties": {"kind": STR},
        },
        "parameters": _OPT_STR_MAP,
        "attempt": {"type": "integer"},
        "attempts": {"type": "array", "items": {"type": "object"}},
        "error": OPT_STR,
        "exit_code": _OPT_INT,
        "remote_id": OPT_STR,
        **dict.fromkeys(("queued_at", "started_at", "finished_at", "next_attempt_at"), OPT_STR),
        "duration": {"type": ["number", "null"], "description": "seconds"},
    },
}

SCHEMAS: JSON = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": STR,
                    "message": STR,
                    "key_path": {**STR, "description": "rooted at `body` for request bodies"},
                    "errors": {"type": "array", "items": {"type": "object"}},
                },
            }
        },
    },
    "Recurrence": _RECURRENCE,
    "Trigger": _V2_TRIGGER,
    "Pipeline": {
        "type": "object",
        "required": ["id", "name", "status"],
        "properties": {
            "id": STR,
            "name": STR,
            "kind": STR,
            "description": OPT_STR,
            "status": _STATUS,
            "parameters": _OPT_STR_MAP,
            "continue_on_step_failure": _OPT_BOOL,
            "endpoint": OPT_STR,
            "schedules": {"type": "array", "items": STR},
            "last_run": nullable_ref("Run"),
        },
    },
    "Schedule": {
        "type": "object",
        "required": ["id", "name", "pipeline", "experiment_name", "status", "source"],
        "properties": {
            **_SCHEDULE_KEYS,
            "id": STR,
            "source": {"type": "string", "enum": ["file", "api", "removed"]},
            "created_at": OPT_STR,
            "updated_at": OPT_STR,
            "next_fire_times": _TIMES,
            "trigger_words": OPT_STR,
            "last_run": nullable_ref("Run"),
            "error": OPT_STR,
        },
    },
    "ScheduleCreate": {
        "type": "object",
        "required": ["name", "pipeline", "experiment_name"],
        "description": "trigger_words, last_run and error (shown by a GET) are ignored",
        "properties": {**_SCHEDULE_KEYS, **_SHOWN},
        "additionalProperties": False,
    },
    "ScheduleUpdate": {
        "type": "object",
        "description": "any subset of the schedule keys; null keeps, pipeline_parameters {} "
        "clears; trigger_words, last_run and error (shown by a GET) are ignored",
        "properties": {**_SCHEDULE_KEYS, **_SHOWN},
        "additionalProperties": False,
    },
    "TriggerRequest": {
        "type": "object",
        "properties": {
            "path": {**OPT_STR, "description": "a file directly in the watched directory"},
            "path_b64": {
                **OPT_STR,
                "description": "instead of path: base64 of the file name's bytes (any bytes)",
            },
            "parameters": _OPT_STR_MAP,
        },
        "additionalProperties": False,
    },
    "SubmitRequest": {
        "type": "object",
        "required": ["experiment_name"],
        "properties": {
            "experiment_name": {"type": "string", "minLength": 1},
            "parameters": _OPT_STR_MAP,
            "continue_on_step_failure": _OPT_BOOL,
        },
        "additionalProperties": False,
    },
    "Replica": {
        "type": "object",
        "required": ["id"],
        "properties": {
            "id": STR,
            "host": OPT_STR,
            "started": OPT_STR,
            "last_heartbeat": OPT_STR,
            "schedules": {"type": "array", "items": STR, "description": "ids it owns"},
            "running": _OPT_INT,
            "config_hash": OPT_STR,
        },
    },
    "Run": _RUN,
    "Experiment": {"type": "object", "required": ["name"], "properties": {"name": STR}},
    "Datastore": {
        "type": "object",
        "required": ["name", "kind"],
        "properties": {"name": STR, "kind": {"type": "string", "enum": ["local", "azure_blob"]}},
    },
    "Health": {"type": "object", "properties": {"status": STR}},
    "Readiness": {"type": "object"},
}
