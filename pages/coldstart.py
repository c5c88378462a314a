"""Cold-start measures around the model load: each shortens the wait for the first caption after a server start.

All of them are off with CAPTIONER_COLD_START=off (to debug the load, or to measure what they save).
"""

from __future__ import annotations

import gc
import importlib.abc
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SWITCH_ENV = "CAPTIONER_COLD_START"
# Keras imports these when it is imported, for things the app never asks of it (IPython display, pandas inputs,
# pyplot image galleries; our figures use matplotlib without pyplot): ~0.6 of the 3.7 CPU-s Keras takes to import.
KERAS_EXTRAS = frozenset({"IPython", "pandas", "matplotlib.pyplot"})


def enabled() -> bool:
    """Whether the measures are on (the default); CAPTIONER_COLD_START=off|0|false|no turns them all off."""
    return os.environ.get(SWITCH_ENV, "on").strip().lower() not in ("off", "0", "false", "no")


@contextmanager
def loading() -> Iterator[None]:
    """Around the whole load (import, build, warm-up): the collector paused, TensorFlow's C++ log quieted."""
    if not enabled():
        yield
        return
    # TensorFlow's start-up lines (CPU features, oneDNN) go to the server log's stderr on every cold start; they
    # save no measurable CPU, but keep the log to what needs reading. An explicit setting wins.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # TensorFlow's import and the model build allocate millions of long-lived objects: collector passes over
    # them took ~1.3 of the ~9 CPU-seconds of loading and freed only ~20,000 objects.
    with _collector_paused():
        yield


@contextmanager
def importing() -> Iterator[None]:
    """Around the import of Keras and TensorFlow on the loader thread: Keras' unused extras are not imported."""
    if not enabled():
        yield
        return
    with _unimportable_here(KERAS_EXTRAS):
        yield


class _UnimportableHere(importlib.abc.MetaPathFinder):
    """Fails the import of the named modules on one thread; every other thread imports them as usual."""

    def __init__(self, names: frozenset[str]):
        self.names, self.thread = names, threading.get_ident()

    def find_spec(self, name: str, path=None, target=None) -> None:
        if name in self.names and threading.get_ident() == self.thread:
            raise ModuleNotFoundError(f"{name} is not imported while the model loads", name=name)
        return None  # not ours: the regular finders look for it


@contextmanager
def _unimportable_here(names: frozenset[str]) -> Iterator[None]:
    """Inside the block, importing `names` fails on this thread (a page on another thread may import them)."""
    finder = _UnimportableHere(names)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector (for the whole process) while the block runs, then freeze what exists."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        # All the block allocated is still in the youngest generation, so the first pass after re-enabling would walk it
        # (~0.35 CPU-s, before the model is handed over); frozen, it is never walked again (and is nearly all alive).
        gc.freeze()
        if collecting:
            gc.enable()
