"""K caption decoders over one feature grid, decoded as one model by the same beam search."""

from __future__ import annotations

import math
from collections.abc import Sequence

from keras import ops

from captioner.errors import ModelError
from captioner.model import CaptionDecoder

STATES_PER_MEMBER = 4  # h1, c1, h2, c2 of CaptionDecoder.step


class EnsembleDecoder:
    """Decoders sharing a vocabulary and a backbone, averaged at every step (the `encode` / `step` of one decoder).

    The next-word distribution is the members' mean probability (as fairseq's ensembles average), returned as a
    log-probability; the attention map is the members' mean map, so it still sums to 1 and heatmaps work unchanged.
    """

    def __init__(self, members: Sequence[CaptionDecoder]):
        if not members:
            raise ModelError("An ensemble needs at least one decoder.")
        sizes = {m.vocab_size for m in members}
        if len(sizes) != 1:
            raise ModelError(f"Ensemble members must share one vocabulary; their sizes are {sorted(sizes)}.")
        self.members = list(members)
        self.vocab_size = members[0].vocab_size

    def __len__(self) -> int:
        return len(self.members)

    def encode(self, features):
        """Each member's regions and keys (one tensor per member) and all their initial states, in one flat list."""
        parts = [m.encode(features) for m in self.members]
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
