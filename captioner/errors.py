"""Every error the package raises on bad input: one base class, each also a stdlib type."""

from __future__ import annotations


class CaptionerError(Exception):
    """Base class: a problem the user can fix, with a one-line message saying how."""


class DataError(CaptionerError, ValueError):
    """A dataset directory, caption file or split file is missing or malformed."""


class ImageError(CaptionerError, ValueError):
    """An image cannot be read, is not an image, or is too large to decode safely."""


class BackboneError(CaptionerError, RuntimeError):
    """A backbone is unknown or its pretrained weights cannot be obtained."""


class ModelError(CaptionerError, RuntimeError):
    """A model directory is missing files, has a bad config, or fails its integrity check."""


class HubError(CaptionerError, OSError):
    """A model could not be fetched from or pushed to the Hugging Face Hub."""
