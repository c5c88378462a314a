"""End-to-end caption latency, and compiled beam search vs the same search driven from a Python loop.

    python bench/latency.py [--model DIR|hf://...] [--repeats 20] [--split-repeats 0] [--beam K]

Every figure is the median of repeated runs with its min–max. End to end (decode, resize, backbone, caption): one
500×375 photo greedy, beam 5 and the tuned beam (or --beam K), and a 12-megapixel JPEG greedy. Decode only:
`BeamSearch` (one tf.while_loop) vs a Python loop over words that calls the same compiled `decoder.step` once per
word for all k hypotheses, with the same masks (no <pad>/<start>/<unk>, repeats blocked as tuned), the same pool of k
finished hypotheses ranked by log p / length**α and the same stopping rule; the bench checks that both give the same
n-best on every photo before it prints a ratio. With --split-repeats N and ../shared present: the whole test split,
greedy + the tuned beam (or --beam K), N runs.
"""

from __future__ import annotations

import argparse
import io

import numpy as np
import tensorflow as tf
from _common import SHARED, timed
from PIL import Image

from captioner import Captioner
from captioner.consensus import rerank
from captioner.decode import BeamSearch, emittable_words


class PythonLoopSearch:
    """Beam search for one image as a Python loop over words; each word is one call of the compiled decoder step."""

    def __init__(self, model: Captioner):
        dec, self.vocab = model.decoder, model.vocab  # the decoder the search runs (an ensemble's too)
        self.encode = tf.function(dec.encode, autograph=False)
        self.step = tf.function(dec.step, autograph=False, reduce_retracing=True)
        v = dec.vocab_size
        ids = (self.vocab.unk_id, self.vocab.end_id)
        self.allowed, self.last = (emittable_words(v, *ids, last).numpy() for last in (False, True))

    def __call__(self, features: np.ndarray, k: int, alpha: float, max_length: int, block: bool) -> list[list[str]]:
        """The n-best word lists, best first (features: one image, (1, H, W, C))."""
        vocab = self.vocab
        regions, keys, states = self.encode(tf.constant(features, tf.float32))
        regions, keys = tf.nest.map_structure(lambda x: tf.repeat(x, k, 0), (regions, keys))  # per member too
        states = [tf.repeat(s, k, 0) for s in states]
        scores = np.array([0.0] + [-np.inf] * (k - 1), np.float32)  # only beam 0 is alive at the start
        seqs, tokens, pool = [[] for _ in range(k)], np.full(k, vocab.start_id, np.int32), []
        for t in range(max_length + 1):
            logp, _, states = self.step(tf.constant(tokens), states, regions, keys)
            logp = np.where(self.last if t == max_length else self.allowed, logp.numpy(), -np.inf)
            if block:
                for beam, seq in enumerate(seqs):
                    logp[beam, _repeating(seq)] = -np.inf
            total = (scores[:, None] + logp).astype(np.float32).ravel()
            order = np.argsort(-total, kind="stable")[: 2 * k]
            candidates = [(total[i], *divmod(int(i), logp.shape[1])) for i in order]
            for rank, (value, beam, word) in enumerate(candidates):
                if word == vocab.end_id and rank < k and np.isfinite(value):
                    pool.append((float(value) / (t + 1) ** alpha, seqs[beam]))
            pool = sorted(pool, key=lambda h: -h[0])[:k]
            if len(pool) == k:
                break
            live = [c for c in candidates if c[2] != vocab.end_id][:k]
            scores = np.array([value for value, _, _ in live], np.float32)
            seqs = [[*seqs[beam], word] for _, beam, word in live]
            parents = tf.constant([beam for _, beam, _ in live])
            states = [tf.gather(s, parents) for s in states]
            tokens = np.array([word for _, _, word in live], np.int32)
        return [[vocab.words[w] for w in seq] for _, seq in pool]


def _repeating(seq: list[int]) -> list[int]:
    """Words that would repeat a trigram already in `seq`."""
    if len(seq) < 3:
        return []
    return [seq[i + 2] for i in range(len(seq) - 2) if (seq[i], seq[i + 1]) == (seq[-2], seq[-1])]


