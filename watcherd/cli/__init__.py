"""The `watcherd` command line."""

from watcherd.cli.main import main

__all__ = ["main"]
