"""What the pages share: the cached model, the sidebar settings, asset locations and the attention viewer.

Only this app imports Streamlit; model work goes through the `captioner` package.
"""

from __future__ import annotations

import gc
import importlib.abc
import logging
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import streamlit as st

from captioner import paths, viz
from captioner.errors import CaptionerError

if TYPE_CHECKING:  # importing these starts TensorFlow; the model loader does that on its own thread
    from captioner.decode import Caption
    from captioner.pipeline import Captioner

LOG = logging.getLogger("captioner.app")

MODEL_ENV = "CAPTIONER_MODEL"  # = captioner.hub.SOURCE_ENV, also a secret; hub is imported on the loader thread
TOKEN_SECRET = "HF_TOKEN"  # = captioner.hub.TOKEN_SECRET
REPORT_ENV = "CAPTIONER_REPORT"  # evaluation report the BLEU page reads; thumbnails live in <its folder>/thumbs
EXAMPLES_ENV = "CAPTIONER_EXAMPLES"  # folder of example photos offered on the Caption page
EXAMPLES_DIR = paths.ASSETS_DIR / "examples"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
MAX_BEAM = 10
MAX_UPLOAD_MB = 25.0  # per file; .streamlit/config.toml lets larger files through so they get a message, not a tooltip
DEFAULT_BEAM, DEFAULT_ALPHA, DEFAULT_OPACITY = 3, 0.7, 0.5
LOADING_MESSAGE = "Loading the captioning model (once per server start)…"
_CACHE_LIMIT = 64  # results kept per session and kind (photos, captions, figures)
_MODEL_LOCK = threading.RLock()  # this module is imported once per server process
# Keras imports these when it is imported, for things the app never asks of it (IPython display, pandas inputs,
# pyplot image galleries; our figures use matplotlib without pyplot): ~0.6 of the 3.7 CPU-s Keras takes to import.
_KERAS_EXTRAS = frozenset({"IPython", "pandas", "matplotlib.pyplot"})

T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    """Decoding and display settings chosen in the sidebar."""

    beam_size: int = DEFAULT_BEAM
    length_penalty: float = DEFAULT_ALPHA
    opacity: float = DEFAULT_OPACITY
    block_repeats: bool = False


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


def shown_path(path: Path) -> str:
    """A path as the user should read it: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(paths.ASSETS_DIR.parent))
    except (OSError, ValueError):
        return str(path)


def upload_limit_mb() -> float:
    """The app's per-file upload limit: 25 MB, or Streamlit's server.maxUploadSize if that is lower."""
    return min(MAX_UPLOAD_MB, float(st.get_option("server.maxUploadSize")))


def read_secrets() -> dict[str, Any]:
    """Streamlit secrets as a plain dict; empty when the app has none."""
    try:
        return st.secrets.to_dict()
    except Exception:  # no secrets.toml, or one that does not parse: run with the environment alone
        return {}


# ---- the model ------------------------------------------------------------------------------------------------


class ModelLoader:
    """Loads the model on a background thread, so pages render and uploads arrive while TensorFlow starts."""

    def __init__(self, secrets: Mapping[str, Any]):
        self._future: Future[Captioner] = Future()
        threading.Thread(target=self._load, args=(dict(secrets),), name="captioner-load", daemon=True).start()

    def _load(self, secrets: dict[str, Any]) -> None:
        try:
            # TensorFlow's import and the model build allocate millions of long-lived objects: collector passes over
            # them took ~1.3 of the ~9 CPU-seconds of loading and freed only ~20,000 objects.
            with _collector_paused():
                with _unimportable_here(_KERAS_EXTRAS):
                    from captioner.pipeline import Captioner  # imports Keras and TensorFlow

                cap = Captioner.load(None, secrets=secrets, fallback=True)  # $CAPTIONER_MODEL, secret, or bundled
                with model_lock():  # compile the backbone and the search now, not on the first upload
                    image = np.zeros((cap.config.image_size, cap.config.image_size, 3), np.uint8)
                    # One decoding graph serves greedy and every beam size, so one call compiles it for all of them.
                    cap.decode(cap.encode([image], ["warm-up"]), beam_size=default_beam(cap))
        except BaseException as e:
            if not isinstance(e, CaptionerError):
                LOG.exception("the model failed to load")
            self._future.set_exception(e)
        else:
            # matplotlib's first figure (~0.35 CPU-s) is left to the first heatmap: warming it up here competed
            # with the first caption for the GIL (bench/app_memory.py: first captions ~0.4 s later).
            self._future.set_result(cap)

    def done(self) -> bool:
        """Whether loading has finished (or failed)."""
        return self._future.done()

    def result(self) -> Captioner:
        """Wait for the model; raises what loading raised."""
        return self._future.result()


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


@st.cache_resource(show_spinner=False)
def _model_loader(env_source: str | None, secret_source: str | None) -> ModelLoader:
    """One loader, hence one model, per process and model source; concurrent sessions share it."""
    return ModelLoader(read_secrets())


def model_lock() -> threading.RLock:
    """One lock per process around model calls and large decodes, so concurrent sessions queue, not pile up."""
    return _MODEL_LOCK


def model_loader() -> ModelLoader:
    """Start loading the model if no session has yet (returns at once)."""
    # Keyed by what decides the source, so starting the load needs neither TensorFlow nor huggingface_hub here.
    secret = read_secrets().get(MODEL_ENV)
    return _model_loader(os.environ.get(MODEL_ENV), None if secret is None else str(secret))


def captioner_ui() -> Captioner | None:
    """Wait for the model behind a spinner; on failure show why (and allow a retry) and return None."""
    loader = model_loader()
    try:
        if loader.done():
            return loader.result()
        with st.spinner(LOADING_MESSAGE):
            return loader.result()
    except Exception as e:  # the UI edge: a message, never a traceback
        reason = str(e) if isinstance(e, CaptionerError) else f"Unexpected {type(e).__name__}: {e}"
        st.error(f"The captioning model could not be loaded. {reason}", icon="🚫")
        st.markdown(
            f"Point the `{MODEL_ENV}` environment variable (or Streamlit secret) at a model directory or at "
            "`hf://OWNER/REPO@COMMIT`, or restore the bundled model in `assets/model/`."
        )
        if st.button("Try again"):
            _model_loader.clear()
            st.rerun()
        return None


def loaded_captioner() -> Captioner | None:
    """The model if it has finished loading successfully, without waiting."""
    loader = model_loader()
    if not loader.done():
        return None
    try:
        return loader.result()
    except Exception:
        return None


def blocked_note(decoding: Mapping) -> str:
    """ ", repeated three-word phrases blocked" when a decoding block (metrics or report) says so, else ""."""
    return ", repeated three-word phrases blocked" if decoding.get("block_repeats") else ""


def default_beam(cap: Captioner) -> int:
    """The beam size the model was evaluated with (metrics.json), else 3; within the slider's range."""
    return min(cap.tuned.beam_size, MAX_BEAM)


