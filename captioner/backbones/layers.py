"""The Keras layers backbones share: in-graph preprocessing of uint8 images, and stochastic depth."""

from __future__ import annotations

import keras
from keras import layers, ops

from captioner.errors import BackboneError


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
