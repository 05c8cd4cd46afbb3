"""The `watcherd` command line."""

from watcherd.cli.lean import import_structlog

import_structlog()  # before any module of the command line imports structlog: see there

from watcherd.cli.main import main  # noqa: E402

__all__ = ["main"]
