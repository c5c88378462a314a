"""The public inference API: `Captioner.load(...)`, `.encode`, `.decode`, `.caption`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import tensorflow as tf

from captioner import backbones, familiarity, hub, imagenet
from captioner.decode import BeamSearch, Caption
from captioner.ensemble import EnsembleDecoder
from captioner.errors import BackboneError, ImageError, ModelError
from captioner.features import ImageSource, describe, prepare_image
from captioner.files import CONFIG_FILE, METRICS_FILE, VOCAB_FILE, WEIGHTS_FILE, sha256_file
from captioner.model import CaptionDecoder, ImageCaptioner, ModelConfig, load_decoder, read_ensemble, read_weights
from captioner.text import Vocabulary


@dataclass(frozen=True)
class ModelInfo:
    """Where the weights came from, for display and reports."""

    source: str
    path: Path
    commit: str | None
    weights_sha256: str
    notice: str | None = None

    @property
    def id(self) -> str:
        """The model's logical name for reports and metrics: `bundled`, `hf://OWNER/REPO@SHA` or a directory name."""
        return hub.model_id(self.source, self.path, self.commit)


@dataclass(frozen=True)
class Decoding:
    """Decoding settings: the ones a model was tuned with on dev (metrics.json), or the usual defaults."""

    beam_size: int = 3
    length_penalty: float = 0.7
    block_repeats: bool = False

    @classmethod
    def from_metrics(cls, metrics: Mapping) -> Decoding:
        """The `decoding` block of a metrics.json; anything missing or malformed keeps its default."""
        d = metrics.get("decoding") if isinstance(metrics, Mapping) else None
        d = d if isinstance(d, Mapping) else {}
        beam, alpha, block = d.get("beam_size"), d.get("length_penalty"), d.get("block_repeats")
        default = cls()
        return cls(
            beam if isinstance(beam, int) and 1 <= beam <= 20 else default.beam_size,
            float(alpha) if isinstance(alpha, int | float) and 0.0 <= alpha <= 2.0 else default.length_penalty,
            block if isinstance(block, bool) else default.block_repeats,
        )

    @classmethod
    def of_model_dir(cls, path: str | Path) -> Decoding:
        """The decoding a model directory was tuned with (its metrics.json), without loading the model."""
        return cls.from_metrics(_read_json(Path(path) / METRICS_FILE))

    def overridden(self, **settings) -> Decoding:
        """These settings, with each given value that is not None in place of its own (command-line overrides)."""
        return replace(self, **{name: value for name, value in settings.items() if value is not None})


@dataclass(frozen=True)
class Encoded:
    """Backbone feature grids of a batch of images, ready for decoding."""

    names: list[str]
    features: np.ndarray  # (N, H, W, C) float32
    images: np.ndarray  # (N, S, S, 3) uint8, the squashed backbone inputs (for overlays)
    # (N, C) float32: the pooled grid of the ImageNet backbone, what its ImageNet head and the familiarity check read
    # (the pooled `features`, unless the top stages were fine-tuned: then their original weights' output)
    seen: np.ndarray


