"""Evaluation runs: caption every image of a split from its file, score it, and tune decoding on dev."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from captioner.metrics import Tokens, corpus_metrics, tokenize
from captioner.report import build_report, read_report, write_report

# read_report and tokenize too: the BLEU page imports them from here.
__all__ = [
    "build_report",
    "encode_split",
    "evaluate_split",
    "read_report",
    "tokenize",
    "tune_and_score",
    "write_report",
]


def encode_split(model, data, split: str, chunk: int = 32) -> np.ndarray:
    """Backbone features of every image of a split, read from the image files as an upload would be."""
    from tqdm.auto import tqdm

    names = data.images(split)
    feats = []
    for i in tqdm(range(0, len(names), chunk), desc=f"encode {split}", unit="batch"):
        batch = names[i : i + chunk]
        feats.append(model.encode([data.image_path(n) for n in batch], batch).features)
    return np.concatenate(feats)


def _score(model, features: np.ndarray, refs: list[list[Tokens]], beam_size: int, alpha: float, block: bool):
    captions = model.decode_features(features, beam_size, alpha, block_repeats=block)
    return captions, corpus_metrics([c.tokens for c in captions], refs)


def evaluate_split(
    model_source: str | None,
    data_dir: str | Path,
    split: str = "test",
    beam_size: int | None = None,
    length_penalty: float | None = None,
    out: str | Path | None = None,
    block_repeats: bool | None = None,
) -> dict:
    """Caption every image of a split from its file (greedy and beam), score it, optionally write the report.

    Beam size, α and repeat blocking default to what the model was tuned with on dev (its metrics.json).
    """
    from captioner.data import load_flickr8k
    from captioner.pipeline import Captioner

    model = Captioner.load(model_source)
    data = load_flickr8k(data_dir)
    names = data.images(split)
    d = model.tuned.overridden(beam_size=beam_size, length_penalty=length_penalty, block_repeats=block_repeats)
    features = encode_split(model, data, split)
    refs = [[tokenize(c) for c in data.captions[n]] for n in names]
    greedy, _ = _score(model, features, refs, 1, d.length_penalty, d.block_repeats)
    beam, _ = _score(model, features, refs, d.beam_size, d.length_penalty, d.block_repeats)
    report = build_report(
        model={"id": model.info.id, "config": dataclasses.asdict(model.config),
               "weights_sha256": model.info.weights_sha256},
        split=split,
        decoding={"beam_size": d.beam_size, "length_penalty": d.length_penalty, "max_length": model.config.max_length,
                  "block_repeats": d.block_repeats},
        image_names=names,
        references=[data.captions[n] for n in names],
        greedy=[c.text for c in greedy],
        beam=[c.text for c in beam],
    )  # fmt: skip
    if out:
        write_report(report, out)
    return report


def _setting(beam_size: int, alpha: float, block: bool) -> str:
    return f"beam {beam_size} α={alpha}{' repeats blocked' if block else ''}"


def tune_and_score(
    model, data, beam_sizes: Sequence[int] = (3, 5), alphas: Sequence[float] = (0.0, 0.3, 0.5, 0.7, 1.0), log=print
) -> dict:
    """Pick beam size, α and repeat blocking on dev (BLEU-4), then score greedy and each beam size on dev and test.

    Results: "greedy", "beam" (the chosen size) and "beam<k>" for every other size, all with the chosen α and blocking.
    """
    feats = {s: encode_split(model, data, s) for s in ("dev", "test")}
    refs = {s: [[tokenize(c) for c in data.captions[n]] for n in data.images(s)] for s in ("dev", "test")}
    search = {}
    for k in beam_sizes:
        for block in (False, True):
            for alpha in alphas:
                search[k, alpha, block] = _score(model, feats["dev"], refs["dev"], k, alpha, block)[1]["bleu4"]
                log(f"dev {_setting(k, alpha, block)}: BLEU-4 {search[k, alpha, block]:.2f}")
    beam_size, alpha, block = max(search, key=search.get)
    runs = {"greedy": 1, "beam": beam_size, **{f"beam{k}": k for k in beam_sizes if k != beam_size}}
    results = {
        split: {name: _score(model, feats[split], refs[split], k, alpha, block)[1] for name, k in runs.items()}
        for split in ("dev", "test")
    }
    return {
        "model_id": model.info.id,
        "split": "test",
        "decoding": {
            "beam_size": beam_size,
            "length_penalty": alpha,
            "max_length": model.config.max_length,
            "block_repeats": block,
        },
        "dev_search_bleu4": {_setting(*key): round(value, 3) for key, value in search.items()},
        "corpus": results["test"],
        "dev": results["dev"],
    }
