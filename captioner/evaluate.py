"""Caption metrics (corpus/sentence BLEU, CIDEr-D) and the evaluation report JSON."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from nltk.translate import bleu_score

from captioner.errors import DataError
from captioner.text import clean_tokens

Tokens = list[str]

BLEU_KEYS = ("bleu1", "bleu2", "bleu3", "bleu4")
METRIC_KEYS = (*BLEU_KEYS, "cider")
# Cumulative BLEU-n: uniform weights over the 1..n-gram precisions.
BLEU_WEIGHTS = ((1.0,), (0.5, 0.5), (1 / 3, 1 / 3, 1 / 3), (0.25, 0.25, 0.25, 0.25))
CIDER_N = 4
CIDER_SIGMA = 6.0
_SMOOTHING = bleu_score.SmoothingFunction().method1
# Per-image scores only feed tables and plots; 3 decimals keep the 1000-image report well under 2 MB.
_IMAGE_DECIMALS = 3
_MODEL_KEYS = ("id", "config", "weights_sha256")
_DECODING_KEYS = ("beam_size", "length_penalty", "max_length")
_MODES = ("greedy", "beam")


def tokenize(text: str) -> list[str]:
    """Tokenise a caption exactly as training does, so hypotheses and references match."""
    return clean_tokens(text)


def _check_tokens(seq: Any, what: str) -> None:
    if isinstance(seq, str) or not isinstance(seq, Sequence):
        raise DataError(
            f"Expected {what} to be a list of tokens. Received: {type(seq).__name__} {seq!r:.60}. "
            "Tokenise captions with captioner.evaluate.tokenize first."
        )


def _validate(hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> None:
    if len(hypotheses) != len(references):
        raise DataError(
            f"Expected one hypothesis per image and one reference list per image. Received: "
            f"{len(hypotheses)} hypotheses and {len(references)} reference lists."
        )
    if not hypotheses:
        raise DataError("Expected at least one image to score. Received: 0 hypotheses.")
    for i, (hyp, refs) in enumerate(zip(hypotheses, references, strict=True)):
        _check_tokens(hyp, f"hypothesis {i}")
        if isinstance(refs, str) or not isinstance(refs, Sequence) or len(refs) == 0:
            expected = f"Expected a non-empty list of tokenised references for image {i}."
            raise DataError(f"{expected} Received: {refs!r:.60}.")
        for j, ref in enumerate(refs):
            _check_tokens(ref, f"reference {j} of image {i}")


def corpus_bleu(hypotheses: list[Tokens], references: list[list[Tokens]]) -> dict[str, float]:
    """Corpus BLEU-1..4 as percentages (nltk, all references per image, no smoothing)."""
    _validate(hypotheses, references)
    with warnings.catch_warnings():
        # nltk warns when an n-gram order has no match; BLEU is then 0, which is the answer we want.
        warnings.simplefilter("ignore", UserWarning)
        scores = bleu_score.corpus_bleu(
            [list(map(list, refs)) for refs in references],
            [list(h) for h in hypotheses],
            weights=list(BLEU_WEIGHTS),
        )
    return {k: 100.0 * float(s) for k, s in zip(BLEU_KEYS, scores, strict=True)}


def sentence_bleu(hypothesis: Tokens, references: list[Tokens]) -> dict[str, float]:
    """Sentence BLEU-1..4 as percentages, smoothed with Chen & Cherry method 1 (epsilon 0.1 counts)."""
    _validate([hypothesis], [references])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        scores = bleu_score.sentence_bleu(
            [list(r) for r in references],
            list(hypothesis),
            weights=list(BLEU_WEIGHTS),
            smoothing_function=_SMOOTHING,
        )
    return {k: 100.0 * float(s) for k, s in zip(BLEU_KEYS, scores, strict=True)}


def _ngram_counts(tokens: Sequence[str], n: int = CIDER_N) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + k]) for k in range(1, n + 1) for i in range(len(tokens) - k + 1))


def _tfidf(
    counts: Counter[tuple[str, ...]], doc_freq: Counter[tuple[str, ...]], log_n_images: float
) -> tuple[list[dict[tuple[str, ...], float]], list[float], int]:
    """TF-IDF vectors per n-gram order, their norms and the caption "length" as coco-caption defines it."""
    vec: list[dict[tuple[str, ...], float]] = [{} for _ in range(CIDER_N)]
    norm = [0.0] * CIDER_N
    length = 0
    for ngram, tf in counts.items():
        order = len(ngram) - 1
        # n-grams absent from every reference get df 1, as in the reference code.
        weight = float(tf) * (log_n_images - math.log(max(1.0, doc_freq[ngram])))
        vec[order][ngram] = weight
        norm[order] += weight * weight
        if order == 1:
            # coco-caption counts *bigrams* here; only the difference of lengths is used, so this equals
            # the word-length difference except against an empty caption. Kept for exact parity.
            length += tf
    return vec, [math.sqrt(x) for x in norm], length


class CiderD:
    """CIDEr-D (coco-caption `cider_scorer.py`) against a fixed set of images' references.

    n = 1..4, TF-IDF with document frequencies over these references, hypothesis weights clipped by the
    reference weights, Gaussian length penalty (sigma 6), averaged over n-gram orders and references, times 10.
    Built once, it scores any number of hypotheses per image (self-critical training samples many).
    """

    def __init__(self, references: list[list[Tokens]]):
        ref_counts = [[_ngram_counts(r) for r in refs] for refs in references]
        self.doc_freq: Counter[tuple[str, ...]] = Counter()
        for refs in ref_counts:
            self.doc_freq.update({ngram for counts in refs for ngram in counts})
        self.log_n_images = math.log(float(len(references)))
        self.refs = [[_tfidf(r, self.doc_freq, self.log_n_images) for r in refs] for refs in ref_counts]

    def score(self, image: int, hypothesis: Tokens) -> float:
        """CIDEr-D of one hypothesis for image number `image`."""
        vec, norm, length = _tfidf(_ngram_counts(hypothesis), self.doc_freq, self.log_n_images)
        total = 0.0
        for vec_ref, norm_ref, length_ref in self.refs[image]:
            penalty = math.exp(-(float(length - length_ref) ** 2) / (2.0 * CIDER_SIGMA**2))
            for order in range(CIDER_N):
                ref_vec = vec_ref[order]
                dot = sum(min(w, ref_vec.get(g, 0.0)) * ref_vec.get(g, 0.0) for g, w in vec[order].items())
                if norm[order] != 0 and norm_ref[order] != 0:
                    dot /= norm[order] * norm_ref[order]
                total += dot * penalty
        return 10.0 * total / CIDER_N / len(self.refs[image])


def cider_d(hypotheses: list[Tokens], references: list[list[Tokens]]) -> tuple[float, list[float]]:
    """CIDEr-D of a set (document frequencies over its own references): corpus mean and per-image scores.

    A single-image set scores 0 because every reference n-gram then has idf 0.
    """
    _validate(hypotheses, references)
    scorer = CiderD(references)
    scores = [scorer.score(i, hyp) for i, hyp in enumerate(hypotheses)]
    return sum(scores) / len(scores), scores


def corpus_metrics(hypotheses: list[Tokens], references: list[list[Tokens]]) -> dict[str, float]:
    """Corpus BLEU-1..4 (percent) and CIDEr-D for one set of hypotheses."""
    cider, _ = cider_d(hypotheses, references)
    return {**corpus_bleu(hypotheses, references), "cider": cider}


def _check_same_length(name: str, items: Sequence[Any], expected: int) -> None:
    if len(items) != expected:
        raise DataError(
            f"Expected {expected} {name} (one per image). Received: {len(items)}. "
            "Pass image_names, references, greedy and beam in the same image order."
        )


def build_report(
    *,
    model: dict,
    split: str,
    decoding: dict,
    image_names: list[str],
    references: list[list[str]],
    greedy: list[str],
    beam: list[str],
) -> dict:
    """Score greedy and beam captions against raw reference captions and assemble the report dict."""
    n = len(image_names)
    for name, items in (
        ("reference lists", references),
        ("greedy captions", greedy),
        ("beam captions", beam),
    ):
        _check_same_length(name, items, n)
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not refs or not all(isinstance(r, str) for r in refs):
            expected = f"Expected a non-empty list of reference strings for {image_names[i]!r}."
            raise DataError(f"{expected} Received: {refs!r:.60}.")
    missing = [k for k in _MODEL_KEYS if k not in model]
    if missing:
        raise DataError(f"Expected model info with keys {list(_MODEL_KEYS)}. Missing: {missing}.")

    ref_tokens = [[tokenize(r) for r in refs] for refs in references]
    corpus: dict[str, dict[str, float]] = {}
    per_image: dict[str, list[dict[str, Any]]] = {}
    for mode, captions in (("greedy", greedy), ("beam", beam)):
        hyp_tokens = [tokenize(c) for c in captions]
        cider, cider_per_image = cider_d(hyp_tokens, ref_tokens)
        corpus[mode] = {**corpus_bleu(hyp_tokens, ref_tokens), "cider": cider}
        per_image[mode] = [
            {
                "caption": caption,
                **{k: round(v, _IMAGE_DECIMALS) for k, v in sentence_bleu(hyp, refs).items()},
                "cider": round(c, _IMAGE_DECIMALS),
            }
            for caption, hyp, refs, c in zip(captions, hyp_tokens, ref_tokens, cider_per_image, strict=True)
        ]

    greedy_entries, beam_entries = per_image["greedy"], per_image["beam"]
    images = [
        {"image": name, "references": list(refs), "greedy": g, "beam": b}
        for name, refs, g, b in zip(image_names, references, greedy_entries, beam_entries, strict=True)
    ]
    return {
        "model": dict(model),
        "split": split,
        "decoding": dict(decoding),
        "corpus": corpus,
        "images": images,
    }


def write_report(report: dict, path: str | Path) -> None:
    """Validate and write a report as UTF-8 JSON, atomically (temp file, then rename)."""
    _validate_report(report, str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".incomplete", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            # One image per line: readable diffs, and about half the size of an indented dump.
            f.write("{\n")
            head = {k: v for k, v in report.items() if k != "images"}
            for key, value in head.items():
                f.write(f"{json.dumps(key)}: {json.dumps(value, ensure_ascii=False)},\n")
            f.write('"images": [\n')
            lines = [json.dumps(img, ensure_ascii=False) for img in report["images"]]
            f.write(",\n".join(lines))
            f.write("\n]\n}\n")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the report is a shareable asset
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_report(path: str | Path) -> dict:
    """Read and validate an evaluation report written by `write_report`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise DataError(
            f"Expected an evaluation report at {path}. Received: no such file. Run the evaluation first."
        ) from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"Expected a readable UTF-8 evaluation report at {path}. Received: {e}") from e
    try:
        report = json.loads(text)
    except ValueError as e:
        raise DataError(
            f"Expected valid JSON in the evaluation report {path}. Received: {e}. Re-run the evaluation."
        ) from e
    _validate_report(report, str(path))
    return report


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _validate_report(report: Any, where: str) -> None:
    """Raise DataError naming the first field of `report` that does not match the report format."""

    def fail(field: str, expected: str, received: Any) -> NoReturn:
        raise DataError(
            f"Malformed evaluation report {where}: expected {field} to be {expected}. "
            f"Received: {received!r:.80}. Re-run the evaluation to regenerate it."
        )

    if not isinstance(report, dict):
        fail("the top level", "a JSON object", type(report).__name__)
    for key, kind in (
        ("model", dict),
        ("split", str),
        ("decoding", dict),
        ("corpus", dict),
        ("images", list),
    ):
        if not isinstance(report.get(key), kind):
            fail(f"'{key}'", f"a {kind.__name__}", report.get(key))
    for key in _MODEL_KEYS:
        if key not in report["model"]:
            fail(f"'model' to have '{key}' and it", "present", sorted(report["model"]))
    for key in _DECODING_KEYS:
        if key not in report["decoding"]:
            fail(f"'decoding' to have '{key}' and it", "present", sorted(report["decoding"]))
    for mode in _MODES:
        scores = report["corpus"].get(mode)
        if not isinstance(scores, dict):
            fail(f"corpus.{mode}", "an object", scores)
        for key in METRIC_KEYS:
            if not _is_number(scores.get(key)):
                fail(f"corpus.{mode}.{key}", "a finite number", scores.get(key))
    for i, img in enumerate(report["images"]):
        if not isinstance(img, dict):
            fail(f"images[{i}]", "an object", img)
        if not isinstance(img.get("image"), str):
            fail(f"images[{i}].image", "a file name string", img.get("image"))
        refs = img.get("references")
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
            fail(f"images[{i}].references", "a non-empty list of strings", refs)
        for mode in _MODES:
            entry = img.get(mode)
            if not isinstance(entry, dict) or not isinstance(entry.get("caption"), str):
                fail(f"images[{i}].{mode}", "an object with a 'caption' string", entry)
            for key in BLEU_KEYS:
                if not _is_number(entry.get(key)):
                    fail(f"images[{i}].{mode}.{key}", "a finite number", entry.get(key))
            # Per-image CIDEr-D was added after the first report format; accept reports without it.
            if "cider" in entry and not _is_number(entry["cider"]):
                fail(f"images[{i}].{mode}.cider", "a finite number", entry["cider"])


# ---------------------------------------------------------------------------------------------------------
# Running a model over a split (lead): decode each image greedy and with beam search, then call
# build_report(...) and write_report(...) above.


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
    captions = model.search(features, beam_size, alpha, model.config.max_length, block_repeats=block)
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
        model={"id": model.info.source, "config": dataclasses.asdict(model.config),
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
        "model_id": model.info.source,
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
