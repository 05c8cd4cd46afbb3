"""Import structlog without the optional packages its import probes for.

`structlog` imports `structlog.dev`, which imports `rich` (and `better_exceptions`) when they
are installed, and `structlog.threadlocal`, which imports `greenlet`: ~0.1 s of every daemon
start and CLI call in an environment that has them (a test or notebook environment often
does). watcherd uses none of them: `logs.configure` formats exceptions to text before any
renderer sees them, so the console renderer's traceback formatter is never called. The
probes are hidden only for the duration of that one import; the packages stay importable.
"""

from __future__ import annotations

import sys

__all__ = ["import_structlog"]

_PROBED = ("rich", "better_exceptions", "greenlet")


def import_structlog() -> None:
    """Import structlog once, its optional probes answered "not installed"."""
    if "structlog" in sys.modules:
        return
    hidden = [name for name in _PROBED if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # import raises ImportError
    try:
        import structlog  # noqa: F401
    finally:
        for name in hidden:
            if sys.modules.get(name, ...) is None:
                del sys.modules[name]
