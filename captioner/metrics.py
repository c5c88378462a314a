"""Caption metrics: corpus and sentence BLEU (nltk) and CIDEr-D (coco-caption), on tokenised captions."""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from nltk.translate import bleu_score

from captioner.errors import DataError
from captioner.text import clean_tokens

Tokens = list[str]

BLEU_KEYS = ("bleu1", "bleu2", "bleu3", "bleu4")
METRIC_KEYS = (*BLEU_KEYS, "cider")
METRIC_LABELS = {"bleu1": "BLEU-1", "bleu2": "BLEU-2", "bleu3": "BLEU-3", "bleu4": "BLEU-4", "cider": "CIDEr"}
# Cumulative BLEU-n: uniform weights over the 1..n-gram precisions.
BLEU_WEIGHTS = ((1.0,), (0.5, 0.5), (1 / 3, 1 / 3, 1 / 3), (0.25, 0.25, 0.25, 0.25))
CIDER_N = 4
CIDER_SIGMA = 6.0
_SMOOTHING = bleu_score.SmoothingFunction().method1


def tokenize(text: str) -> list[str]:
    """Tokenise a caption exactly as training does, so hypotheses and references match."""
    return clean_tokens(text)


def _check_tokens(seq: Any, what: str) -> None:
    if isinstance(seq, str) or not isinstance(seq, Sequence):
        raise DataError(
            f"Expected {what} to be a list of tokens. Received: {type(seq).__name__} {seq!r:.60}. "
            "Tokenise captions with captioner.metrics.tokenize first."
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


class _References(NamedTuple):
    weights: list[dict[tuple[str, ...], list[tuple[int, float]]]]  # per order: n-gram -> (reference, its weight)
    norms: np.ndarray  # (references, orders)
    lengths: np.ndarray  # (references,)


class CiderD:
    """CIDEr-D (coco-caption `cider_scorer.py`) against a fixed set of images' references.

    n = 1..4, TF-IDF with document frequencies over these references, hypothesis weights clipped by the
    reference weights, Gaussian length penalty (sigma 6), averaged over n-gram orders and references, times 10.
    Built once, it scores any number of hypotheses per image (self-critical training samples many).
    """

    def __init__(self, references: list[list[Tokens]]):
        self.references = references
        self.doc_freq: Counter[tuple[str, ...]] = Counter()
        for refs in references:
            self.doc_freq.update({ngram for ref in refs for ngram in _ngram_counts(ref)})
        self.log_n_images = math.log(float(len(references)))
        # Each image's reference vectors are made when it is first scored against: consensus reranking reads a few
        # of 6,000 training photos per caption, and all of them would hold ~150 MB.
        self._refs: dict[int, _References] = {}

    def refs(self, image: int) -> _References:
        """One image's references: per n-gram order, the references holding each n-gram and its TF-IDF weight there;
        their norms and lengths."""
        if image not in self._refs:
            vectors = [self.vector(r) for r in self.references[image]]
            weights: list[dict[tuple[str, ...], list[tuple[int, float]]]] = [{} for _ in range(CIDER_N)]
            for i, (vec, _, _) in enumerate(vectors):
                for order, ngrams in enumerate(vec):
                    for ngram, w in ngrams.items():
                        weights[order].setdefault(ngram, []).append((i, w))
            norms = np.array([norm for _, norm, _ in vectors]).reshape(len(vectors), CIDER_N)
            self._refs[image] = _References(weights, norms, np.array([length for *_, length in vectors], float))
        return self._refs[image]

    def score(self, image: int, hypothesis: Tokens) -> float:
        """CIDEr-D of one hypothesis for image number `image`."""
        return self.score_vector(image, self.vector(hypothesis))

    def vector(self, hypothesis: Tokens) -> tuple:
        """A hypothesis' TF-IDF vectors under these references' document frequencies, for `score_vector`."""
        return _tfidf(_ngram_counts(hypothesis), self.doc_freq, self.log_n_images)

    def score_vector(self, image: int, hypothesis_vector: tuple) -> float:
        """CIDEr-D of a hypothesis given as its `vector`: one caption scored against many images pays for it once."""
        vec, norm, length = hypothesis_vector
        refs = self.refs(image)
        dot = [[0.0] * CIDER_N for _ in range(len(refs.lengths))]  # (references, orders): the clipped dot products
        for order, ngrams in enumerate(vec):
            in_refs = refs.weights[order]
            for ngram, w in ngrams.items():
                for i, ref_w in in_refs.get(ngram, ()):  # the references that hold this n-gram
                    dot[i][order] += min(w, ref_w) * ref_w
        dots = np.array(dot)
        both = np.asarray(norm) * refs.norms
        dots = np.divide(dots, both, out=dots, where=both != 0)  # an empty side leaves its dot (0) as it is
        penalty = np.exp(-((length - refs.lengths) ** 2) / (2.0 * CIDER_SIGMA**2))
        return float(10.0 * (dots * penalty[:, None]).sum() / CIDER_N / len(refs.lengths))


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
