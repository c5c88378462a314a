"""Custom Keras layers of the caption decoder, written with keras.ops so they run on TF and JAX.

The three attention layers share one interface, so the decoder can use any of them: `project_keys(values)` once per
image, then `call(query, values, keys)` with a query (B, T, Q) or (B, Q), returning the context (B, [T,] D) and
the weights over the R regions (B, [T,] R), which sum to 1 (the heatmaps).
"""

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
        weights = ops.softmax(self.scores(q, keys), axis=-1)  # (B, T, R)
        context = ops.matmul(weights, values)  # (B, T, D)
        if self.gate:
            context = context * self.gate_dense(q)  # β_t in [0, 1] scales the context (Show, Attend and Tell)
        if single_step:
            return ops.squeeze(context, 1), ops.squeeze(weights, 1)
        return context, weights

    def scores(self, q, keys):
        """(B, T, Q) queries, (B, R, A) keys -> (B, T, R) scores before the softmax."""
        hidden = ops.tanh(ops.expand_dims(self.query_dense(q), 2) + ops.expand_dims(keys, 1))  # (B, T, R, A)
        return ops.squeeze(self.score_dense(hidden), -1)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "gate": self.gate}


@keras.saving.register_keras_serializable(package="captioner")
class DotProductAttention(BahdanauAttention):
    """Scaled dot-product attention: score(q, k_r) = (W_q q)·(W_k k_r) / √A, gated by β like the additive layer."""

    def build(self, query_shape, values_shape):
        self.query_dense = keras.layers.Dense(self.units, use_bias=False, name="query")
        self.query_dense.build((None, query_shape[-1]))
        self.key_dense = keras.layers.Dense(self.units, name="key")
        self.key_dense.build((None, values_shape[-1]))
        if self.gate:
            self.gate_dense = keras.layers.Dense(1, activation="sigmoid", name="beta")
            self.gate_dense.build((None, query_shape[-1]))

    def scores(self, q, keys):
        return ops.matmul(self.query_dense(q), ops.transpose(keys, (0, 2, 1))) / self.units**0.5


@keras.saving.register_keras_serializable(package="captioner")
class MultiHeadAttention(keras.layers.Layer):
    """Multi-head scaled dot-product attention over the regions; the map it reports is the mean of its heads' maps.

    `units` is split over `heads`; keys and values are projected once per image (`project_keys` returns both,
    side by side), and the heads' contexts are projected back to the regions' width D.
    """

    def __init__(self, units: int, heads: int = 4, gate: bool = True, **kwargs):
        super().__init__(**kwargs)
        if units % heads:
            raise ValueError(f"Expected attention units divisible by the {heads} heads. Received: {units}.")
        self.units, self.heads, self.gate = units, heads, gate

    def build(self, query_shape, values_shape):
        self.query_dense = keras.layers.Dense(self.units, use_bias=False, name="query")
        self.query_dense.build((None, query_shape[-1]))
        self.key_value_dense = keras.layers.Dense(2 * self.units, name="key_value")
        self.key_value_dense.build((None, values_shape[-1]))
        self.output_dense = keras.layers.Dense(values_shape[-1], name="output")
        self.output_dense.build((None, self.units))
        if self.gate:
            self.gate_dense = keras.layers.Dense(1, activation="sigmoid", name="beta")
            self.gate_dense.build((None, query_shape[-1]))

    def project_keys(self, values):
        """(B, R, D) -> (B, R, 2A): the keys, then the values, of every head."""
        return self.key_value_dense(values)

    def _split(self, x):
        """(B, N, A) -> (B, heads, N, A / heads)."""
        b, n = ops.shape(x)[0], ops.shape(x)[1]
        return ops.transpose(ops.reshape(x, (b, n, self.heads, self.units // self.heads)), (0, 2, 1, 3))

    def call(self, query, values, keys=None):
        if keys is None:
            keys = self.project_keys(values)
        single_step = len(query.shape) == 2
        q = ops.expand_dims(query, 1) if single_step else query  # (B, T, Q)
        b, t = ops.shape(q)[0], ops.shape(q)[1]
        k, v = ops.split(keys, 2, axis=-1)
        qh, kh, vh = self._split(self.query_dense(q)), self._split(k), self._split(v)
        scale = (self.units // self.heads) ** 0.5
        weights = ops.softmax(ops.matmul(qh, ops.transpose(kh, (0, 1, 3, 2))) / scale, axis=-1)  # (B, h, T, R)
        heads = ops.reshape(ops.transpose(ops.matmul(weights, vh), (0, 2, 1, 3)), (b, t, self.units))
        context = self.output_dense(heads)
        if self.gate:
            context = context * self.gate_dense(q)
        weights = ops.mean(weights, axis=1)  # (B, T, R): what the heatmaps show
        if single_step:
            return ops.squeeze(context, 1), ops.squeeze(weights, 1)
        return context, weights

    def get_config(self):
        return {**super().get_config(), "units": self.units, "heads": self.heads, "gate": self.gate}


ATTENTION = {"additive": BahdanauAttention, "dot": DotProductAttention, "multihead": MultiHeadAttention}
