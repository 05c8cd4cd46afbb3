"""Azure ML's TimeZone names and IANA names, resolved to zoneinfo keys."""

from __future__ import annotations

import re
import zoneinfo
from enum import Enum
from functools import lru_cache

from tzlocal.windows_tz import win_tz

from watcherd.core.errors import ValidationError

__all__ = ["WINDOWS_ZONE_NAMES", "enum_member_name", "resolve_zone"]

# The values of azureml-pipeline-core's `azureml.pipeline.core.schedule.TimeZone`, in its order.
WINDOWS_ZONE_NAMES: tuple[str, ...] = (
    "Dateline Standard Time",
    "UTC-11",
    "Aleutian Standard Time",
    "Hawaiian Standard Time",
    "Marquesas Standard Time",
    "Alaskan Standard Time",
    "UTC-09",
    "Pacific Standard Time (Mexico)",
    "UTC-08",
    "Pacific Standard Time",
    "US Mountain Standard Time",
    "Mountain Standard Time (Mexico)",
    "Mountain Standard Time",
    "Central America Standard Time",
    "Central Standard Time",
    "Easter Island Standard Time",
    "Central Standard Time (Mexico)",
    "Canada Central Standard Time",
    "SA Pacific Standard Time",
    "Eastern Standard Time (Mexico)",
    "Eastern Standard Time",
    "Haiti Standard Time",
    "Cuba Standard Time",
    "US Eastern Standard Time",
    "Paraguay Standard Time",
    "Atlantic Standard Time",
    "Venezuela Standard Time",
    "Central Brazilian Standard Time",
    "SA Western Standard Time",
    "Pacific SA Standard Time",
    "Turks And Caicos Standard Time",
    "Newfoundland Standard Time",
    "Tocantins Standard Time",
    "E. South America Standard Time",
    "SA Eastern Standard Time",
    "Argentina Standard Time",
    "Greenland Standard Time",
    "Montevideo Standard Time",
    "Saint Pierre Standard Time",
    "Bahia Standard Time",
    "UTC-02",
    "Mid-Atlantic Standard Time",
    "Azores Standard Time",
    "Cape Verde Standard Time",
    "UTC",
    "Morocco Standard Time",
    "GMT Standard Time",
    "Greenwich Standard Time",
    "W. Europe Standard Time",
    "Central Europe Standard Time",
    "Romance Standard Time",
    "Central European Standard Time",
    "W. Central Africa Standard Time",
    "Namibia Standard Time",
    "Jordan Standard Time",
    "GTB Standard Time",
    "Middle East Standard Time",
    "Egypt Standard Time",
    "E. Europe Standard Time",
    "Syria Standard Time",
    "West Bank Standard Time",
    "South Africa Standard Time",
    "FLE Standard Time",
    "Turkey Standard Time",
    "Israel Standard Time",
    "Kaliningrad Standard Time",
    "Libya Standard Time",
    "Arabic Standard Time",
    "Arab Standard Time",
    "Belarus Standard Time",
    "Russian Standard Time",
    "E. Africa Standard Time",
    "Iran Standard Time",
    "Arabian Standard Time",
    "Astrakhan Standard Time",
    "Azerbaijan Standard Time",
    "Russia Time Zone 3",
    "Mauritius Standard Time",
    "Georgian Standard Time",
    "Caucasus Standard Time",
    "Afghanistan Standard Time",
    "West Asia Standard Time",
    "Ekaterinburg Standard Time",
    "Pakistan Standard Time",
    "India Standard Time",
    "Sri Lanka Standard Time",
    "Nepal Standard Time",
    "Central Asia Standard Time",
    "Bangladesh Standard Time",
    "N. Central Asia Standard Time",
    "Myanmar Standard Time",
    "SE Asia Standard Time",
    "Altai Standard Time",
    "W. Mongolia Standard Time",
    "North Asia Standard Time",
    "Tomsk Standard Time",
    "China Standard Time",
    "North Asia East Standard Time",
    "Singapore Standard Time",
    "W. Australia Standard Time",
    "Taipei Standard Time",
    "Ulaanbaatar Standard Time",
    "North Korea Standard Time",
    "Aus Central W. Standard Time",
    "Transbaikal Standard Time",
    "Tokyo Standard Time",
    "Korea Standard Time",
    "Yakutsk Standard Time",
    "Cen. Australia Standard Time",
    "AUS Central Standard Time",
    "E. Australia Standard Time",
    "AUS Eastern Standard Time",
    "West Pacific Standard Time",
    "Tasmania Standard Time",
    "Vladivostok Standard Time",
    "Lord Howe Standard Time",
    "Bougainville Standard Time",
    "Russia Time Zone 10",
    "Magadan Standard Time",
    "Norfolk Standard Time",
    "Sakhalin Standard Time",
    "Central Pacific Standard Time",
    "Russia Time Zone 11",
    "New Zealand Standard Time",
    "UTC+12",
    "Fiji Standard Time",
    "Kamchatka Standard Time",
    "Chatham Islands Standard Time",
    "Tonga Standard Time",
    "Samoa Standard Time",
    "Line Islands Standard Time",
)

