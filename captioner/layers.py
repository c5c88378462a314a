"""Custom Keras layers of the caption decoder, written with keras.ops so they run on TF and JAX."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="captioner")
class BahdanauAttention(keras.layers.Layer):
    """Additive attention: score(q, k_r) = v·tanh(W_q q + W_k k_r), softmax over regions, gated by β.

    Call with `query` (B, T, Q) or (B, Q), precomputed `keys` (B, R, A) from `project_keys`, and
    `values` (B, R, D). Returns the gated context (B, [T,] D) and the weights (B, [T,] R) summing to 1.
    """

    def __init__(self, units: int, gate: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.gate = gate

    def build(self, query_shape, values_shape):
        q_dim, v_dim = query_shape[-1], values_shape[-1]
        self.query_dense = keras.layers.Dense(self.units, use_bias=False, name="query")
        self.query_dense.build((None, q_dim))
        self.key_dense = keras.layers.Dense(self.units, name="key")
        self.key_dense.build((None, v_dim))
        self.score_dense = keras.layers.Dense(1, use_bias=False, name="score")
        self.score_dense.build((None, self.units))
        if self.gate:
            self.gate_dense = keras.layers.Dense(1, activation="sigmoid", name="beta")
            self.gate_dense.build((None, q_dim))

    def project_keys(self, values):
        """Key projection of the regions, computed once per image: (B, R, D) -> (B, R, A)."""
        return self.key_dense(values)

    def call(self, query, values, keys=None):
        if keys is None:
            keys = self.project_keys(values)
        single_step = len(query.shape) == 2
        q = ops.expand_dims(query, 1) if single_step else query  # (B, T, Q)
        hidden = ops.tanh(ops.expand_dims(self.query_dense(q), 2) + ops.expand_dims(keys, 1))  # (B, T, R, A)
        weights = ops.softmax(ops.squeeze(self.score_dense(hidden), -1), axis=-1)  # (B, T, R)
        context = ops.matmul(weights, values)  # (B, T, D)
        if self.gate:
            context = context * self.gate_dense(q)  # β_t in [0, 1] scales the context (Show, Attend and Tell)
        if single_step:
            return ops.squeeze(context, 1), ops.squeeze(weights, 1)
        return context, weights

    def get_config(self):
        return {**super().get_config(), "units": self.units, "gate": self.gate}
