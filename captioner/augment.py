"""Horizontal-flip augmentation: a mirrored photo keeps its captions, with "left" and "right" swapped."""

from __future__ import annotations

import numpy as np

from captioner.text import Vocabulary

SIDE_SWAPS = {"left": "right", "right": "left"}


def flip_caption(text: str) -> str:
    """The caption of the mirrored photo: every "left" becomes "right" and back (case and punctuation kept)."""
    words = text.split(" ")
    for i, word in enumerate(words):
        core = word.strip(".,;:!?\"'()").lower()
        if core in SIDE_SWAPS:
            swapped = SIDE_SWAPS[core]
            swapped = swapped.capitalize() if word[:1].isupper() else swapped
            words[i] = word.replace(word.strip(".,;:!?\"'()"), swapped, 1)
    return " ".join(words)


def flipped_ids(vocab: Vocabulary) -> np.ndarray:
    """(V,) int32: each word id's id in a mirrored caption ("left" <-> "right"; every other word maps to itself)."""
    ids = np.arange(len(vocab), dtype=np.int32)
    for word, swapped in SIDE_SWAPS.items():
        if word in vocab.words and swapped in vocab.words:
            ids[vocab.id(word)] = vocab.id(swapped)
    return ids
