"""Where things are: the settings' names, the report, thumbnails and example photos, the upload limit."""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from captioner import paths
from captioner.settings import EXAMPLES_ENV, MODEL_ENV, REPORT_ENV, TOKEN_SECRET

__all__ = ["EXAMPLES_ENV", "MODEL_ENV", "REPORT_ENV", "TOKEN_SECRET"]  # the pages read them from here
EXAMPLES_DIR = paths.ASSETS_DIR / "examples"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
MAX_UPLOAD_MB = 25.0  # per file; .streamlit/config.toml lets larger files through so they get a message, not a tooltip


def report_path() -> Path:
    """The evaluation report the BLEU page reads: $CAPTIONER_REPORT, else the bundled report."""
    env = os.environ.get(REPORT_ENV, "").strip()
    return Path(env).expanduser() if env else paths.BUNDLED_REPORT


def thumbs_dir(report: Path) -> Path:
    """Thumbnails of the report's images sit in `thumbs/` next to the report."""
    return report.parent / "thumbs"


def example_photos() -> list[Path]:
    """Example photos offered on the Caption page ($CAPTIONER_EXAMPLES, else assets/examples)."""
    env = os.environ.get(EXAMPLES_ENV, "").strip()
    folder = Path(env).expanduser() if env else EXAMPLES_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def shown_path(path: Path) -> str:
    """A path as the user should read it: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(paths.ASSETS_DIR.parent))
    except (OSError, ValueError):
        return str(path)


def upload_limit_mb() -> float:
    """The app's per-file upload limit: 25 MB, or Streamlit's server.maxUploadSize if that is lower."""
    return min(MAX_UPLOAD_MB, float(st.get_option("server.maxUploadSize")))
