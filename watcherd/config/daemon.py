"""The `[daemon]` table (SPEC §2, §12): where state lives, the API, limits, and replicas.

`database` is a secret everywhere: no reason in here ever quotes it, and `database_secrets`
lists the parts of it that must be masked wherever text is shown.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from watcherd.config.limits import NAME_MAX
from watcherd.config.schema import (
    At,
    Converter,
    Field,
    Invalid,
    as_bool,
    as_choice,
    as_duration,
    as_int,
    as_path,
    as_secret,
    as_str,
    as_str_list,
    read_table,
)
from watcherd.core.models import DaemonSettings
from watcherd.core.redact import url_secrets

__all__ = ["as_database", "database_secrets", "parse_daemon"]

_LEASE_MIN, _LEASE_MAX = timedelta(seconds=3), timedelta(minutes=5)
# libpq's conninfo: `key = value` pairs, a value bare or single-quoted with \' and \\ escapes.
_CONNINFO = re.compile(r"\s*(?:[A-Za-z_]+\s*=\s*(?:'(?:[^'\\]|\\.)*'|[^\s']+)\s*)+", re.ASCII)
_CONNINFO_PASSWORD = re.compile(r"password\s*=\s*('(?:[^'\\]|\\.)*'|[^\s']+)", re.ASCII)
_REPLICA_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*", re.ASCII)


def _as_api(base_dir: Path) -> Converter:
    def convert(value: object, at: At) -> str:
        text = as_str(value, at)
        if text == "":
            return text
        if text.startswith("unix:"):
            if not text[5:]:
                raise Invalid('unix: needs a socket path, e.g. "unix:/run/watcherd/api.sock"')
            return "unix:" + str(base_dir / text[5:])
        host, _, port = text.rpartition(":")
        ipv6 = host.startswith("[") and host.endswith("]")
        if host and port.isdigit() and int(port) <= 65535 and (ipv6 or ":" not in host):
            return text
        raise Invalid(f'invalid address {text!r}: expected "host:port", "unix:/path" or ""')

    return convert


def as_database(value: object, at: At) -> str:
    """A libpq URL (`postgresql://…`) or conninfo (`host=… dbname=…`); "" means SQLite.
    Never quoted back: it may hold a password."""
    text = as_secret(value, at)
    if text == "":
        return text
    if text.startswith(("postgresql://", "postgres://")):
        try:
            urlsplit(text).port  # noqa: B018  # parses the port; ValueError when it is bad
        except ValueError:
            raise Invalid("not a valid PostgreSQL URL (its value is not shown)") from None
        return text
    if "://" not in text and _CONNINFO.fullmatch(text):
        return text
    raise Invalid(
        "expected a libpq URL (postgresql://user@host:5432/db) or a conninfo string "
        "(host=… dbname=…); its value is not shown"
    )


def _as_replica_id(value: object, at: At) -> str:
    text = as_str(value, at)
    if text and (len(text) > NAME_MAX or not _REPLICA_ID.fullmatch(text)):
        raise Invalid(
            f"invalid replica_id {text[:80]!r}: up to {NAME_MAX} characters from "
            "A-Z a-z 0-9 . _ : - (starting with a letter or digit)"
        )
    return text


def _as_lease_ttl(value: object, at: At) -> timedelta:
    ttl: timedelta = as_duration()(value, at)
    if not _LEASE_MIN <= ttl <= _LEASE_MAX:
        raise Invalid(f"lease_ttl {value!r} must be between 3s and 5m")
    return ttl


def parse_daemon(raw: object, at: At, base_dir: Path, env: Mapping[str, str]) -> DaemonSettings:
    """The `[daemon]` table; `state_dir` defaults to $STATE_DIRECTORY, else `.watcherd`."""
    fields = {
        "state_dir": Field(as_path(base_dir)),
        "api": Field(_as_api(base_dir)),
        "api_hosts": Field(as_str_list()),
        "token": Field(as_secret),
        "max_concurrent_runs": Field(as_int(1, 100_000)),
        "max_pending": Field(as_int(1, 100_000_000)),
        "shutdown_timeout": Field(as_duration()),
        "log_format": Field(as_choice("auto", "json", "console")),
        "retention": Field(as_duration(positive=True)),
        "readyz_strict": Field(as_bool),
        "database": Field(as_database),
        "replica_id": Field(_as_replica_id),
        "lease_ttl": Field(_as_lease_ttl),
    }
    values = read_table({} if raw is None else raw, at, fields) or {}
    if values.get("database") and not values.get("token"):
        (at / "token").error("required with database: every replica must use the same API token")
    if "state_dir" not in values:
        # systemd passes a colon-separated list when StateDirectory= names several.
        systemd = env.get("STATE_DIRECTORY", "").split(":")[0]
        values["state_dir"] = base_dir / (systemd or ".watcherd")
    return DaemonSettings(**values)


def database_secrets(text: str) -> list[str]:
    """The parts of a `database` value to mask: the whole value, its URL userinfo, password
    and query, or a conninfo's password."""
    found = [text]
    if "://" in text:
        found += url_secrets(text)
    else:
        for m in _CONNINFO_PASSWORD.finditer(text):
            value = m.group(1)
            found += [value, value.strip("'")]
    return [s for s in found if s]
