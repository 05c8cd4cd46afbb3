"""Helpers shared by the benches: SPEC §10's JSON line, timing and memory probes."""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Sequence

__all__ = ["best_of", "emit", "percentile", "rss_bytes"]


def emit(
    bench: str,
    figure: str,
    value: float,
    *,
    goal: str,
    met: bool,
    baseline: float | None = None,
    ratio: float | None = None,
) -> dict[str, object]:
    """Print one figure as a JSON line `{"bench", "figure", "value", "baseline", "ratio",
    "goal", "met"}` (ratio defaults to value / baseline) and return it."""
    if ratio is None and baseline:
        ratio = value / baseline
    line: dict[str, object] = {
        "bench": bench,
        "figure": figure,
        "value": _round(value),
        "baseline": None if baseline is None else _round(baseline),
        "ratio": None if ratio is None else round(ratio, 3),
        "goal": goal,
        "met": bool(met),
    }
    print(json.dumps(line), flush=True)
    return line


def _round(x: float) -> float:
    return float(f"{x:.6g}")


def best_of(fns: Sequence[Callable[[], object]], rounds: int) -> list[float]:
    """Run each function once per round, interleaved so drift hits all; the fastest of each."""
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t)
    return best


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100), interpolated."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, int(p) - 1))]


def rss_bytes() -> int:
    """This process's resident set size."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
