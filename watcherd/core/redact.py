"""Masking secrets (SPEC §8) before text reaches logs, the API, the page or an error message.

Secrets are the daemon `token`, datastore `connection_string` / `account_key` / `sas_token`,
every http `headers` value, every command `env` value, and the userinfo and query string of
every URL. Each shows as `***`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "MASK",
    "MIN_SEARCH_LEN",
    "connection_string_secrets",
    "make_redactor",
    "redact",
    "redact_obj",
    "redact_url",
    "url_secrets",
]

MASK = "***"

# Free text is searched only for secrets at least this long: a header value like "1" would
# otherwise mask every digit 1 in a log line. Shorter values are still masked wherever their
# key is known (API, page, export), since those never print the value at all.
MIN_SEARCH_LEN = 4


def make_redactor(secrets: Iterable[str]) -> Callable[[str], str]:
    """A function masking each secret (≥ MIN_SEARCH_LEN chars) as `***`, compiled once.

    Longer secrets are tried first, so a secret containing another is masked whole.
    """
    ordered = sorted({s for s in secrets if len(s) >= MIN_SEARCH_LEN}, key=len, reverse=True)
    if not ordered:
        return _identity
    pattern = re.compile("|".join(re.escape(s) for s in ordered))
    return lambda text: pattern.sub(MASK, text)


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each secret in `text` with `***` (see `make_redactor`)."""
    return make_redactor(secrets)(text) if text else text


def _identity(text: str) -> str:
    return text


def redact_url(url: str) -> str:
    """Mask a URL's userinfo and query string: `https://u:p@h/x?sig=1` → `https://***@h/x?***`.

    Text that does not parse as a URL is returned unchanged.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rpartition("@")[2]
    query = MASK if parts.query else ""
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def url_secrets(url: str) -> list[str]:
    """The secret parts of a URL: its userinfo (and password alone) and its query string."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found: list[str] = []
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        found.append(userinfo)
        if ":" in userinfo:
            found.append(userinfo.partition(":")[2])
    if parts.query:
        found.append(parts.query)
    return [s for s in found if s]


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
