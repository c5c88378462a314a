"""Captioner: Flickr8k image captioning with EfficientNet-Lite features and an attention LSTM."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Caption", "Captioner"]


def __getattr__(name: str):
    # Lazy, so `import captioner` (and the CLI's --help) does not pay for TensorFlow's import.
    if name == "Captioner":
        from captioner.pipeline import Captioner

        return Captioner
    if name == "Caption":
        from captioner.decode import Caption

        return Caption
    raise AttributeError(name)
