"""Model layers and weights: serialization round trips, float16 weight files, config JSON."""

from __future__ import annotations

import h5py
import keras
import numpy as np
import pytest

from captioner.errors import ModelError
from captioner.layers import ATTENTION, MultiHeadAttention
from captioner.model import (
    CaptionDecoder,
    ImageCaptioner,
    ModelConfig,
    build_decoder,
    load_weights,
    read_weights,
    save_weights,
)


@pytest.mark.parametrize("kind", sorted(ATTENTION))
@pytest.mark.parametrize("gate", [True, False])
def test_attention_layer_serialization_round_trip(kind, gate):
    layer = ATTENTION[kind](8, gate=gate)
    q, v = np.random.rand(2, 3, 5).astype("float32"), np.random.rand(2, 4, 6).astype("float32")
    context, weights = layer(q, v)
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    clone(q, v)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone(q, v)[0], context, atol=1e-6)
    assert weights.shape == (2, 3, 4)
    np.testing.assert_allclose(np.sum(weights, -1), 1.0, atol=1e-5)


@pytest.mark.parametrize("kind", sorted(ATTENTION))
def test_attention_single_step_matches_sequence(kind):
    layer = ATTENTION[kind](8)
    q, v = np.random.rand(2, 3, 5).astype("float32"), np.random.rand(2, 4, 6).astype("float32")
    seq_context, seq_weights = layer(q, v)
    step_context, step_weights = layer(q[:, 1], v)
    np.testing.assert_allclose(step_context, seq_context[:, 1], atol=1e-6)
    np.testing.assert_allclose(step_weights, seq_weights[:, 1], atol=1e-6)


def _config(**kw):
    return ModelConfig(grid=(3, 3), feature_channels=8, vocab_size=20, max_length=5, embed_dim=6, units=16,
                       feature_dim=12, attention_units=8, **kw)  # fmt: skip


def test_decoder_serialization_round_trip():
    decoder = build_decoder(_config())
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(decoder))
    assert isinstance(clone, CaptionDecoder) and clone.get_config() == decoder.get_config()


@pytest.mark.parametrize(("image_input", "attention"), [(False, "additive"), (True, "additive"), (True, "dot"),
                                                        (True, "multihead")])  # fmt: skip
def test_teacher_forcing_equals_step_by_step_decoding(image_input, attention):
    decoder = build_decoder(_config(image_input=image_input, attention=attention))
    feats = np.random.rand(2, 3, 3, 8).astype("float32")
    tokens = np.random.randint(1, 20, (2, 1, 4)).astype("int32")
    logits, alpha = decoder(feats, tokens)
    regions, keys, states = decoder.encode(feats)
    for t in range(4):
        logp, step_alpha, states = decoder.step(tokens[:, 0, t], states, regions, keys)
        np.testing.assert_allclose(logp, keras.ops.log_softmax(logits[:, 0, t]), atol=1e-4)
        np.testing.assert_allclose(step_alpha, alpha[:, 0, t], atol=1e-5)


def test_float16_weight_file_loads_back(tmp_path):
    decoder = build_decoder(_config())
    save_weights(decoder, tmp_path / "w.weights.h5")
    clone = build_decoder(_config())
    load_weights(clone, tmp_path / "w.weights.h5")
    for a, b in zip(decoder.get_weights(), clone.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_weights_of_another_config_are_a_clear_error(tmp_path):
    save_weights(build_decoder(_config()), tmp_path / "w.weights.h5")
    with pytest.raises(ModelError, match="do not fit"):
        load_weights(build_decoder(ModelConfig(**{**_config().__dict__, "units": 32})), tmp_path / "w.weights.h5")


def _captioner(seed=0):
    """A saved-model-shaped ImageCaptioner: a small conv + BatchNorm backbone and a decoder, random weights."""
    inputs = keras.Input((6, 6, 3), name="image")
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    backbone = keras.Model(inputs, x, name="tiny")
    rng = np.random.default_rng(seed)
    backbone.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in backbone.get_weights()])
    return ImageCaptioner(backbone, build_decoder(_config()))


def test_read_weights_gives_each_layers_arrays_as_keras_loads_them(tmp_path):
    save_weights(_captioner(), tmp_path / "w.weights.h5")
    weights = read_weights(tmp_path / "w.weights.h5")
    loaded = _captioner(seed=1)
    loaded.load_weights(tmp_path / "w.weights.h5")
    assert set(weights) == {"backbone", "decoder"}
    assert set(weights["backbone"]) == {"conv", "bn"}
    for name, arrays in weights["backbone"].items():
        for got, want in zip(arrays, loaded.backbone.get_layer(name).get_weights(), strict=True):
            assert got.dtype == np.float16
            np.testing.assert_array_equal(got.astype("float32"), want)
    assert {"project", "attn_lstm/lstm_cell", "lang_lstm/lstm_cell", "attention/query", "logits"} <= set(
        weights["decoder"]
    )
    cell = loaded.decoder.language_lstm.cell
    for got, want in zip(weights["decoder"]["lang_lstm/lstm_cell"], cell.get_weights(), strict=True):
        np.testing.assert_array_equal(got.astype("float32"), want)


def test_weights_file_without_layer_names_is_a_clear_error(tmp_path):
    save_weights(_captioner(), tmp_path / "w.weights.h5")
    with h5py.File(tmp_path / "w.weights.h5", "r+") as f:
        del f["decoder/embedding/vars"].attrs["name"]
    with pytest.raises(ModelError, match="decoder/embedding/vars is not tagged with its layer's name"):
        read_weights(tmp_path / "w.weights.h5")


def test_config_json_round_trip_and_unknown_keys(tmp_path):
    config = _config()
    (tmp_path / "c.json").write_text(config.to_json())
    assert ModelConfig.load(tmp_path / "c.json") == config
    with pytest.raises(ModelError, match="Unknown model config keys"):
        ModelConfig.from_dict({"colour": "red"})


def test_multihead_attention_reports_the_mean_of_its_heads_maps():
    layer = MultiHeadAttention(8, heads=2, gate=False)
    q, v = np.random.rand(2, 3, 5).astype("float32"), np.random.rand(2, 4, 6).astype("float32")
    _, weights = layer(q, v)
    keys, _ = np.split(np.asarray(layer.project_keys(v)), 2, axis=-1)
    qh = np.asarray(layer.query_dense(q)).reshape(2, 3, 2, 4)
    kh = keys.reshape(2, 4, 2, 4)
    scores = np.einsum("bthd,brhd->bhtr", qh, kh) / 2.0  # √(8 / 2 heads)
    per_head = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
    np.testing.assert_allclose(weights, per_head.mean(1), atol=1e-5)


def test_an_unknown_attention_kind_is_a_clear_error():
    with pytest.raises(ModelError, match="Unknown attention 'cosine'"):
        build_decoder(_config(attention="cosine"))


def test_the_attention_kinds_the_command_line_offers_are_the_layers_there_are():
    from captioner.config import ATTENTION_KINDS

    assert sorted(ATTENTION_KINDS) == sorted(ATTENTION)
