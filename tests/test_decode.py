"""Beam search: beam 1 is greedy, hypotheses are ranked and well formed, attention maps are distributions."""

from __future__ import annotations

import numpy as np
import pytest

from captioner.decode import BeamSearch
from captioner.model import ModelConfig, build_decoder
from captioner.text import Vocabulary

WORDS = ["a", "dog", "cat", "runs", "sits", "on", "the", "grass", "in", "snow", "red", "blue"]


VOCAB = Vocabulary.build(WORDS, min_count=1)
# Words-only attention LSTM (image_input=False): the crafted `ending` decoder below was tuned on this variant.
CONFIG = ModelConfig(grid=(3, 4), feature_channels=8, vocab_size=len(VOCAB), max_length=7, embed_dim=8, units=24,
                     feature_dim=16, attention_units=8, image_input=False)  # fmt: skip


def _random_decoder():
    import keras

    keras.utils.set_random_seed(3)
    return build_decoder(CONFIG)


@pytest.fixture(scope="module")
def search():
    """A random decoder: its captions run to the forced last word."""
    return BeamSearch(_random_decoder(), VOCAB, CONFIG.grid)


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


# ---- a decoder that ends its captions early, at lengths that vary ----------------------------------------------------


@pytest.fixture(scope="module")
def ending():
    """The same shapes with crafted output weights: `<end>` depends strongly on the state, so captions end after 4 to 7
    words and α changes which one wins; <pad>/<start>/<unk> get the highest logits, so only the mask keeps them out."""
    decoder, vocab = _random_decoder(), VOCAB
    kernel, bias = decoder.logits.get_weights()
    kernel *= 3.0
    kernel[:, vocab.end_id] = np.random.default_rng(0).normal(0, 16, kernel.shape[0])
    bias[vocab.end_id] += 0.8
    bias[[vocab.pad_id, vocab.start_id, vocab.unk_id]] += 3.0
    decoder.logits.set_weights([kernel, bias])
    return BeamSearch(decoder, vocab, CONFIG.grid)


def _rescore(search, features, captions):
    """Token log-probabilities (words, then <end>) and attention maps of each (image, words), fed word by word to
    the decoder's `step` in one batch."""
    dec, vocab = search.decoder, search.vocab
    ids = [[*(vocab.id(w) for w in words), vocab.end_id] for words in captions]
    longest = max(map(len, ids))
    padded = np.array([seq + [vocab.end_id] * (longest - len(seq)) for seq in ids])
    regions, keys, states = dec.encode(np.asarray(features))
    token, log_probs, maps = np.full(len(ids), vocab.start_id), [], []
    for t in range(longest):
        logp, att, states = dec.step(token, states, regions, keys)
        log_probs.append(np.take_along_axis(np.asarray(logp), padded[:, t : t + 1], 1)[:, 0])
        maps.append(np.asarray(att))
        token = padded[:, t]
    log_probs, maps = np.stack(log_probs, 1), np.stack(maps, 1)
    return [(log_probs[i, : len(seq)], maps[i, : len(seq) - 1]) for i, seq in enumerate(ids)]


def _reference_beam(search, feats, k, alpha, max_length):
    """Beam search written plainly: a Python loop over words, each image's k hypotheses in one `step` call per word.

    The same rules as the compiled search: only beam 0 starts; the 2k best candidates are kept; an `<end>` among the k
    best of them enters a pool of k ranked by log p / length**α; the k best other candidates live on; an image stops
    when its pool is full or at the forced last word. Returns, per image, [(words, score)] best first.
    """
    dec, vocab, n = search.decoder, search.vocab, len(feats)
    regions, keys, states = dec.encode(np.repeat(feats, k, axis=0))
    scores = np.tile([0.0] + [-np.inf] * (k - 1), (n, 1))
    seqs = [[[] for _ in range(k)] for _ in range(n)]
    tokens, pools = np.full(n * k, vocab.start_id), [[] for _ in range(n)]
    for t in range(max_length + 1):
        logp, _, states = dec.step(tokens, states, regions, keys)
        v = logp.shape[1]
        allowed = (np.arange(v) > vocab.unk_id) & (t < max_length)
        allowed[vocab.end_id] = True
        total = scores[:, :, None] + np.where(allowed, np.asarray(logp, np.float64), -np.inf).reshape(n, k, v)
        parents = []
        for i in range(n):
            order = np.argsort(-total[i], axis=None, kind="stable")[: 2 * k]
            candidates = [(total[i].flat[j], *divmod(int(j), v)) for j in order]
            if len(pools[i]) < k:
                for rank, (value, beam, word) in enumerate(candidates):
                    if word == vocab.end_id and rank < k and np.isfinite(value):
                        pools[i].append((seqs[i][beam], value / (t + 1) ** alpha))
                pools[i] = sorted(pools[i], key=lambda h: -h[1])[:k]
            live = [c for c in candidates if c[2] != vocab.end_id][:k]
            scores[i] = [value for value, _, _ in live]
            seqs[i] = [[*seqs[i][beam], vocab.words[word]] for _, beam, word in live]
            parents += [i * k + beam for _, beam, _ in live]
            tokens[i * k : (i + 1) * k] = [word for _, _, word in live]
        states = [np.asarray(s)[parents] for s in states]
        if all(len(pool) == k for pool in pools):
            break
    return pools


