"""The "Unfamiliar photo" signal: how often a model's calibration (made by `captioner export --data`) fires.

Pooled features of train/dev/test come from the feature cache (`captioner features`); the out-of-domain photos are
encoded by the model: ../shared/backbones/photos (ImageNet photos; the flickr8k_* ones there are in-domain) and a
set made here (rendered text, plain textures, charts). A model without a calibration is calibrated here first.

    python bench/unfamiliar.py --features CACHE --data FLICKR8K [--model DIR]
"""

from __future__ import annotations

import argparse
import io

import numpy as np
from _common import need_shared
from PIL import Image, ImageDraw, ImageFont

from captioner import familiarity, paths
from captioner.data import load_flickr8k
from captioner.features import open_cache
from captioner.files import FAMILIARITY_FILE
from captioner.imagenet import pool


def split_features(cache_root: str, data: str, backbone: str, size: int) -> dict[str, np.ndarray]:
    """Pooled features (N, C) of the train, dev and test splits, read from the feature cache in chunks."""
    cache, flickr = open_cache(cache_root, backbone, size), load_flickr8k(data)
    out = {}
    for split in ("train", "dev", "test"):
        rows = cache.rows(flickr.images(split))
        order = np.argsort(rows)  # memory-mapped rows read in file order
        pooled = np.empty((len(rows), cache.features.shape[-1]), np.float32)
        for i in range(0, len(rows), 512):
            chunk = order[i : i + 512]
            pooled[chunk] = pool(cache.features[rows[chunk]])
        out[split] = pooled
    return out


def made_photos() -> dict[str, np.ndarray]:
    """Photos nothing like Flickr8k: rendered text, plain textures and charts (seeded, 640×480)."""
    from matplotlib.figure import Figure

    rng, font, out = np.random.default_rng(0), ImageFont.load_default(size=28), {}
    for i, text in enumerate(["Quarterly report 2025", "Lorem ipsum dolor sit amet", "ERROR 404: page not found"]):
        im = Image.new("RGB", (640, 480), "white")
        draw = ImageDraw.Draw(im)
        for row in range(8):
            draw.text((20, 30 + 55 * row), text, "black", font)
        out[f"text {i + 1}"] = np.asarray(im)
    y, x = np.mgrid[0:480, 0:640]
    out["noise"] = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    out["stripes"] = np.repeat((((x // 20) % 2) * 255).astype(np.uint8)[..., None], 3, -1)
    out["checkerboard"] = np.repeat((((x // 40 + y // 40) % 2) * 255).astype(np.uint8)[..., None], 3, -1)
    out["plain gray"] = np.full((480, 640, 3), 128, np.uint8)
    out["gradient"] = np.stack([x * 255 // 639, 255 - y * 255 // 479, np.full_like(x, 90)], -1).astype(np.uint8)
    for kind in ("bar", "line", "pie"):
        fig = Figure(figsize=(6.4, 4.8))
        ax = fig.subplots()
        if kind == "bar":
            ax.bar(range(8), rng.uniform(1, 9, 8))
        elif kind == "line":
            ax.plot(rng.normal(size=100).cumsum())
        else:
            ax.pie(rng.uniform(1, 5, 5))
        ax.set_title(f"{kind} chart")
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        out[f"{kind} chart"] = np.asarray(Image.open(buf).convert("RGB"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", required=True, help="feature cache root (captioner features --out)")
    parser.add_argument("--data", required=True, help="Flickr8k directory")
    parser.add_argument("--model", default=paths.BUNDLED_MODEL_DIR, help="model directory (default: bundled)")
    args = parser.parse_args()
    from captioner.pipeline import Captioner

    cap = Captioner.from_directory(args.model)
    feats = split_features(args.features, args.data, cap.config.backbone, cap.config.image_size)
    fam = cap.familiarity or familiarity.calibrate(feats["train"], feats["dev"])
    print(f"calibration: {FAMILIARITY_FILE} of {args.model}" if cap.familiarity else "calibrated here, not bundled")
    shared = need_shared() / "backbones" / "photos"
    photos = sorted(p for p in shared.iterdir() if p.is_file())
    imagenet = [p for p in photos if not p.name.startswith("flickr8k_")]
    flickr = [p for p in photos if p.name.startswith("flickr8k_")]
    made = made_photos()
    sets = {
        "Flickr8k dev (the calibration's split)": feats["dev"],
        "Flickr8k test": feats["test"],
        "Flickr8k photos among the ImageNet set": cap.encode(flickr).seen,
        "ImageNet photos (not Flickr8k)": cap.encode(imagenet).seen,
        "made here: text, textures, charts": cap.encode(list(made.values()), list(made)).seen,
    }
    print(
        f"threshold {fam.threshold:.4f} (dev {familiarity.QUANTILE:.1%} quantile, k={fam.k}, {fam.basis.shape[1]} dims)"
    )
    print(f"{'photos':42s} {'n':>5s} {'flagged':>8s}")
    for name, f in sets.items():
        flags = fam.unfamiliar(f)
        print(f"{name:42s} {len(flags):5d} {np.mean(flags):8.1%}")
    for label, names, f in (("ImageNet", [p.name for p in imagenet], sets["ImageNet photos (not Flickr8k)"]),
                            ("made", list(made), sets["made here: text, textures, charts"])):  # fmt: skip
        scores = fam.score(f)
        marked = [f"{n} {s:.3f}{'*' if s > fam.threshold else ''}" for n, s in zip(names, scores, strict=True)]
        print(f"{label} (* flagged): " + ", ".join(marked))


if __name__ == "__main__":
    main()
