"""Photo-library throughput: `captioner caption --out` over the Flickr8k test split, per engine, in one run.

    python bench/batch.py [--limit N] [--model DIR|hf://...] [--beam K] [--workers 2] [--sweep 4,8,32]

Runs the real command (greedy + beam, the model's tuned decoding or --beam K) on the 1,000 test-split images (or the
first N) for `--batch 1` (the per-file loop), the default batch, and `--engine ray` with 2 local actors, watching its
output file grow. Prints, per run: steady images/s (rows over time from the first written batch to the last),
start-up (process start to first batch written), and the default batch's speed-up over `--batch 1`. For Ray it splits
the cost into start-up and per-image time, gives the per-actor rate, and what each added node would bring. Also
counts images whose captions differ between runs (batching changes float rounding, which can flip a near tie).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import need_shared

from captioner.library import DEFAULT_BATCH

REPO = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"captioned (\d+), failed (\d+).*?; ([\d.]+) images/s")


def run(name: str, args: list[str], files: Path, out: Path) -> dict:
    """Run one `captioner caption` to completion, sampling how many rows its output holds over time."""
    cmd = [sys.executable, "-m", "captioner.cli", "caption", "--files-from", str(files), "--out", str(out), *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    samples = []
    while proc.poll() is None:
        time.sleep(0.2)
        samples.append((time.perf_counter() - start, _rows(out)))
    stderr = proc.stderr.read()
    wall = time.perf_counter() - start
    samples.append((wall, _rows(out)))
    summary = SUMMARY.search(stderr)
    if proc.returncode not in (0, 1) or not summary:
        sys.exit(f"{name}: `{' '.join(cmd)}` failed ({proc.returncode}):\n{stderr[-2000:]}")
    first = next((t, n) for t, n in samples if n)
    last = samples[-1]
    steady = (last[1] - first[1]) / (last[0] - first[0]) if last[0] > first[0] else float("nan")
    result = {"name": name, "rows": last[1], "wall": wall, "first_rows": first, "steady": steady}
    print(
        f"{name:28s} {steady:6.2f} images/s steady   first {first[1]:3d} rows after {first[0]:5.1f} s   "
        f"{last[1]} rows in {wall:6.1f} s wall",
        flush=True,
    )
    return result


def _rows(out: Path) -> int:
    try:
        with out.open("rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def captions(out: Path) -> dict[str, tuple[str, str]]:
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return {r["image"]: (r["greedy"]["caption"], r["beam"]["caption"]) for r in rows if "greedy" in r}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="only the first N test images (a quick look)")
    parser.add_argument("--model", default=None)
    parser.add_argument("--beam", type=int, default=None, help="beam size (default: the model's tuned value)")
    parser.add_argument("--workers", type=int, default=2, help="Ray actors (default 2: one per core here)")
    parser.add_argument("--sweep", default="", help="also run these local batch sizes, e.g. 4,8,32")
    args = parser.parse_args()

    flickr = need_shared() / "flickr8k"
    names = (flickr / "Flickr_8k.testImages.txt").read_text().split()[: args.limit]
    options = ["--model", args.model] if args.model else []
    options += ["--beam", str(args.beam)] if args.beam else []
    decoding = f"beam {args.beam}" if args.beam else "beam"
    print(f"{len(names)} test-split images, greedy + {decoding}, the model's tuned decoding; "
          f"load {os.getloadavg()[0]:.1f}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        files = Path(tmp) / "files.txt"
        files.write_text("".join(f"{flickr / 'Images' / n}\n" for n in names))
        outs = {}

        def bench(name: str, extra: list[str]) -> dict:
            outs[name] = Path(tmp) / f"{len(outs)}.jsonl"
            return run(name, [*extra, *options], files, outs[name])

        one = bench("local --batch 1", ["--batch", "1"])
        default = bench(f"local --batch {DEFAULT_BATCH} (default)", [])
        for size in [int(s) for s in args.sweep.split(",") if s]:
            bench(f"local --batch {size}", ["--batch", str(size)])
        ray = bench(f"ray, {args.workers} local actors", ["--engine", "ray", "--workers", str(args.workers)])
        print(f"default batch vs --batch 1: {default['steady'] / one['steady']:.2f}x steady images/s")

        per_image = 1 / ray["steady"]
        startup = ray["first_rows"][0] - ray["first_rows"][1] * per_image
        per_actor = ray["steady"] / args.workers
        print(
            f"ray cost: {startup:.1f} s start-up (Ray, actors, model load) + {1000 * per_image:.0f} ms per image; "
            f"{per_actor:.2f} images/s per 1-CPU actor"
        )
        print(
            f"ray cluster: each added node brings ~{per_actor:.2f} images/s per CPU (one actor each), e.g. "
            f"+{2 * per_actor:.1f} images/s for a 2-core node like this one; start-up is paid once per job"
        )
        base = captions(outs[one["name"]])
        for name, out in outs.items():
            if out != outs[one["name"]]:
                other = captions(out)
                diff = sum(other.get(k) != v for k, v in base.items())
                print(f"captions differing from --batch 1: {name}: {diff} of {len(base)}")


if __name__ == "__main__":
    main()
