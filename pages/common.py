"""What the pages share: the cached model, the sidebar settings, asset locations and the attention viewer.

Only this app imports Streamlit; model work goes through the `captioner` package.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import streamlit as st

from captioner import hub, paths, viz
from captioner.decode import Caption
from captioner.errors import CaptionerError
from captioner.pipeline import Captioner

LOG = logging.getLogger("captioner.app")

REPORT_ENV = "CAPTIONER_REPORT"  # evaluation report the BLEU page reads; thumbnails live in <its folder>/thumbs
EXAMPLES_ENV = "CAPTIONER_EXAMPLES"  # folder of example photos offered on the Caption page
EXAMPLES_DIR = paths.ASSETS_DIR / "examples"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
MAX_BEAM = 10
DEFAULT_BEAM, DEFAULT_ALPHA, DEFAULT_OPACITY = 3, 0.7, 0.5
_MODEL_KEY = "_captioner"
_MODEL_ERROR_KEY = "_captioner_error"
_CACHE_LIMIT = 64  # results kept per session and kind (photos, captions, figures)

T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    """Decoding and display settings chosen in the sidebar."""

    beam_size: int = DEFAULT_BEAM
    length_penalty: float = DEFAULT_ALPHA
    opacity: float = DEFAULT_OPACITY


# ---- where things are ---------------------------------------------------------------------------------------


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


def read_secrets() -> dict[str, Any]:
    """Streamlit secrets as a plain dict; empty when the app has none."""
    try:
        return st.secrets.to_dict()
    except Exception:  # no secrets.toml, or one that does not parse: run with the environment alone
        return {}


# ---- the model ------------------------------------------------------------------------------------------------


@st.cache_resource(show_spinner="Loading the captioning model (once per server start)…")
def _load_captioner(source: str) -> Captioner:
    """Load the model once per process and source; compile greedy and default beam search before first use."""
    cap = Captioner.load(source, secrets=read_secrets(), fallback=True)
    with model_lock():
        beam = _default_beam(cap)
        encoded = cap.encode([np.zeros((cap.config.image_size, cap.config.image_size, 3), np.uint8)], ["warm-up"])
        for k in sorted({1, beam}):
            cap.decode(encoded, beam_size=k, length_penalty=DEFAULT_ALPHA)
    return cap


@st.cache_resource
def model_lock() -> threading.RLock:
    """One lock per process around model calls and large decodes, so concurrent sessions queue, not pile up."""
    return threading.RLock()


def captioner_ui() -> Captioner | None:
    """Load (or reuse) the model, behind a spinner; on failure show the reason and return None."""
    st.session_state.pop(_MODEL_ERROR_KEY, None)
    try:
        cap = _load_captioner(hub.choose_source(None, read_secrets()))
    except CaptionerError as e:
        st.session_state[_MODEL_ERROR_KEY] = str(e)
        cap = None
    except Exception as e:  # the UI edge: never show a traceback
        LOG.exception("model failed to load")
        st.session_state[_MODEL_ERROR_KEY] = f"Unexpected {type(e).__name__} while loading the model: {e}"
        cap = None
    st.session_state[_MODEL_KEY] = cap
    return cap


def current_captioner() -> Captioner | None:
    """The model loaded by app.py in this run (None if it failed to load)."""
    return st.session_state.get(_MODEL_KEY)


def model_error_ui() -> None:
    """Explain why there is no model and how to get one."""
    reason = st.session_state.get(_MODEL_ERROR_KEY, "The model is not loaded.")
    st.error(f"The captioning model could not be loaded. {reason}", icon="🚫")
    st.markdown(
        f"Point the `{hub.SOURCE_ENV}` environment variable (or Streamlit secret) at a model directory or at "
        "`hf://OWNER/REPO@COMMIT`, or restore the bundled model in `assets/model/`."
    )


def _default_beam(cap: Captioner) -> int:
    decoding = cap.metrics.get("decoding", {}) if isinstance(cap.metrics, dict) else {}
    beam = decoding.get("beam_size", DEFAULT_BEAM)
    return int(beam) if isinstance(beam, int) and 1 <= beam <= MAX_BEAM else DEFAULT_BEAM


def _default_alpha(cap: Captioner) -> float:
    decoding = cap.metrics.get("decoding", {}) if isinstance(cap.metrics, dict) else {}
    alpha = decoding.get("length_penalty", DEFAULT_ALPHA)
    return float(alpha) if isinstance(alpha, int | float) and 0.0 <= alpha <= 2.0 else DEFAULT_ALPHA


# ---- the shared sidebar ---------------------------------------------------------------------------------------


def sidebar_ui(cap: Captioner | None) -> Settings:
    """Where the weights came from, and the decoding / display settings every page uses."""
    with st.sidebar:
        st.subheader("Model")
        if cap is None:
            st.error("No model loaded; see the main page for the reason.")
        else:
            info = cap.info
            st.markdown(f"Weights from `{info.source}`")
            if info.commit:
                st.caption(f"Hub commit `{info.commit[:12]}`")
            st.caption(f"SHA-256 `{info.weights_sha256[:12]}…`", help=info.weights_sha256)
            if info.notice:
                st.warning(info.notice)
        st.subheader("Decoding")
        beam = st.slider(
            "Beam size",
            1,
            MAX_BEAM,
            _default_beam(cap) if cap else DEFAULT_BEAM,
            key="beam_size",
            help="Hypotheses kept per step by beam search. 1 is greedy decoding.",
        )
        alpha = st.slider(
            "Length penalty α",
            0.0,
            2.0,
            _default_alpha(cap) if cap else DEFAULT_ALPHA,
            step=0.05,
            key="length_penalty",
            help="Beam search ranks finished captions by log p / length^α; higher α favours "
            "longer captions, 0 ranks by raw log-probability.",
        )
        st.subheader("Display")
        opacity = st.slider(
            "Heatmap opacity",
            0.0,
            1.0,
            DEFAULT_OPACITY,
            step=0.05,
            key="opacity",
            help="0 shows the photo only, 1 the attention heatmap only.",
        )
    settings = Settings(int(beam), float(alpha), float(opacity))
    st.session_state["_settings"] = settings
    return settings


def current_settings() -> Settings:
    """The sidebar settings of this run."""
    return st.session_state.get("_settings", Settings())


# ---- per-session result caches --------------------------------------------------------------------------------


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


# ---- text and the attention viewer ----------------------------------------------------------------------------

_MD_SPECIAL = set("\\`*_{}[]()<>#+-.!|~$:")


def md_escape(text: str) -> str:
    """Escape Markdown so captions and file names show literally."""
    return "".join(f"\\{c}" if c in _MD_SPECIAL else c for c in text)


def caption_stats(caption: Caption) -> str:
    """One line of scores for a caption."""
    n = len(caption.tokens)
    mean_p = float(np.mean(viz.word_probabilities(caption))) if n else float("nan")
    words = f"{n} word{'s' if n != 1 else ''}"
    return f"log p = {caption.log_prob:.2f} · score = {caption.score:.2f} · {words} · mean word p = {mean_p:.2f}"


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
        title = f"{which}: {caption.text or '(empty caption)'}"
        png = remember("figure", (key, which, caption.text, opacity), lambda: _grid_png(image, caption, opacity, title))
        st.image(png, caption=f"{which} — attention for every word")
        st.download_button(
            "Download this figure (PNG)",
            png,
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
    )


def _grid_png(image: np.ndarray, caption: Caption, opacity: float, title: str) -> bytes:
    return viz.to_png(viz.attention_grid(image, caption, opacity, title=title))
