"""Feature extraction throughput: the cached pipeline on all Flickr8k images vs a naive per-image loop.

python bench/features.py [--backbone efficientnet_lite0] [--naive 200] [--no-onednn]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from _common import need_shared

from captioner.data import load_flickr8k
from captioner.features import extract_features, prepare_image, use_onednn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--naive", type=int, default=200, help="images for the naive baseline")
    parser.add_argument("--no-onednn", action="store_true", help="keep TensorFlow's default CPU kernels")
    args = parser.parse_args()
    onednn = not args.no_onednn and use_onednn()  # before importing TensorFlow, which reads the switch only then
    from captioner import backbones

    data = load_flickr8k(need_shared() / "flickr8k")
    paths = [data.image_path(n) for n in data.images()]
    backbones.build(args.backbone)  # convert/cache ImageNet weights outside the timing

    model = backbones.build(args.backbone)
    size = backbones.get(args.backbone).input_size
    t = time.perf_counter()
    for p in paths[: args.naive]:  # seed-style: decode one image, one model call each
        model.predict_on_batch(prepare_image(p, size)[None])
    naive = args.naive / (time.perf_counter() - t)

    with tempfile.TemporaryDirectory() as cache:
        t = time.perf_counter()
        extract_features(paths, cache, args.backbone, batch_size=32)
        batched = len(paths) / (time.perf_counter() - t)
        t = time.perf_counter()
        extract_features(paths, cache, args.backbone)
        rerun = time.perf_counter() - t
    print(f"backbone {args.backbone}: {len(paths)} images, JPEG decode included, oneDNN {'on' if onednn else 'off'}")
    print(f"  naive per-image loop ({args.naive} images): {naive:6.1f} images/s")
    print(f"  cached pipeline (threads + batch 32):  {batched:6.1f} images/s  ({batched / naive:.1f}x)")
    print(f"  re-run on the complete cache:          {rerun:6.2f} s")
    print(f"  target >= 50 images/s: {'met' if batched >= 50 else 'NOT met'}")


if __name__ == "__main__":
    main()
