"""Consensus reranking: of the beam's n-best, keep the caption that agrees most with what people wrote for the most
similar training photos (Devlin et al., 2015, "Exploring Nearest Neighbor Approaches for Image Captioning").

Agreement is CIDEr-D against those photos' captions, with document frequencies over the training captions; a
caption's final score is its mean agreement plus `weight` × its beam score. The similar photos are the familiarity
check's nearest ones (`familiarity.npz` keeps the training photos' features in the same order as this index).
The model directory carries the training captions as vocabulary ids in `consensus.npz` (int16, ~0.3 MB).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from captioner.errors import ModelError
from captioner.files import CONSENSUS_FILE
from captioner.metrics import CiderD, Tokens, tokenize
from captioner.text import Vocabulary

if TYPE_CHECKING:
    from captioner.decode import Caption

MAX_CONSENSUS = 100  # similar training photos to compare with, at most


class Consensus:
    """The training photos' captions (tokens, one list per photo) and a CIDEr-D scorer against them."""

    def __init__(self, captions: Sequence[Sequence[Tokens]]):
        self.captions = [[list(c) for c in photo] for photo in captions]
        self.cider = CiderD(self.captions)  # document frequencies over the training photos, as CIDEr-D's own

    @classmethod
    def build(cls, captions: Sequence[Sequence[str]], vocab: Vocabulary) -> Consensus:
        """From raw captions per training photo; words outside the vocabulary become `<unk>`, as they will be stored."""
        return cls([[[vocab.words[vocab.id(w)] for w in tokenize(c)] for c in photo] for photo in captions])

    @classmethod
    def load(cls, model_dir: str | Path, vocab: Vocabulary) -> Consensus | None:
        """The index bundled in a model directory, or None when it has none."""
        path = Path(model_dir) / CONSENSUS_FILE
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                ids, lengths, per_photo = z["ids"], z["lengths"].astype(np.int64), z["per_photo"].astype(np.int64)
            fits = lengths.sum() == len(ids) and per_photo.sum() == len(lengths)
            if not fits or (ids.size and not 0 <= ids.min() <= ids.max() < len(vocab)):
                raise ValueError("its arrays do not fit together or this vocabulary")
        except (OSError, ValueError, KeyError) as e:
            raise ModelError(f"Unreadable {path}: {e}") from e
        return cls(_runs(_runs([vocab.words[i] for i in ids], lengths), per_photo))

    def save(self, model_dir: str | Path, vocab: Vocabulary) -> Path:
        """Write `consensus.npz` (the captions as vocabulary ids) into a model directory; returns its path."""
        path = Path(model_dir) / CONSENSUS_FILE
        flat = [c for photo in self.captions for c in photo]
        np.savez_compressed(
            path,
            ids=np.array([vocab.id(w) for c in flat for w in c], np.int16),
            lengths=np.array([len(c) for c in flat], np.int32),
            per_photo=np.array([len(photo) for photo in self.captions], np.int32),
        )
        return path

    def agreement(self, caption: Caption, neighbours: Sequence[int]) -> np.ndarray:
        """(n-best, neighbours): CIDEr-D of each of a caption's n-best against each neighbour photo's captions."""
        vectors = [self.cider.vector(h.tokens) for h in caption.n_best or [caption]]
        return np.array([[self.cider.score_vector(int(j), v) for j in neighbours] for v in vectors])


def _runs(items: list, sizes: np.ndarray) -> list[list]:
    """`items` cut into consecutive runs of the given sizes."""
    ends = np.cumsum(sizes)
    return [items[end - n : end] for end, n in zip(ends, sizes, strict=True)]


def rerank(caption: Caption, agreement: np.ndarray, weight: float) -> Caption:
    """The n-best reordered by mean agreement + weight × beam score (`Caption.score`); its first is the caption."""
    n_best = caption.n_best or [caption]
    total = agreement.mean(axis=1) + weight * np.array([h.score for h in n_best])
    ranked = [n_best[i] for i in np.argsort(-total, kind="stable")]
    return dataclasses.replace(ranked[0], n_best=ranked)
