"""The config file (SPEC §2) into frozen values, with key-path errors.

`load` reads and checks a whole file; `parse_schedule` checks one schedule (a `[[schedules]]`
table or an API body); `schedule_to_dict` and `export_toml` write schedules back out.
"""

from __future__ import annotations

from watcherd.config.loader import (
    check_compat,
    export_toml,
    find_config_path,
    load,
    parse,
    parse_schedule,
    schedule_to_dict,
)

__all__ = [
    "check_compat",
    "export_toml",
    "find_config_path",
    "load",
    "parse",
    "parse_schedule",
    "schedule_to_dict",
]