class Captioner:
    """A loaded model: images in, captions with attention maps out."""

    def __init__(
        self,
        model: ImageCaptioner,
        config: ModelConfig,
        vocab: Vocabulary,
        info: ModelInfo,
        members: Sequence[CaptionDecoder] = (),
    ):
        """`model` holds the decoder and the inference backbone (`backbones.build_inference`), as `load` builds it.

        `members` are further decoders over the same backbone: decoded with `model.decoder` as one ensemble.
        """
        self.model, self.config, self.vocab, self.info = model, config, vocab, info
        self.decoders = [model.decoder, *members]
        self.decoder = EnsembleDecoder(self.decoders) if members else model.decoder  # what decoding runs
        self.search = BeamSearch(self.decoder, vocab, config.grid)
        self.metrics = _read_json(info.path / METRICS_FILE)
        self.tuned = Decoding.from_metrics(self.metrics)  # what dev chose for this model
        # Optional files beside the weights (None without them); both read `Encoded.seen`.
        self.imagenet = imagenet.ImageNetHead.load(info.path)  # the backbone's own ImageNet classifier
        self.familiarity = familiarity.Familiarity.load(info.path)  # is a photo like the training photos?
        original = None  # fine-tuned stages: their ImageNet weights, run on the activation entering them
        if config.tuned_stages:
            stages = imagenet.load_stages(info.path)
            if stages is None:  # both were made for the ImageNet backbone's features
                self.imagenet = self.familiarity = None
            else:
                original = backbones.top(config.backbone, config.tuned_stages, stages, folded=True)

        def backbone_pass(images):
            """Feature grids (N, H, W, C) and what the ImageNet view reads: the ImageNet backbone's pooled grid."""
            if not config.tuned_stages:
                grid = model.backbone(images, training=False)
                return grid, tf.reduce_mean(grid, axis=(1, 2))
            cut, grid = model.backbone(images, training=False)
            return grid, tf.reduce_mean(grid if original is None else original(cut, training=False), axis=(1, 2))

        # Traced once, without AutoGraph or Keras' predict machinery: quicker to compile on a cold start and to call.
        self._backbone = tf.function(
            backbone_pass,
            input_signature=[tf.TensorSpec([None, config.image_size, config.image_size, 3], tf.uint8)],
            autograph=False,
        )

    @classmethod
    def load(
        cls,
        source: str | Path | None = None,
        secrets: Mapping | None = None,
        fallback: bool = False,
        token: str | None = None,
    ) -> Captioner:
        """Load a directory or hf://OWNER/REPO@REV; None picks CAPTIONER_MODEL, a secret, or the bundled model."""
        resolved = hub.fetch(
            hub.choose_source(None if source is None else str(source), secrets), fallback=fallback, token=token
        )
        info = ModelInfo(resolved.source, resolved.path, resolved.commit, resolved.weights_sha256, resolved.notice)
        return cls.from_directory(resolved.path, info)

    @classmethod
    def from_directory(cls, path: str | Path, info: ModelInfo | None = None) -> Captioner:
        """Rebuild the model from a verified model directory (config.json, vocab.json, model.weights.h5)."""
        path = Path(path)
        missing = [f for f in (CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE) if not (path / f).is_file()]
        if missing:
            raise ModelError(f"Model directory {path} lacks {', '.join(missing)}.")
        config = ModelConfig.load(path / CONFIG_FILE)
        vocab = Vocabulary.load(path / VOCAB_FILE)
        if len(vocab) != config.vocab_size:
            raise ModelError(f"{path}: vocab.json has {len(vocab)} words, config.json says {config.vocab_size}.")
        backbones.get(config.backbone)  # an unknown backbone is reported as that, not as weights that do not fit
        model = _inference_model(config, path / WEIGHTS_FILE)
        members = _ensemble_members(path, config)
        if info is None:
            info = ModelInfo(str(path), path, None, sha256_file(path / WEIGHTS_FILE))
        return cls(model, config, vocab, info, members)

    def prepare(self, image: ImageSource, name: str | None = None) -> np.ndarray:
        """Decode and resize one image to the backbone input; raises ImageError naming it."""
        return prepare_image(image, self.config.image_size, name)

    def encode(
        self, images: Sequence[ImageSource], names: Sequence[str] | None = None, batch_size: int = 16
    ) -> Encoded:
        """Run the backbone on images (paths, bytes, PIL images or arrays); raises ImageError on a bad one."""
        names = list(names) if names is not None else [describe(im) for im in images]
        if len(names) != len(images):
            raise ValueError(f"Expected one name per image. Received: {len(names)} names, {len(images)} images.")
        if not images:
            raise ImageError("No images to caption.")
        pixels = np.stack([self.prepare(im, n) for im, n in zip(images, names, strict=True)])
        passes = [self._backbone(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)]
        grids, seen = (np.concatenate([p[k].numpy() for p in passes]) for k in (0, 1))
        return Encoded(names, grids, pixels, seen)

    def decode(
        self,
        encoded: Encoded,
        beam_size: int | None = None,
        length_penalty: float | None = None,
        max_length: int | None = None,
        block_repeats: bool | None = None,
    ) -> list[Caption]:
        """Captions for encoded images; beam_size 1 is greedy; a setting left None is the model's tuned one."""
        return self.decode_features(encoded.features, beam_size, length_penalty, max_length, block_repeats)

    def decode_features(
        self,
        features: np.ndarray,
        beam_size: int | None = None,
        length_penalty: float | None = None,
        max_length: int | None = None,
        block_repeats: bool | None = None,
    ) -> list[Caption]:
        """Captions for backbone feature grids (N, H, W, C), e.g. from a feature cache; settings as in `decode`.

        `block_repeats` forbids repeating any trigram within a caption.
        """
        d = self.tuned.overridden(beam_size=beam_size, length_penalty=length_penalty, block_repeats=block_repeats)
        max_length = max_length or self.config.max_length
        return self.search(features, d.beam_size, d.length_penalty, max_length, block_repeats=d.block_repeats)

    def caption(
        self,
        images: Sequence[ImageSource],
        beam_size: int | None = None,
        length_penalty: float | None = None,
        max_length: int | None = None,
        block_repeats: bool | None = None,
    ) -> list[Caption]:
        """Encode and decode in one call; settings left None are the model's tuned ones."""
        return self.decode(self.encode(images), beam_size, length_penalty, max_length, block_repeats)


def _inference_model(config: ModelConfig, weights_file: Path) -> ImageCaptioner:
    """The decoder and the BatchNorm-folded backbone, set from the weights file of the full model.

    With fine-tuned stages the backbone has two outputs: [the activation entering those stages, the feature grid].
    """
    weights = read_weights(weights_file)  # by layer name: the backbone's arrays are folded into its convs
    if sorted(weights) != ["backbone", "decoder"]:
        raise ModelError(f"Expected a backbone and a decoder in {weights_file}; received {sorted(weights)}.")
    decoder = load_decoder(config, weights_file, weights)
    try:
        # BatchNorm folded into the convs (1.2-1.3x faster), built without building the BatchNorm graph first.
        if config.tuned_stages:
            backbone = backbones.cut(config.backbone, config.tuned_stages, weights["backbone"])
        else:
            backbone = backbones.build_inference(config.backbone, weights["backbone"])
    except BackboneError as e:
        raise ModelError(
            f"Weights {weights_file} do not fit this model config: {e} Are config.json and weights from one run?"
        ) from e
    return ImageCaptioner(backbone, decoder)


def _ensemble_members(path: Path, config: ModelConfig) -> list[CaptionDecoder]:
    """The extra decoders an ensemble directory lists in ensemble.json (none for a single model)."""
    return [load_decoder(member, path / name) for name, member in read_ensemble(path, config)]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