# ---- the shared sidebar ---------------------------------------------------------------------------------------


def settings_ui() -> Settings:
    """Decoding and display settings every page uses (defaults from the model's metrics.json once it is loaded)."""
    cap = loaded_captioner()
    if cap is not None and not st.session_state.get("_model_defaults"):
        # Until the model is loaded the sliders start at the usual defaults; adopt the model's own unless moved.
        st.session_state["_model_defaults"] = True
        if st.session_state.get("beam_size", DEFAULT_BEAM) == DEFAULT_BEAM:
            st.session_state["beam_size"] = default_beam(cap)
        if st.session_state.get("length_penalty", DEFAULT_ALPHA) == DEFAULT_ALPHA:
            st.session_state["length_penalty"] = cap.tuned.length_penalty
        if not st.session_state.get("block_repeats", False):
            st.session_state["block_repeats"] = cap.tuned.block_repeats
    st.session_state.setdefault("beam_size", DEFAULT_BEAM)
    st.session_state.setdefault("block_repeats", False)
    st.session_state.setdefault("length_penalty", DEFAULT_ALPHA)
    st.session_state.setdefault("opacity", DEFAULT_OPACITY)
    with st.sidebar:
        st.subheader("Decoding")
        beam = st.slider(
            "Beam size", 1, MAX_BEAM, key="beam_size", help="Hypotheses kept per step by beam search. 1 is greedy."
        )
        alpha = st.slider(
            "Length penalty α",
            0.0,
            2.0,
            step=0.05,
            key="length_penalty",
            help="Beam search ranks finished captions by log p / length^α; higher α favours longer captions, "
            "0 ranks by raw log-probability.",
        )
        block = st.toggle(
            "Block repeated phrases",
            key="block_repeats",
            help="Never repeat a three-word phrase within a caption (greedy and beam). The model's default is what "
            "scored best on the dev split.",
        )
        st.subheader("Display")
        opacity = st.slider(
            "Heatmap opacity", 0.0, 1.0, step=0.05, key="opacity", help="0 shows the photo only, 1 the heatmap only."
        )
    settings = Settings(int(beam), float(alpha), float(opacity), bool(block))
    st.session_state["_settings"] = settings
    return settings


def current_settings() -> Settings:
    """The sidebar settings of this run."""
    return st.session_state.get("_settings", Settings())


def model_info_ui() -> None:
    """Where the weights came from; while the model loads, a note that refreshes the app once it is ready."""
    loader = model_loader()
    st.subheader("Model")
    if not loader.done():
        _wait_for_model_ui()
        return
    try:
        cap = loader.result()
    except Exception as e:
        st.error(f"No model: {e}")
        return
    info = cap.info
    st.markdown(f"Weights from `{info.source}`")
    if info.commit:
        st.caption(f"Hub commit `{info.commit[:12]}`")
    st.caption(f"SHA-256 `{info.weights_sha256[:12]}…`", help=info.weights_sha256)
    if info.notice:
        st.warning(info.notice)


@st.fragment(run_every=1.0)
def _wait_for_model_ui() -> None:
    if model_loader().done():
        st.rerun(scope="app")
    st.caption(f"⏳ {LOADING_MESSAGE}")


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
