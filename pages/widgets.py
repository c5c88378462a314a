"""Widgets the pages share: per-session result caches, escaped text, caption scores and the attention viewer."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import streamlit as st

from captioner import viz

if TYPE_CHECKING:
    from captioner.decode import Caption

_CACHE_LIMIT = 64  # results kept per session and kind (photos, captions, figures)

T = TypeVar("T")


def remember(kind: str, key: Hashable, compute: Callable[[], T], limit: int = _CACHE_LIMIT) -> T:
    """Return a per-session cached value, computing it on a miss; keeps the `limit` most recently used."""
    cache: OrderedDict = st.session_state.setdefault(f"_cache_{kind}", OrderedDict())
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    value = compute()
    cache[key] = value
    while len(cache) > limit:
        cache.popitem(last=False)
    return value


def is_remembered(kind: str, key: Hashable) -> bool:
    """Whether `remember(kind, key, ...)` would be a cache hit."""
    return key in st.session_state.get(f"_cache_{kind}", {})


def blocked_note(decoding: Mapping) -> str:
    """ ", repeated three-word phrases blocked" when a decoding block (metrics or report) says so, else ""."""
    return ", repeated three-word phrases blocked" if decoding.get("block_repeats") else ""


_MD_SPECIAL = set("\\`*_{}[]()<>#+-.!|~$:")


def md_escape(text: str) -> str:
    """Escape Markdown so captions and file names show literally."""
    return "".join(f"\\{c}" if c in _MD_SPECIAL else c for c in text)


def caption_stats(caption: Caption) -> str:
    """One line of scores for a caption."""
    n = len(caption.tokens)
    line = f"log p = {caption.log_prob:.2f} · score = {caption.score:.2f} · {n} word{'s' if n != 1 else ''}"
    return line + (f" · mean word p = {float(np.mean(viz.word_probabilities(caption))):.2f}" if n else "")


def _step(key: str, delta: int, n: int) -> None:
    st.session_state[key] = int(min(max(st.session_state.get(key, 0) + delta, 0), n - 1))


@st.fragment
def attention_ui(image: np.ndarray, captions: Mapping[str, Caption], opacity: float, key: str, stem: str) -> None:
    """Per-word attention heatmaps over `image` for each caption: a grid of all words and a word-by-word stepper."""
    if not captions:
        return
    which = st.radio("Attention of", list(captions), horizontal=True, key=f"{key}:which")
    view = st.radio("View", ["All words", "Word by word"], horizontal=True, key=f"{key}:view")
    caption = captions[which]
    n = len(caption.tokens)
    if view == "All words":
        title = f"{which}: {caption.text}" if caption.text else f"{which} caption"
        sheet = remember(
            "figure",
            (key, which, caption.text, opacity),
            lambda: viz.to_jpeg(viz.attention_sheet(image, caption, opacity, title=title)),
        )
        st.image(sheet, caption=f"{which} — attention for every word")
        st.download_button(
            "Download this figure (PNG)",
            # Drawn by matplotlib only when asked for: it takes ~20× as long as the sheet shown above.
            lambda: viz.to_png(viz.attention_grid(image, caption, opacity, title=title)),
            file_name=f"{stem}-{which.lower()}-attention.png",
            mime="image/png",
            key=f"{key}:png:{which}",
            icon=":material/download:",
            on_click="ignore",
        )
        return
    if n == 0:
        st.info(f"The {which.lower()} caption is empty, so there is no word to step through.")
        return
    step_key = f"{key}:step:{which}"
    if st.session_state.get(step_key, 0) >= n:
        st.session_state[step_key] = 0
    prev_col, slider_col, next_col = st.columns([1, 6, 1], vertical_alignment="bottom")
    prev_col.button("◀", key=f"{step_key}:prev", on_click=_step, args=(step_key, -1, n), help="Previous word")
    next_col.button("▶", key=f"{step_key}:next", on_click=_step, args=(step_key, 1, n), help="Next word")
    i = slider_col.select_slider(
        "Word", options=list(range(n)), format_func=lambda j: f"{j + 1}. {caption.tokens[j]}", key=step_key
    )
    p = viz.word_probabilities(caption)[i]
    words = [
        f"**:orange-background[{md_escape(w)}]**" if j == i else md_escape(w) for j, w in enumerate(caption.tokens)
    ]
    st.markdown(" ".join(words))
    st.image(
        viz.overlay(image, caption.attention[i], opacity),
        caption=f"{which}, word {i + 1}: “{caption.tokens[i]}” (p={p:.2f})",
        output_format="JPEG",
    )
