"""Model layers and weights: serialization round trips, float16 weight files, config JSON."""

from __future__ import annotations

import h5py
import keras
import numpy as np
import pytest

from captioner.errors import ModelError
from captioner.layers import BahdanauAttention
from captioner.model import (
    CaptionDecoder,
    ImageCaptioner,
    ModelConfig,
    assign_weights,
    build_decoder,
    read_weights,
    save_weights,
)


@pytest.mark.parametrize("gate", [True, False])
def test_attention_layer_serialization_round_trip(gate):
    layer = BahdanauAttention(8, gate=gate)
    q, v = np.random.rand(2, 3, 5).astype("float32"), np.random.rand(2, 4, 6).astype("float32")
    context, weights = layer(q, v)
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    clone(q, v)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone(q, v)[0], context, atol=1e-6)
    assert weights.shape == (2, 3, 4)
    np.testing.assert_allclose(np.sum(weights, -1), 1.0, atol=1e-5)


def test_attention_single_step_matches_sequence():
    layer = BahdanauAttention(8)
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


@pytest.mark.parametrize("image_input", [False, True])
def test_teacher_forcing_equals_step_by_step_decoding(image_input):
    decoder = build_decoder(_config(image_input=image_input))
    feats = np.random.rand(2, 3, 3, 8).astype("float32")
    tokens = np.random.randint(1, 20, (2, 1, 4)).astype("int32")
    logits, alpha = decoder(feats, tokens)
    regions, keys, states = decoder.encode(feats)
    for t in range(4):
        logp, step_alpha, states = decoder.step(tokens[:, 0, t], states, regions, keys)
        np.testing.assert_allclose(logp, keras.ops.log_softmax(logits[:, 0, t]), atol=1e-4)
        np.testing.assert_allclose(step_alpha, alpha[:, 0, t], atol=1e-5)


def _captioner(config=None, seed=0):
    """A saved-model-shaped ImageCaptioner: a small conv + BatchNorm backbone and a decoder, random weights."""
    config = config or _config()
    inputs = keras.Input((6, 6, 3), name="image")
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    backbone = keras.Model(inputs, x, name="tiny")
    rng = np.random.default_rng(seed)
    backbone.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in backbone.get_weights()])
    return ImageCaptioner(backbone, build_decoder(config))


def test_read_weights_gives_each_part_by_layer_path(tmp_path):
    model = _captioner()
    save_weights(model, tmp_path / "w.weights.h5")
    weights = read_weights(tmp_path / "w.weights.h5")
    assert set(weights) == {"backbone", "decoder"}
    assert set(weights["backbone"]) == {"conv", "bn"} and len(weights["backbone"]["bn"]) == 4
    assert {"project", "attn_lstm/lstm_cell", "lang_lstm/lstm_cell", "attention/query", "logits"} <= set(
        weights["decoder"]
    )
    assert all(a.dtype == np.float16 for arrays in weights["decoder"].values() for a in arrays)


def test_float16_weight_file_assigns_what_keras_loads(tmp_path):
    model = _captioner()
    save_weights(model, tmp_path / "w.weights.h5")
    keras_loaded = _captioner(seed=1)
    keras_loaded.load_weights(tmp_path / "w.weights.h5")
    weights = read_weights(tmp_path / "w.weights.h5")
    assigned = _captioner(seed=2)
    assign_weights(assigned.decoder, weights["decoder"])
    assign_weights(assigned.backbone, weights["backbone"])
    for a, b, c in zip(model.weights, keras_loaded.weights, assigned.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(c), keras.ops.convert_to_numpy(b), err_msg=c.path)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(c), keras.ops.convert_to_numpy(a), rtol=1e-3, atol=1e-4)


def test_weights_of_another_config_are_a_clear_error(tmp_path):
    save_weights(_captioner(), tmp_path / "w.weights.h5")
    weights = read_weights(tmp_path / "w.weights.h5")["decoder"]
    wider = build_decoder(ModelConfig(**{**_config().__dict__, "feature_dim": 32}))
    with pytest.raises(ModelError, match=r"\[\(8, 32\), \(32,\)\] for layer project; received \[\(8, 12\), \(12,\)\]"):
        assign_weights(wider, weights)


def test_missing_and_extra_layers_are_named(tmp_path):
    save_weights(_captioner(), tmp_path / "w.weights.h5")
    weights = read_weights(tmp_path / "w.weights.h5")["decoder"]
    weights["extra"] = weights.pop("logits")
    with pytest.raises(ModelError, match=r"missing \['logits'\], unexpected \['extra'\]"):
        assign_weights(build_decoder(_config()), weights)


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
