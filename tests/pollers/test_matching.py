"""NameMatcher: pattern and ignore globs with fnmatch.fnmatchcase semantics on bytes names."""

from __future__ import annotations

import fnmatch
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watcherd.core.matching import NameMatcher
from watcherd.core.models import DEFAULT_IGNORE


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (b"a.csv", True),
        (b"report.CSV", True),
        (b".hidden", False),
        (b"x.tmp", False),
        (b"x.part", False),
        (b"x.partial", False),
        (b"x.crdownload", False),
        (b".x.swp", False),
        (b"notes~", False),
        (b"~$book.xlsx", False),
        (b"tmp.csv", True),  # "*.tmp" is a suffix, not a prefix
        (b"caf\xc3\xa9.csv", True),
        (b"\xff\xfe.bin", True),
    ],
)
def test_default_ignores(name: bytes, expected: bool) -> None:
    assert NameMatcher(("*",), DEFAULT_IGNORE)(name) is expected


@pytest.mark.parametrize(
    ("patterns", "name", "expected"),
    [
        (("*.csv",), b"a.csv", True),
        (("*.csv",), b"a.CSV", False),  # case-sensitive, like fnmatchcase
        (("*.csv", "*.json"), b"b.json", True),
        (("data_??.csv",), b"data_01.csv", True),
        (("data_??.csv",), b"data_001.csv", False),
        (("?.txt",), "é.txt".encode(), True),  # ? is one character, not one byte
        (("??.txt",), "é.txt".encode(), False),
        (("[!a]*",), "éa".encode(), True),
        (("[é]*",), "éa".encode(), True),
        (("[é]*",), b"\xc3", False),
        (("*",), b"\xff", True),
        (("?",), b"\xff", True),  # an undecodable byte is one character (surrogateescape)
        ((), b"a.csv", False),  # no pattern matches nothing
        (("a.csv",), b"a.csv\n", False),  # anchored at the end
    ],
)
def test_patterns(patterns: tuple[str, ...], name: bytes, expected: bool) -> None:
    assert NameMatcher(patterns)(name) is expected


def test_ignore_wins_over_pattern() -> None:
    m = NameMatcher(("*.csv",), ("draft_*",))
    assert m(b"final.csv") and not m(b"draft_1.csv")


GLOB = st.text(alphabet="ab*?[]!-é.", max_size=6)
NAME = st.binary(max_size=8) | st.text(alphabet="abé.[]-!", max_size=6).map(os.fsencode)


@given(patterns=st.lists(GLOB, max_size=3), ignore=st.lists(GLOB, max_size=2), name=NAME)
def test_same_answer_as_fnmatchcase(patterns: list[str], ignore: list[str], name: bytes) -> None:
    text = os.fsdecode(name)
    expected = any(fnmatch.fnmatchcase(text, p) for p in patterns) and not any(
        fnmatch.fnmatchcase(text, p) for p in ignore
    )
    assert NameMatcher(patterns, ignore)(name) is expected
