"""watcherd: schedules pipeline runs the way Azure ML's Schedule does, self-hosted."""

from __future__ import annotations

from watcherd.core.errors import (
    ConfigError,
    ConfigErrors,
    Conflict,
    NotFound,
    PermanentError,
    TransientError,
    ValidationError,
    WatcherdError,
)
from watcherd.core.models import RunStatus, Source, Status

__all__ = [
    "ConfigError",
    "ConfigErrors",
    "Conflict",
    "NotFound",
    "PermanentError",
    "RunStatus",
    "Source",
    "Status",
    "TransientError",
    "ValidationError",
    "WatcherdError",
    "__version__",
]

__version__ = "0.1.0"
