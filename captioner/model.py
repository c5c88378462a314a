"""The caption model: a region encoder and an attention-LSTM decoder, its config, and its weight files."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import h5py
import keras
import numpy as np
from keras import ops

from captioner.config import ModelConfig
from captioner.errors import BackboneError, ModelError
from captioner.files import (
    CONFIG_FILE,
    ENSEMBLE_FILE,
    MEMBER_WEIGHTS,
    VOCAB_FILE,
    WEIGHTS_FILE,
    member_weights_file,
    write_atomic,
)
from captioner.layers import ATTENTION


@keras.saving.register_keras_serializable(package="captioner")
class CaptionDecoder(keras.Model):
    """Feature grid + caption prefix -> next-word logits, with one attention map per step.

    Attention LSTM (words, optionally + the mean region; state from the mean region) -> attention over the regions
    (additive by default; see `captioner.layers`) -> language LSTM -> words. The attention LSTM does not see the
    attended context, so teacher-forced training runs all steps at once.
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int = 50,
        units: int = 512,
        feature_dim: int = 512,
        attention_units: int = 256,
        dropout: float = 0.5,
        attention_gate: bool = True,
        image_input: bool = False,
        attention: str = "additive",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if attention not in ATTENTION:
            raise ModelError(f"Unknown attention {attention!r}; expected one of {sorted(ATTENTION)}.")
        self.vocab_size, self.embed_dim, self.units = vocab_size, embed_dim, units
        self.feature_dim, self.attention_units = feature_dim, attention_units
        self.dropout_rate, self.attention_gate, self.image_input = dropout, attention_gate, image_input
        self.attention_kind = attention
        self.project = keras.layers.Dense(feature_dim, activation="relu", name="project")
        self.feature_dropout = keras.layers.Dropout(dropout, name="feature_dropout")
        self.init_state = keras.layers.Dense(4 * units, activation="tanh", name="init_state")
        self.embedding = keras.layers.Embedding(vocab_size, embed_dim, name="embedding")
        self.embed_dropout = keras.layers.Dropout(dropout / 2, name="embed_dropout")
        self.attention_lstm = keras.layers.LSTM(units, return_sequences=True, return_state=True, name="attn_lstm")
        self.attention = ATTENTION[attention](attention_units, gate=attention_gate, name="attention")
        self.language_lstm = keras.layers.LSTM(units, return_sequences=True, return_state=True, name="lang_lstm")
        self.output_dropout = keras.layers.Dropout(dropout, name="output_dropout")
        self.logits = keras.layers.Dense(vocab_size, name="logits")

    def build(self, features_shape, tokens_shape=None):
        regions, channels = features_shape[1] * features_shape[2], features_shape[3]
        self.project.build((None, regions, channels))
        self.init_state.build((None, self.feature_dim))
        self.embedding.build((None, None))
        self.attention_lstm.build((None, None, self.embed_dim + (self.feature_dim if self.image_input else 0)))
        self.attention.build((None, None, self.units), (None, regions, self.feature_dim))
        self.language_lstm.build((None, None, self.feature_dim + self.units))
        self.logits.build((None, self.units))

    def encode(self, features, training=False):
        """Grid (B, H, W, C) -> regions (B, R, D), attention keys (B, R, A), 4 initial states from the mean."""
        b, h, w, c = ops.shape(features)
        regions = ops.reshape(ops.cast(features, self.compute_dtype), (b, h * w, c))
        regions = self.feature_dropout(self.project(regions), training=training)  # (B, R, D)
        mean = ops.mean(regions, axis=1)  # (B, D)
        states = ops.split(self.init_state(mean), 4, axis=-1)  # h1, c1, h2, c2: (B, U) each
        return regions, self.attention.project_keys(regions), states

    def call(self, features, tokens, training=False):
        """Teacher forcing: features (B, H, W, C), tokens (B, N, T) -> logits (B, N, T, V), attention (B, N, T, R)."""
        regions, keys, (h1, c1, h2, c2) = self.encode(features, training)
        b, n, t = ops.shape(tokens)
        repeat = lambda x: ops.repeat(x, n, axis=0)  # noqa: E731 — (B, ...) -> (B·N, ...) for the N captions
        words = self.embed_dropout(self.embedding(ops.reshape(tokens, (b * n, t))), training=training)
        if self.image_input:
            mean = ops.repeat(ops.mean(regions, axis=1, keepdims=True), t, axis=1)  # (B, T, D)
            words = ops.concatenate([words, repeat(mean)], -1)
        q, _, _ = self.attention_lstm(words, initial_state=[repeat(h1), repeat(c1)])
        # All N·T queries of an image share its keys: attend per image instead of repeating regions N times.
        context, alpha = self.attention(ops.reshape(q, (b, n * t, self.units)), regions, keys)
        context = ops.reshape(context, (b * n, t, self.feature_dim))
        out, _, _ = self.language_lstm(ops.concatenate([context, q], -1), initial_state=[repeat(h2), repeat(c2)])
        logits = self.logits(self.output_dropout(out, training=training))
        return ops.reshape(logits, (b, n, t, self.vocab_size)), ops.reshape(alpha, (b, n, t, -1))

    def step(self, token, states, regions, keys):
        """One decoding step for B' sequences: token (B',) -> log-probs (B', V), attention (B', R), new states."""
        h1, c1, h2, c2 = states
        words = self.embedding(token)
        if self.image_input:
            words = ops.concatenate([words, ops.mean(regions, axis=1)], -1)
        q, (h1, c1) = self.attention_lstm.cell(words, [h1, c1])
        context, alpha = self.attention(q, regions, keys)
        out, (h2, c2) = self.language_lstm.cell(ops.concatenate([context, q], -1), [h2, c2])
        return ops.log_softmax(self.logits(out), axis=-1), alpha, (h1, c1, h2, c2)

    def get_config(self):
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "embed_dim": self.embed_dim,
            "units": self.units,
            "feature_dim": self.feature_dim,
            "attention_units": self.attention_units,
            "dropout": self.dropout_rate,
            "attention_gate": self.attention_gate,
            "image_input": self.image_input,
            "attention": self.attention_kind,
        }


