"""A stored schedule's spec kept as the JSON text the store holds, decoded on first use.

A start with 10,000 schedules whose config did not change reads every row but needs none of
their specs (the reconcile knows they are what the file says, `engine.reconcile`): decoding
them all cost 0.13-0.16 s. They are decoded when a page or the API shows one, or when the
config changed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["StoredSpec", "spec_text"]


class StoredSpec(Mapping[str, Any]):
    """A read-only JSON object from its text (`spec_text`'s form: keys sorted)."""

    __slots__ = ("_value", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._value: dict[str, Any] | None = None

    def _decoded(self) -> dict[str, Any]:
        value = self._value
        if value is None:
            value = json.loads(self.text)
            if not isinstance(value, dict):
                raise ValueError("a stored spec is not a JSON object")
            self._value = value
        return value

    def __getitem__(self, key: str) -> Any:
        return self._decoded()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._decoded())

    def __len__(self) -> int:
        return len(self._decoded())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StoredSpec):
            return self.text == other.text or self._decoded() == other._decoded()
        if isinstance(other, Mapping):
            return self._decoded() == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # a mapping, like dict

    def __repr__(self) -> str:
        return f"StoredSpec({self.text!r})"


def spec_text(spec: Mapping[str, Any]) -> str:
    """The text a store keeps for a spec: JSON, keys sorted (a StoredSpec's own text)."""
    if isinstance(spec, StoredSpec):
        return spec.text
    return _ENCODE(spec)


_ENCODE = json.JSONEncoder(sort_keys=True).encode  # json.dumps' output, one encoder for all
