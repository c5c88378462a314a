"""The shared sidebar: decoding and display settings, and where the model's weights came from."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from pages.loader import LOADING_MESSAGE, MAX_BEAM, default_beam, loaded_captioner, model_loader

DEFAULT_BEAM, DEFAULT_ALPHA, DEFAULT_OPACITY = 3, 0.7, 0.5


@dataclass(frozen=True)
class Settings:
    """Decoding and display settings chosen in the sidebar."""

    beam_size: int = DEFAULT_BEAM
    length_penalty: float = DEFAULT_ALPHA
    opacity: float = DEFAULT_OPACITY
    block_repeats: bool = False
    consensus: int = 0  # similar training photos the beam's n-best is reranked by (0: not reranked)
    consensus_weight: float = 1.0  # the model's tuned weight of the beam score in that reranking


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
        tuned_consensus = cap.tuned.consensus if cap is not None else 0
        rerank = tuned_consensus > 0 and st.toggle(
            "Rerank by similar training photos",
            value=True,
            key="consensus",
            help=f"Of the beam's finished captions, prefer the one closest to what people wrote for the "
            f"{tuned_consensus} training photos most like this one (the model's default, chosen on the dev split).",
        )
        st.subheader("Display")
        opacity = st.slider(
            "Heatmap opacity", 0.0, 1.0, step=0.05, key="opacity", help="0 shows the photo only, 1 the heatmap only."
        )
    weight = cap.tuned.consensus_weight if cap is not None else Settings.consensus_weight
    settings = Settings(int(beam), float(alpha), float(opacity), bool(block), tuned_consensus if rerank else 0, weight)
    st.session_state["_settings"] = settings
    return settings


def has_model_defaults() -> bool:
    """Whether the sidebar has adopted the loaded model's tuned settings (it draws before the model may be ready)."""
    return bool(st.session_state.get("_model_defaults"))


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
