"""Placeholders in a target's URL, each value encoded for the part it lands in (issue #11 item 4).

`core.placeholders.expand` puts values in verbatim, which is right for an argv element and
wrong for a URL: a file named `x&admin=1&sig=forged#.hook` would rewrite the query, and a
parameter in the host (`http://{region}.hooks…`) could send the request, with its
`Authorization` header, anywhere. Here the template's structure is fixed first (its
placeholders replaced by inert tokens and the result split into scheme, authority, path,
query and fragment); then each value is put into its part:

- path, query, fragment: percent-encoded with nothing left "safe" (`/ ? # & = +` included), so
  a value stays inside its own segment or query value; a value that would make a `.` or `..`
  path segment is refused (clients and servers collapse those);
- host: only one DNS label (letters, digits, inner hyphens), so a value can fill in a name
  the template frames but never add a dot, a port, credentials or a path;
- scheme, port and userinfo take no placeholder at all.

A refusal is a `UrlError` naming the placeholder (never its value) and the part.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from watcherd.core.placeholders import expand, references

__all__ = ["UrlError", "encode_path", "expand_url"]

_EMPTY: Mapping[str, str] = {}
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


class UrlError(ValueError):
    """A placeholder whose value cannot go where the URL template puts it."""

    def __init__(self, ref: str, part: str, rule: str) -> None:
        super().__init__(f"the value of {{{ref}}} cannot go in the URL's {part}: {rule}")
        self.ref, self.part = ref, part


def encode_path(path: str) -> str:
    """Percent-encode each `/`-separated segment of a path, keeping the slashes."""
    return "/".join(quote(seg, safe="~", errors="surrogateescape") for seg in path.split("/"))


def expand_url(template: str, values: Mapping[str, str], urls: Mapping[str, str] = _EMPTY) -> str:
    """The URL `template` with `{NAME}` / `{NAME.url}` replaced, each value encoded for its part.

    Raises:
        KeyError: a placeholder has no value (the key is "NAME" or "NAME.url").
        UrlError: a value cannot go where the placeholder stands (see the module docstring).
    """
    refs = list(dict.fromkeys(references(template)))
    if not refs:
        return expand(template, _EMPTY)
    actual: dict[str, str] = {}
    for ref in refs:
        name, dot, _ = ref.partition(".")
        table = urls if dot else values
        if name not in table:
            raise KeyError(ref)
        actual[ref] = table[name]
    tag = secrets.token_hex(6)
    token = {ref: f"wdph{tag}n{i}x" for i, ref in enumerate(refs)}  # inert in every URL part
    plain = {r: t for r, t in token.items() if "." not in r}
    dotted = {r.partition(".")[0]: t for r, t in token.items() if "." in r}
    try:
        skeleton = urlsplit(expand(template, plain, dotted))
    except ValueError:  # e.g. a placeholder inside an IPv6 literal
        raise UrlError(refs[0], "host", "the URL does not parse with a placeholder there") from None

    def fill(text: str) -> str:
        for ref, tok in token.items():
            text = text.replace(tok, quote(actual[ref], safe="", errors="surrogateescape"))
        return text

    if any(tok in skeleton.scheme for tok in token.values()):
        raise UrlError(_first(token, skeleton.scheme), "scheme", "a placeholder cannot set it")
    netloc = _fill_netloc(skeleton.netloc, token, actual)
    path = fill(skeleton.path)
    _check_dot_segments(skeleton.path, path, token)
    query, fragment = fill(skeleton.query), fill(skeleton.fragment)
    return urlunsplit((skeleton.scheme, netloc, path, query, fragment))


def _first(token: Mapping[str, str], text: str) -> str:
    return next(ref for ref, tok in token.items() if tok in text)


def _fill_netloc(netloc: str, token: Mapping[str, str], actual: Mapping[str, str]) -> str:
    userinfo, at, hostport = netloc.rpartition("@")
    if any(tok in userinfo for tok in token.values()):
        raise UrlError(_first(token, userinfo), "credentials", "a placeholder cannot set them")
    if hostport.startswith("["):  # an IPv6 literal: no placeholder inside or after it
        host, port = hostport, ""
    else:
        host, _, port = hostport.partition(":")
    if any(tok in port for tok in token.values()):
        raise UrlError(_first(token, port), "port", "a placeholder cannot set it")
    for ref, tok in token.items():
        if tok not in host:
            continue
        if hostport.startswith("[") or not _LABEL.fullmatch(actual[ref]):
            raise UrlError(ref, "host", "a placeholder there takes one DNS label (A-Z a-z 0-9 -)")
        host = host.replace(tok, actual[ref])
    return f"{userinfo}{at}{host}{':' if port or hostport.endswith(':') else ''}{port}"


def _check_dot_segments(skeleton: str, path: str, token: Mapping[str, str]) -> None:
    """Refuse a value that makes a `.` or `..` segment (which would move up the path)."""
    for before, after in zip(skeleton.split("/"), path.split("/"), strict=True):
        if unquote(after) in (".", "..") and any(tok in before for tok in token.values()):
            raise UrlError(_first(token, before), "path", "'.' and '..' are not a path segment")
