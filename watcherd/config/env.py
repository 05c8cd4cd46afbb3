"""`${VAR}` substitution in every string value of a raw config tree (SPEC §2).

`${VAR}` is replaced by the variable (unset: an error naming the key path and the variable),
`${VAR:-default}` by the variable or, when unset or empty (as in the shell), the default (which
cannot contain `}`), and
`$${` by a literal `${`. Any other `$` is literal. Table keys are never substituted.

A value that was exactly one `${…}` comes back as an `EnvStr`, so that numeric, boolean and
duration keys know they may convert it (`max_pending = "${MAX}"` → 10000).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from watcherd.config.limits import (
    DEPTH_MAX,
    ENTRIES_MAX,
    NAME_MAX,
    VALUE_MAX,
    key_join,
    key_problem,
    string_problem,
)
from watcherd.config.schema import EnvStr

__all__ = ["EnvStr", "substitute"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SINGLE = re.compile(r"\$\{[^}]*\}")


class _BadReference(Exception):
    """`reason` quotes the bad reference; `bare` does not (for a secret's value)."""

    def __init__(self, reason: str, bare: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.bare = bare or reason


# Keys whose values are secrets (SPEC §8; `loader.collect_secrets` collects them): a bad
# `${…}` in one is reported without quoting it, which would show the secret's other end.
_SECRET_KEYS = frozenset(
    {
        "token",
        "database",
        "connection_string",
        "queue_connection_string",
        "account_key",
        "sas_token",
        "url",
        "endpoint",
        "account_url",
        "queue_account_url",
    }
)
_SECRET_TABLES = frozenset({"headers", "env"})


def _secret_path(parts: list[str | int]) -> bool:
    return (bool(parts) and parts[-1] in _SECRET_KEYS) or (
        len(parts) >= 2 and parts[-2] in _SECRET_TABLES
    )


Found = list[tuple[str, str, bool]]
_PLAIN = frozenset({int, float, bool, type(None)})
_SHORT = VALUE_MAX // 4  # characters: no string this short can exceed VALUE_MAX bytes


def _plain(text: str) -> bool:
    return "$" not in text and "\x00" not in text and len(text) <= _SHORT


def substitute(
    tree: Mapping[str, object], env: Mapping[str, str], *, top_lists: int = 1
) -> tuple[dict[str, object], list[tuple[str, str]], Found]:
    """Substitute `${…}` in every string of `tree`, checking every value on the way.

    Returns the new tree; (key path, reason) for every reference that could not be resolved
    (those values are left as written); and the problems `schema.scan` would find — NUL bytes,
    values over VALUE_MAX, long keys, long arrays (beyond depth `top_lists`), nesting deeper
    than DEPTH_MAX (not entered) — as (key path, reason, taints). One pass over the tree, with
    key paths joined only for problems: a clean 10k-schedule file costs one walk (issue #14).
    """
    problems: list[tuple[str, str]] = []
    found: Found = []
    walker = _Walker(env, problems, found, top_lists)
    out = walker.walk(tree, [], 0, None)
    assert isinstance(out, dict)
    return out, problems, found


def _path(parts: list[str | int]) -> str:
    path = ""
    for part in parts:
        path = key_join(path, part)
    return path


class _Walker:
    def __init__(
        self,
        env: Mapping[str, str],
        problems: list[tuple[str, str]],
        found: Found,
        top_lists: int,
    ) -> None:
        self.env, self.problems, self.found, self.top_lists = env, problems, found, top_lists
        self.deep: set[str] = set()

    def walk(self, value: object, parts: list[str | int], depth: int, lists: int | None) -> object:
        """`parts` is the key path so far; `lists` the length of `parts` at the outermost
        array on the way down (where nesting too deep is reported)."""
        kind = type(value)
        if kind is str:
            return self._string(value, parts)  # type: ignore[arg-type]
        if kind is dict or (kind is not list and isinstance(value, Mapping)):
            if depth >= DEPTH_MAX:
                return self._too_deep(value, parts, lists)
            out: dict[str, object] = {}
            for k, v in value.items():  # type: ignore[attr-defined]
                if "\x00" in k or len(k) > NAME_MAX or not k.isascii():
                    parts.append(k)
                    self._bad_key(k, parts)
                    parts.pop()
                if type(v) in _PLAIN or (type(v) is str and _plain(v)):
                    out[k] = v  # the common leaf: nothing to substitute or check
                    continue
                parts.append(k)
                out[k] = self.walk(v, parts, depth + 1, lists)
                parts.pop()
            return out
        if kind is list:
            items_in: list[object] = value  # type: ignore[assignment]
            if depth >= DEPTH_MAX:
                return self._too_deep(value, parts, lists)
            if len(items_in) > ENTRIES_MAX and depth > self.top_lists:
                self.found.append((_path(parts), f"more than {ENTRIES_MAX} entries "
                                   f"({len(items_in)})", True))  # fmt: skip
                return value
            here = len(parts) if lists is None else lists
            items: list[object] = []
            for i, v in enumerate(items_in):
                if type(v) in _PLAIN or (type(v) is str and _plain(v)):
                    items.append(v)
                    continue
                parts.append(i)
                items.append(self.walk(v, parts, depth + 1, here))
                parts.pop()
            return items
        return value

    def _string(self, value: str, parts: list[str | int]) -> str:
        if "$" in value:
            try:
                result = _expand(value, self.env)
            except _BadReference as exc:
                why = exc.bare if _secret_path(parts) else exc.reason
                self.problems.append((_path(parts), why))
                return value
        else:
            result = value
        # Checked after substitution: a variable may bring a NUL or undecodable bytes.
        if (reason := string_problem(result)) is not None:
            self.found.append((_path(parts), reason, True))
            return value
        return result

    def _bad_key(self, key: str, parts: list[str | int]) -> None:
        found = key_problem(key)
        if found is not None:
            self.found.append((_path(parts), *found))

    def _too_deep(self, value: object, parts: list[str | int], lists: int | None) -> object:
        where = _path(parts[: len(parts) if lists is None else lists])
        if where not in self.deep:
            self.deep.add(where)
            self.found.append((where, f"nested too deeply (more than {DEPTH_MAX} levels)", True))
        return value


def _expand(text: str, env: Mapping[str, str]) -> str:
    """Substitute one string; raise `_BadReference` naming the first bad or unset reference."""
    out: list[str] = []
    pos = 0
    while (start := text.find("$", pos)) != -1:
        out.append(text[pos:start])
        if text.startswith("$${", start):
            out.append("${")
            pos = start + 3
        elif text.startswith("${", start):
            end = text.find("}", start)
            if end == -1:
                raise _BadReference(
                    f"unterminated variable reference {text[start:]!r}",
                    "unterminated variable reference (not shown: the value is a secret)",
                )
            out.append(_resolve(text[start + 2 : end], env))
            pos = end + 1
        else:
            out.append("$")
            pos = start + 1
    out.append(text[pos:])
    result = "".join(out)
    if _SINGLE.fullmatch(text):
        return EnvStr(result)
    return result


def _resolve(body: str, env: Mapping[str, str]) -> str:
    name, sep, default = body.partition(":-")
    if not _NAME.fullmatch(name):
        raise _BadReference(
            f"invalid variable reference '${{{body}}}'",
            "invalid variable reference (not shown: the value is a secret)",
        )
    value = env.get(name)
    if sep and not value:  # as in the shell: ":-" also replaces an empty value
        return default
    if value is not None:
        return value
    raise _BadReference(f"environment variable {name} is not set")
