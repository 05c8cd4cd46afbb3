"""Memos for one pass over many rows or schedules: what they share is computed once. Each
lives as long as its pass (a local), so none needs a bound."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["PerObject", "once_each"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def once_each(fn: Callable[[K], V]) -> Callable[[K], V]:
    """`fn` for one batch, each distinct argument computed once."""
    seen: dict[K, V] = {}

    def call(arg: K) -> V:
        try:
            return seen[arg]
        except KeyError:
            value = seen[arg] = fn(arg)
            return value

    return call


class PerObject(Generic[V]):
    """What is derived from an object (a trigger, a rule) and a few values, once per pass.

    Keyed by the object's id, which costs nothing to hash where its own hash would walk its
    fields; each entry keeps the object, so that the id names no other object while the pass
    lasts. A computation that raises stores nothing."""

    def __init__(self) -> None:
        self._seen: dict[tuple[Hashable, ...], tuple[object, V]] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def get(self, obj: object, *extra: Hashable, compute: Callable[[], V]) -> V:
        key = (id(obj), *extra)
        hit = self._seen.get(key)
        if hit is None:
            hit = self._seen[key] = (obj, compute())
        return hit[1]
