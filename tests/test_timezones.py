"""Azure ML TimeZone names and IANA names resolve to loadable zones; anything else is refused."""

from __future__ import annotations

import os
import zoneinfo
from enum import Enum
from zoneinfo import ZoneInfo

import pytest

from watcherd.core.errors import ValidationError
from watcherd.core.timezones import WINDOWS_ZONE_NAMES, enum_member_name, resolve_zone

INVALID = "Time zone is not a valid TimeZone enum."


def test_there_are_131_distinct_names_in_azure_order() -> None:
    assert len(WINDOWS_ZONE_NAMES) == 131
    assert len(set(WINDOWS_ZONE_NAMES)) == 131
    assert WINDOWS_ZONE_NAMES[:3] == ("Dateline Standard Time", "UTC-11", "Aleutian Standard Time")
    assert WINDOWS_ZONE_NAMES[-1] == "Line Islands Standard Time"


@pytest.mark.parametrize("name", WINDOWS_ZONE_NAMES)
def test_every_azure_name_resolves_to_a_loadable_zone(name: str) -> None:
    iana = resolve_zone(name)
    assert ZoneInfo(iana).key == iana


@pytest.mark.parametrize(
    ("name", "iana"),
    [
        ("Pacific Standard Time", "America/Los_Angeles"),
        ("UTC", "UTC"),
        ("UTC-11", "Etc/GMT+11"),
        ("UTC+12", "Etc/GMT-12"),
        ("GMT Standard Time", "Europe/London"),
        ("Kamchatka Standard Time", "Asia/Kamchatka"),
        ("Mid-Atlantic Standard Time", "Etc/GMT+2"),
        ("Europe/Paris", "Europe/Paris"),
        ("America/Los_Angeles", "America/Los_Angeles"),
        ("Etc/UTC", "Etc/UTC"),
    ],
)
def test_resolve(name: str, iana: str) -> None:
    assert resolve_zone(name) == iana


class TimeZone(Enum):
    PacificStandardTime = "Pacific Standard Time"


def test_an_enum_member_resolves_by_its_value() -> None:
    assert resolve_zone(TimeZone.PacificStandardTime) == "America/Los_Angeles"


@pytest.mark.parametrize(
    "name",
    [
        "Mars/Olympus_Mons",
        "pacific standard time",  # case-sensitive, as the enum
        "PacificStandardTime",  # a member name, not a value
        "Alberta Standard Time",  # in CLDR but not in Azure ML's enum
        "localtime",  # depends on the host
        "",
        None,
        5,
    ],
)
def test_unknown_names_are_refused_with_azure_message(name: object) -> None:
    with pytest.raises(ValidationError) as info:
        resolve_zone(name)
    assert info.value.message == INVALID
    assert info.value.key == "time_zone"


@pytest.mark.parametrize(
    ("value", "member"),
    [
        ("UTC-11", "UTC11"),
        ("UTC+12", "UTC12"),
        ("Pacific Standard Time (Mexico)", "PacificStandardTimeMexico"),
        ("E. South America Standard Time", "ESouthAmericaStandardTime"),
        ("Mid-Atlantic Standard Time", "MidAtlanticStandardTime"),
    ],
)
def test_enum_member_name(value: str, member: str) -> None:
    assert enum_member_name(value) == member


def test_member_names_are_unique_identifiers() -> None:
    members = [enum_member_name(v) for v in WINDOWS_ZONE_NAMES]
    assert len(set(members)) == 131
    assert all(m.isidentifier() for m in members)


def test_iana_names_are_those_zoneinfo_lists() -> None:
    """Every zone zoneinfo lists is accepted, and no other file under its paths: not the
    right/ and posix/ variants, not the data files, not a directory, not a key that is not
    normalized (one name is checked at a time; the list takes 0.1 s to build)."""
    listed = zoneinfo.available_timezones() - {"localtime", "posixrules", "Factory"}
    assert listed and all(resolve_zone(n) == n for n in listed)
    others = {"right/UTC", "posix/UTC", "posix/Europe/Paris", "zone.tab", "tzdata.zi", "Europe",
              "Etc/../UTC", "./UTC", "/UTC", "UTC/", "Europe//Paris", "posixrules", "Factory",
              "UTC\x00", "x" * 300}  # fmt: skip
    for root in zoneinfo.TZPATH:
        for top, dirs, files in os.walk(root):
            others |= {os.path.relpath(os.path.join(top, f), root) for f in dirs + files}
    for name in sorted(others - listed):
        with pytest.raises(ValidationError):
            resolve_zone(name)
