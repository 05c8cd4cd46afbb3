"""`{NAME}` / `{NAME.url}` placeholders in argv elements and URLs (SPEC §2).

NAME is `[A-Za-z_][A-Za-z0-9_]*`. `{{` and `}}` are literal braces; any other brace text
(`{`, `}`, `{not a name}`, `{x.path}`) is literal too. A placeholder is replaced by its value
verbatim, whatever characters the value holds, so one argv element stays one element.

`names()` reports a `{NAME}` reference as `"NAME"` and a `{NAME.url}` reference as
`"NAME.url"`, so a checker can tell the two apart: `.url` is only defined for the file bound to
a datastore schedule's `data_path_parameter_name`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from functools import lru_cache

__all__ = ["expand", "expand_bytes", "names", "references"]

_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)(\.url)?\}")

_EMPTY: Mapping[str, str] = {}


def _tokens(template: str) -> Iterator[tuple[str, str | None, bool]]:
    """Split into (literal text, placeholder name or None, is_url) pieces."""
    pos = 0
    for m in _TOKEN.finditer(template):
        literal = template[pos : m.start()]
        pos = m.end()
        token = m.group(0)
        if token == "{{":
            yield literal + "{", None, False
        elif token == "}}":
            yield literal + "}", None, False
        else:
            yield literal, m.group(1), m.group(2) is not None
    yield template[pos:], None, False


def references(template: str) -> list[str]:
    """Every reference in order of appearance (`"NAME"` or `"NAME.url"`), repeats kept."""
    return list(_references(template))


@lru_cache(maxsize=8192)
def _references(template: str) -> tuple[str, ...]:
    # Cached: every schedule of a shared pipeline checks the same argv (issue #14).
    return tuple(name + (".url" if url else "") for _, name, url in _tokens(template) if name)


def names(template: str) -> set[str]:
    """The placeholders a template uses: `"NAME"` for `{NAME}`, `"NAME.url"` for `{NAME.url}`."""
    return set(references(template))


def expand(template: str, values: Mapping[str, str], urls: Mapping[str, str] = _EMPTY) -> str:
    """Replace `{NAME}` from `values` and `{NAME.url}` from `urls`; unescape `{{` and `}}`.

    Raises:
        KeyError: a placeholder has no value; the key is `"NAME"` or `"NAME.url"`.
    """
    out: list[str] = []
    for literal, name, url in _tokens(template):
        out.append(literal)
        if name is None:
            continue
        table = urls if url else values
        if name not in table:
            raise KeyError(name + (".url" if url else ""))
        out.append(table[name])
    return "".join(out)


def expand_bytes(
    template: str,
    values: Mapping[str, bytes | str],
    urls: Mapping[str, bytes | str] | None = None,
) -> bytes:
    """Like `expand`, producing bytes: file names are bytes and pass through unchanged.

    The template's own text and any `str` value are encoded with `os.fsencode`
    (UTF-8, surrogateescape), as the OS would encode them in argv.

    Raises:
        KeyError: a placeholder has no value; the key is `"NAME"` or `"NAME.url"`.
    """
    out: list[bytes] = []
    url_table: Mapping[str, bytes | str] = urls or {}
    for literal, name, url in _tokens(template):
        out.append(os.fsencode(literal))
        if name is None:
            continue
        table = url_table if url else values
        if name not in table:
            raise KeyError(name + (".url" if url else ""))
        value = table[name]
        out.append(value if isinstance(value, bytes) else os.fsencode(value))
    return b"".join(out)
