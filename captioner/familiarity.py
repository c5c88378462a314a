"""Is a photo like the training photos? The cosine distance of its pooled backbone feature to its nearest ones.

The score is 1 − the mean cosine similarity to the K nearest training photos, computed in the span of the training
features' top principal directions (so the model carries d numbers per training photo, not 1280). A photo scores
above the threshold — the dev split's `quantile` of the score — is "unfamiliar": unlike what the captioner learned
from, so its caption may be wrong. Everything lives in `familiarity.npz` beside the weights (float16, ~2 MB).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from captioner.errors import ModelError
from captioner.files import FAMILIARITY_FILE
from captioner.imagenet import pool

K = 5  # neighbours averaged: steadier than the single nearest photo
DIMS = 128  # principal directions kept
QUANTILE = 0.975  # of dev scores: ~2.5 % of in-domain photos are flagged


@dataclass(frozen=True)
class Familiarity:
    """Training photos' pooled features (projected) and the dev-calibrated threshold of the distance to them."""

    basis: np.ndarray  # (C, d) orthonormal directions of the training features
    refs: np.ndarray  # (N_train, d) projected, L2-normalised training features
    threshold: float
    k: int = K

    @classmethod
    def load(cls, model_dir: str | Path) -> Familiarity | None:
        """The calibration bundled in a model directory, or None when it has none."""
        path = Path(model_dir) / FAMILIARITY_FILE
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(
                    z["basis"].astype(np.float32), z["refs"].astype(np.float32), float(z["threshold"]), int(z["k"])
                )
        except (OSError, ValueError, KeyError) as e:
            raise ModelError(f"Unreadable {path}: {e}") from e

    def score(self, features: np.ndarray) -> np.ndarray:
        """Distance (N,) of feature grids (N, H, W, C) or pooled features (N, C) to the nearest training photos."""
        sims = self._similarities(features)
        k = min(self.k, sims.shape[1])
        return 1.0 - np.partition(sims, -k, axis=1)[:, -k:].mean(axis=1)

    def nearest(self, features: np.ndarray, k: int) -> np.ndarray:
        """Indices (N, k) of the k training photos nearest each photo, nearest first (training split order)."""
        sims = self._similarities(features)
        k = min(k, sims.shape[1])
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        return np.take_along_axis(top, np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1), axis=1)

    def _similarities(self, features: np.ndarray) -> np.ndarray:
        return (_normalised(pool(features)) @ self.basis) @ self.refs.T  # (N, N_train)

    def unfamiliar(self, features: np.ndarray) -> list[bool]:
        """Whether each photo lies further from the training photos than the dev threshold."""
        return [bool(s > self.threshold) for s in self.score(features)]

    def save(self, model_dir: str | Path) -> Path:
        """Write `familiarity.npz` (float16 arrays) into a model directory; returns its path."""
        path = Path(model_dir) / FAMILIARITY_FILE
        np.savez_compressed(
            path,
            basis=self.basis.astype(np.float16),
            refs=self.refs.astype(np.float16),
            threshold=np.float32(self.threshold),
            k=np.int32(self.k),
        )
        return path


def calibrate(
    train: np.ndarray, dev: np.ndarray, dims: int = DIMS, k: int = K, quantile: float = QUANTILE
) -> Familiarity:
    """Fit the projection on the training photos' pooled features and set the threshold on dev's."""
    x = _normalised(pool(train))
    values, vectors = np.linalg.eigh(x.T @ x)  # the right singular vectors of x, from a (C, C) problem
    # Rounded to float16 as stored, so dev is scored exactly as users will be.
    basis = vectors[:, np.argsort(values)[::-1][:dims]].astype(np.float16).astype(np.float32)
    refs = (x @ basis).astype(np.float16).astype(np.float32)
    fam = Familiarity(basis, refs, 0.0, k)
    return Familiarity(basis, refs, float(np.quantile(fam.score(dev), quantile)), k)


def _normalised(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
