"""Attention heatmaps over photos: fast numpy/Pillow sheets for display, matplotlib figures for download; thumbnails.

Pure numpy / Pillow (matplotlib only for its colour maps and the downloadable figure); never imports Streamlit.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from captioner.errors import ImageError
from captioner.features import load_image
from captioner.files import write_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DEFAULT_CMAP = "turbo"
THUMB_QUALITY = 85
_PANEL_SIDE = 320  # grid panels never need more pixels than this; keeps big batches fast
_PANEL_INCHES = 2.6
SHEET_PANEL_SIDE = 240  # longest side of one panel of a display sheet: 5 columns fill a wide page
SHEET_QUALITY = 82  # JPEG quality of display sheets (a 14-word sheet stays well under 250 KB)
_SHEET_GAP, _SHEET_FONT, _SHEET_TITLE_FONT = 6, 14, 16


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


@functools.cache
def colour_table(cmap: str = DEFAULT_CMAP) -> np.ndarray:
    """The (256, 3) uint8 lookup table of a matplotlib colour map (matplotlib samples its maps at 256 levels too)."""
    from matplotlib import colormaps

    return (colormaps[cmap](np.arange(256))[:, :3] * 255.0 + 0.5).astype(np.uint8)  # integers index its table


def colorize(heat: np.ndarray, cmap: str = DEFAULT_CMAP) -> np.ndarray:
    """Map a (H, W) array in [0, 1] to uint8 RGB colours (H, W, 3) through the colour map's lookup table."""
    # matplotlib's own binning: level floor(x · 256), with x = 1 in the top level.
    return colour_table(cmap)[np.minimum(np.clip(heat, 0.0, 1.0) * 256.0, 255.0).astype(np.uint8)]


def overlay(image: np.ndarray, attention: np.ndarray, opacity: float = 0.5, cmap: str = DEFAULT_CMAP) -> Image.Image:
    """Blend the smoothly upsampled attention map (h, w) over a uint8 image (H, W, 3); opacity 0 = photo only."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"Expected an opacity between 0 and 1. Received: {opacity}.")
    rgb = _as_rgb(image)
    h, w = rgb.shape[:2]
    colours = Image.fromarray(colorize(upsample(attention, (w, h)), cmap))
    return Image.blend(Image.fromarray(rgb), colours, opacity)  # (1 - opacity) · photo + opacity · colours


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
    maps, n = _maps_per_word(caption), len(caption.tokens)
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


def attention_sheet(
    image: np.ndarray, caption: CaptionLike, opacity: float = 0.5, *, title: str | None = None, **layout
) -> Image.Image:
    """`attention_grid`'s panels drawn with numpy and Pillow: one per word, labelled with the word and its p.

    `layout` may set `columns` (5), `cmap` (turbo) and `panel_side` (the longest side of a panel, 240 pixels).
    """
    columns, cmap = layout.get("columns", 5), layout.get("cmap", DEFAULT_CMAP)
    rgb = fit(_as_rgb(image), layout.get("panel_side", SHEET_PANEL_SIDE))
    h, w = rgb.shape[:2]
    maps, n = _maps_per_word(caption), len(caption.tokens)
    font, title_font = _font(_SHEET_FONT), _font(_SHEET_TITLE_FONT)
    label_h = _SHEET_FONT + 8
    title_h = _SHEET_TITLE_FONT + 12 if title else 0
    cols = max(1, min(columns, max(n, 1)))
    rows = -(-max(n, 1) // cols)
    cell_w, cell_h = w + _SHEET_GAP, h + label_h + _SHEET_GAP
    sheet = Image.new("RGB", (cols * cell_w + _SHEET_GAP, title_h + rows * cell_h + _SHEET_GAP), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text(
            (_SHEET_GAP, 6), _shorten(draw, title, title_font, sheet.width - 2 * _SHEET_GAP), "#1F2430", title_font
        )
    if n == 0:
        draw.text((_SHEET_GAP, title_h + 4), "(empty caption)", "#1F2430", font)
        sheet.paste(Image.fromarray(rgb), (_SHEET_GAP, title_h + label_h))
        return sheet
    labels = [
        f"{i + 1}. {word}  (p={p:.2f})"
        for i, (word, p) in enumerate(zip(caption.tokens, word_probabilities(caption), strict=True))
    ]
    for i, label in enumerate(labels):
        x, y = _SHEET_GAP + (i % cols) * cell_w, title_h + (i // cols) * cell_h
        draw.text((x, y + 4), _shorten(draw, label, font, w), "#1F2430", font)
        sheet.paste(overlay(rgb, maps[i], opacity, cmap), (x, y + label_h))
    return sheet


def to_jpeg(image: Image.Image, quality: int = SHEET_QUALITY) -> bytes:
    """Encode a Pillow image as a compact JPEG (for display; the downloadable figure stays a PNG)."""
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)  # Pillow's bundled scalable font: no system fonts needed


def _shorten(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """`text`, cut with an ellipsis to fit `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


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
        write_atomic(target, buf.getvalue())
        total += buf.tell()
    return total


def _maps_per_word(caption: CaptionLike) -> np.ndarray:
    """The caption's attention maps (T, h, w); raises ValueError unless there is one per word."""
    maps, n = np.asarray(caption.attention), len(caption.tokens)
    if maps.shape[0] != n:
        raise ValueError(f"Expected one attention map per word. Received: {maps.shape[0]} maps, {n} words.")
    return maps


def _as_rgb(image: np.ndarray | Image.Image) -> np.ndarray:
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[-1] != 3 or 0 in a.shape:
        raise ImageError(f"Expected a uint8 RGB image of shape (H, W, 3). Received: {a.dtype} {a.shape}.")
    return a
