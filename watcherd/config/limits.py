"""Size limits and whole-tree checks of config files and API bodies (issue #11, item 19).

Limits keep hostile or mistaken input from reaching Prometheus labels, argv, logs, ids or the
store. `scan` (and, for a config file, `env.substitute` in the same pass) checks every value of
a raw tree once: NUL bytes, text that is not valid Unicode, nesting depth, key length, 64 KiB
per string, 1000 items per array; the converters of `config.schema` check the tighter limits of
their own keys (names 256 characters, descriptions 4 KiB, paths 4 KiB, URLs 8 KiB).
"""

from __future__ import annotations

import json
import re

__all__ = [
    "DEPTH_MAX",
    "DESCRIPTION_MAX",
    "ENTRIES_MAX",
    "GLOBS_MAX",
    "NAME_MAX",
    "NUL",
    "PATH_MAX",
    "SURROGATE",
    "URL_MAX",
    "VALUE_MAX",
    "bad_unicode",
    "key_join",
    "key_problem",
    "scan",
    "string_problem",
    "tainted",
]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")

NAME_MAX = 256  # characters: names, ids, experiment names, parameter names, every table key
DESCRIPTION_MAX = 4096  # characters
PATH_MAX = 4096  # characters: root, cwd, state_dir, path_on_datastore
URL_MAX = 8192  # characters
VALUE_MAX = 65536  # UTF-8 bytes: any one string (parameter values, argv elements, headers)
ENTRIES_MAX = 1000  # entries of a parameters/env/headers table, items of any array
GLOBS_MAX = 100  # pattern / ignore globs
DEPTH_MAX = 32  # nesting levels of tables and arrays
NUL = "must not contain a NUL character"
SURROGATE = "not valid Unicode (holds a lone surrogate, e.g. bytes that are not UTF-8)"


def bad_unicode(text: str) -> bool:
    """True when `text` cannot be written as UTF-8 (a lone surrogate from JSON's \\ud800 or
    an environment variable's undecodable bytes): the store, logs and ids need UTF-8."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def string_problem(text: str) -> str | None:
    """Why a string value cannot be taken whatever its key (NUL, bad Unicode, too long)."""
    if "\x00" in text:
        return NUL
    if bad_unicode(text):
        return SURROGATE
    if (size := _too_long(text)) is not None:
        return f"longer than {VALUE_MAX} bytes ({size})"
    return None


def key_problem(key: str) -> tuple[str, bool] | None:
    """Why a table key cannot be taken, and whether its value is then skipped."""
    if "\x00" in key:
        return NUL, True
    if bad_unicode(key):
        return SURROGATE, True
    if len(key) > NAME_MAX:
        return f"name longer than {NAME_MAX} characters ({len(key)})", False
    return None


def key_join(path: str, key: str | int) -> str:
    """`schedules` + 2 → `schedules[2]`; `a` + `b` → `a.b`; odd keys are quoted: `a."x.y"`."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    part = key if _BARE_KEY.fullmatch(key) else json.dumps(key)
    return f"{path}.{part}" if path else part


def _too_long(text: str) -> int | None:
    """The UTF-8 length of `text` when it is over VALUE_MAX bytes, else None (cheap for the
    common short string: 4 bytes per character at most)."""
    if len(text) * 4 <= VALUE_MAX:
        return None
    size = len(text.encode("utf-8", "surrogatepass"))
    return size if size > VALUE_MAX else None


def scan(tree: object, root: str = "", *, top_lists: int = 0) -> list[tuple[str, str, bool]]:
    """Problems of a raw tree that no converter should see: (key path, reason, taints).

    Nesting deeper than DEPTH_MAX is reported once per outermost array on the way down (or at
    that depth) and not entered, so recursive code after this never overflows the stack; NUL
    bytes and strings over VALUE_MAX in values and keys; keys over NAME_MAX characters; arrays
    over ENTRIES_MAX items, except the arrays at depth `top_lists` or less ([[schedules]]).
    `taints` is True for a value problem: later complaints about that value (or below it) are
    noise. Iterative on purpose: a hostile document may be deeper than Python's stack.

    Key paths are built only for problems: each stack entry keeps its parent's entry and its
    own key, so a clean tree of 100k values costs one pass and no string joins (issue #14).
    """
    out: list[tuple[str, str, bool]] = []
    deep: set[str] = set()
    # (value, depth, parent entry, key, outermost array entry on the way down)
    Entry = tuple[object, int, object, object, object]
    stack: list[Entry] = [(tree, 0, None, root, None)]
    while stack:
        entry = stack.pop()
        value, depth, _, _, first_list = entry
        if isinstance(value, str):
            if (reason := string_problem(value)) is not None:
                out.append((_entry_path(entry), reason, True))
            continue
        if isinstance(value, dict):
            if depth >= DEPTH_MAX:
                _too_deep(entry, first_list, deep, out)
                continue
            children: list[Entry] = []
            for key, item in value.items():
                found = key_problem(key) if isinstance(key, str) else None
                if found is not None:
                    out.append((_entry_path(entry, key), found[0], found[1]))
                    if found[1]:
                        continue
                if isinstance(item, dict | list | str):
                    children.append((item, depth + 1, entry, key, first_list))
            stack.extend(reversed(children))
        elif isinstance(value, list):
            if depth >= DEPTH_MAX:
                _too_deep(entry, first_list, deep, out)
                continue
            if len(value) > ENTRIES_MAX and depth > top_lists:
                out.append((_entry_path(entry), f"more than {ENTRIES_MAX} entries ({len(value)})",
                            True))  # fmt: skip
                continue
            lists = first_list or entry
            stack.extend(
                (item, depth + 1, entry, i, lists)
                for i, item in reversed(list(enumerate(value)))
                if isinstance(item, dict | list | str)
            )
    return out


def _entry_path(entry: tuple[object, ...], key: object = None) -> str:
    """The key path of a scan entry (and of its `key`, when given)."""
    parts: list[object] = [] if key is None else [key]
    node: tuple[object, ...] | None = entry
    while node is not None:
        parts.append(node[3])
        node = node[2]  # type: ignore[assignment]
    path = str(parts.pop())  # the root
    for part in reversed(parts):
        path = key_join(path, part)  # type: ignore[arg-type]
    return path


def _too_deep(
    entry: tuple[object, ...],
    first_list: object,
    deep: set[str],
    out: list[tuple[str, str, bool]],
) -> None:
    where = _entry_path(first_list if first_list is not None else entry)  # type: ignore[arg-type]
    if where not in deep:
        deep.add(where)
        out.append((where, f"nested too deeply (more than {DEPTH_MAX} levels)", True))


def tainted(key_path: str, paths: set[str]) -> bool:
    """True when `key_path` is one of `paths` or lies below one of them."""
    if not paths:
        return False
    if key_path in paths:
        return True
    return any(key_path.startswith((p + ".", p + "[")) for p in paths)