# CLDR's windowsZones (tzlocal.windows_tz) lacks these two; Azure ML still lists them.
_EXTRA_WINDOWS = {
    "Kamchatka Standard Time": "Asia/Kamchatka",
    "Mid-Atlantic Standard Time": "Etc/GMT+2",
    "UTC": "UTC",
}
_WINDOWS_SET = frozenset(WINDOWS_ZONE_NAMES)
# Names zoneinfo lists that depend on the host or mean "no zone"; never accepted.
_NOT_ZONES = frozenset({"localtime", "posixrules", "Factory"})
_INVALID = "Time zone is not a valid TimeZone enum."


_NOT_ROOTS = frozenset({"right", "posix"})  # variants of every zone, which zoneinfo never lists


@lru_cache(maxsize=1024)  # API bodies name zones too: bounded
def _is_iana(name: str) -> bool:
    """`name in zoneinfo.available_timezones()` (less the names above), for one name: that
    lists every zone by opening ~600 files (0.1-0.15 s, paid by the first config with an
    IANA name); this loads only the one asked for, as ZoneInfo will anyway."""
    if name in _NOT_ZONES or name.partition("/")[0] in _NOT_ROOTS:
        return False
    try:
        zoneinfo.ZoneInfo(name)
    except (ValueError, OSError, zoneinfo.ZoneInfoNotFoundError):
        return False  # not a normalized relative key, a directory, not a TZif file, none
    return True


def resolve_zone(name: object) -> str:
    """Map an Azure ML TimeZone value (or member) or an IANA name to an IANA zone key.

    Args:
        name: One of the 131 `WINDOWS_ZONE_NAMES`, a `TimeZone`-like enum member whose value is
            one, or an IANA name known to zoneinfo. `None` is not accepted here.

    Returns:
        The IANA key, e.g. "America/Los_Angeles" for "Pacific Standard Time", "UTC" for "UTC".

    Raises:
        ValidationError: "Time zone is not a valid TimeZone enum." with key "time_zone".
    """
    if isinstance(name, Enum):
        name = name.value
    if not isinstance(name, str):
        raise ValidationError(_INVALID, "time_zone")
    if name in _WINDOWS_SET:
        iana = _EXTRA_WINDOWS.get(name) or win_tz.get(name)
        if isinstance(iana, str):
            return iana
    elif _is_iana(name):
        return name
    raise ValidationError(_INVALID, "time_zone")


def enum_member_name(value: str) -> str:
    """The `TimeZone` member name for a value: non-alphanumerics dropped ("UTC-11" → "UTC11")."""
    return re.sub(r"[^A-Za-z0-9]", "", value)
