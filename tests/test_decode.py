"""Beam search: beam 1 is greedy, hypotheses are ranked and well formed, attention maps are distributions."""

from __future__ import annotations

import numpy as np
import pytest

from captioner.decode import BeamSearch
from captioner.model import ModelConfig, build_decoder
from captioner.text import Vocabulary

WORDS = ["a", "dog", "cat", "runs", "sits", "on", "the", "grass", "in", "snow", "red", "blue"]


@pytest.fixture(scope="module")
def search():
    import keras

    keras.utils.set_random_seed(3)
    vocab = Vocabulary.build(WORDS, min_count=1)
    config = ModelConfig(grid=(3, 4), feature_channels=8, vocab_size=len(vocab), max_length=7, embed_dim=8,
                         units=24, feature_dim=16, attention_units=8)  # fmt: skip
    return BeamSearch(build_decoder(config), vocab, config.grid)


@pytest.fixture(scope="module")
def feats():
    return np.random.default_rng(1).normal(0, 2, (6, 3, 4, 8)).astype("float32")


def _greedy_reference(search, feats, max_length):
    """Plain argmax decoding, one image at a time, written independently of the beam search."""
    dec, vocab, out = search.decoder, search.vocab, []
    for f in feats:
        regions, keys, states = dec.encode(f[None])
        token, words = np.array([vocab.start_id]), []
        for step in range(max_length + 1):
            logp, _, states = dec.step(token, states, regions, keys)
            logp = np.array(logp[0])
            if step == max_length:
                break
            logp[[vocab.pad_id, vocab.start_id, vocab.unk_id]] = -np.inf  # never emitted
            token = np.array([int(np.argmax(logp))])
            if token[0] == vocab.end_id:
                break
            words.append(vocab.words[token[0]])
        out.append(" ".join(words))
    return out


def test_beam_size_one_equals_greedy(search, feats):
    greedy = search(feats, beam_size=1, max_length=7)
    assert [c.text for c in greedy] == _greedy_reference(search, feats, 7)


def test_beam_search_never_scores_below_greedy(search, feats):
    greedy = search(feats, beam_size=1, length_penalty=0.0, max_length=7)
    beam = search(feats, beam_size=5, length_penalty=0.0, max_length=7)
    for g, b in zip(greedy, beam, strict=True):
        assert b.log_prob >= g.log_prob - 1e-4


def test_results_are_well_formed(search, feats):
    for c in search(feats, beam_size=4, length_penalty=0.7, max_length=7):
        n = len(c.tokens)
        assert c.attention.shape == (n, 3, 4)
        np.testing.assert_allclose(c.attention.sum(axis=(1, 2)), 1.0, atol=1e-4)
        assert c.token_log_probs.shape == (n + 1,)
        np.testing.assert_allclose(c.token_log_probs.sum(), c.log_prob, atol=1e-3)
        np.testing.assert_allclose(c.score, c.log_prob / (n + 1) ** 0.7, atol=1e-4)
        assert 1 <= len(c.n_best) <= 4 and c.n_best[0].text == c.text
        scores = [h.score for h in c.n_best]
        assert scores == sorted(scores, reverse=True)
        assert n <= 7 and not {"<end>", "<pad>", "<start>", "<unk>"} & set(c.tokens)


def test_batching_does_not_change_results(search, feats):
    whole = search(feats, beam_size=3, max_length=7)
    pieces = search(feats, beam_size=3, max_length=7, batch_size=2)
    assert [c.text for c in whole] == [c.text for c in pieces]


def test_one_compiled_graph_serves_every_beam_size_length_and_batch(search, feats):
    for beam_size, max_length, batch_size in [(1, 7, 100), (2, 3, 4), (5, 7, 1), (10, 5, 3), (3, 1, 6)]:
        search(feats, beam_size=beam_size, max_length=max_length, batch_size=batch_size)
    assert search._fn.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("kw", [{"beam_size": 0}, {"max_length": 0}])
def test_bad_decoding_settings_are_rejected(search, feats, kw):
    with pytest.raises(ValueError, match="Expected"):
        search(feats, **kw)


def _trigrams(words: list[str]) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + 3]) for i in range(len(words) - 2)]


def test_blocking_repeats_leaves_no_repeated_trigram_in_any_hypothesis(search, feats):
    def repeats(captions):
        return [h.text for c in captions for h in c.n_best if len(set(_trigrams(h.tokens))) < len(_trigrams(h.tokens))]

    assert repeats(search(feats, beam_size=3, max_length=7))  # this random decoder does repeat itself
    for beam_size in (1, 3):
        blocked = search(feats, beam_size=beam_size, max_length=7, block_repeats=True)
        assert repeats(blocked) == []
        assert all(1 <= len(c.tokens) <= 7 for c in blocked)
