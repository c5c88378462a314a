"""Shared bench helpers: timing with medians, locating ../shared."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def need_shared() -> Path:
    if not SHARED.exists():
        sys.exit(f"skip: this benchmark needs {SHARED} (Flickr8k and photos), absent here")
    return SHARED


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median wall time of `fn` in milliseconds after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)
