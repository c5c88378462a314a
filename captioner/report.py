"""The evaluation report: per-image and corpus scores of a split's greedy and beam captions, as validated JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from captioner.errors import DataError
from captioner.files import write_atomic
from captioner.metrics import BLEU_KEYS, METRIC_KEYS, cider_d, corpus_bleu, sentence_bleu, tokenize

# Per-image scores only feed tables and plots; 3 decimals keep the 1000-image report well under 2 MB.
_IMAGE_DECIMALS = 3
_MODEL_KEYS = ("id", "config", "weights_sha256")
_DECODING_KEYS = ("beam_size", "length_penalty", "max_length")
_MODES = ("greedy", "beam")


def _check_same_length(name: str, items: Sequence[Any], expected: int) -> None:
    if len(items) != expected:
        raise DataError(
            f"Expected {expected} {name} (one per image). Received: {len(items)}. "
            "Pass image_names, references, greedy and beam in the same image order."
        )


def build_report(
    *,
    model: dict,
    split: str,
    decoding: dict,
    image_names: list[str],
    references: list[list[str]],
    greedy: list[str],
    beam: list[str],
) -> dict:
    """Score greedy and beam captions against raw reference captions and assemble the report dict."""
    n = len(image_names)
    for name, items in (
        ("reference lists", references),
        ("greedy captions", greedy),
        ("beam captions", beam),
    ):
        _check_same_length(name, items, n)
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not refs or not all(isinstance(r, str) for r in refs):
            expected = f"Expected a non-empty list of reference strings for {image_names[i]!r}."
            raise DataError(f"{expected} Received: {refs!r:.60}.")
    missing = [k for k in _MODEL_KEYS if k not in model]
    if missing:
        raise DataError(f"Expected model info with keys {list(_MODEL_KEYS)}. Missing: {missing}.")

    ref_tokens = [[tokenize(r) for r in refs] for refs in references]
    corpus: dict[str, dict[str, float]] = {}
    per_image: dict[str, list[dict[str, Any]]] = {}
    for mode, captions in (("greedy", greedy), ("beam", beam)):
        hyp_tokens = [tokenize(c) for c in captions]
        cider, cider_per_image = cider_d(hyp_tokens, ref_tokens)
        corpus[mode] = {**corpus_bleu(hyp_tokens, ref_tokens), "cider": cider}
        per_image[mode] = [
            {
                "caption": caption,
                **{k: round(v, _IMAGE_DECIMALS) for k, v in sentence_bleu(hyp, refs).items()},
                "cider": round(c, _IMAGE_DECIMALS),
            }
            for caption, hyp, refs, c in zip(captions, hyp_tokens, ref_tokens, cider_per_image, strict=True)
        ]

    greedy_entries, beam_entries = per_image["greedy"], per_image["beam"]
    images = [
        {"image": name, "references": list(refs), "greedy": g, "beam": b}
        for name, refs, g, b in zip(image_names, references, greedy_entries, beam_entries, strict=True)
    ]
    return {
        "model": dict(model),
        "split": split,
        "decoding": dict(decoding),
        "corpus": corpus,
        "images": images,
    }


def write_report(report: dict, path: str | Path) -> None:
    """Validate and write a report as UTF-8 JSON, atomically (temp file, then rename)."""
    _validate_report(report, str(path))
    # One image per line: readable diffs, and about half the size of an indented dump.
    head = "".join(
        f"{json.dumps(key)}: {json.dumps(value, ensure_ascii=False)},\n"
        for key, value in report.items()
        if key != "images"
    )
    images = ",\n".join(json.dumps(img, ensure_ascii=False) for img in report["images"])
    write_atomic(path, "{\n" + head + '"images": [\n' + images + "\n]\n}\n")


def read_report(path: str | Path) -> dict:
    """Read and validate an evaluation report written by `write_report`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise DataError(
            f"Expected an evaluation report at {path}. Received: no such file. Run the evaluation first."
        ) from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"Expected a readable UTF-8 evaluation report at {path}. Received: {e}") from e
    try:
        report = json.loads(text)
    except ValueError as e:
        raise DataError(
            f"Expected valid JSON in the evaluation report {path}. Received: {e}. Re-run the evaluation."
        ) from e
    _validate_report(report, str(path))
    return report


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _validate_report(report: Any, where: str) -> None:
    """Raise DataError naming the first field of `report` that does not match the report format."""

    def fail(field: str, expected: str, received: Any) -> NoReturn:
        raise DataError(
            f"Malformed evaluation report {where}: expected {field} to be {expected}. "
            f"Received: {received!r:.80}. Re-run the evaluation to regenerate it."
        )

    if not isinstance(report, dict):
        fail("the top level", "a JSON object", type(report).__name__)
    for key, kind in (
        ("model", dict),
        ("split", str),
        ("decoding", dict),
        ("corpus", dict),
        ("images", list),
    ):
        if not isinstance(report.get(key), kind):
            fail(f"'{key}'", f"a {kind.__name__}", report.get(key))
    for key in _MODEL_KEYS:
        if key not in report["model"]:
            fail(f"'model' to have '{key}' and it", "present", sorted(report["model"]))
    for key in _DECODING_KEYS:
        if key not in report["decoding"]:
            fail(f"'decoding' to have '{key}' and it", "present", sorted(report["decoding"]))
    for mode in _MODES:
        scores = report["corpus"].get(mode)
        if not isinstance(scores, dict):
            fail(f"corpus.{mode}", "an object", scores)
        for key in METRIC_KEYS:
            if not _is_number(scores.get(key)):
                fail(f"corpus.{mode}.{key}", "a finite number", scores.get(key))
    for i, img in enumerate(report["images"]):
        if not isinstance(img, dict):
            fail(f"images[{i}]", "an object", img)
        if not isinstance(img.get("image"), str):
            fail(f"images[{i}].image", "a file name string", img.get("image"))
        refs = img.get("references")
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
            fail(f"images[{i}].references", "a non-empty list of strings", refs)
        for mode in _MODES:
            entry = img.get(mode)
            if not isinstance(entry, dict) or not isinstance(entry.get("caption"), str):
                fail(f"images[{i}].{mode}", "an object with a 'caption' string", entry)
            for key in BLEU_KEYS:
                if not _is_number(entry.get(key)):
                    fail(f"images[{i}].{mode}.{key}", "a finite number", entry.get(key))
            # Per-image CIDEr-D was added after the first report format; accept reports without it.
            if "cider" in entry and not _is_number(entry["cider"]):
                fail(f"images[{i}].{mode}.cider", "a finite number", entry["cider"])
