"""Caption a photo library: image files found under inputs, captioned in pipelined batches, one result row each."""

from __future__ import annotations

import glob
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from captioner.errors import ImageError

if TYPE_CHECKING:
    from captioner.decode import Caption
    from captioner.pipeline import Captioner, Decoding, Encoded

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
# Images per model call: on 2 cores, 8 / 16 / 32 gave 2.4x / 2.9-3.0x / 3.1-3.2x the per-file loop's images/s
# (`bench/batch.py --sweep`, docs/photo-library.md); a crash loses at most the batch in flight, under a second here.
DEFAULT_BATCH = 32
_GLOB_CHARS = frozenset("*?[")


def find_images(inputs: Iterable[str]) -> list[str]:
    """Image paths from files, directories (walked recursively, image suffixes only, sorted) and globs, each once.

    A file named explicitly is kept whatever its suffix (it gets an error row if it is not an image); a missing path
    or a glob that matches nothing is kept too, so it is reported rather than silently dropped.
    """
    seen: dict[str, None] = {}
    for item in inputs:
        if os.path.isdir(item):
            found = _walk(item)
        elif not os.path.lexists(item) and _GLOB_CHARS & set(item):
            found = sorted(glob.glob(item, recursive=True)) or [item]
            found = [p for m in found for p in (_walk(m) if os.path.isdir(m) else [m])]
        else:
            found = [item]
        seen.update(dict.fromkeys(found))
    return list(seen)


def read_list(source: str, stdin: Iterable[str] | None = None) -> list[str]:
    """The lines of a file list (`-` reads `stdin`), blank ones skipped; each is an input as on the command line."""
    if source == "-":
        lines = list(stdin or ())
    else:
        try:
            lines = Path(source).read_text(encoding="utf-8", errors="surrogateescape").splitlines()
        except OSError as e:
            raise ImageError(f"Cannot read the file list {source}: {e.strerror or e}.") from e
    return [line.rstrip("\r\n") for line in lines if line.strip()]


def _walk(root: str) -> list[str]:
    """Image files under root, depth first in name order; hidden files and folders (.thumbnails, ._IMG.jpg) skipped."""
    out = []
    for folder, dirs, files in os.walk(root, onerror=None):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [
            os.path.join(folder, f)
            for f in sorted(files)
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES
        ]
    return out


def caption_paths(
    model: Captioner,
    paths: Sequence[str],
    decoding: Decoding | None = None,
    batch_size: int = DEFAULT_BATCH,
    threads: int = 2,
) -> Iterator[dict]:
    """One result row per path, in order, a batch at a time; images decode on `threads` threads while the model runs.

    `threads=0` decodes each batch inline, before the model sees it (with `batch_size=1`: the plain per-file loop).
    """
    if batch_size < 1:
        raise ValueError(f"Expected a batch size of at least 1. Received: {batch_size}.")
    decoding = decoding or model.tuned
    batches = (paths[i : i + batch_size] for i in range(0, len(paths), batch_size))
    if threads == 0:
        for batch in batches:
            yield from caption_prepared(model, batch, [_prepare(model, p) for p in batch], decoding)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="decode") as pool:
        ahead: deque[tuple[Sequence[str], list[Future]]] = deque()

        def submit(batch: Sequence[str]) -> None:
            ahead.append((batch, [pool.submit(_prepare, model, p) for p in batch]))

        for batch in batches:
            submit(batch)
            if len(ahead) > 1:  # one batch decoding ahead of the one the model runs on
                done, futures = ahead.popleft()
                yield from caption_prepared(model, done, [f.result() for f in futures], decoding)
        while ahead:
            done, futures = ahead.popleft()
            yield from caption_prepared(model, done, [f.result() for f in futures], decoding)


def _prepare(model: Captioner, path: str) -> np.ndarray | ImageError:
    """Backbone input of one file, or the error that names it (every file of a library is hostile until decoded)."""
    try:
        return model.prepare(path, path)
    except ImageError as e:
        return e
    except Exception as e:  # a decoder bug on a crafted file must cost one row, not the run
        return ImageError(f"{path}: cannot decode the image ({type(e).__name__}: {e}).")


def caption_prepared(
    model: Captioner, names: Sequence[str], images: Sequence[np.ndarray | ImageError], decoding: Decoding
) -> list[dict]:
    """Rows for one batch of decoded images (or their errors), in order: error rows and caption rows."""
    good = [i for i, im in enumerate(images) if not isinstance(im, ImageError)]
    rows = [error_row(n, im) if isinstance(im, ImageError) else {} for n, im in zip(names, images, strict=True)]
    if good:
        encoded = model.encode([images[i] for i in good], [names[i] for i in good], batch_size=len(good))
        for i, row in zip(good, result_rows(model, encoded, decoding), strict=True):
            rows[i] = row
    return rows


def result_rows(model: Captioner, encoded: Encoded, decoding: Decoding) -> list[dict]:
    """The result row of each encoded image: the fields `captioner caption --json` prints."""
    d = decoding
    greedy = model.decode(encoded, 1, d.length_penalty, block_repeats=d.block_repeats)
    beam = model.decode(
        encoded, d.beam_size, d.length_penalty, block_repeats=d.block_repeats,
        consensus=d.consensus, consensus_weight=d.consensus_weight,
    )  # fmt: skip
    rows = [
        {"image": name, "greedy": _scored(g), "beam": _scored(b)}
        for name, g, b in zip(encoded.names, greedy, beam, strict=True)
    ]
    if model.imagenet is not None:  # what the backbone's own ImageNet head sees, from the same pass
        for row, top in zip(rows, model.imagenet.top(encoded.seen), strict=True):
            row["imagenet"] = [c.to_json() for c in top]
    if model.familiarity is not None:
        for row, flag in zip(rows, model.familiarity.unfamiliar(encoded.seen), strict=True):
            row["unfamiliar"] = bool(flag)
    return rows


def error_row(name: str, error: Exception) -> dict:
    """The row of an image that could not be captioned."""
    return {"image": name, "error": str(error)}


def _scored(caption: Caption) -> dict:
    return {"caption": caption.text, "log_prob": round(caption.log_prob, 4)}
