"""`dumps`: `json.dumps(obj)`'s exact text, without its per-call set-up.

`json.dumps` builds a new encoder object on every call (~2.5 µs); the store writes two JSON
columns per run, so a catch-up of 1,500 runs paid ~8 ms for that alone. One C encoder, made
once with `json.dumps`'s defaults, writes the same text. No cycle check (the values are the
config's and the engine's own, never cyclic); without the C accelerator, `json.dumps` itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from watcherd.core.memo import PerObject

__all__ = ["dumps", "mapping_json", "mapping_json_once"]


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


def mapping_json(m: Mapping[str, Any]) -> str:
    """`dumps` of a mapping of any kind (the C encoder takes only a dict)."""
    if not m:
        return "{}"  # most runs' parameters: each schedule's runs have their own empty dict
    return dumps(m if type(m) is dict else dict(m))


def mapping_json_once() -> Callable[[Mapping[str, Any]], str]:
    """`mapping_json` for one batch of rows, each mapping object once (`PerObject`): a slot's
    runs share their trigger, a schedule's runs their parameters (`core.runs.slot_runs`)."""
    seen: PerObject[str] = PerObject()
    return lambda m: seen.get(m, compute=lambda: mapping_json(m))
