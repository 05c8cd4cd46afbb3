"""`dumps`: `json.dumps(obj)`'s exact text, without its per-call set-up.

`json.dumps` builds a new encoder object on every call (~2.5 µs); the store writes two JSON
columns per run, so a catch-up of 1,500 runs paid ~8 ms for that alone. One C encoder, made
once with `json.dumps`'s defaults, writes the same text. No cycle check (the values are the
config's and the engine's own, never cyclic); without the C accelerator, `json.dumps` itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

__all__ = ["dumps"]


def _default(o: object) -> Any:
    raise TypeError(f"Object of type {o.__class__.__name__} is not JSON serializable")


def _make() -> Callable[[Any], str]:
    from json import encoder

    make = getattr(encoder, "c_make_encoder", None)  # private: not in typeshed
    escape: Callable[[str], str] | None = getattr(encoder, "c_encode_basestring_ascii", None)
    if make is None or escape is None:  # pragma: no cover (no C accelerator)
        return json.dumps
    enc = make(None, _default, escape, None, ": ", ", ", False, False, True)

    def dumps(obj: Any) -> str:
        """`json.dumps(obj)` (ensure_ascii, allow_nan, default separators)."""
        if isinstance(obj, str):
            return escape(obj)  # the C encoder wants a container at the top
        return "".join(enc(obj, 0))

    return dumps


dumps = _make()
