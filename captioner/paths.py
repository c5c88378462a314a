"""Where the package finds its bundled assets and keeps its per-user cache."""

from __future__ import annotations

import os
from pathlib import Path

from captioner.settings import CACHE_ENV

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
BUNDLED_MODEL_DIR = ASSETS_DIR / "model"
BUNDLED_REPORT = ASSETS_DIR / "report" / "test_report.json"


def cache_dir() -> Path:
    """Return the per-user cache directory (created on demand by callers)."""
    if env := os.environ.get(CACHE_ENV):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "captioner"
