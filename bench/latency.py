"""End-to-end caption latency and split evaluation time, vs the naive seed-style decoder on the same weights.

    python bench/latency.py [--model DIR|hf://...] [--repeats 20]

Prints medians: one 500×375 photo (decode, resize, backbone, caption) greedy and beam 5; a 12-megapixel
JPEG greedy; the naive decoder (one model call per word and per hypothesis) on the same photo and the
speed-up; and, with ../shared present, the whole test split greedy + beam 3.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
from _common import SHARED, median_ms
from PIL import Image

from captioner import Captioner


def naive_decode(model: Captioner, features: np.ndarray, beam_size: int) -> list[str]:
    """The seed-style decoder: a Python loop calling the model once per word and per hypothesis."""
    dec, vocab = model.model.decoder, model.vocab
    regions, keys, states = dec.encode(features)
    beams = [(0.0, [vocab.start_id], states)]
    done = []
    for _ in range(model.config.max_length + 1):
        candidates = []
        for score, seq, st in beams:
            logp, _, new_st = dec.step(np.array([seq[-1]]), st, regions, keys)
            logp = np.asarray(logp[0])
            for w in np.argsort(logp)[-beam_size:]:
                candidates.append((score + float(logp[w]), [*seq, int(w)], new_st))
        candidates.sort(key=lambda c: c[0], reverse=True)
        beams = []
        for c in candidates[:beam_size]:
            (done if c[1][-1] == vocab.end_id else beams).append(c)
        if not beams or len(done) >= beam_size:
            break
    best = max(done or beams, key=lambda c: c[0])
    return vocab.decode(best[1])


def photo_bytes(width: int, height: int) -> bytes:
    if width == 500 and SHARED.exists():
        for p in sorted((SHARED / "photos").glob("*.jpg")):
            if Image.open(p).size == (500, 375):
                return p.read_bytes()
    rng = np.random.default_rng(0)
    x = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
    x = np.clip(x + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    model = Captioner.load(args.model)
    photo, big = photo_bytes(500, 375), photo_bytes(4000, 3000)
    print(f"model {model.info.source} ({model.config.backbone}, grid {model.config.grid})")

    print(f"decoding as tuned on dev: {model.tuned}")  # caption() and decode_features() default to it
    greedy = median_ms(lambda: model.caption([photo], beam_size=1), args.repeats)
    beam5 = median_ms(lambda: model.caption([photo], beam_size=5), args.repeats)
    big_greedy = median_ms(lambda: model.caption([big], beam_size=1), max(5, args.repeats // 4))
    print(f"500×375 photo end to end, greedy:  median {greedy:7.1f} ms   (target <= 80)")
    print(f"500×375 photo end to end, beam 5:  median {beam5:7.1f} ms   (target <= 200)")
    print(f"12 MP JPEG end to end, greedy:     median {big_greedy:7.1f} ms   (target <= 250)")

    feats = model.encode([photo]).features
    for k in (1, 5):  # the naive decoder neither normalises length nor blocks repeats, so neither does this search
        plain = {"beam_size": k, "length_penalty": 0.0, "block_repeats": False}
        compiled = median_ms(lambda plain=plain: model.decode_features(feats, **plain), args.repeats)
        naive = median_ms(lambda k=k: naive_decode(model, feats, k), max(3, args.repeats // 4), warmup=1)
        print(f"decode only, beam {k}: compiled {compiled:6.1f} ms, naive seed-style {naive:7.1f} ms "
              f"-> {naive / compiled:5.1f}x faster")  # fmt: skip

    if SHARED.exists():
        from captioner.data import load_flickr8k
        from captioner.evaluate import encode_split

        data = load_flickr8k(SHARED / "flickr8k")
        t = time.perf_counter()
        f = encode_split(model, data, "test")
        for k in (1, 3):
            model.decode_features(f, beam_size=k)
        print(f"test split (1,000 images) greedy + beam 3, images read from disk: {time.perf_counter() - t:5.1f} s "
              "(target <= 90)")  # fmt: skip
    else:
        print(f"skip: test-split timing needs {SHARED}")


if __name__ == "__main__":
    main()
