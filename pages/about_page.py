"""About page: where the weights came from, the architecture, the model's own scores, and its model card."""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

import pandas as pd
import streamlit as st

from captioner.metrics import METRIC_LABELS as METRICS
from pages import loader, places, widgets

if TYPE_CHECKING:
    from captioner.pipeline import Captioner

HOW_IT_WORKS = """
1. **Backbone.** The photo is squashed to a square (no crop) and run through an EfficientNet-Lite backbone,
   giving a grid of feature vectors: one per image region.
2. **Attention decoder.** An attention LSTM reads the words so far; Bahdanau attention weighs the regions for the
   next word (the heatmaps show these weights, smoothly upsampled over the photo); a language LSTM predicts the word.
3. **Decoding.** Greedy decoding takes the likeliest word each step; beam search keeps the k best partial captions
   and ranks finished ones by log p / length^α. Beam size 1 is greedy.
"""


def about_page() -> None:
    """Model provenance, configuration, scores and model card."""
    st.title("About the model")
    cap = loader.captioner_ui()
    if cap is not None:
        provenance_ui(cap)
        architecture_ui(cap)
        scores_ui(cap)
        model_card_ui(cap)
    settings_ui()


def provenance_ui(cap: Captioner) -> None:
    """Where the weights came from and how they were checked."""
    info = cap.info
    st.subheader("Weights", anchor=False)
    rows = {
        "Source": info.source,
        "Directory": str(info.path),
        "Hub commit": info.commit or "— (local directory)",
        "Weights SHA-256": info.weights_sha256,
    }
    st.table(pd.DataFrame({"": list(rows), "value": list(rows.values())}).set_index(""))
    if info.notice:
        st.warning(info.notice)


def architecture_ui(cap: Captioner) -> None:
    """The model's config.json and how the pieces fit."""
    st.subheader("How it works", anchor=False)
    st.markdown(HOW_IT_WORKS)
    config = dataclasses.asdict(cap.config)
    config["grid"] = "×".join(str(g) for g in cap.config.grid)
    config["vocabulary"] = f"{len(cap.vocab)} words"
    with st.expander("Configuration (config.json)"):
        st.table(
            pd.DataFrame({"setting": list(config), "value": [str(v) for v in config.values()]}).set_index("setting")
        )


def scores_ui(cap: Captioner) -> None:
    """The scores stored with the weights (metrics.json)."""
    st.subheader("Scores stored with the weights", anchor=False)
    metrics = cap.metrics if isinstance(cap.metrics, dict) else {}
    rows = []
    for split, label in (("corpus", metrics.get("split", "test")), ("dev", "dev")):
        for mode in ("greedy", "beam"):
            scores = metrics.get(split, {}).get(mode) if isinstance(metrics.get(split), dict) else None
            if isinstance(scores, dict):
                rows.append({"split": label, "decoding": mode, **{METRICS[k]: scores.get(k) for k in METRICS}})
    if not rows:
        st.info("This model directory has no metrics.json, so there are no stored scores.")
        return
    st.dataframe(pd.DataFrame(rows), hide_index=True)
    d = metrics.get("decoding", {})
    st.caption(
        f"Beam search with k = {d.get('beam_size', '?')}, α = {d.get('length_penalty', '?')}"
        f"{widgets.blocked_note(d)}. "
        "The Test-set BLEU page shows per-image scores."
    )


def model_card_ui(cap: Captioner) -> None:
    """The model card (README.md) that ships with the weights."""
    card = cap.info.path / "README.md"
    try:
        text = card.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return
    text = re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.DOTALL)  # YAML metadata is for the Hub, not for people
    with st.expander("Model card"):
        st.markdown(text)


def settings_ui() -> None:
    """What the app reads from its environment and secrets."""
    st.subheader("Settings the app reads", anchor=False)
    st.markdown(
        f"""
| name | where | what |
|---|---|---|
| `{places.MODEL_ENV}` | env var or secret | model directory or `hf://OWNER/REPO@COMMIT` (default: `assets/model`) |
| `{places.TOKEN_SECRET}` | env var or secret | Hugging Face token, only for private model repositories |
| `{places.REPORT_ENV}` | env var | report for the Test-set BLEU page (default: `assets/report/test_report.json`) |
| `{places.EXAMPLES_ENV}` | env var | folder of example photos (default: `assets/examples`) |
"""
    )


if __name__ == "__main__":
    about_page()