def photos(width: int, height: int, count: int) -> list[bytes]:
    """`count` JPEGs of width×height: Flickr8k originals from ../shared when there are, else generated ones."""
    found = []
    if SHARED.exists():
        found = [p.read_bytes() for p in sorted((SHARED / "photos").glob("*.jpg"))
                 if Image.open(p).size == (width, height)]  # fmt: skip
    rng = np.random.default_rng(0)
    while len(found) < count:
        x = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
        x = np.clip(x + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(x).save(buf, "JPEG", quality=90)
        found.append(buf.getvalue())
    return found[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--photos", type=int, default=8, help="photos on which both searches must agree")
    parser.add_argument("--split-repeats", type=int, default=0, help="runs over the whole test split (needs ../shared)")
    parser.add_argument("--beam", type=int, default=None, help="the beam timed besides greedy and 5 (default: tuned)")
    args = parser.parse_args()
    model = Captioner.load(args.model)
    d = model.tuned
    print(f"model {model.info.source} ({model.config.backbone}, grid {model.config.grid})")
    reranking = f"{d.consensus} photos, weight {d.consensus_weight}" if d.consensus else "off"
    print(f"decoding as tuned on dev: α={d.length_penalty}, repeats blocked: {d.block_repeats}, consensus reranking: "
          f"{reranking}; times in ms")  # fmt: skip
    tuned = {"length_penalty": d.length_penalty, "block_repeats": d.block_repeats, "consensus": d.consensus,
             "consensus_weight": d.consensus_weight}  # fmt: skip
    photo, big = photos(500, 375, 1)[0], photos(4000, 3000, 1)[0]
    greedy = timed(lambda: model.caption([photo], 1, **tuned), args.repeats)
    print(f"500×375 photo end to end, greedy: {greedy}  (target <= 80)")
    print(f"500×375 photo end to end, beam 5: {timed(lambda: model.caption([photo], 5, **tuned), args.repeats)}"
          "  (target <= 200)")  # fmt: skip
    beam = args.beam or d.beam_size
    if beam != 5:
        other = timed(lambda: model.caption([photo], beam, **tuned), args.repeats)
        print(f"500×375 photo end to end, beam {beam}{' (as tuned on dev)' if beam == d.beam_size else ''}: {other}")
    if d.consensus:  # what reranking adds, timed alone: end-to-end medians drift by more than it costs
        encoded = model.encode([photo])
        plain = timed(lambda: model.decode(encoded, beam, **{**tuned, "consensus": 0}), args.repeats)
        caps = model.decode(encoded, beam, **{**tuned, "consensus": 0})
        step = timed(
            lambda: [
                rerank(c, a, d.consensus_weight)
                for c, a in zip(caps, model.agreement(caps, encoded.seen, d.consensus), strict=True)
            ],
            args.repeats,
        )
        print(f"consensus reranking of that photo's beam-{beam} n-best ({d.consensus} photos): {step}; the beam "
              f"search before it {plain} -> +{step.median / plain.median:.0%} of decoding")  # fmt: skip
    big_greedy = timed(lambda: model.caption([big], 1, **tuned), max(5, args.repeats // 4))
    print(f"12 MP JPEG end to end, greedy:    {big_greedy}  (target <= 250)")

    loop, n = PythonLoopSearch(model), model.config.max_length
    feats = model.encode(photos(500, 375, args.photos)).features
    print(f"decode only, per photo, over {len(feats)} photos one at a time (both sides the same photos and settings):")
    for k in (1, 3, 5):
        compiled = [[h.tokens for h in model.decode_features(f[None], k)[0]
                     .n_best] for f in feats]  # fmt: skip
        looped = [loop(f[None], k, d.length_penalty, n, d.block_repeats) for f in feats]
        assert compiled == looped, f"beam {k}: the two searches disagree on the n-best"
        each = len(feats)
        fast = timed(lambda k=k: [model.decode_features(f[None], k)
                                  for f in feats], args.repeats, scale=1000 / each)  # fmt: skip
        slow = timed(lambda k=k: [loop(f[None], k, d.length_penalty, n, d.block_repeats) for f in feats],
                     args.repeats, scale=1000 / each)  # fmt: skip
        print(
            f"  beam {k}: same n-best on all {each} photos. tf.while_loop {fast}; Python loop over the "
            f"compiled step {slow} -> {slow.median / fast.median:4.1f}x"
        )

    if model.stages:  # the backbone is cut: the ImageNet view and members' own stages run on the cut activation
        pixels = model.prepare(photo)[None]
        cut, _ = model.model.backbone(pixels, training=False)
        whole = timed(lambda: model.model.backbone(pixels, training=False), args.repeats)
        if model.shared.original is not None:
            view = timed(lambda: model.shared.original(cut, training=False), args.repeats)
            print(f"ImageNet view through the original {model.stages} stage(s), per photo: {view}; "
                  f"the backbone pass {whole} -> +{view.median / whole.median:.0%}")  # fmt: skip
        if own := [s for s in model.shared.sources if s is not model.shared.original]:
            tops = timed(lambda: [s(cut, training=False) for s in own], args.repeats)
            print(f"{len(own)} further member(s)' own top stages, per photo: {tops}; "
                  f"the backbone pass {whole} -> +{tops.median / whole.median:.0%}")  # fmt: skip
    if len(model.decoders) == 1:
        print("ensemble: the model ships one decoder (K=1), so decoding costs what it costs above")
    if len(model.decoders) > 1:  # what the ensemble costs: the same search over its first member alone
        single = BeamSearch(model.decoders[0], model.vocab, model.config.grid)
        first = feats[..., : model.config.feature_channels]  # its grid: members' own grids are stacked after it
        print(f"ensemble of {len(model.decoders)} decoders vs its first decoder alone, decode only, per photo:")
        for k in (1, 5):
            one = timed(lambda k=k: [single(f[None], k, d.length_penalty, n, block_repeats=d.block_repeats)
                                     for f in first], args.repeats, scale=1000 / len(feats))  # fmt: skip
            all_k = timed(lambda k=k: [model.decode_features(f[None], k) for f in feats], args.repeats,
                          scale=1000 / len(feats))  # fmt: skip
            print(f"  beam {k}: K=1 {one}; K={len(model.decoders)} {all_k} -> {all_k.median / one.median:4.2f}x")

    if args.split_repeats and SHARED.exists():
        from captioner.data import load_flickr8k
        from captioner.evaluate import encode_split

        data = load_flickr8k(SHARED / "flickr8k")

        def split() -> None:
            images = encode_split(model, data, "test")
            for k in (1, beam):  # what `captioner evaluate` decodes (with --beam), reranked as tuned
                model.decode_features(images.features, k, seen=images.seen)

        runs = timed(split, args.split_repeats, warmup=0, scale=1.0)
        print(f"test split (1,000 images read from disk) greedy + beam {beam}, s: {runs}  (target <= 90)")


if __name__ == "__main__":
    main()
