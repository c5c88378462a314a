"""Test-set BLEU page: the bundled evaluation report — corpus scores, per-image scores, and a detail view."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import streamlit as st

from captioner import viz
from captioner.errors import CaptionerError
from captioner.features import load_image
from captioner.metrics import METRIC_LABELS as METRICS
from captioner.metrics import tokenize
from captioner.report import read_report
from pages import loader, places, sidebar, widgets

if TYPE_CHECKING:
    from captioner.decode import Caption
    from captioner.pipeline import Captioner

# Xu et al. (2015), "Show, Attend and Tell", Table 1, Flickr8k (BLEU in percent; no CIDEr reported).
PUBLISHED = {
    "Show, Attend and Tell — soft attention": {"bleu1": 67.0, "bleu2": 44.8, "bleu3": 29.9, "bleu4": 19.5},
    "Show, Attend and Tell — hard attention": {"bleu1": 67.0, "bleu2": 45.7, "bleu3": 31.4, "bleu4": 21.3},
}
AGREEMENT = (
    "All images",
    "Greedy and beam differ",
    "Greedy and beam agree",
    "Beam scores higher",
    "Greedy scores higher",
)
SORT_KEYS = ("beam", "greedy", "delta", "image")
HISTOGRAM_BIN = 5.0


def evaluate_command(report: Path) -> str:
    """The commands that create the report and its thumbnails."""
    return (
        f"captioner evaluate --data DIR --split test --beam 3 --out {places.shown_path(report)}\n"
        f"captioner thumbnails --data DIR --split test --out {places.shown_path(places.thumbs_dir(report))}"
    )


# ---- the report as a table (no Streamlit widgets) ----------------------------------------------------------------


@st.cache_data(show_spinner="Reading the evaluation report…", max_entries=4)
def load_report(path: str, stamp: tuple[int, int]) -> dict:
    """The validated report; `stamp` (mtime, size) makes a rewritten report load afresh."""
    return read_report(path)


@st.cache_data(max_entries=4)
def report_table(path: str, stamp: tuple[int, int]) -> pd.DataFrame:
    """One row per image: captions, per-image scores for both decoders, and word sets for filtering."""
    rows = []
    for img in load_report(path, stamp)["images"]:
        row = {"image": img["image"], "greedy": img["greedy"]["caption"], "beam": img["beam"]["caption"]}
        for mode in ("greedy", "beam"):
            for key in METRICS:
                row[f"{mode}_{key}"] = float(img[mode].get(key, np.nan))
        refs = [tokenize(r) for r in img["references"]]
        row["ref_words"] = " " + " ".join(sorted({w for ref in refs for w in ref})) + " "
        hyp = set(tokenize(img["greedy"]["caption"])) | set(tokenize(img["beam"]["caption"]))
        row["pred_words"] = " " + " ".join(sorted(hyp)) + " "
        row["differ"] = tokenize(img["greedy"]["caption"]) != tokenize(img["beam"]["caption"])
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Filters:
    """What the table shows: a metric, score ranges, words, greedy-vs-beam agreement, and the sort order."""

    metric: str = "bleu4"
    greedy_range: tuple[float, float] = (-np.inf, np.inf)
    beam_range: tuple[float, float] = (-np.inf, np.inf)
    ref_words: str = ""
    pred_words: str = ""
    agreement: str = AGREEMENT[0]
    sort_by: str = "beam"  # one of SORT_KEYS
    descending: bool = True


def _has_words(column: pd.Series, query: str) -> pd.Series:
    mask = pd.Series(True, index=column.index)
    for word in tokenize(query):
        mask &= column.str.contains(f" {word} ", regex=False)
    return mask


def apply_filters(table: pd.DataFrame, f: Filters) -> pd.DataFrame:
    """Rows that pass every filter, sorted as asked."""
    g, b = table[f"greedy_{f.metric}"], table[f"beam_{f.metric}"]
    mask = g.between(*f.greedy_range) & b.between(*f.beam_range)
    mask &= _has_words(table["ref_words"], f.ref_words) & _has_words(table["pred_words"], f.pred_words)
    if f.agreement == AGREEMENT[1]:
        mask &= table["differ"]
    elif f.agreement == AGREEMENT[2]:
        mask &= ~table["differ"]
    elif f.agreement == AGREEMENT[3]:
        mask &= b > g
    elif f.agreement == AGREEMENT[4]:
        mask &= g > b
    out = table[mask].assign(delta=b[mask] - g[mask])
    column = {"beam": f"beam_{f.metric}", "greedy": f"greedy_{f.metric}", "delta": "delta", "image": "image"}[f.sort_by]
    return out.sort_values([column, "image"], ascending=[not f.descending, True], kind="stable")


def histogram(table: pd.DataFrame, metric: str = "bleu4", width: float = HISTOGRAM_BIN) -> pd.DataFrame:
    """Counts of per-image scores in bins of `width`, greedy and beam side by side."""
    top = max(100.0, float(np.nanmax(table[[f"greedy_{metric}", f"beam_{metric}"]].to_numpy(), initial=0.0)))
    edges = np.arange(0.0, top + width, width)
    counts = {
        label: np.histogram(np.clip(table[f"{mode}_{metric}"], 0, top), bins=edges)[0]
        for label, mode in (("Greedy", "greedy"), ("Beam", "beam"))
    }
    return pd.DataFrame({METRICS[metric]: edges[:-1], **counts})


def corpus_table(report: dict) -> pd.DataFrame:
    """Corpus scores of both decoders and the published anchors, formatted; "—" where a score was not reported."""

    def cells(scores: dict) -> dict[str, str]:
        return {
            METRICS[k]: "—" if scores.get(k) is None else f"{scores[k]:.3f}" if k == "cider" else f"{scores[k]:.1f}"
            for k in METRICS
        }

    corpus, k = report["corpus"], report["decoding"]["beam_size"]
    similar = report["decoding"].get("consensus", 0)  # reports made before reranking have no such setting
    reranked = f", reranked by {similar} similar training photos" if similar else ""
    rows = [{"": "This model — greedy", **cells(corpus["greedy"])}]
    rows += [{"": f"This model — beam (k={k}{reranked})", **cells(corpus["beam"])}]
    rows += [{"": name, **cells(scores)} for name, scores in PUBLISHED.items()]
    return pd.DataFrame(rows)


# ---- the page ------------------------------------------------------------------------------------------------------


def bleu_page() -> None:
    """Corpus scores beside published anchors, a histogram, a filterable table and a per-image detail view."""
    st.title("Test-set BLEU")
    path = places.report_path()
    try:
        stat = path.stat()
    except OSError:
        st.warning(f"No evaluation report at `{places.shown_path(path)}` yet.", icon="📄")
        st.markdown("Create it (and the thumbnails the detail view shows) from a Flickr8k folder `DIR` with:")
        st.code(evaluate_command(path), language="bash")
        st.caption(f"Set `{places.REPORT_ENV}` to read a report from somewhere else.")
        return
    stamp = (stat.st_mtime_ns, stat.st_size)
    try:
        report = load_report(str(path), stamp)
        table = report_table(str(path), stamp)
    except CaptionerError as e:
        st.error(f"The evaluation report cannot be used: {e}", icon="🚫")
        st.code(evaluate_command(path), language="bash")
        return
    if table.empty:
        st.warning(f"The report `{path}` lists no images.")
        return
    corpus_ui(report)
    histogram_ui(table)
    filtered = table_ui(table)
    detail_ui(report, filtered, path)


def corpus_ui(report: dict) -> None:
    """Corpus BLEU-1..4 and CIDEr for greedy and beam, beside the published Show, Attend and Tell anchors."""
    d = report["decoding"]
    n = len(report["images"])
    st.markdown(
        f"**{n}** images of the **{report['split']}** split; beam search with k = {d['beam_size']}, "
        f"α = {d['length_penalty']}, at most {d['max_length']} words"
        f"{widgets.blocked_note(d)}. Model `{report['model']['id']}`."
    )
    corpus = report["corpus"]
    cols = st.columns(4)
    soft = PUBLISHED["Show, Attend and Tell — soft attention"]["bleu4"]
    cols[0].metric(
        "BLEU-4, greedy", f"{corpus['greedy']['bleu4']:.1f}", f"{corpus['greedy']['bleu4'] - soft:+.1f} vs soft"
    )
    cols[1].metric("BLEU-4, beam", f"{corpus['beam']['bleu4']:.1f}", f"{corpus['beam']['bleu4'] - soft:+.1f} vs soft")
    cols[2].metric("CIDEr, greedy", f"{corpus['greedy']['cider']:.3f}")
    cols[3].metric("CIDEr, beam", f"{corpus['beam']['cider']:.3f}")
    st.table(corpus_table(report).set_index(""))
    st.caption(
        "Corpus BLEU in percent over all 5 references per image (nltk, no smoothing); CIDEr-D as in coco-caption. "
        "The published anchors are Xu et al. (2015), Table 1, Flickr8k; they report no CIDEr, and their tokenisation "
        "and decoding differ, so compare within a point or so."
    )


def histogram_ui(table: pd.DataFrame) -> None:
    """Distribution of per-image BLEU-4."""
    st.subheader("Per-image BLEU-4", anchor=False)
    st.bar_chart(
        histogram(table),
        x="BLEU-4",
        y=["Greedy", "Beam"],
        stack=False,
        x_label="BLEU-4 (bin start)",
        y_label="images",
        height=260,
    )
    med_g, med_b = table["greedy_bleu4"].median(), table["beam_bleu4"].median()
    st.caption(
        f"Sentence BLEU-4 (smoothed) of each image in bins of {HISTOGRAM_BIN:g}; median {med_g:.1f} greedy, "
        f"{med_b:.1f} beam. Corpus BLEU is not the mean of these."
    )


def filters_ui(table: pd.DataFrame) -> Filters:
    """Controls for the table: metric, score ranges, words, agreement, sort order."""
    c1, c2, c3 = st.columns(3)
    metric = c1.selectbox("Score", list(METRICS), format_func=METRICS.get, index=3, key="bleu_metric")
    values = table[[f"greedy_{metric}", f"beam_{metric}"]].to_numpy()
    hi = float(np.ceil(np.nanmax(values, initial=0.0))) if metric == "cider" else 100.0
    hi = max(hi, 1.0)
    step = 0.05 if metric == "cider" else 1.0
    greedy_range = c2.slider(f"Greedy {METRICS[metric]}", 0.0, hi, (0.0, hi), step=step, key=f"bleu_greedy_{metric}")
    beam_range = c3.slider(f"Beam {METRICS[metric]}", 0.0, hi, (0.0, hi), step=step, key=f"bleu_beam_{metric}")
    c4, c5, c6 = st.columns(3)
    ref_words = c4.text_input(
        "Words in references",
        key="bleu_ref_words",
        placeholder="e.g. dog beach",
        help="Whole words; every word must occur in at least one reference.",
    )
    pred_words = c5.text_input(
        "Words in predictions",
        key="bleu_pred_words",
        placeholder="e.g. dog",
        help="Whole words; every word must occur in the greedy or the beam caption.",
    )
    agreement = c6.selectbox("Greedy vs beam", AGREEMENT, key="bleu_agreement")
    c7, c8 = st.columns([2, 1], vertical_alignment="bottom")
    labels = {
        "beam": f"Beam {METRICS[metric]}",
        "greedy": f"Greedy {METRICS[metric]}",
        "delta": f"Beam − greedy {METRICS[metric]}",
        "image": "Image name",
    }
    sort_by = c7.selectbox("Sort by", SORT_KEYS, format_func=labels.get, key="bleu_sort")
    descending = c8.toggle("Descending", value=True, key="bleu_descending")
    # The sliders' ends stand for "no limit", so scores above a rounded-down maximum are never hidden.
    return Filters(
        metric,
        _open_range(greedy_range, hi),
        _open_range(beam_range, hi),
        ref_words,
        pred_words,
        agreement,
        sort_by,
        descending,
    )


def _open_range(chosen: Sequence[float], hi: float) -> tuple[float, float]:
    lo_v, hi_v = float(chosen[0]), float(chosen[1])
    return (-np.inf if lo_v <= 0.0 else lo_v, np.inf if hi_v >= hi else hi_v)


def table_ui(table: pd.DataFrame) -> pd.DataFrame:
    """The filterable, sortable per-image table; returns the rows shown."""
    st.subheader("Images", anchor=False)
    f = filters_ui(table)
    rows = apply_filters(table, f)
    name = METRICS[f.metric]
    st.caption(f"{len(rows)} of {len(table)} images match. Click a column header to re-sort in place.")
    shown = rows[["image", "greedy", f"greedy_{f.metric}", "beam", f"beam_{f.metric}", "delta"]].rename(
        columns={
            "image": "Image",
            "greedy": "Greedy caption",
            f"greedy_{f.metric}": f"Greedy {name}",
            "beam": "Beam caption",
            f"beam_{f.metric}": f"Beam {name}",
            "delta": f"Δ {name}",
        }
    )
    fmt = "%.3f" if f.metric == "cider" else "%.1f"
    st.dataframe(
        shown,
        hide_index=True,
        height=min(360, 35 * (len(shown) + 1) + 3),
        column_config={c: st.column_config.NumberColumn(c, format=fmt) for c in shown.columns[[2, 4, 5]]},
    )
    st.download_button(
        "Download these rows (CSV)",
        shown.to_csv(index=False).encode("utf-8"),
        file_name="test_report_rows.csv",
        mime="text/csv",
        icon=":material/download:",
        on_click="ignore",
    )
    return rows


def detail_ui(report: dict, rows: pd.DataFrame, path: Path) -> None:
    """One image: its thumbnail, 5 references, both captions with their scores, attention on demand."""
    st.subheader("Detail", anchor=False)
    if rows.empty:
        st.info("No image matches the filters.")
        return
    names = rows["image"].tolist()
    score = dict(zip(rows["image"], rows["beam_bleu4"], strict=True))
    name = st.selectbox(
        "Image",
        names,
        key="bleu_image",
        format_func=lambda n: f"{n} — beam BLEU-4 {score[n]:.1f}",
        help="Lists the images that pass the filters, in the table's order.",
    )
    entry = next(img for img in report["images"] if img["image"] == name)
    thumb = places.thumbs_dir(path) / viz.thumbnail_name(name)
    left, right = st.columns([2, 3])
    with left:
        if thumb.is_file():
            st.image(str(thumb), caption=name)
        else:
            st.info(f"No thumbnail `{thumb.name}` in `{thumb.parent}`.")
            st.code(f"captioner thumbnails --data DIR --split test --out {thumb.parent}", language="bash")
    with right:
        st.markdown("**References**")
        st.markdown("\n".join(f"{i + 1}. {widgets.md_escape(r)}" for i, r in enumerate(entry["references"])))
        g, b = st.columns(2)
        for col, mode, title in ((g, "greedy", "Greedy"), (b, "beam", f"Beam (k={report['decoding']['beam_size']})")):
            scores = " · ".join(f"{METRICS[k]} {entry[mode][k]:.1f}" for k in list(METRICS)[:4])
            if "cider" in entry[mode]:
                scores += f" · CIDEr {entry[mode]['cider']:.3f}"
            col.markdown(f"**{title}**")
            col.markdown(f"#### {widgets.md_escape(entry[mode]['caption']) or '*(empty caption)*'}")
            col.caption(scores)
    if thumb.is_file() and st.toggle("Attention heatmaps (computed from the thumbnail)", key="bleu_attention"):
        report_attention_ui(report, name, thumb)


def report_attention_ui(report: dict, name: str, thumb: Path) -> None:
    """Run the loaded model on the thumbnail and show its attention for greedy and beam decoding."""
    cap = loader.captioner_ui()
    if cap is None:
        return
    d = report["decoding"]
    beam, alpha, block = int(d["beam_size"]), float(d["length_penalty"]), bool(d.get("block_repeats", False))
    # Reports before consensus reranking have no such setting; a model without its index cannot rerank.
    rerank = (int(d.get("consensus", 0)) if cap.consensus is not None else 0, float(d.get("consensus_weight", 1.0)))
    if report["model"].get("weights_sha256") not in (None, cap.info.weights_sha256):
        st.warning("The loaded model is not the one this report was computed with; its captions may differ.")
    try:
        image, captions = widgets.remember(
            "report_attention",
            (str(thumb), beam, alpha, block, rerank),
            lambda: _run(cap, thumb, beam, alpha, block, rerank),
        )
    except CaptionerError as e:
        st.error(f"{thumb.name}: {e}")
        return
    st.caption(
        f"Computed now from the {image.shape[1]}×{image.shape[0]} thumbnail, not the full photo, with the report's "
        f"decoding settings (k = {beam}, α = {alpha}); the captions can differ slightly from the report's: "
        f"greedy “{captions['Greedy'].text}”, beam “{captions['Beam'].text}”."
    )
    widgets.attention_ui(image, captions, sidebar.current_settings().opacity, f"report:{name}", Path(name).stem)


def _run(
    cap: Captioner, thumb: Path, beam: int, alpha: float, block: bool, rerank: tuple[int, float]
) -> tuple[np.ndarray, dict[str, Caption]]:
    image = load_image(thumb, thumb.name)
    with loader.model_lock():
        encoded = cap.encode([image], [thumb.name])
        greedy = cap.decode(encoded, beam_size=1, length_penalty=alpha, block_repeats=block)[0]
        best = cap.decode(
            encoded, beam_size=beam, length_penalty=alpha, block_repeats=block,
            consensus=rerank[0], consensus_weight=rerank[1],
        )[0]  # fmt: skip
    return image, {"Greedy": greedy, "Beam": best}


if __name__ == "__main__":
    bleu_page()
