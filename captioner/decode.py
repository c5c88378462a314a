"""Greedy and beam-search decoding, batched over images and beams and compiled with tf.function.

One search serves everything: beam size 1 *is* greedy decoding. Finished hypotheses leave the beam for a
per-image pool of k (an `<end>` only counts if it ranks within the top k candidates, as in the usual
implementations), so the beam always holds k live hypotheses; an image is done when its pool is full.
Scores are length-normalised as log p / length**α for ranking finished hypotheses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from captioner.ensemble import EnsembleDecoder
from captioner.errors import ModelError
from captioner.model import CaptionDecoder
from captioner.text import Vocabulary


@dataclass(frozen=True)
class Caption:
    """One decoded caption with its scores and one attention map per generated word."""

    text: str
    tokens: list[str]
    log_prob: float  # sum of the per-token log-probabilities, `<end>` included
    score: float  # log_prob / length**α, what beam search ranks by
    token_log_probs: np.ndarray  # (T_words + 1,): each word, then `<end>`
    attention: np.ndarray  # (T_words, H, W), each map sums to 1
    n_best: list[Caption] = field(default_factory=list)


def emittable_words(vocab_size: int, unk_id: int, end_id: int, last_step: bool | tf.Tensor = False) -> tf.Tensor:
    """(V,) True for the words a caption may take next: never <pad>/<start>/<unk>; on its last step only <end>."""
    ids = tf.range(vocab_size)  # ids 0..3 are <pad> <start> <end> <unk>
    return ((ids > unk_id) & tf.logical_not(last_step)) | (ids == end_id)


def _repeated_trigram_words(hist_tok, t, vocab_size):
    """(B, k, V) True for each word that would repeat a trigram already in its hypothesis (words 0..t-1)."""
    steps = tf.shape(hist_tok)[2]
    prev2 = tf.gather(hist_tok, tf.maximum(t - 2, 0), axis=2)[..., None]
    prev1 = tf.gather(hist_tok, tf.maximum(t - 1, 0), axis=2)[..., None]
    earlier = tf.range(steps - 2) <= t - 3  # trigrams that end before the word being chosen
    match = (hist_tok[:, :, :-2] == prev2) & (hist_tok[:, :, 1:-1] == prev1) & earlier
    where = tf.where(match)  # (n, 3): image, beam, start of the repeated bigram
    words = tf.gather_nd(hist_tok[:, :, 2:], where)
    index = tf.concat([tf.cast(where[:, :2], tf.int32), words[:, None]], 1)
    shape = tf.concat([tf.shape(hist_tok)[:2], [vocab_size]], 0)
    return tf.scatter_nd(index, tf.ones_like(words), shape) > 0


def _search(
    decoder: CaptionDecoder | EnsembleDecoder,
    features,
    k,
    steps,
    alpha,
    block_repeats,
    start_id: int,
    end_id: int,
    unk_id: int,
):
    """Beam search for a batch of feature grids; returns the per-image pools of k finished hypotheses."""
    regions, keys, states = decoder.encode(tf.cast(features, tf.float32))
    b, r = tf.shape(features)[0], tf.shape(features)[1] * tf.shape(features)[2]
    v = decoder.vocab_size
    # (B, ...) -> (B·k, ...); an ensemble's regions and keys are one tensor per member, hence the nest.
    regions, keys = tf.nest.map_structure(lambda x: tf.repeat(x, k, axis=0), (regions, keys))
    states = [tf.repeat(s, k, axis=0) for s in states]
    neg_inf = tf.constant(-np.inf, tf.float32)
    # Only beam 0 is alive at the start, so the first step does not pick k copies of one word.
    scores = tf.tile(tf.concat([[0.0], tf.fill([k - 1], neg_inf)], 0)[None], [b, 1])  # (B, k)
    tokens = tf.fill([b * k], start_id)
    hist_tok = tf.zeros([b, k, steps], tf.int32)
    hist_lp = tf.zeros([b, k, steps])
    hist_att = tf.zeros([b, k, steps, r])
    pool = {
        "score": tf.fill([b, k], neg_inf), "raw": tf.fill([b, k], neg_inf), "tok": hist_tok, "lp": hist_lp,
        "att": hist_att, "len": tf.zeros([b, k], tf.int32),
    }  # fmt: skip
    done = tf.zeros([b], tf.bool)
    rank_ok = tf.range(2 * k) < k

    def merge(pool, norm, cand):
        """Keep the k best of the pool and the candidates (norm = -inf where a candidate must not enter)."""
        top, idx = tf.math.top_k(tf.concat([pool["score"], norm], 1), k)
        out = {"score": top}
        for key in ("raw", "tok", "lp", "att", "len"):
            out[key] = tf.gather(tf.concat([pool[key], cand[key]], 1), idx, batch_dims=1)
        return out

    def step(t, tokens, states, scores, hist_tok, hist_lp, hist_att, pool, done):
        """One word for every live hypothesis: extend, move finished ones to the pool, keep the k best live."""
        logp, att, states = decoder.step(tokens, states, regions, keys)  # (B·k, V), (B·k, R)
        # The last step may only end a caption (no more than `steps - 1` words).
        logp = tf.where(emittable_words(v, unk_id, end_id, t >= steps - 1), logp, neg_inf)
        logp = tf.reshape(logp, [b, k, v])
        logp = tf.where(block_repeats & _repeated_trigram_words(hist_tok, t, v), neg_inf, logp)
        vals, idx = tf.math.top_k(tf.reshape(scores[:, :, None] + logp, [b, k * v]), 2 * k)  # (B, 2k)
        beam, word = idx // v, idx % v  # floor division: the parent beam of each candidate
        word_lp = vals - tf.gather(scores, beam, batch_dims=1)
        at_t = tf.one_hot(t, steps)  # (L,) writes step t into the gathered histories
        cand = {
            "raw": vals,
            "tok": tf.gather(hist_tok, beam, batch_dims=1) + word[..., None] * tf.cast(at_t, tf.int32),
            "lp": tf.gather(hist_lp, beam, batch_dims=1) + word_lp[..., None] * at_t,
            "att": tf.gather(hist_att, beam, batch_dims=1)
            + tf.gather(tf.reshape(att, [b, k, r]), beam, batch_dims=1)[:, :, None, :] * at_t[:, None],
            "len": tf.fill([b, 2 * k], t + 1),
        }
        is_end = word == end_id
        enters = is_end & rank_ok & tf.math.is_finite(vals) & ~done[:, None]
        norm = vals / tf.pow(tf.cast(t + 1, tf.float32), alpha)
        pool = merge(pool, tf.where(enters, norm, neg_inf), cand)
        scores, live = tf.math.top_k(tf.where(is_end, neg_inf, vals), k)  # the k best live continuations
        hist_tok, hist_lp, hist_att = (tf.gather(cand[key], live, batch_dims=1) for key in ("tok", "lp", "att"))
        parent = tf.reshape(tf.gather(beam, live, batch_dims=1) + tf.range(b)[:, None] * k, [-1])
        states = [tf.gather(s, parent) for s in states]
        tokens = tf.reshape(tf.gather(word, live, batch_dims=1), [-1])
        done = done | tf.reduce_all(tf.math.is_finite(pool["score"]), axis=1)
        return t + 1, tokens, states, scores, hist_tok, hist_lp, hist_att, pool, done

    def running(t, *loop_vars):
        return (t < steps) & ~tf.reduce_all(loop_vars[-1])  # stop early once every image's pool is full

    # An explicit while loop, not a Python loop for AutoGraph to convert: converting took over a second per trace.
    loop_vars = (tf.constant(0), tokens, states, scores, hist_tok, hist_lp, hist_att, pool, done)
    return tf.while_loop(running, step, loop_vars)[-2]


class BeamSearch:
    """Compiled beam search for one decoder: one graph for every beam size, caption length and batch size."""

    def __init__(self, decoder: CaptionDecoder | EnsembleDecoder, vocab: Vocabulary, grid: tuple[int, int]):
        if decoder.vocab_size != len(vocab):
            raise ModelError(f"Decoder has {decoder.vocab_size} words but the vocabulary {len(vocab)}.")
        self.decoder, self.vocab, self.grid = decoder, vocab, tuple(grid)
        # Beam size and steps are tensors, so greedy, every beam size and every max length share one trace.
        self._fn = tf.function(
            lambda f, a, k, steps, block_repeats: _search(
                decoder, f, k, steps, a, block_repeats, vocab.start_id, vocab.end_id, vocab.unk_id
            ),
            input_signature=[
                tf.TensorSpec([None, *self.grid, None], tf.float32),  # (B, H, W, C)
                tf.TensorSpec([], tf.float32),
                tf.TensorSpec([], tf.int32),
                tf.TensorSpec([], tf.int32),
                tf.TensorSpec([], tf.bool),
            ],
            autograph=False,
        )

    def __call__(
        self,
        features: np.ndarray,
        beam_size: int = 1,
        length_penalty: float = 0.7,
        max_length: int = 22,
        batch_size: int = 100,
        block_repeats: bool = False,
    ) -> list[Caption]:
        """Caption a batch of feature grids (N, H, W, C); returns one Caption (with its n-best) per image."""
        if not 1 <= beam_size <= 20:
            raise ValueError(f"Expected a beam size between 1 and 20. Received: {beam_size}.")
        if not 1 <= max_length <= 100:
            raise ValueError(f"Expected a max length between 1 and 100 words. Received: {max_length}.")
        settings = (
            tf.constant(length_penalty, tf.float32),
            tf.constant(beam_size),
            tf.constant(max_length + 1),
            tf.constant(block_repeats),
        )
        out: list[Caption] = []
        for start in range(0, len(features), batch_size):
            chunk = tf.convert_to_tensor(np.asarray(features[start : start + batch_size], np.float32))
            pool = {key: val.numpy() for key, val in self._fn(chunk, *settings).items()}
            out.extend(self._captions(pool, i) for i in range(len(chunk)))
        return out

    def _captions(self, pool: dict[str, np.ndarray], i: int) -> Caption:
        hyps = [self._caption(pool, i, j) for j in range(pool["score"].shape[1]) if np.isfinite(pool["score"][i, j])]
        return dataclasses.replace(hyps[0], n_best=hyps)

    def _caption(self, pool: dict[str, np.ndarray], i: int, j: int) -> Caption:
        length = int(pool["len"][i, j])
        n_words = length - 1  # every pooled hypothesis ends with <end>
        ids = pool["tok"][i, j, :n_words]
        words = [self.vocab.words[w] for w in ids]
        return Caption(
            text=" ".join(words),
            tokens=words,
            log_prob=float(pool["raw"][i, j]),
            score=float(pool["score"][i, j]),
            token_log_probs=pool["lp"][i, j, :length].copy(),
            attention=pool["att"][i, j, :n_words].reshape(n_words, *self.grid).copy(),
        )
