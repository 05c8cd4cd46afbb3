"""Which file names a datastore trigger watches: `pattern` and `ignore` globs, compiled once.

Names are bytes (a local file name, or a blob name's last segment as UTF-8). The globs match
with `fnmatch.fnmatchcase` semantics on the name decoded as the file system does
(`os.fsdecode`: UTF-8, undecodable bytes as surrogates), so `?` is one character, never one
byte of a multi-byte character. The usual globs (`*`, `*.tmp`, `.*`, a literal) are answered
without a regex; the others are compiled into one regex per side (patterns, ignore), which
matches ASCII names (the common case) in its bytes form, without decoding. For an ASCII name
the bytes form is exact: `fnmatch.translate` of the UTF-8 pattern read as Latin-1 only differs
from the text form on non-ASCII characters, and those can never match an ASCII name either way.
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

    __slots__ = ("_ignore", "_pattern", "ignore", "patterns")

    def __init__(self, patterns: Iterable[str], ignore: Iterable[str] = ()) -> None:
        self.patterns = tuple(patterns)
        self.ignore = tuple(ignore)
        self._pattern = _Globs(self.patterns)
        self._ignore = _Globs(self.ignore)

    def __call__(self, name: bytes) -> bool:
        return self._pattern(name) and not self._ignore(name)

    def select(self, names: list[bytes]) -> list[int] | None:
        """The indexes of the names that match; None when all do.

        One call per batch (a rescan's chunk): with the pattern `*` and only simple ignore
        globs, as by default, it is one comprehension of C calls, no call per name.
        """
        ign = self._ignore
        if self._pattern.all and ign.simple:
            pre, suf, exact = ign.prefixes, ign.suffixes, ign.exact
            out = [n.startswith(pre) or n.endswith(suf) or n in exact for n in names]
        else:
            out = [not self(n) for n in names]
        if not any(out):
            return None
        return [i for i, o in enumerate(out) if not o]

    def __repr__(self) -> str:
        return f"NameMatcher(patterns={self.patterns!r}, ignore={self.ignore!r})"


class _Globs:
    """Whether a name matches any of some globs.

    A rescan asks this of every new name, so the usual globs skip the regex engine: `*`, an
    ASCII literal, `*literal` (a suffix: "*.tmp") and `literal*` (a prefix: ".*") are answered
    by set membership and `bytes.startswith`/`endswith` on the raw name. That is exact: an
    ASCII literal is the same bytes in the name as characters in its decoded form. The rest
    go to one regex `(?:glob|…)`, in bytes form for an ASCII name (see the module docstring).
    """

    __slots__ = ("all", "exact", "prefixes", "simple", "suffixes", "_bytes_rx", "_text_rx")

    def __init__(self, globs: tuple[str, ...]) -> None:
        self.all = "*" in globs
        exact: set[bytes] = set()
        prefixes: list[bytes] = []
        suffixes: list[bytes] = []
        rest: list[str] = []
        for glob in globs:
            if not glob.isascii():
                rest.append(glob)
            elif not _SPECIAL.search(glob):
                exact.add(glob.encode("ascii"))
            elif glob.startswith("*") and not _SPECIAL.search(glob, 1):
                suffixes.append(glob[1:].encode("ascii"))
            elif glob.endswith("*") and not _SPECIAL.search(glob, 0, len(glob) - 1):
                prefixes.append(glob[:-1].encode("ascii"))
            else:
                rest.append(glob)
        self.exact = frozenset(exact)
        self.prefixes, self.suffixes = tuple(prefixes), tuple(suffixes)
        self.simple = not rest  # answered without a regex
        self._text_rx = self._bytes_rx = None
        if rest:
            text = "|".join(fnmatch.translate(g) for g in rest)
            raw = "|".join(_latin1_translate(g) for g in rest)
            self._text_rx = re.compile(f"(?:{text})")
            self._bytes_rx = re.compile(f"(?:{raw})".encode("latin-1"))

    def __call__(self, name: bytes) -> bool:
        if (
            self.all
            or name in self.exact
            or name.startswith(self.prefixes)
            or name.endswith(self.suffixes)
        ):
            return True
        if self._bytes_rx is None or self._text_rx is None:
            return False
        if name.isascii():
            return self._bytes_rx.match(name) is not None
        return self._text_rx.match(os.fsdecode(name)) is not None


_SPECIAL = re.compile(r"[*?\[]")


def _latin1_translate(glob: str) -> str:
    # The stdlib's own trick for bytes globs: translate the encoded glob read as Latin-1.
    return fnmatch.translate(os.fsencode(glob).decode("latin-1"))
