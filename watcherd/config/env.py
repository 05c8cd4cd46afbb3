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

from watcherd.config.schema import EnvStr, key_join

__all__ = ["EnvStr", "substitute"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SINGLE = re.compile(r"\$\{[^}]*\}")


class _BadReference(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def substitute(
    tree: Mapping[str, object], env: Mapping[str, str]
) -> tuple[dict[str, object], list[tuple[str, str]]]:
    """Substitute `${…}` in every string of `tree`; return the new tree and (key path, reason)
    for every reference that could not be resolved (those values are left as written)."""
    problems: list[tuple[str, str]] = []
    out = _walk(tree, "", env, problems)
    assert isinstance(out, dict)
    return out, problems


def _walk(
    value: object, path: str, env: Mapping[str, str], problems: list[tuple[str, str]]
) -> object:
    if isinstance(value, str):
        try:
            return _expand(value, env)
        except _BadReference as exc:
            problems.append((path, exc.reason))
            return value
    if isinstance(value, Mapping):
        return {k: _walk(v, key_join(path, k), env, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, key_join(path, i), env, problems) for i, v in enumerate(value)]
    return value


def _expand(text: str, env: Mapping[str, str]) -> str:
    """Substitute one string; raise `_BadReference` naming the first bad or unset reference."""
    if "$" not in text:
        return text
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
                raise _BadReference(f"unterminated variable reference {text[start:]!r}")
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
        raise _BadReference(f"invalid variable reference '${{{body}}}'")
    value = env.get(name)
    if sep and not value:  # as in the shell: ":-" also replaces an empty value
        return default
    if value is not None:
        return value
    raise _BadReference(f"environment variable {name} is not set")
