"""The file basics every module shares: the model directory's file names, sha256 of a file, atomic writes."""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"
WEIGHTS_FILE = "model.weights.h5"
METRICS_FILE = "metrics.json"
CARD_FILE = "README.md"
MANIFEST_FILE = "manifest.json"
ENSEMBLE_FILE = "ensemble.json"  # an ensemble's further decoders: {"members": [{"weights": …, "config": {…}}]}
MEMBER_WEIGHTS = re.compile(r"decoder\d+\.weights\.h5")  # a further member's decoder-only weights
REQUIRED_FILES = (CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE)  # what loading a model needs
MODEL_FILES = (*REQUIRED_FILES, METRICS_FILE, CARD_FILE, MANIFEST_FILE)  # every model directory's files
IMAGENET_HEAD_FILE, IMAGENET_LABELS_FILE = "imagenet_head.npz", "imagenet_labels.txt"  # captioner.imagenet
IMAGENET_STAGES_FILE = "imagenet_stages.npz"  # a fine-tuned backbone's original top stages, for the ImageNet view
# a training run directory's best weights so far: the decoder's and, with fine-tuning, its top stages'
BEST_WEIGHTS, BEST_TOP_WEIGHTS = "best.weights.h5", "best_top.weights.h5"
FAMILIARITY_FILE = "familiarity.npz"  # captioner.familiarity
CONSENSUS_FILE = "consensus.npz"  # captioner.consensus
# The files some models add: an ensemble's members, the backbone's ImageNet head (and original stages), the
# familiarity calibration, the consensus index.
OPTIONAL_PATTERNS = (
    ENSEMBLE_FILE, "decoder*.weights.h5", IMAGENET_HEAD_FILE, IMAGENET_LABELS_FILE, IMAGENET_STAGES_FILE,
    FAMILIARITY_FILE, CONSENSUS_FILE,
)  # fmt: skip


def published_files(model_dir: str | os.PathLike[str]) -> list[str]:
    """The model files a directory holds (MODEL_FILES, then any OPTIONAL_PATTERNS): what is pushed and verified."""
    names = sorted(p.name for p in Path(model_dir).iterdir() if p.is_file())
    optional = [n for n in names if n not in MODEL_FILES and any(fnmatch.fnmatchcase(n, p) for p in OPTIONAL_PATTERNS)]
    return [n for n in MODEL_FILES if n in names] + optional


def member_weights_file(index: int) -> str:
    """File name of ensemble member `index` (1, 2, …; member 0 lives in model.weights.h5 with the backbone)."""
    return f"decoder{index}.weights.h5"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = ".incomplete") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one step, on failure it is removed.

    A crash therefore never leaves a half-written file under the real name. `suffix` ends the temporary name (Keras
    insists on `.weights.h5`). The file is made world-readable, as a plain write would (mkstemp creates it 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same directory: os.replace is atomic only within one filesystem.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> None:
    """Write text (UTF-8) or bytes to `path` atomically."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
