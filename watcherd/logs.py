"""structlog set-up: JSON lines off a TTY, console on one; secrets masked in every event.

Exceptions are formatted to text before the redaction step in both formats: the console
renderer would otherwise format `exc_info` itself, after redaction, and print a secret quoted
in an exception message (issue #11 item 13).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any, TextIO

import structlog

from watcherd.core.redact import MASK, make_redactor, redact_urls_in_text

__all__ = ["Redaction", "add_secrets", "configure", "redaction_processor"]

_SECRET_KEYS = frozenset(
    {
        "token",
        "sas",
        "sas_token",
        "connection_string",
        "authorization",
        "account_key",
        "password",
        "headers",
    }
)


class Redaction:
    """The processor masking known secret keys, known secret values, and URL credentials.

    The values are the config's at start; `add` extends them with a reloaded config's (kept
    as well as the old ones: a run started before the reload may still echo one)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = frozenset(secrets)
        self._scrub = make_redactor(self.secrets)

    def add(self, secrets: Iterable[str]) -> None:
        more = self.secrets.union(secrets)
        if more != self.secrets:
            self.secrets, self._scrub = more, make_redactor(more)

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            value = self._scrub(value)
            if "://" in value and ("@" in value or "?" in value):
                value = redact_urls_in_text(value)
            return value
        if isinstance(value, dict):
            return {
                k: (MASK if str(k).lower() in _SECRET_KEYS else self._clean(v))
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self._clean(v) for v in value]
        return value

    def __call__(
        self, _logger: Any, _name: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for k in list(event):
            if k.lower() in _SECRET_KEYS:
                event[k] = MASK
            else:
                event[k] = self._clean(event[k])
        return event


def redaction_processor(secrets: Iterable[str]) -> Callable[..., MutableMapping[str, Any]]:
    """A processor masking known secret keys, known secret values, and URL credentials."""
    return Redaction(secrets)


_active: Redaction | None = None  # the processor `configure` installed


def add_secrets(secrets: Iterable[str]) -> None:
    """Mask these values too from now on (a reloaded config's secrets), in the processor
    `configure` installed."""
    if _active is not None:
        _active.add(secrets)


def configure(
    fmt: str = "auto",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
    level: int = logging.INFO,
) -> None:
    """Configure structlog for the process: `auto` is console on a TTY, else JSON lines."""
    out = stream or sys.stdout
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    global _active
    _active = Redaction(secrets)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,  # to text, so that redaction sees it
            _active,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
