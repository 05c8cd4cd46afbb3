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

__all__ = ["configure", "redaction_processor"]

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


def redaction_processor(secrets: Iterable[str]) -> Callable[..., MutableMapping[str, Any]]:
    """A processor masking known secret keys, known secret values, and URL credentials."""
    scrub = make_redactor(secrets)

    def _clean(value: Any) -> Any:
        if isinstance(value, str):
            value = scrub(value)
            if "://" in value and ("@" in value or "?" in value):
                value = redact_urls_in_text(value)
            return value
        if isinstance(value, dict):
            return {
                k: (MASK if str(k).lower() in _SECRET_KEYS else _clean(v)) for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [_clean(v) for v in value]
        return value

    def processor(
        _logger: Any, _name: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for k in list(event):
            if k.lower() in _SECRET_KEYS:
                event[k] = MASK
            else:
                event[k] = _clean(event[k])
        return event

    return processor


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
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,  # to text, so that redaction sees it
            redaction_processor(secrets),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
