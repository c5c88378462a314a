"""Caption cleaning and the word vocabulary (saved as JSON, never pickled)."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from captioner.errors import DataError

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)
_WORD = re.compile(r"[a-z]+")


def clean_tokens(text: str) -> list[str]:
    """Lowercase a caption and return its alphabetic tokens (hyphens and punctuation split words)."""
    return _WORD.findall(text.lower())


def clean_caption(text: str) -> str:
    """Return the caption as cleaned, space-separated tokens."""
    return " ".join(clean_tokens(text))


def length_for_coverage(lengths: Sequence[int], coverage: float = 0.99) -> int:
    """Smallest token count that covers `coverage` of the captions."""
    if not lengths:
        raise DataError("Expected at least one caption to measure lengths. Received: none.")
    return int(np.ceil(np.quantile(np.asarray(lengths), coverage)))


def length_report(lengths: Sequence[int]) -> str:
    """One line describing the caption length distribution."""
    arr = np.asarray(lengths)
    qs = {q: int(np.ceil(np.quantile(arr, q))) for q in (0.5, 0.9, 0.95, 0.99)}
    return (
        f"caption lengths: mean {arr.mean():.1f}, median {qs[0.5]}, p90 {qs[0.9]}, p95 {qs[0.95]}, "
        f"p99 {qs[0.99]}, max {arr.max()}"
    )


@dataclass(frozen=True)
class Vocabulary:
    """Word <-> id mapping; ids 0..3 are <pad> <start> <end> <unk>."""

    words: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.words[: len(SPECIALS)] != SPECIALS:
            raise DataError(f"Expected a vocabulary starting with {list(SPECIALS)}. Received: {list(self.words[:4])}.")
        object.__setattr__(self, "_index", {w: i for i, w in enumerate(self.words)})

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 5) -> Vocabulary:
        """Build from raw captions, keeping words seen at least `min_count` times (most frequent first)."""
        counts = Counter(tok for caption in captions for tok in clean_tokens(caption))
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(SPECIALS + tuple(kept))

    def __len__(self) -> int:
        return len(self.words)

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def start_id(self) -> int:
        return 1

    @property
    def end_id(self) -> int:
        return 2

    @property
    def unk_id(self) -> int:
        return 3

    def id(self, word: str) -> int:
        """Id of a word, <unk> if unknown."""
        return self._index.get(word, self.unk_id)

    def encode(self, caption: str, max_length: int) -> np.ndarray:
        """Caption -> int32 ids `<start> w1 .. wn <end>` padded/truncated to `max_length + 2`."""
        ids = [self.id(t) for t in clean_tokens(caption)][:max_length]
        seq = [self.start_id, *ids, self.end_id]
        out = np.zeros(max_length + 2, dtype=np.int32)
        out[: len(seq)] = seq
        return out

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Ids -> words, stopping at <end> and skipping <pad>/<start>."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i in (self.pad_id, self.start_id):
                continue
            words.append(self.words[i])
        return words

    def to_json(self) -> str:
        return json.dumps({"words": list(self.words)}, ensure_ascii=False)

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as JSON."""
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """Read a vocabulary written by `save`."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            words = data["words"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"Expected a vocabulary JSON with a 'words' list at {path}. Received: {e}") from e
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise DataError(f"Expected 'words' to be a list of strings in {path}.")
        return cls(tuple(words))