def build_decoder(config: ModelConfig) -> CaptionDecoder:
    """A built (weights created) decoder for the config."""
    decoder = CaptionDecoder(
        config.vocab_size,
        embed_dim=config.embed_dim,
        units=config.units,
        feature_dim=config.feature_dim,
        attention_units=config.attention_units,
        dropout=config.dropout,
        attention_gate=config.attention_gate,
        image_input=config.image_input,
        attention=config.attention,
        name="decoder",
    )
    decoder.build((None, *config.grid, config.feature_channels))
    return decoder


@keras.saving.register_keras_serializable(package="captioner")
class ImageCaptioner(keras.Model):
    """Backbone + decoder in one object, so a single weights file holds the whole model."""

    def __init__(self, backbone: keras.Model, decoder: CaptionDecoder, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.decoder = decoder
        self.built = True  # both parts arrive built; nothing of its own to create

    def call(self, images):
        return self.backbone(images, training=False)


def save_weights(model: keras.Model, path: str | Path, dtype: str = "float16") -> None:
    """Save Keras weights with floating arrays stored as `dtype` (half the bytes; loading casts back)."""
    path = Path(path)
    full = path.with_name(path.name + ".tmp.weights.h5")
    model.save_weights(full)
    # Copy into a fresh file: HDF5 never reclaims the space of datasets deleted in place.
    with h5py.File(full, "r") as src, h5py.File(path, "w") as dst:

        def copy(name: str, obj) -> None:
            if isinstance(obj, h5py.Dataset):
                data = obj[()]
                dst.create_dataset(name, data=data.astype(dtype) if data.dtype.kind == "f" else data)
            else:
                dst.require_group(name)
            dst[name].attrs.update(obj.attrs)

        dst.attrs.update(src.attrs)
        src.visititems(copy)
    full.unlink()


def read_weights(path: str | Path) -> dict[str, dict[str, list[np.ndarray]]]:
    """The arrays of a `save_weights` file: {part: {layer path: arrays}}, e.g. ["decoder"]["attn_lstm/lstm_cell"].

    The parts are the saved model's layer attributes (an ImageCaptioner's "backbone" and "decoder"). Keras writes the
    variables each layer owns, in `layer.weights` order, to a `vars` group tagged with the layer's name; a layer path
    joins those names below the part. Arrays keep the file's dtype.
    Raises:
        ModelError: the file cannot be read, or a layer's group is not tagged with its name.
    """
    try:
        with h5py.File(path, "r") as f:
            return {part: dict(_layer_arrays(group, None)) for part, group in f.items() if part != "vars"}
    except (OSError, KeyError, ValueError) as e:
        raise ModelError(f"Cannot read the weights file {path}: {e}") from e


def _layer_arrays(group: h5py.Group, parent: str | None) -> Iterator[tuple[str, list[np.ndarray]]]:
    """(layer path, arrays) of the layer saved in `group` and of those below it; `parent` is None for a part."""
    path = parent or ""
    variables = group.get("vars")
    if variables is not None:
        name = variables.attrs.get("name")
        if not isinstance(name, str):
            raise ValueError(f"group {variables.name} is not tagged with its layer's name, as Keras 3.10+ does")
        if parent is not None:
            path = f"{parent}/{name}" if parent else name
        if len(variables):
            yield path, [variables[str(i)][()] for i in range(len(variables))]
    for key, child in group.items():
        if key != "vars":  # a layer held by this one, or a list of them ("layers")
            yield from _layer_arrays(child, path)


def load_weights(model: keras.Model, path: str | Path) -> None:
    """Load a weights file written by `save_weights`."""
    try:
        model.load_weights(Path(path))
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(
            f"Weights {path} do not fit this model config ({e}). Are config.json and weights from one run?"
        ) from e


def load_decoder(config: ModelConfig, weights_file: str | Path, weights: dict | None = None) -> CaptionDecoder:
    """A decoder for `config`, set from the "decoder" part of a weights file (a full model's or a member's)."""
    weights_file = Path(weights_file)
    weights = read_weights(weights_file) if weights is None else weights
    if "decoder" not in weights:
        raise ModelError(f"Expected a decoder in {weights_file}; received {sorted(weights)}.")
    decoder = build_decoder(config)
    # Keras matches the decoder's groups to its layers by attribute, as it saved them, which Streamlit's
    # keras.backend.clear_session() after each script run cannot upset (it resets the name scopes that variable paths
    # come from, even mid-build). A weightless stand-in takes the backbone's place, so Keras leaves those groups alone.
    load_weights(ImageCaptioner(keras.layers.Identity(), decoder), weights_file)
    saved = sum(map(len, weights["decoder"].values()))
    if saved != len(decoder.weights):  # Keras loads what the layers ask for and ignores the rest
        raise ModelError(
            f"Weights {weights_file} hold {saved} decoder arrays; this model config has {len(decoder.weights)}. "
            "Are config.json and weights from one run?"
        )
    return decoder


def save_model_dir(path: str | Path, model: ImageCaptioner, config: ModelConfig, vocab_json: str) -> Path:
    """Write config.json, vocab.json and float16 model.weights.h5 into a model directory."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(config.to_json(), encoding="utf-8")
    (path / VOCAB_FILE).write_text(vocab_json, encoding="utf-8")
    save_weights(model, path / WEIGHTS_FILE)
    return path


# What every member of an ensemble shares with the model's config.json: one backbone pass feeds them all.
SHARED_FIELDS = ("backbone", "image_size", "grid", "feature_channels", "vocab_size")


@dataclasses.dataclass(frozen=True)
class Member:
    """A further ensemble member: its decoder, its config and the layers of its own fine-tuned top stages.

    `stages` maps the backbone's layer names to arrays (unfolded, as `backbones.layer_weights` gives them); empty for
    a member that fine-tuned none (`config.tuned_stages` 0).
    """

    decoder: CaptionDecoder
    config: ModelConfig
    stages: dict[str, list[np.ndarray]] = dataclasses.field(default_factory=dict)


def save_ensemble(path: str | Path, members: Sequence[Member]) -> None:
    """Write the further members' weights (float16) and ensemble.json into a model directory.

    A member's file holds its decoder and, if it fine-tuned stages, those stages as the file's backbone part.
    """
    from captioner import backbones

    path = Path(path)
    entries = []
    for index, member in enumerate(members, start=1):
        name = member_weights_file(index)
        top = keras.layers.Identity()
        if member.config.tuned_stages:
            top = backbones.top(member.config.backbone, member.config.tuned_stages, member.stages)
        save_weights(ImageCaptioner(top, member.decoder), path / name)
        entries.append({"weights": name, "config": dataclasses.asdict(member.config)})
    write_atomic(path / ENSEMBLE_FILE, json.dumps({"members": entries}, indent=2))


def load_member(weights_file: str | Path, config: ModelConfig) -> Member:
    """A further member from its weights file: the decoder, and its own fine-tuned stages if its config has some.

    Raises:
        ModelError: the file does not fit the config, or carries other stages than its config says it fine-tuned.
    """
    weights = read_weights(weights_file)
    decoder = load_decoder(config, weights_file, weights)
    stages = {
        layer: [np.asarray(a, np.float32) for a in arrays] for layer, arrays in weights.get("backbone", {}).items()
    }
    if bool(stages) != bool(config.tuned_stages):
        held = f"{len(stages)} backbone layers" if stages else "no backbone layers"
        raise ModelError(
            f"{weights_file} holds {held}, but its member config has {config.tuned_stages} fine-tuned stage(s)."
        )
    if stages:
        from captioner import backbones
        from captioner.backbones.registry import check_layer_names

        try:
            top = backbones.top(config.backbone, config.tuned_stages, stages)
        except BackboneError as e:
            raise ModelError(
                f"{weights_file} lacks the {config.tuned_stages} fine-tuned stage(s) its member config has: {e}"
            ) from e
        try:
            check_layer_names(config.backbone, stages, {layer.name for layer in top.layers if layer.weights})
        except BackboneError as e:
            raise ModelError(
                f"{weights_file} holds backbone layers beyond the {config.tuned_stages} fine-tuned stage(s) its "
                f"member config has: {e}"
            ) from e
    return Member(decoder, config, stages)


def read_ensemble(path: str | Path, config: ModelConfig) -> list[tuple[str, ModelConfig]]:
    """(weights file name, config) of each further member listed in a model directory's ensemble.json, if any.

    Raises:
        ModelError: ensemble.json is malformed, names an odd file, or a member does not share the model's backbone,
            grid or vocabulary.
    """
    file = Path(path) / ENSEMBLE_FILE
    if not file.is_file():
        return []
    try:
        entries = json.loads(file.read_text(encoding="utf-8"))["members"]
        members = [(str(e["weights"]), ModelConfig.from_dict(dict(e["config"]))) for e in entries]
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ModelError(f'Cannot read {file}: expected {{"members": [{{"weights", "config"}}, …]}} ({e}).') from e
    for name, member in members:
        if not MEMBER_WEIGHTS.fullmatch(name):
            raise ModelError(f"{file} names {name!r}; expected member files named like decoder1.weights.h5.")
        if differs := [f for f in SHARED_FIELDS if getattr(member, f) != getattr(config, f)]:
            raise ModelError(f"{file}: member {name} differs from config.json in {', '.join(differs)}.")
        if not (Path(path) / name).is_file():
            raise ModelError(f"{file} lists {name}, which is not in {path}.")
    return members
