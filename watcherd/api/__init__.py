"""The daemon's HTTP API and web page (SPEC §8), built on the `Services` protocol."""

from __future__ import annotations

from watcherd.api.app import make_app, serve

__all__ = ["make_app", "serve"]
