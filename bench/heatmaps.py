"""Attention heatmaps for display: the matplotlib figure (the downloadable PNG) vs the numpy/Pillow sheet the app shows.

Both draw the same 14-word caption over the same photo (an example photo at the app's 800-pixel display size) with
the same seeded 9×9 attention maps; prints the median time of each, their ratio and the bytes sent to the browser.

    python bench/heatmaps.py [--repeats 9] [--words 14]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from _common import timed

from captioner import viz
from captioner.features import load_image

REPO = Path(__file__).resolve().parents[1]

DISPLAY_SIDE = 800  # = pages/caption_page.DISPLAY_SIDE


def inputs(words: int) -> tuple[np.ndarray, SimpleNamespace]:
    """An example photo at display size and a caption of `words` words with peaked, seeded attention maps."""
    photo = sorted((REPO / "assets" / "examples").glob("*.jpg"))[0]
    image = viz.fit(load_image(photo, longest=DISPLAY_SIDE), DISPLAY_SIDE)
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2.0, (words, 9, 9))
    att = np.exp(logits) / np.exp(logits).sum(axis=(1, 2), keepdims=True)
    tokens = [f"word{i}" for i in range(words)]
    return image, SimpleNamespace(
        tokens=tokens, token_log_probs=np.log(rng.uniform(0.2, 1.0, words + 1)), attention=att
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--words", type=int, default=14)
    args = parser.parse_args()
    image, caption = inputs(args.words)
    title = "Greedy: " + " ".join(caption.tokens)

    def figure() -> bytes:
        return viz.to_png(viz.attention_grid(image, caption, 0.5, title=title))

    def sheet() -> bytes:
        return viz.to_jpeg(viz.attention_sheet(image, caption, 0.5, title=title))

    png, jpeg = figure(), sheet()
    old = timed(figure, args.repeats).median
    new = timed(sheet, args.repeats).median
    print(f"{args.words}-word caption over a {image.shape[1]}×{image.shape[0]} photo, median of {args.repeats}:")
    print(f"  matplotlib figure (PNG)   {old:8.1f} ms  {len(png) / 1024:7.1f} KB")
    print(f"  numpy/Pillow sheet (JPEG) {new:8.1f} ms  {len(jpeg) / 1024:7.1f} KB")
    print(f"  speed-up {old / new:.1f}×, {len(png) / len(jpeg):.1f}× fewer bytes")


if __name__ == "__main__":
    main()
