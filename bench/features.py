"""Feature extraction throughput on the same Flickr8k images: the cached pipeline vs a naive per-image loop.

    python bench/features.py [--backbone efficientnet_lite0] [--images 256] [--repeats 3] [--no-onednn]

Both sides read and decode the same image files and run the same BatchNorm-folded backbone; the naive loop calls it
once per image, the pipeline decodes in threads and runs batches of 32 into a fresh cache. The model is built and
traced before any timed run; the pipeline builds its model inside every call, so its build-and-trace time (measured
on a single image) is printed apart and left out of its throughput. Figures are medians of repeated runs with min–max.
"""

from __future__ import annotations

import argparse
import tempfile

from _common import need_shared, timed

from captioner.data import load_flickr8k
from captioner.features import extract_features, prepare_image, use_onednn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--images", type=int, default=256, help="images on both sides (the first N of Flickr8k)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-onednn", action="store_true", help="keep TensorFlow's default CPU kernels")
    args = parser.parse_args()
    onednn = not args.no_onednn and use_onednn()  # before importing TensorFlow, which reads the switch only then
    from captioner import backbones

    data = load_flickr8k(need_shared() / "flickr8k")
    paths = [data.image_path(n) for n in data.images()[: args.images]]
    size = backbones.get(args.backbone).input_size
    model = backbones.build_inference(args.backbone)  # what extract_features runs: ImageNet weights, BatchNorm folded

    def naive() -> None:
        for p in paths:
            model.predict_on_batch(prepare_image(p, size)[None])

    def pipeline(images) -> None:
        with tempfile.TemporaryDirectory() as cache:
            extract_features(images, cache, args.backbone, batch_size=32, progress=False)

    loop = timed(naive, args.repeats, warmup=1, scale=1.0)
    startup = timed(lambda: pipeline(paths[:1]), args.repeats, warmup=1, scale=1.0)
    batched = timed(lambda: pipeline(paths), args.repeats, warmup=0, scale=1.0)
    n = len(paths)
    rate_naive = n / loop.median
    rate_pipeline = n / (batched.median - startup.median)
    print(f"backbone {args.backbone}: {n} images, JPEG decode included, oneDNN {'on' if onednn else 'off'}; seconds")
    print(f"  naive per-image loop:               {loop}  -> {rate_naive:6.1f} images/s")
    print(f"  cached pipeline, {n} images:        {batched}")
    print(f"  its model build + trace (1 image): {startup}")
    print(f"  pipeline without its build:         {rate_pipeline:6.1f} images/s ({rate_pipeline / rate_naive:.1f}x)")
    print(f"  target >= 50 images/s: {'met' if rate_pipeline >= 50 else 'NOT met'}")


if __name__ == "__main__":
    main()
