"""Exceptions raised by watcherd.

WatcherdError
 ├── ConfigError          one bad config value; carries key_path and reason
 ├── ConfigErrors         every ConfigError found in one load (exit 2)
 ├── ValidationError      a value rejected by Azure ML's rules (recurrence, cron, schedule)
 ├── NotFound             unknown schedule, pipeline, run or datastore id (also LookupError)
 ├── Conflict             refused by the current state (409): says why
 ├── InvalidTransition    refused run state change; says from → to (also a Conflict)
 ├── StateError           the state store cannot be opened or written
 │    ├── AlreadyRunning  another daemon holds the state directory's lock
 │    ├── IncompatibleStore  the store's schema is too new for this watcherd: exit 1
 │    ├── LeaseLost       a fenced write refused: another replica owns the schedule now
 │    └── ClaimLost       a run status write refused: the run was re-queued elsewhere
 ├── TransientError       retrying may help: timeout, 429, 503, reset
 │    ├── PollUnavailable
 │    └── DispatchUnavailable
 └── PermanentError       retrying won't help: 4xx, missing container, bad argv
      ├── PollRejected
      └── DispatchRejected
"""

from __future__ import annotations

__all__ = [
    "AlreadyRunning",
    "ClaimLost",
    "ConfigError",
    "ConfigErrors",
    "Conflict",
    "DispatchRejected",
    "DispatchUnavailable",
    "IncompatibleStore",
    "InvalidTransition",
    "LeaseLost",
    "NotFound",
    "PermanentError",
    "PollRejected",
    "PollUnavailable",
    "StateError",
    "TransientError",
    "ValidationError",
    "WatcherdError",
]


class WatcherdError(Exception):
    """Base of every error watcherd raises on purpose."""


class ConfigError(WatcherdError):
    """One problem in a config file or request body, at `key_path`."""

    def __init__(self, key_path: str, reason: str) -> None:
        super().__init__(f"{key_path}: {reason}" if key_path else reason)
        self.key_path = key_path
        self.reason = reason


class ConfigErrors(WatcherdError):
    """All the problems found in one load, so users fix them in one pass."""

    def __init__(self, errors: list[ConfigError], source: str = "config") -> None:
        self.errors = list(errors)
        n = len(self.errors)
        lines = [f"{source}: {n} problem{'s' if n != 1 else ''}"]
        lines += [f"  {e}" for e in self.errors]
        super().__init__("\n".join(lines))


class ValidationError(WatcherdError, ValueError):
    """A value refused by Azure ML's validation rules; `message` is Azure ML's text verbatim.

    `key` names the offending key relative to the object being validated (e.g. "frequency"),
    so callers can build a full key path.
    """

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.key = key


class NotFound(WatcherdError, LookupError):
    """An unknown id or name."""

    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"{kind} {ident!r} not found")
        self.kind = kind
        self.ident = ident


class Conflict(WatcherdError):
    """A request the current state refuses (HTTP 409); `code` is a stable snake_case word."""

    def __init__(self, message: str, code: str = "conflict") -> None:
        super().__init__(message)
        self.code = code


class InvalidTransition(Conflict):
    """A refused run status change."""

    def __init__(self, run_id: str, from_status: str, to_status: str) -> None:
        super().__init__(
            f"run {run_id}: cannot go from {from_status} to {to_status}", "invalid_transition"
        )
        self.run_id = run_id
        self.from_status = from_status
        self.to_status = to_status


class StateError(WatcherdError):
    """The state database cannot be opened, migrated or written."""


class AlreadyRunning(StateError):
    """Another daemon holds the lock on this state directory."""


class IncompatibleStore(StateError):
    """The store was migrated by a newer watcherd beyond what this one works with: retrying
    cannot help, the daemon exits naming both versions (SPEC §12)."""


class LeaseLost(StateError):
    """A fenced write was refused: this replica no longer holds the schedule's lease."""

    def __init__(self, schedule_id: str) -> None:
        super().__init__(f"lease of schedule {schedule_id} lost")
        self.schedule_id = schedule_id


class ClaimLost(StateError):
    """A run status write was refused: the run is no longer held by this replica and attempt
    (it was re-queued after this replica was declared dead)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"claim of run {run_id} lost")
        self.run_id = run_id


class TransientError(WatcherdError):
    """A failure that retrying may fix; `retry_after` (seconds) is a server's hint."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PollUnavailable(TransientError):
    """A datastore could not be reached or listed this time."""


class DispatchUnavailable(TransientError):
    """A run target could not be reached or answered 408/429/5xx (`http_status`), or a
    command step exited with a code of `retry_exit_codes` (`exit_codes` of its steps and the
    attempt's masked `log`): kept in the run's attempts[] and log."""

    def __init__(
        self,
        message: str,
        retry_after: float | None = None,
        http_status: int | None = None,
        *,
        exit_codes: tuple[int, ...] = (),
        log: bytes = b"",
    ) -> None:
        super().__init__(message, retry_after)
        self.http_status = http_status
        self.exit_codes = exit_codes
        self.log = log


class PermanentError(WatcherdError):
    """A failure that retrying will not fix."""


class PollRejected(PermanentError):
    """A datastore refused the listing (missing container, no permission)."""


class DispatchRejected(PermanentError):
    """A run target refused the run (4xx, bad argv, missing program)."""
