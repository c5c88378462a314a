"""Attention heatmaps over photos, attention grids as figures, PNG export, and report thumbnails.

Pure numpy / Pillow / matplotlib: the app and the CLI both call this, and it never imports Streamlit.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from PIL import Image

from captioner.errors import ImageError
from captioner.features import load_image

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DEFAULT_CMAP = "turbo"
THUMB_QUALITY = 85
_PANEL_SIDE = 320  # grid panels never need more pixels than this; keeps big batches fast
_PANEL_INCHES = 2.6


class CaptionLike(Protocol):
    """What the figures need from a `captioner.decode.Caption`."""

    tokens: list[str]
    token_log_probs: np.ndarray
    attention: np.ndarray


def fit(image: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale a uint8 (H, W, 3) image so its longest side is at most `max_side`, keeping the aspect ratio."""
    if max_side < 1:
        raise ValueError(f"Expected max_side >= 1. Received: {max_side}.")
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0))


def upsample(attention: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Smoothly (bicubic) upsample one attention map (h, w) to `size` = (width, height); returns (H, W) in [0, 1].

    Each map is rescaled to its own min..max so every word's focus is visible; a flat map gives zeros.
    """
    a = np.asarray(attention, dtype=np.float32)
    if a.ndim != 2 or 0 in a.shape:
        raise ValueError(f"Expected one attention map of shape (h, w). Received: {a.shape}.")
    width, height = size
    big = np.asarray(Image.fromarray(a).resize((width, height), Image.Resampling.BICUBIC))  # (H, W)
    big = np.maximum(big, 0.0)  # bicubic undershoots next to a peak; attention is never negative
    lo, hi = float(big.min()), float(big.max())
    if hi - lo < 1e-12:
        return np.zeros((height, width), np.float32)
    return np.clip((big - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def colorize(heat: np.ndarray, cmap: str = DEFAULT_CMAP) -> np.ndarray:
    """Map a (H, W) array in [0, 1] to uint8 RGB colours (H, W, 3)."""
    from matplotlib import colormaps

    return (colormaps[cmap](np.clip(heat, 0.0, 1.0))[..., :3] * 255.0 + 0.5).astype(np.uint8)


def overlay(image: np.ndarray, attention: np.ndarray, opacity: float = 0.5, cmap: str = DEFAULT_CMAP) -> Image.Image:
    """Blend the smoothly upsampled attention map (h, w) over a uint8 image (H, W, 3); opacity 0 = photo only."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"Expected an opacity between 0 and 1. Received: {opacity}.")
    rgb = _as_rgb(image)
    h, w = rgb.shape[:2]
    colours = colorize(upsample(attention, (w, h)), cmap).astype(np.float32)
    mixed = (1.0 - opacity) * rgb.astype(np.float32) + opacity * colours
    return Image.fromarray(np.clip(mixed + 0.5, 0, 255).astype(np.uint8))


def word_probabilities(caption: CaptionLike) -> np.ndarray:
    """The model's probability of each generated word, (T_words,)."""
    n = len(caption.tokens)
    return np.exp(np.asarray(caption.token_log_probs, dtype=np.float64)[:n])


def attention_grid(
    image: np.ndarray,
    caption: CaptionLike,
    opacity: float = 0.5,
    columns: int = 5,
    title: str | None = None,
    cmap: str = DEFAULT_CMAP,
) -> Figure:
    """A matplotlib Figure with one panel per generated word: the photo under that word's attention heatmap."""
    from matplotlib.figure import Figure

    rgb = fit(_as_rgb(image), _PANEL_SIDE)
    h, w = rgb.shape[:2]
    maps = np.asarray(caption.attention)  # (T, h, w)
    n = len(caption.tokens)
    if maps.shape[0] != n:
        raise ValueError(f"Expected one attention map per word. Received: {maps.shape[0]} maps, {n} words.")
    probs = word_probabilities(caption)
    panels = max(n, 1)
    cols = max(1, min(columns, panels))
    rows = -(-panels // cols)
    # Each row: the panel plus room for its title; constrained layout keeps titles and suptitle apart.
    height = rows * (_PANEL_INCHES * h / w + 0.35) + (0.4 if title else 0.0)
    fig = Figure(figsize=(cols * _PANEL_INCHES, height), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    if n == 0:
        axes[0, 0].imshow(rgb)
        axes[0, 0].set_title("(empty caption)", fontsize=10)
    for i, (word, p) in enumerate(zip(caption.tokens, probs, strict=True)):
        ax = axes.flat[i]
        ax.imshow(overlay(rgb, maps[i], opacity, cmap))
        ax.set_title(f"{i + 1}. {word}  (p={p:.2f})", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def to_png(fig: Figure, dpi: int = 100) -> bytes:
    """Render a matplotlib Figure to PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def thumbnail_name(image_name: str) -> str:
    """File name of an image's thumbnail: the source name, with a .jpg suffix unless it is already a JPEG."""
    path = Path(image_name)
    return path.name if path.suffix.lower() in (".jpg", ".jpeg") else f"{path.stem}.jpg"


def thumbnail(src: str | Path | bytes | np.ndarray, size: int, name: str | None = None) -> Image.Image:
    """Decode an image (EXIF-rotated, RGB) and shrink it so its longest side is `size`; never enlarges."""
    if size < 16:
        raise ValueError(f"Expected a thumbnail size of at least 16 pixels. Received: {size}.")
    return Image.fromarray(fit(load_image(src, name, longest=size), size))


def write_thumbnails(paths: Sequence[Path], out: Path, size: int) -> int:
    """Write a JPEG thumbnail (longest side `size`, aspect kept) of each image into `out`; returns total bytes.

    Files are named like their source image (see `thumbnail_name`) and written atomically.
    Raises ImageError naming the first image that cannot be decoded.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    for path in paths:
        target = out / thumbnail_name(Path(path).name)
        buf = io.BytesIO()
        thumbnail(path, size).save(buf, "JPEG", quality=THUMB_QUALITY, optimize=True)
        _write_atomic(target, buf.getvalue())
        total += buf.tell()
    return total


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".incomplete", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _as_rgb(image: np.ndarray | Image.Image) -> np.ndarray:
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[-1] != 3 or 0 in a.shape:
        raise ImageError(f"Expected a uint8 RGB image of shape (H, W, 3). Received: {a.dtype} {a.shape}.")
    return a
