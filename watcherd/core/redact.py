"""Masking secrets (SPEC §8) before text reaches logs, the API, the page or an error message.

Secrets are the daemon `token`, datastore `connection_string` / `account_key` / `sas_token`,
every http `headers` value, every command `env` value, and the userinfo and query string of
every URL. Each shows as `***`.

A secret is also masked in part (issue #11 item 5): a failing endpoint may echo only the token
of `Authorization: Bearer <token>`, or only the `sig=` value of a secret URL. So every secret
is searched for together with its parts (`secret_parts`): the credential after an auth scheme
word, the values of a query string or SAS token (raw and percent-decoded), a URL's userinfo
and password, and a Basic credential's decoded `user:password` and password.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping
from urllib.parse import SplitResult, unquote, unquote_plus, urlsplit, urlunsplit

__all__ = [
    "MASK",
    "BytesMask",
    "MIN_SEARCH_LEN",
    "connection_string_secrets",
    "lenient_credentials",
    "make_redactor",
    "query_values",
    "redact",
    "redact_obj",
    "redact_url",
    "redact_urls_in_text",
    "redactor_for",
    "secret_parts",
    "url_secrets",
]

MASK = "***"

# Free text is searched only for secrets at least this long: a header value like "1" would
# otherwise mask every digit 1 in a log line. Shorter values are still masked wherever their
# key is known (API, page, export), since those never print the value at all.
MIN_SEARCH_LEN = 4

_SCHEME_WORD = re.compile(r"[A-Za-z][A-Za-z0-9._+-]*")  # "Bearer", "SharedAccessSignature", …
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>\\`]+")


def make_redactor(secrets: Iterable[str]) -> Callable[[str], str]:
    """A function masking each secret and its parts (≥ MIN_SEARCH_LEN chars) as `***`.

    Compiled once. Longer texts are tried first, so a secret containing another is masked
    whole.
    """
    ordered = _searched(secrets)
    if not ordered:
        return _identity
    pattern = re.compile("|".join(re.escape(s) for s in ordered))
    return lambda text: pattern.sub(MASK, text)


@functools.lru_cache(maxsize=16)
def redactor_for(secrets: frozenset[str]) -> Callable[[str], str]:
    """`make_redactor` of a config's secrets, compiled once per distinct set (per run it
    would compile a pattern of every secret)."""
    return make_redactor(secrets)


def _searched(secrets: Iterable[str]) -> list[str]:
    """The secrets and their parts searched for in free text, longest first; each also as a
    JSON string spells it (a server echoing headers as JSON escapes `"`, `\\` and
    non-ASCII)."""
    found: set[str] = set()
    for secret in secrets:
        for part in secret_parts(secret):
            found.add(part)
            found.add(json.dumps(part)[1:-1])
            found.add(json.dumps(part, ensure_ascii=False)[1:-1])
    return sorted({s for s in found if len(s) >= MIN_SEARCH_LEN}, key=len, reverse=True)


class BytesMask:
    """`make_redactor` for output bytes (a command's log, which need not be UTF-8): each
    secret and its parts, encoded as a command's environment is (UTF-8, surrogateescape),
    become `***`. `longest`: the length of the longest one searched, in bytes."""

    def __init__(self, secrets: Iterable[str]) -> None:
        terms = [t.encode("utf-8", "surrogateescape") for t in _searched(secrets)]
        self.longest = max((len(t) for t in terms), default=0)
        self._pattern = re.compile(b"|".join(re.escape(t) for t in terms)) if terms else None

    def __call__(self, data: bytes, start: int = 0) -> bytes:
        """`data[start:]` masked, the whole of `data` searched: a secret that begins before
        `start` and ends after it shows as `***` too (none of it is left)."""
        if self._pattern is None or not data:
            return data[start:]
        if not start:
            return self._pattern.sub(_MASK_BYTES, data)
        out, pos = bytearray(), start
        for m in self._pattern.finditer(data):
            if m.end() <= start:
                continue
            out += data[pos : max(pos, m.start())] + _MASK_BYTES
            pos = m.end()
        out += data[pos:]
        return bytes(out)


_MASK_BYTES = MASK.encode()


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each secret in `text` with `***` (see `make_redactor`)."""
    return make_redactor(secrets)(text) if text else text


def _identity(text: str) -> str:
    return text


def secret_parts(secret: str) -> list[str]:
    """The secret and each part of it a server might echo alone (see the module docstring)."""
    parts = [secret]
    text = secret.strip()
    if not text:
        return parts
    if "://" in text:
        return parts + url_secrets(text)
    words = text.split()
    if len(words) == 2 and _SCHEME_WORD.fullmatch(words[0]):
        scheme, text = words
        parts.append(text)
        if scheme.lower() == "basic":
            parts += _basic_parts(text)
    if "=" in text and ("&" in text or text.startswith("?")):
        parts += query_values(text.removeprefix("?"))
    return parts


def _basic_parts(credential: str) -> list[str]:
    try:
        decoded = base64.b64decode(credential, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return []
    user, sep, password = decoded.partition(":")
    return [decoded, password] if sep and password else [decoded]


def query_values(query: str) -> list[str]:
    """Each value of a query string (or SAS token), as written and percent-decoded."""
    found: list[str] = []
    for pair in re.split(r"[&;]", query):
        _, sep, value = pair.partition("=")
        if sep and value:
            found += [value, unquote(value), unquote_plus(value)]
    return list(dict.fromkeys(v for v in found if v))


def redact_url(url: str) -> str:
    """Mask a URL's userinfo and query string: `https://u:p@h/x?sig=1` → `https://***@h/x?***`.

    Text that does not parse as a URL is masked as `lenient_credentials` reads it (a password
    holding an unencoded `#` or `/`, a stray `[`), else returned unchanged.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    lenient = lenient_credentials(url)
    if parts is None or _disagrees(parts, lenient):
        return _mask_lenient(url, lenient)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rpartition("@")[2]
    query = MASK if parts.query else ""
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


_HOST_PORT = re.compile(r"[^:/?#@]*:[0-9]*")


def lenient_credentials(url: str) -> tuple[int, int, int] | None:
    """Where a URL's credentials are as written, read as a careless writer meant them:
    (start of the userinfo, its end (= start when there is none), start of the query
    (`len(url)` when there is none)); None if not `scheme://…`.

    The userinfo ends at the last `@` before the first `/` (RFC 3986, where a `#` or `[` in
    it no longer ends it early, as in `urlsplit`). Without one there, a password holding an
    unencoded `/` runs to the last `@` before the query, unless what precedes that `/` is a
    host (`h`, `h:8080`, `[::1]:8080`: then the `@` is in a path, `https://h/users/@me`)."""
    i = url.find("://")
    if i <= 0:
        return None
    start = end = i + 3
    q0 = url.find("?", start)
    q0 = len(url) if q0 == -1 else q0
    slash = url.find("/", start, q0)
    head = slash if slash != -1 else q0
    at = url.rfind("@", start, head)
    if at != -1:
        end = at
    elif slash != -1:
        at = url.rfind("@", slash, q0)
        before = url[start:slash]
        is_host = ":" not in before or before.startswith("[") or _HOST_PORT.fullmatch(before)
        if at != -1 and not is_host:
            end = at
    q = url.find("?", end)
    return start, end, len(url) if q == -1 else q


def _disagrees(parts: SplitResult, lenient: tuple[int, int, int] | None) -> bool:
    """True when `urlsplit` misses credentials that `lenient_credentials` finds."""
    if lenient is None:
        return False
    start, end, _ = lenient
    return end > start and "@" not in parts.netloc


def _mask_lenient(url: str, lenient: tuple[int, int, int] | None) -> str:
    if lenient is None:
        return url
    start, end, q = lenient
    out = url[:start] + (MASK if end > start else "") + url[end:q]
    return out + ("?" + MASK if q < len(url) else "")


def redact_urls_in_text(text: str) -> str:
    """`redact_url` applied to every URL found in free text (an exception, an error body)."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


def url_secrets(url: str, *, values: bool = True) -> list[str]:
    """The secret parts of a URL: its userinfo (and password alone) and its query string,
    with (unless `values` is false) each query value alone."""
    found: list[str] = []
    lenient = lenient_credentials(url)
    if lenient is not None:  # as written, whatever urlsplit makes of it
        start, end, q = lenient
        if end > start:
            found.append(url[start:end])
            if ":" in found[-1]:
                found.append(found[-1].partition(":")[2])
        if q < len(url):
            found.append(url[q + 1 :])
            if values:
                found += query_values(url[q + 1 :])
    try:
        parts = urlsplit(url)
    except ValueError:
        return list(dict.fromkeys(s for s in found if s))
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        found.append(userinfo)
        if ":" in userinfo:
            found.append(userinfo.partition(":")[2])
        found += [unquote(s) for s in found]
    if parts.query:
        found.append(parts.query)
        if values:
            found += query_values(parts.query)
    return list(dict.fromkeys(s for s in found if s))


def connection_string_secrets(conn: str) -> list[str]:
    """An Azure connection string and its key / SAS values, which SDK errors may quote alone."""
    found = [conn]
    for item in conn.split(";"):
        key, sep, value = item.partition("=")
        if sep and value and key.strip().lower() in {"accountkey", "sharedaccesssignature"}:
            found.append(value)
    return [s for s in found if s]


def redact_obj(value: object, secrets: Iterable[str]) -> object:
    """Redact every string inside a JSON-like value (dicts, lists, tuples), keys included."""
    return _redact_obj(value, make_redactor(secrets))


def _redact_obj(value: object, mask: Callable[[str], str]) -> object:
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, Mapping):
        return {_redact_obj(k, mask): _redact_obj(v, mask) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_obj(v, mask) for v in value]
    return value
