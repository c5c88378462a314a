"""K caption decoders over one backbone pass, decoded as one model by the same beam search.

Members may carry their own fine-tuned top stages: the backbone then runs once, up to the cut before the largest
number of stages any member fine-tuned, and each member's own stages (ImageNet's where it tuned fewer) run from that
activation to its own grid. The distinct grids are stacked along channels into one feature array, and each member
reads its slice of it, so the one compiled beam search and every caller see a single (N, H, W, C) array.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
from keras import ops

from captioner.errors import ModelError
from captioner.model import CaptionDecoder

STATES_PER_MEMBER = 4  # h1, c1, h2, c2 of CaptionDecoder.step


class EnsembleDecoder:
    """Decoders sharing a vocabulary and a backbone, averaged at every step (the `encode` / `step` of one decoder).

    The next-word distribution is the members' mean probability (as fairseq's ensembles average), returned as a
    log-probability; the attention map is the members' mean map, so it still sums to 1 and heatmaps work unchanged.
    `slots[i]` is the channel slice of the features member i reads (of `max(slots) + 1` equal slices); None: every
    member reads the whole grid.
    """

    def __init__(self, members: Sequence[CaptionDecoder], slots: Sequence[int] | None = None):
        if not members:
            raise ModelError("An ensemble needs at least one decoder.")
        sizes = {m.vocab_size for m in members}
        if len(sizes) != 1:
            raise ModelError(f"Ensemble members must share one vocabulary; their sizes are {sorted(sizes)}.")
        if slots is not None and (len(slots) != len(members) or sorted(set(slots)) != list(range(max(slots) + 1))):
            raise ModelError(f"Expected one grid slot per member, numbered from 0 without gaps; received {slots}.")
        self.members = list(members)
        self.slots = [0] * len(members) if slots is None else list(slots)
        self.vocab_size = members[0].vocab_size

    def __len__(self) -> int:
        return len(self.members)

    def encode(self, features):
        """Each member's regions and keys (one tensor per member) and all their initial states, in one flat list."""
        count = max(self.slots) + 1
        grids = ops.split(features, count, axis=-1) if count > 1 else [features]
        parts = [m.encode(grids[slot]) for m, slot in zip(self.members, self.slots, strict=True)]
        return [p[0] for p in parts], [p[1] for p in parts], [s for p in parts for s in p[2]]

    def step(self, token, states, regions, keys):
        """One step of every member: mean-probability log-probs (B', V), mean attention (B', R), new states."""
        log_probs, maps, new_states = [], [], []
        for i, member in enumerate(self.members):
            own = states[i * STATES_PER_MEMBER : (i + 1) * STATES_PER_MEMBER]
            logp, alpha, own = member.step(token, own, regions[i], keys[i])
            log_probs.append(logp)
            maps.append(alpha)
            new_states.extend(own)
        logp = ops.logsumexp(ops.stack(log_probs), axis=0) - math.log(len(self.members))
        return logp, ops.mean(ops.stack(maps), axis=0), tuple(new_states)


class SharedBackbone:
    """The one backbone pass of a model's members: uint8 images -> (features, the ImageNet backbone's pooled grid).

    Member 0's grid is the backbone's; a further member reads it too unless it fine-tuned stages (then its own
    `tops` entry runs on the cut activation) or member 0 did (then it reads the ImageNet stages' grid, `original`).
    Each distinct grid is one channel slot of the features; `slots` lists each member's, for `EnsembleDecoder`.
    """

    def __init__(
        self,
        backbone: keras.Model,
        cut: bool,
        tuned: bool,
        original: keras.Model | None,
        tops: Sequence[keras.Model | None] = (),
    ):
        """`backbone`: folded, uint8 -> grid, or with `cut` -> [the activation after the cut, member 0's grid].

        `tuned`: member 0 fine-tuned stages, so its grid is not the ImageNet backbone's. `original`: ImageNet's
        stages after the cut, folded (None: not bundled; the ImageNet view then reads member 0's grid). `tops`: each
        further member's own stages after the cut, folded, or None for a member that fine-tuned none.
        """
        if not cut and any(t is not None for t in tops):
            raise ModelError("Members with their own top stages need a backbone cut before them.")
        self.backbone, self.cut, self.tuned, self.original = backbone, cut, tuned, original
        self.sources: list[keras.Model] = []  # what computes slots 1, 2, … from the cut activation
        self.slots = [0]
        for top in tops:
            if top is None and not tuned:
                self.slots.append(0)
                continue
            if top is None and original is None:
                raise ModelError(
                    "A member without fine-tuned stages reads the ImageNet stages, but the model bundles none."
                )
            source = original if top is None else top
            if not any(s is source for s in self.sources):
                self.sources.append(source)
            self.slots.append(1 + next(i for i, s in enumerate(self.sources) if s is source))

    def __call__(self, images):
        """Features (N, H, W, C × slots) and what the ImageNet view reads (N, C)."""
        if not self.cut:
            grid = self.backbone(images, training=False)
            return grid, ops.mean(grid, axis=(1, 2))
        activation, grid = self.backbone(images, training=False)
        grids = [grid, *(source(activation, training=False) for source in self.sources)]
        seen = grid
        if self.tuned and self.original is not None:
            slot = next((1 + i for i, s in enumerate(self.sources) if s is self.original), None)
            seen = self.original(activation, training=False) if slot is None else grids[slot]
        features = ops.concatenate(grids, axis=-1) if len(grids) > 1 else grid
        return features, ops.mean(seen, axis=(1, 2))
