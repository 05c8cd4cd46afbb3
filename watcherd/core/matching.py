"""Which file names a datastore trigger watches: `pattern` and `ignore` globs as one regex.

Names are bytes (a local file name, or a blob name's last segment as UTF-8). The globs match
with `fnmatch.fnmatchcase` semantics on the name decoded as the file system does
(`os.fsdecode`: UTF-8, undecodable bytes as surrogates), so `?` is one character, never one
byte of a multi-byte character. All globs are compiled once into a single regex
`(?!ignore|…)(?:pattern|…)`; ASCII names (the common case) are matched by its bytes form
without decoding. For an ASCII name the bytes form is exact: `fnmatch.translate` of the
UTF-8 pattern read as Latin-1 only differs from the text form on non-ASCII characters, and
those can never match an ASCII name either way.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable

__all__ = ["NameMatcher"]


class NameMatcher:
    """True for a name that matches at least one pattern and no ignore glob.

    Args:
        patterns: globs of which any must match (an empty list matches nothing).
        ignore: globs of which none may match.
    """

    __slots__ = ("_bytes_rx", "_text_rx", "ignore", "patterns")

    def __init__(self, patterns: Iterable[str], ignore: Iterable[str] = ()) -> None:
        self.patterns = tuple(patterns)
        self.ignore = tuple(ignore)
        text = _combine(
            [fnmatch.translate(p) for p in self.patterns],
            [fnmatch.translate(p) for p in self.ignore],
        )
        raw = _combine(
            [_latin1_translate(p) for p in self.patterns],
            [_latin1_translate(p) for p in self.ignore],
        )
        self._text_rx = re.compile(text)
        self._bytes_rx = re.compile(raw.encode("latin-1"))

    def __call__(self, name: bytes) -> bool:
        if name.isascii():
            return self._bytes_rx.match(name) is not None
        return self._text_rx.match(os.fsdecode(name)) is not None

    def __repr__(self) -> str:
        return f"NameMatcher(patterns={self.patterns!r}, ignore={self.ignore!r})"


def _latin1_translate(glob: str) -> str:
    # The stdlib's own trick for bytes globs: translate the encoded glob read as Latin-1.
    return fnmatch.translate(os.fsencode(glob).decode("latin-1"))


def _combine(patterns: list[str], ignore: list[str]) -> str:
    positive = "|".join(patterns) or "(?!)"
    negative = "|".join(ignore)
    return (f"(?!{negative})" if negative else "") + f"(?:{positive})"
