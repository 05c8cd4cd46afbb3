"""`TimeZone` and `ScheduleListViewType` as azure-ai-ml 1.35 spells them.

azure-ai-ml's `TimeZone` is a `str` Enum whose member names are the Windows zone names in
UPPER_SNAKE case, looked up case-insensitively (`TimeZone["utc"]`), with five names misspelt
in the package itself; the misspellings are kept so that code written for Azure runs unchanged.
"""

from __future__ import annotations

import re
from enum import Enum, EnumMeta
from typing import Any

from watcherd.core.timezones import WINDOWS_ZONE_NAMES

__all__ = ["ScheduleListViewType", "TimeZone"]

# azure-ai-ml 1.35.2's own spellings where they differ from the rule below.
_AZURE_NAMES = {
    "E. South America Standard Time": "E_SOUTH_AMERICAN_STANDARD_TIME",
    "W. Central Africa Standard Time": "W_CENTEAL_AFRICA_STANDARD_TIME",
    "Afghanistan Standard Time": "AFGHANISTANA_STANDARD_TIME",
    "E. Australia Standard Time": "E_AUSTRALIAN_STANDARD_TIME",
    "Tonga Standard Time": "TONGA__STANDARD_TIME",
}


def _member_name(value: str) -> str:
    return _AZURE_NAMES.get(value) or re.sub(r"[^A-Z0-9]+", "_", value.upper()).strip("_")


class _CaseInsensitiveEnumMeta(EnumMeta):
    """Member names in any case, as azure-core's CaseInsensitiveEnumMeta (values exact)."""

    def __getitem__(cls, name: str) -> Any:
        return super().__getitem__(name.upper())

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return cls._member_map_[name.upper()]
        except KeyError:
            raise AttributeError(name) from None


class _StrEnum(str, Enum, metaclass=_CaseInsensitiveEnumMeta):  # noqa: UP042
    # (str, Enum) as azure-ai-ml: str(TimeZone.UTC) is "TimeZone.UTC", as there
    pass


TimeZone = _StrEnum(  # type: ignore[call-overload]  # the functional API, 131 members
    "TimeZone", [(_member_name(v), v) for v in WINDOWS_ZONE_NAMES], module=__name__
)


class ScheduleListViewType(str, Enum, metaclass=_CaseInsensitiveEnumMeta):  # noqa: UP042
    """Which schedules `MLClient.schedules.list` returns (enabled ones by default)."""

    ENABLED_ONLY = "EnabledOnly"
    DISABLED_ONLY = "DisabledOnly"
    ALL = "All"