def test_the_ending_decoder_ends_captions_early_at_varied_lengths_and_alpha_changes_the_best(ending, feats):
    lengths = {len(h.tokens) for c in ending(feats, beam_size=4, max_length=7) for h in c.n_best}
    assert len(lengths) >= 3 and min(lengths) <= 5  # what the tests below rely on
    short, long = ending(feats, beam_size=4, length_penalty=0.0), ending(feats, beam_size=4, length_penalty=1.5)
    assert any(a.text != b.text for a, b in zip(short, long, strict=True))
    assert np.mean([len(c.tokens) for c in short]) < np.mean([len(c.tokens) for c in long])


@pytest.mark.parametrize(("beam_size", "alpha"), [(1, 0.7), (3, 0.0), (4, 0.7), (4, 1.5)])
def test_every_n_best_hypothesis_rescores_word_by_word_to_its_log_probs_and_attention(ending, feats, beam_size, alpha):
    hyps = [(f, h) for f, c in zip(feats, ending(feats, beam_size, alpha, 7), strict=True) for h in c.n_best]
    rescored = _rescore(ending, np.stack([f for f, _ in hyps]), [h.tokens for _, h in hyps])
    for (_, h), (log_probs, maps) in zip(hyps, rescored, strict=True):
        np.testing.assert_allclose(h.token_log_probs, log_probs, atol=1e-4, err_msg=h.text)
        np.testing.assert_allclose(h.log_prob, log_probs.sum(), atol=1e-3, err_msg=h.text)
        np.testing.assert_allclose(h.score, log_probs.sum() / (len(h.tokens) + 1) ** alpha, atol=1e-3, err_msg=h.text)
        np.testing.assert_allclose(h.attention, maps.reshape(h.attention.shape), atol=1e-5, err_msg=h.text)


@pytest.mark.parametrize(("beam_size", "alpha"), [(2, 0.7), (4, 0.0), (4, 1.5)])
def test_n_best_equals_a_plain_reference_beam_search(ending, feats, beam_size, alpha):
    found = ending(feats, beam_size, alpha, 7)
    for c, expected in zip(found, _reference_beam(ending, feats, beam_size, alpha, 7), strict=True):
        assert [h.tokens for h in c.n_best] == [words for words, _ in expected]
        np.testing.assert_allclose([h.score for h in c.n_best], [score for _, score in expected], atol=1e-3)


def test_the_finished_pool_holds_k_distinct_ended_hypotheses_ranked_by_normalised_score(ending, feats):
    for alpha in (0.0, 1.5):
        for c in ending(feats, beam_size=4, length_penalty=alpha, max_length=7):
            assert len(c.n_best) == 4 and len({h.text for h in c.n_best}) == 4
            normalised = [h.token_log_probs.sum() / len(h.token_log_probs) ** alpha for h in c.n_best]
            assert normalised == sorted(normalised, reverse=True)
            assert c.text == c.n_best[0].text and c.score == max(h.score for h in c.n_best)


def test_early_end_matches_plain_greedy_decoding(ending, feats):
    greedy = ending(feats, beam_size=1, max_length=7)
    assert [c.text for c in greedy] == _greedy_reference(ending, feats, 7)
    assert min(len(c.tokens) for c in greedy) < 7


def test_pad_start_and_unk_are_never_emitted_although_they_score_highest(ending, feats):
    for beam_size in (1, 4):
        for c in ending(feats, beam_size=beam_size, max_length=7):
            for h in c.n_best:
                assert not {"<pad>", "<start>", "<unk>", "<end>"} & set(h.tokens), h.text
