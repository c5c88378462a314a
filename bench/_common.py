"""Shared bench helpers: repeated timings reported as median and spread, locating ../shared."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def need_shared() -> Path:
    if not SHARED.exists():
        sys.exit(f"skip: this benchmark needs {SHARED} (Flickr8k and photos), absent here")
    return SHARED


@dataclass(frozen=True)
class Timing:
    """Wall times of repeated runs, in the unit they were measured in."""

    runs: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    def __str__(self) -> str:
        return f"median {self.median:8.1f} (min–max {min(self.runs):.1f}–{max(self.runs):.1f}, {len(self.runs)} runs)"


def timed(fn: Callable[[], object], repeats: int, warmup: int = 2, scale: float = 1000.0) -> Timing:
    """Wall time of `fn` over `repeats` runs after `warmup` untimed calls (tracing, caches); milliseconds by default."""
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t) * scale)
    return Timing(runs)
