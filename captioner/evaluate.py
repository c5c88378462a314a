"""Evaluation runs: caption every image of a split from its file, score it, and tune decoding on dev."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from captioner.consensus import rerank
from captioner.metrics import Tokens, corpus_metrics, tokenize
from captioner.report import build_report, read_report, write_report

if TYPE_CHECKING:
    from captioner.decode import Caption
    from captioner.pipeline import Decoding

# read_report and tokenize too: the BLEU page imports them from here.
__all__ = [
    "Split",
    "build_report",
    "dev_objective",
    "encode_split",
    "evaluate_split",
    "read_report",
    "tokenize",
    "tune_and_score",
    "write_report",
]


@dataclass(frozen=True)
class Split:
    """One split's images, read from their files as uploads would be: feature grids, pooled features, references."""

    features: np.ndarray  # (N, H, W, C), `Encoded.features`
    seen: np.ndarray  # (N, C), `Encoded.seen`: what familiarity and consensus reranking read
    references: list[list[Tokens]]


def encode_split(model, data, split: str, chunk: int = 32) -> Split:
    """Backbone features of every image of a split, read from the image files as an upload would be."""
    from tqdm.auto import tqdm

    names = data.images(split)
    encoded = []
    for i in tqdm(range(0, len(names), chunk), desc=f"encode {split}", unit="batch"):
        batch = names[i : i + chunk]
        encoded.append(model.encode([data.image_path(n) for n in batch], batch))
    return Split(
        np.concatenate([e.features for e in encoded]),
        np.concatenate([e.seen for e in encoded]),
        [[tokenize(c) for c in data.captions[n]] for n in names],
    )


def dev_objective(metrics: dict[str, float]) -> float:
    """What the dev search maximises: CIDEr-D + BLEU-4 as a fraction, the self-critical reward's own mix."""
    return metrics["cider"] + metrics["bleu4"] / 100


def _score(model, split: Split, d: Decoding) -> tuple[list[Caption], dict[str, float]]:
    captions = model.decode_features(
        split.features, d.beam_size, d.length_penalty, block_repeats=d.block_repeats,
        seen=split.seen, consensus=d.consensus, consensus_weight=d.consensus_weight,
    )  # fmt: skip
    return captions, corpus_metrics([c.tokens for c in captions], split.references)


def evaluate_split(
    model_source: str | None,
    data_dir: str | Path,
    split: str = "test",
    beam_size: int | None = None,
    length_penalty: float | None = None,
    out: str | Path | None = None,
    block_repeats: bool | None = None,
    consensus: int | None = None,
    consensus_weight: float | None = None,
) -> dict:
    """Caption every image of a split from its file (greedy and beam), score it, optionally write the report.

    Every decoding setting defaults to what the model was tuned with on dev (its metrics.json).
    """
    from captioner.data import load_flickr8k
    from captioner.pipeline import Captioner

    model = Captioner.load(model_source)
    data = load_flickr8k(data_dir)
    d = model.tuned.overridden(
        beam_size=beam_size, length_penalty=length_penalty, block_repeats=block_repeats,
        consensus=consensus, consensus_weight=consensus_weight,
    )  # fmt: skip
    images = encode_split(model, data, split)
    greedy, _ = _score(model, images, replace(d, beam_size=1))
    beam, _ = _score(model, images, d)
    names = data.images(split)
    report = build_report(
        model={"id": model.info.id, "config": dataclasses.asdict(model.config),
               "weights_sha256": model.info.weights_sha256},
        split=split,
        decoding={**_decoding_block(d), "max_length": model.config.max_length},
        image_names=names,
        references=[data.captions[n] for n in names],
        greedy=[c.text for c in greedy],
        beam=[c.text for c in beam],
    )  # fmt: skip
    if out:
        write_report(report, out)
    return report


def _decoding_block(d: Decoding) -> dict:
    return {
        "beam_size": d.beam_size, "length_penalty": d.length_penalty, "block_repeats": d.block_repeats,
        "consensus": d.consensus, "consensus_weight": d.consensus_weight,
    }  # fmt: skip


def _setting(d: Decoding) -> str:
    rerank = f", consensus {d.consensus} w={d.consensus_weight}" if d.consensus else ""
    return f"beam {d.beam_size} α={d.length_penalty}{' repeats blocked' if d.block_repeats else ''}{rerank}"


def tune_and_score(
    model,
    data,
    beam_sizes: Sequence[int] = (3, 5, 10),
    alphas: Sequence[float] = (0.0, 0.3, 0.5, 0.7, 1.0),
    consensus: Sequence[int] = (10, 25),
    weights: Sequence[float] = (0.5, 1.0, 2.0),
    log=print,
    encoded: Mapping[str, Split] | None = None,
) -> dict:
    """Pick the decoding on dev (`dev_objective`), then score greedy and each beam size on dev and test with it.

    The search: beam size × α × repeat blocking, each also with its n-best reranked by consensus with every number
    of similar photos and weight (when the model has a consensus index). Results: "greedy", "beam" (the chosen
    size) and "beam<k>" for every other size, all with the chosen α, blocking and reranking. `encoded`: the dev and
    test splits already read by `encode_split`, if the caller has them.
    """
    from captioner.pipeline import Decoding

    splits = encoded or {s: encode_split(model, data, s) for s in ("dev", "test")}
    dev = splits["dev"]
    search: dict[Decoding, dict[str, float]] = {}
    for beam_size in beam_sizes:
        for block in (False, True):
            for alpha in alphas:
                d = Decoding(beam_size, alpha, block)
                captions, search[d] = _score(model, dev, d)
                log(f"dev {_setting(d)}: BLEU-4 {search[d]['bleu4']:.2f}, CIDEr-D {search[d]['cider']:.3f}")
                reranks = [replace(d, consensus=k, consensus_weight=w) for k in consensus for w in weights]
                if model.consensus is not None and beam_size > 1 and reranks:
                    agreement = model.agreement(captions, dev.seen, max(consensus))
                    for r in reranks:
                        picked = [
                            rerank(c, a[:, : r.consensus], r.consensus_weight).tokens
                            for c, a in zip(captions, agreement, strict=True)
                        ]
                        search[r] = corpus_metrics(picked, dev.references)
                        log(f"dev {_setting(r)}: BLEU-4 {search[r]['bleu4']:.2f}, CIDEr-D {search[r]['cider']:.3f}")
    best = max(search, key=lambda d: dev_objective(search[d]))
    runs = {"greedy": 1, "beam": best.beam_size, **{f"beam{k}": k for k in beam_sizes if k != best.beam_size}}
    results = {
        split: {name: _score(model, images, replace(best, beam_size=k))[1] for name, k in runs.items()}
        for split, images in splits.items()
    }
    return {
        "model_id": model.info.id,
        "split": "test",
        "decoding": {**_decoding_block(best), "max_length": model.config.max_length},
        "dev_search": {
            _setting(d): {"bleu4": round(m["bleu4"], 3), "cider": round(m["cider"], 4)} for d, m in search.items()
        },
        "corpus": results["test"],
        "dev": results["dev"],
    }
