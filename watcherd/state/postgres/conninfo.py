"""The database URL is a secret (SPEC §8): parse it once, show it masked, and mask driver text.

psycopg quotes the whole URL, password included, in the message of an unparsable one, and an
OperationalError's `pgconn` repr lists every connection option: nothing from the driver
reaches a message before `DatabaseUrl.mask`, and the store boundary raises with `from None`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg.conninfo import conninfo_to_dict

from watcherd.core.errors import StateError
from watcherd.core.redact import MASK, make_redactor, url_secrets

__all__ = ["DatabaseUrl", "parse_url"]

_LOCAL_HOSTS = frozenset({"", "localhost", "127.0.0.1", "::1"})
_SCHEME = r"postgres(?:ql)?://"
# scheme://userinfo@ → scheme://***@ ; ?query → ?*** ; password=… in a conninfo string.
_USERINFO = re.compile(rf"({_SCHEME})[^@/\s\"']*@", re.IGNORECASE)
_QUERY = re.compile(rf"({_SCHEME}[^\s?\"']*)\?[^\s\"']*", re.IGNORECASE)
_KW_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s'\"]+)", re.IGNORECASE)
# The user name is userinfo too (SPEC §8): server messages quote it in these forms.
_KW_USER = re.compile(r"(\buser\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s'\"]+)", re.IGNORECASE)
_QUOTED_USER = re.compile(r'((?:for user|role) )"[^"]*"', re.IGNORECASE)
_NO_PASSWORD_HINT = (
    " (give the password in the URL, ${VAR}, PGPASSWORD or ~/.pgpass; libpq ignores a "
    ".pgpass that group or others can read)"
)


@dataclass(frozen=True, slots=True)
class DatabaseUrl:
    """A parsed libpq URL or conninfo string: the raw text (for the driver only), its masked
    display form, and a masker for any text that may quote it."""

    raw: str = field(repr=False)
    params: Mapping[str, str] = field(repr=False)
    display: str
    _secrets: tuple[str, ...] = field(repr=False, default=())

    def __str__(self) -> str:
        return self.display

    def mask(self, text: str) -> str:
        """`text` with the URL, its password and userinfo, and any conninfo password masked."""
        text = make_redactor(self._secrets)(text)
        text = _USERINFO.sub(lambda m: m.group(1) + MASK + "@", text)
        text = _QUERY.sub(lambda m: m.group(1) + "?" + MASK, text)
        text = _KW_PASSWORD.sub(lambda m: m.group(1) + MASK, text)
        text = _KW_USER.sub(lambda m: m.group(1) + MASK, text)
        return _QUOTED_USER.sub(lambda m: m.group(1) + f'"{MASK}"', text)

    def error(self, what: str, exc: BaseException) -> StateError:
        """A StateError for a driver error: masked, with a hint for a missing password."""
        msg = " ".join(str(exc).split()) or type(exc).__name__
        if "no password supplied" in msg:
            msg += _NO_PASSWORD_HINT
        return StateError(f"database {self.display}: {what}: {self.mask(msg)}")

    @property
    def is_local(self) -> bool:
        """Every host is this machine (loopback or a unix socket)."""
        hosts = (self.params.get("host") or os.environ.get("PGHOST", "")).split(",")
        addrs = (self.params.get("hostaddr") or "").split(",")
        return all(_local(h) for h in hosts) and all(_local(a) for a in addrs)

    @property
    def sslmode(self) -> str:
        return self.params.get("sslmode") or os.environ.get("PGSSLMODE") or "prefer"

    def weak_tls(self) -> bool:
        """A non-local server reached without `sslmode=verify-full` (SPEC §12: a warning)."""
        return not self.is_local and self.sslmode != "verify-full"


def _local(host: str) -> bool:
    host = host.strip()
    return host in _LOCAL_HOSTS or host.startswith(("/", "@"))


def parse_url(raw: str) -> DatabaseUrl:
    """Parse a libpq URL or conninfo string; a bad one raises StateError without quoting it."""
    secrets = [raw, *url_secrets(raw)]
    params: dict[str, Any] = {}
    failure: str | None = None
    try:
        params = conninfo_to_dict(raw)
    except psycopg.Error:
        failure = "cannot be parsed (a libpq URL postgresql://user@host:port/dbname or conninfo)"
    if failure is not None:  # outside the except: no __context__ quoting the URL
        raise StateError(f"database URL {_fallback_display(raw)} {failure}")
    password = str(params.get("password") or "")
    if password:
        secrets += [password, quote(password, safe=""), quote(password)]
    return DatabaseUrl(
        raw=raw,
        params={k: str(v) for k, v in params.items() if v is not None},
        display=_display(params),
        _secrets=tuple(s for s in secrets if s),
    )


def _display(params: Mapping[str, Any]) -> str:
    """postgresql://***@host:port/dbname: userinfo masked whenever there is any."""
    auth = MASK + "@" if params.get("user") or params.get("password") else ""
    hosts = str(params.get("host") or "").split(",")
    ports = str(params.get("port") or "").split(",")
    netloc = []
    for i, h in enumerate(hosts):
        h = quote(h, safe="") if h.startswith("/") else (f"[{h}]" if ":" in h else h)
        p = ports[i] if i < len(ports) else (ports[0] if len(ports) == 1 else "")
        netloc.append(f"{h}:{p}" if h and p else h)
    db = quote(str(params.get("dbname") or ""), safe="")
    return f"postgresql://{auth}{','.join(netloc)}/{db}"


def _fallback_display(raw: str) -> str:
    return "postgresql://***" if "://" in raw else "(conninfo)"
